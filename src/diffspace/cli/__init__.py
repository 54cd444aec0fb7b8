"""The `diffspace` command line (`diffspace.cli.main`).

Before torch is imported, OpenMP's idle threads are told to sleep rather than spin
(`OMP_WAIT_POLICY=PASSIVE`, unless the environment sets it). Beside a busy process on a 2-core machine,
two spinning threads trained the demo in 2.5x one thread's time (40 s against 16 s), two sleeping ones
in 1.25x (20 s); on an idle machine sleeping costs 17 % (14 s against 12 s): benchmarks/results/
omp_wait.md. A Python user sets it themselves, before importing torch.
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
