"""Helpers of the torchrun tests: a tiny config, two-rank launches, single-process CLI calls."""

import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import torch

from diffspace.cli.main import main

CONFIG = str(Path(__file__).parents[1] / "configs" / "demo.toml")
TINY = ["model.mlp.hidden=32", "model.mlp.depth=2", "data.n_train=2000", "data.n_test=500",
        "train.batch_size=64", "train.lr=1e-2", "train.warmup_steps=0", "train.schedule=constant",
        "train.ema_halflife_steps=2.0"]


def sets(*items: str) -> list[str]:
    return [a for item in items for a in ("--set", item)]


def torchrun_cmd(*args: str) -> list[str]:
    # --standalone: a free local port, so concurrent test runs do not collide
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
            "-m", "diffspace", *args]


def env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def torchrun(*args: str) -> None:
    out = subprocess.run(torchrun_cmd(*args), env=env(), capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]


@contextmanager
def one_thread():
    # why: the torchrun ranks run one thread each; bitwise comparisons need the same matmul kernels
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def in_process(*args: str) -> None:
    with one_thread():
        assert main(list(args)) == 0
