"""Two processes under torchrun (CPU, gloo) behave as one: the same weights (and EMA) after training,
the same samples bit for bit, and a lost rank stops the job with one line, leaving a checkpoint that
resumes at world size 1 or 2. The single-process runs go through the same CLI in this process."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch

from diffspace.cli.main import main
from diffspace.train.checkpoint import load_checkpoint

CONFIG = str(Path(__file__).parents[1] / "configs" / "demo.toml")
TINY = ["model.mlp.hidden=32", "model.mlp.depth=2", "data.n_train=2000", "data.n_test=500",
        "train.batch_size=64", "train.lr=1e-2", "train.warmup_steps=0", "train.schedule=constant",
        "train.ema_halflife_steps=2.0"]
STEPS = 12  # checkpoints (kept) every 4 steps: the runs are compared at steps 4, 8 and 12


def _sets(*items: str) -> list[str]:
    return [a for item in items for a in ("--set", item)]


def _torchrun_cmd(*args: str) -> list[str]:
    # --standalone: a free local port, so concurrent test runs do not collide
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
            "-m", "diffspace", *args]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def torchrun(*args: str) -> None:
    out = subprocess.run(_torchrun_cmd(*args), env=_env(), capture_output=True, text=True, timeout=240)
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


def train_args(run: Path, *extra: str) -> list[str]:
    sets = _sets(*TINY, f"run.dir={run}", f"train.steps={STEPS}", "train.ckpt_every=4", "train.keep_every=4",
                 "train.log_every=4")
    return ["train", CONFIG, *sets, "--overwrite", "--no-progress", *extra]


def weights(run: Path, step: int) -> dict[str, torch.Tensor]:
    tensors, meta = load_checkpoint(run / "checkpoints" / f"step_{step:08d}.safetensors")
    assert meta["step"] == step
    return {k: v.double() for k, v in tensors.items() if k.startswith(("model.", "ema."))}


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("dist")
    out = {"ws2": root / "ws2", "ws1": root / "ws1", "acc2": root / "acc2"}
    torchrun(*train_args(out["ws2"]))  # per-rank batch 32
    in_process(*train_args(out["ws1"]))  # batch 64 in one process
    in_process(*train_args(out["acc2"], "--accumulate", "2"))  # 2 micro-batches of 32
    return out


@pytest.mark.slow
@pytest.mark.parametrize("other", ["ws2", "acc2"])
def test_two_ranks_and_accumulation_train_like_one_batch(runs, other):
    ref_first, ref_last = weights(runs["ws1"], 4), weights(runs["ws1"], STEPS)
    moved = max_diff(ref_first, ref_last)
    assert moved > 1e-2, f"the weights barely moved ({moved:.2e}): the comparison would say nothing"
    ema_gap = max(float((ref_last[k] - ref_last["ema.module." + k[6:]]).abs().max())
                  for k in ref_last if k.startswith("model."))
    assert ema_gap > 1e-4, "EMA equals the raw weights: its comparison would say nothing"
    for step in (4, 8, STEPS):
        diff = max_diff(weights(runs["ws1"], step), weights(runs[other], step))
        assert diff <= 1e-5, f"{other} differs from one process with batch 64 at step {step}: {diff:.2e}"


@pytest.mark.slow
def test_logged_loss_is_the_global_mean(runs):
    def losses(run):
        return [json.loads(line)["loss"] for line in (run / "log.jsonl").read_text().splitlines()]

    ref, two = losses(runs["ws1"]), losses(runs["ws2"])
    assert len(ref) == len(two) == STEPS // 4
    assert np.allclose(ref, two, rtol=0, atol=1e-5), (ref, two)


@pytest.mark.slow
def test_two_ranks_sample_exactly_like_one(runs, tmp_path):
    # 6000 samples in chunks of 2500: rank 0 draws chunks 0 and 2, rank 1 chunk 1
    common = ["sample", str(runs["ws2"]), "--num-samples", "6000", "--steps", "4", "--seed", "3"]
    in_process(*common, "--out", str(tmp_path / "one.npz"))
    torchrun(*common, "--out", str(tmp_path / "two.npz"))
    one, two = np.load(tmp_path / "one.npz")["samples"], np.load(tmp_path / "two.npz")["samples"]
    assert one.shape == (6000, 2) and np.isfinite(one).all()
    assert np.array_equal(one, two), f"max difference {np.abs(one - two).max():.3e}"


def _child_with_rank(parent: int, rank: int) -> int:
    """The pid of torchrun's worker with RANK=rank (torchrun starts workers as its children)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            env = (stat.parent / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if ppid == parent and f"RANK={rank}".encode() in env:
            return int(stat.parent.name)
    raise AssertionError(f"no worker with RANK={rank} under pid {parent}")


@pytest.mark.slow
def test_killed_rank_stops_the_job_and_the_checkpoint_resumes(tmp_path):
    run = tmp_path / "run"
    args = ["train", CONFIG, *_sets(*TINY, f"run.dir={run}", "train.steps=200", "train.ckpt_every=20",
                                     "train.log_every=20"), "--no-progress"]
    job = subprocess.Popen(_torchrun_cmd(*args), env=_env(), stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
    ckpt = run / "checkpoints" / "last.safetensors"
    deadline = time.monotonic() + 120
    while not ckpt.is_file() and job.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert job.poll() is None, "the run ended before a rank could be killed:\n" + job.communicate()[0]
    os.kill(_child_with_rank(job.pid, 0), signal.SIGKILL)  # rank 0: the one writing checkpoints
    log = job.communicate(timeout=120)[0]
    assert job.returncode != 0
    assert "diffspace: train stopped: rank 1 " in log, log[-3000:]
    assert f"diffspace train {run} --resume" in log

    step = load_checkpoint(ckpt)[1]["step"]
    assert 0 < step < 200 and step % 20 == 0
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    in_process("train", str(run), "--resume", "--no-progress")
    torchrun("train", str(copy), "--resume", *_sets(f"run.dir={copy}"), "--no-progress")
    one, two = load_checkpoint(ckpt), load_checkpoint(copy / "checkpoints" / "last.safetensors")
    assert one[1]["step"] == two[1]["step"] == 200
    keys = [k for k in one[0] if k.startswith(("model.", "ema."))]
    diff = max(float((one[0][k].double() - two[0][k].double()).abs().max()) for k in keys)
    assert diff <= 1e-5, f"resumed at world size 1 and 2 differ by {diff:.2e}"
