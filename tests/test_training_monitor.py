"""What a run shows while it trains: TensorBoard event files (scalars equal to log.jsonl, weight
histograms, sample pictures), a note when the package is missing, periodic progress lines off a
terminal that know the train.minutes cap, and Ctrl-C that checkpoints and names the --resume command."""

import importlib.util
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from diffspace import runs
from diffspace.train import monitor

ROOT = Path(__file__).resolve().parents[1]
TINY = {"model": {"mlp": {"hidden": 16, "depth": 1}}, "data": {"n_train": 500, "n_test": 100},
        "sample": {"steps": 3}, "train": {"steps": 6, "batch_size": 32, "log_every": 2, "ckpt_every": 3,
                                          "tensorboard": True}}


def _config(run_dir, **train):
    cfg = json.loads(json.dumps(TINY))
    cfg["run"] = {"dir": str(run_dir)}
    cfg["train"].update(train)
    return cfg


def test_tensorboard_holds_the_logged_scalars_histograms_and_samples(tmp_path):
    pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    runs.train(_config(tmp_path / "run"))
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"),
                              size_guidance={"scalars": 0, "histograms": 0, "images": 0})
    events.Reload()
    rows = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    for key in ("loss", "lr", "grad_norm", "it_s"):
        got = [(e.step, e.value) for e in events.Scalars(f"train/{key}")]
        assert [s for s, _ in got] == [r["step"] for r in rows] == [2, 4, 6]
        assert [v for _, v in got] == pytest.approx([r[key] for r in rows], rel=1e-6)  # float32 events
    histograms = events.Tags()["histograms"]
    assert "weights/net.inp.weight" in histograms
    assert [e.step for e in events.Histograms("weights/net.inp.weight")] == [3, 6]  # at each checkpoint
    pictures = events.Images("samples")
    assert [e.step for e in pictures] == [3, 6] and pictures[0].width > 100  # the scatter of samples


def test_without_the_package_training_goes_on_with_one_note(tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as if not installed
    with caplog.at_level(logging.INFO, logger="diffspace"):
        run = runs.train(_config(tmp_path / "run"))
    notes = [r.message for r in caplog.records if "tensorboard" in r.message]
    assert len(notes) == 1 and "pip install" in notes[0]
    assert run.step == 6 and not (tmp_path / "run" / "tensorboard").exists()


def test_progress_lines_off_a_terminal_and_the_minutes_cap(monkeypatch, caplog):
    monkeypatch.setattr(monitor, "LINE_SECONDS", 0.0)
    with caplog.at_level(logging.INFO, logger="diffspace"):
        bar = monitor.Progress(1000, 0, 0.0, enabled=True, tty=False)
        bar.update(1, 0.5)  # no log row at this step: no line
        bar.update(100, 10.0, loss=0.25, its=10.0)
        capped = monitor.Progress(1000, 0, 1.0, enabled=True, tty=False)  # 1 minute cap
        capped.update(100, 10.0, loss=0.25, its=10.0)
    lines = [r.message for r in caplog.records]
    assert lines[0] == "step 100/1000 (10%)  loss 0.25  10.0 it/s  elapsed 0:10  left 1:30"
    assert lines[1] == "step 100/1000 (10%)  loss 0.25  10.0 it/s  elapsed 0:10  left 0:50 (the 1-minute cap)"
    assert len(lines) == 2


def test_progress_bar_total_shrinks_to_the_minutes_cap():
    bar = monitor.Progress(1000, 0, 1.0, enabled=True, tty=True)
    bar.update(100, 10.0, loss=0.25, its=10.0)  # 50 s left at 10 it/s: the run ends near step 600
    assert bar.bar.total == 600
    bar.close()


@pytest.mark.slow
def test_ctrl_c_saves_a_checkpoint_and_names_the_resume_command(tmp_path):
    run_dir = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    args = [sys.executable, "-m", "diffspace", "train", ROOT / "configs/demo.toml",
            "--set", f"run.dir={run_dir}", "--set", "train.steps=100000", "--set", "train.log_every=10",
            "--set", "train.ckpt_every=100000", "--set", "train.tensorboard=true",
            "--set", "model.mlp.hidden=16", "--set", "data.n_train=500", "--set", "data.n_test=100"]
    proc = subprocess.Popen(list(map(str, args)), stderr=subprocess.PIPE, text=True, env=env)
    log = run_dir / "log.jsonl"
    deadline = time.time() + 120
    while not (log.is_file() and log.read_text().count("\n") >= 2) and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    command = f"diffspace train {run_dir} --resume"
    assert command in err.splitlines()[-1], err
    meta = runs.load_run(run_dir).meta
    assert 20 <= meta["step"] < 100000
    assert json.loads(log.read_text().splitlines()[-1])["step"] == meta["step"]  # the row of that step
    if importlib.util.find_spec("tensorboard"):  # the event file was closed with a picture of that step
        assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    res = subprocess.run([sys.executable, "-m", "diffspace", "train", str(run_dir), "--resume", "--set",
                          f"train.steps={meta['step'] + 5}", "--no-progress"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0, res.stderr
    assert runs.load_run(run_dir).step == meta["step"] + 5
