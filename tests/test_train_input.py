"""Training input a person gets wrong or changes: a batch that does not split into --accumulate micro-batches
is bad input (one line, exit 2, nothing written), and a resume that changes settings outside [train] goes on
but says, in one warning, which ones changed and how."""

import logging
from pathlib import Path

import pytest
import torch

from diffspace import runs
from diffspace.cli.main import main
from diffspace.config import build
from diffspace.runs.continuous import ContinuousConfig, build_setup
from diffspace.train.loop import Trainer, check_batch_split
from diffspace.types import UserError

ROOT = Path(__file__).resolve().parents[1]
TINY = {"data": {"name": "moons", "n_train": 500, "n_test": 100},
        "model": {"mlp": {"hidden": 16, "depth": 1}},
        "train": {"steps": 4, "batch_size": 32, "log_every": 100, "ckpt_every": 100}}


def test_accumulate_that_does_not_divide_the_batch_is_a_user_error_in_one_line(tmp_path, capsys):
    run = tmp_path / "run"
    code = main(["train", str(ROOT / "configs/demo.toml"), "--accumulate", "3", "--no-progress",
                 "--set", f"run.dir={run}", "--set", "train.batch_size=32", "--set", "train.steps=2"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["diffspace: error: train.batch_size=32 is not divisible by world size 1 x --accumulate 3; "
                   "choose a train.batch_size that is a multiple of 3, or another --accumulate"]
    assert not run.exists()  # refused before anything was written


def test_batch_split_is_checked_the_same_way_from_python(tmp_path):
    config = {**TINY, "run": {"dir": str(tmp_path / "run")}}
    with pytest.raises(UserError, match=r"batch_size=32 is not divisible by world size 1 x --accumulate 3"):
        runs.train(config, accumulate=3)
    for bad in (0, -1, 2.0, True):
        with pytest.raises(UserError, match=r"--accumulate must be an integer >= 1"):
            runs.train(config, accumulate=bad)
    assert not (tmp_path / "run").exists()
    check_batch_split(32, 2, 4)  # 32 = 2 ranks x 4 micro-batches of 4
    with pytest.raises(UserError, match=r"batch_size=30 is not divisible by world size 2 x --accumulate 4"):
        check_batch_split(30, 2, 4)
    cfg = build(ContinuousConfig, TINY)
    setup, _ = build_setup(cfg, torch.device("cpu"))
    with pytest.raises(UserError, match=r"train.batch_size=32 is not divisible .* --accumulate 5"):
        Trainer(setup, cfg.train, Path("unused"), {}, seed=0, accumulate=5)


def _changed(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno == logging.WARNING and "changed setting" in r.getMessage()]


def test_resume_with_changed_settings_goes_on_and_names_each_change(tmp_path, caplog):
    run = tmp_path / "run"
    runs.train({**TINY, "run": {"dir": str(run)}})
    with caplog.at_level(logging.INFO, logger="diffspace"):
        resumed = runs.train(run, ["train.steps=6", "data.n_train=600", "model.mlp.dropout=0.25",
                                   "loss.p_mean=-1.0", "run.device=cpu"], resume=True)
    assert resumed.step == 6 and resumed.cfg.data.n_train == 600
    assert _changed(caplog) == ["resuming with 3 changed settings (training continues under the new ones): "
                                "data.n_train: 500 -> 600; loss.p_mean: -1.2 -> -1.0; "
                                "model.mlp.dropout: 0.0 -> 0.25"]  # not train.steps, run.device, run.dir

    caplog.clear()
    moved = Path(tmp_path / "moved")
    run.rename(moved)  # run.dir differs from the stored one: no change of settings
    with caplog.at_level(logging.INFO, logger="diffspace"):
        runs.train(moved, ["train.steps=8"], resume=True)
    assert _changed(caplog) == []


def test_out_of_memory_while_building_is_not_a_config_error():
    """data.n_train = 10**12 was exit 2 'cannot build data.name ...: [enforce fail at alloc_cpu.cpp...'; it
    is the out-of-memory line of exit 1 like any other (cli.main)."""
    from diffspace.runs.registries import config_errors

    with pytest.raises(RuntimeError, match="can't allocate memory"), config_errors("data.name = 'moons'"):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 8000 bytes")
    with pytest.raises(UserError, match=r"^cannot build data.name = 'moons': bad value$"), \
            config_errors("data.name = 'moons'"):
        raise ValueError("bad value")


@pytest.mark.parametrize("new,said", [
    ({"steps": 400}, "the learning rate at step 200 goes from 2e-05 to 0.00105"),
    ({"steps": 400, "schedule": "constant", "lr": 2e-5}, "the learning rate at step 200 stays 2e-05"),
])
def test_an_extended_schedule_says_what_the_learning_rate_does(caplog, new, said):
    from diffspace.config import to_dict
    from diffspace.runs.api import _note_extension
    from diffspace.train.loop import TrainConfig

    old = TrainConfig(steps=200, lr=2e-3, warmup_steps=10, lr_min=2e-5)
    with caplog.at_level(logging.WARNING, logger="diffspace"):
        _note_extension(to_dict(old), TrainConfig(**{**to_dict(old), **new}), 200)
    assert [r.getMessage() for r in caplog.records] == [
        f"continuing from step 200 to 400: the {new.get('schedule', 'cosine')} learning-rate schedule is "
        f"recomputed for 400 steps, so {said}"]
