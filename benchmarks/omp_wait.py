"""How OpenMP's thread count and wait policy change the demo's training time, on an idle machine and
beside one busy process (another job holding a core), side by side in one run.

For each case, `diffspace train configs/demo.toml` for STEPS steps (the CLI's own report of training
seconds, so start-up is not counted) under OMP_NUM_THREADS 1 or 2 and OMP_WAIT_POLICY ACTIVE (spinning,
libgomp's behaviour for a short while after each parallel region) or PASSIVE (what the CLI sets unless
the environment says otherwise, `diffspace/cli/__init__.py`). The busy process is a Python loop that
never sleeps. Cases are interleaved over REPEATS rounds; the table gives medians.

    .venv/bin/python benchmarks/omp_wait.py          # results/omp_wait.{json,md}
"""

import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results"
STEPS, REPEATS = 600, 3
CASES = [(1, "PASSIVE"), (2, "ACTIVE"), (2, "PASSIVE")]


def train_seconds(threads: int, policy: str, run_dir: Path) -> float:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), OMP_WAIT_POLICY=policy)
    res = subprocess.run([sys.executable, "-m", "diffspace", "train", str(ROOT / "configs" / "demo.toml"),
                          "--set", f"run.dir={run_dir}", "--set", f"train.steps={STEPS}", "--overwrite",
                          "--no-progress"], env=env, capture_output=True, text=True, check=True)
    return float(re.search(r"trained \d+ steps in ([\d.]+) s", res.stdout)[1])


def main() -> None:
    load_before = os.getloadavg()[0]
    times: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for busy in (False, True):
            spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
            try:
                for _ in range(REPEATS):
                    for threads, policy in CASES:
                        key = f"{'busy' if busy else 'idle'}/{threads}/{policy}"
                        times.setdefault(key, []).append(train_seconds(threads, policy, Path(tmp) / "run"))
            finally:
                if spinner is not None:
                    spinner.kill()
    median = {k: statistics.median(v) for k, v in times.items()}
    result = {"steps": STEPS, "repeats": REPEATS, "times_s": times, "median_s": median,
              "load_before": load_before, "load_after": os.getloadavg()[0], "machine": platform.machine(),
              "cpus": os.cpu_count()}
    OUT.mkdir(exist_ok=True)
    (OUT / "omp_wait.json").write_text(json.dumps(result, indent=1) + "\n")
    rows = ["| threads, wait policy | idle machine: s | beside one busy process: s | busy / idle |",
            "|---|---|---|---|"]
    for threads, policy in CASES:
        idle, busy = median[f"idle/{threads}/{policy}"], median[f"busy/{threads}/{policy}"]
        rows.append(f"| {threads}, {policy} | {idle:.1f} | {busy:.1f} | {busy / idle:.2f} |")
    text = (f"## Training time against OpenMP threads and wait policy\n\n`benchmarks/omp_wait.py` on "
            f"{platform.machine()}, {os.cpu_count()} cores; load average {load_before:.2f} at the start, "
            f"{result['load_after']:.2f} at the end. `diffspace train configs/demo.toml`, {STEPS} steps, "
            f"training seconds as the CLI reports them, medians of {REPEATS} interleaved rounds; the busy "
            "process is a Python loop that never sleeps.\n\n" + "\n".join(rows) + "\n")
    (OUT / "omp_wait.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
