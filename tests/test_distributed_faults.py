"""A rank that dies under torchrun stops the job with one line; the checkpoint it leaves resumes at
world size 1 and 2 to the same weights."""

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from diffspace.train.checkpoint import load_checkpoint
from distributed_helpers import CONFIG, TINY, env, in_process, sets, torchrun, torchrun_cmd


def _child_with_rank(parent: int, rank: int) -> int:
    """The pid of torchrun's worker with RANK=rank (torchrun starts workers as its children)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            environ = (stat.parent / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if ppid == parent and f"RANK={rank}".encode() in environ:
            return int(stat.parent.name)
    raise AssertionError(f"no worker with RANK={rank} under pid {parent}")


@pytest.mark.slow
def test_killed_rank_stops_the_job_and_the_checkpoint_resumes(tmp_path):
    run = tmp_path / "run"
    args = ["train", CONFIG, *sets(*TINY, f"run.dir={run}", "train.steps=150", "train.ckpt_every=10",
                                    "train.log_every=10"), "--no-progress"]
    job = subprocess.Popen(torchrun_cmd(*args), env=env(), stdout=subprocess.PIPE,
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
    assert 0 < step < 150 and step % 10 == 0
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    in_process("train", str(run), "--resume", "--no-progress")
    torchrun("train", str(copy), "--resume", *sets(f"run.dir={copy}"), "--no-progress")
    one, two = load_checkpoint(ckpt), load_checkpoint(copy / "checkpoints" / "last.safetensors")
    assert one[1]["step"] == two[1]["step"] == 150
    keys = [k for k in one[0] if k.startswith(("model.", "ema."))]
    diff = max(float((one[0][k].double() - two[0][k].double()).abs().max()) for k in keys)
    assert diff <= 1e-5, f"resumed at world size 1 and 2 differ by {diff:.2e}"


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_corrupt_log_refuses_a_two_rank_resume_without_a_hang(tmp_path):
    """Only rank 0 reads log.jsonl on resume; its refusal must end the job (the other rank is not left
    waiting at a collective) and change no file, as in one process (tests/test_run_files.py)."""
    run = tmp_path / "run"
    in_process("train", CONFIG, *sets(*TINY, f"run.dir={run}", "train.steps=20", "train.ckpt_every=10",
                                      "train.log_every=5"), "--no-progress")
    rows = (run / "log.jsonl").read_text().splitlines(keepends=True)
    (run / "log.jsonl").write_text("".join([rows[0], '{"step": 6, "lo\n', *rows[1:]]))
    before = _files(run)
    resume = torchrun_cmd("train", str(run), "--resume", *sets("train.steps=30"), "--no-progress")
    out = subprocess.run(resume, env=env(), capture_output=True, text=True, timeout=180)
    said = out.stdout + out.stderr
    assert out.returncode != 0, said[-3000:]
    assert "diffspace: error: " in said and "log.jsonl" in said and "to resume" in said, said[-3000:]
    assert _files(run) == before
