"""A run interrupted (even mid-checkpoint) and resumed ends exactly where an uninterrupted run ends."""

import json

import pytest
import torch

import diffspace.train.checkpoint as ckpt_mod
from diffspace.config import build
from diffspace.runs.continuous import ContinuousConfig, build_setup
from diffspace.train.checkpoint import load_checkpoint
from diffspace.train.loop import train

CFG = {
    "data": {"name": "moons", "n_train": 2000, "n_test": 200},
    "model": {"mlp": {"hidden": 32, "depth": 2, "dropout": 0.1}},  # dropout: the global RNG must resume too
    "train": {"steps": 20, "batch_size": 64, "warmup_steps": 3, "ckpt_every": 5, "log_every": 1,
              "ema_halflife_steps": 3.0},
}


def _run(tmp, resume=False):
    cfg = build(ContinuousConfig, CFG)
    torch.manual_seed(0)
    setup, _ = build_setup(cfg, torch.device("cpu"))
    return train(setup, cfg.train, tmp, {"note": "test"}, seed=3, resume=resume, progress=False)


def test_crash_mid_checkpoint_keeps_last_good_and_resume_matches(tmp_path, monkeypatch):
    full = _run(tmp_path / "full")

    real_save, calls = ckpt_mod.save_file, {"n": 0}

    def crashing_save(tensors, filename, metadata=None):
        calls["n"] += 1
        if calls["n"] == 2:  # the checkpoint at step 10: write half a file, then die
            real_save(tensors, filename, metadata=metadata)
            data = open(filename, "rb").read()
            open(filename, "wb").write(data[: len(data) // 2])
            raise RuntimeError("simulated crash while writing a checkpoint")
        real_save(tensors, filename, metadata=metadata)

    monkeypatch.setattr(ckpt_mod, "save_file", crashing_save)
    crashed = tmp_path / "crashed"
    with pytest.raises(RuntimeError, match="simulated crash"):
        _run(crashed)
    monkeypatch.setattr(ckpt_mod, "save_file", real_save)

    last = crashed / "checkpoints" / "last.safetensors"
    assert load_checkpoint(last)[1]["step"] == 5  # the last good checkpoint survived
    assert sorted(p.name for p in (crashed / "checkpoints").iterdir()) == ["last.safetensors"]  # no torn file

    resumed = _run(crashed, resume=True)
    assert resumed.step == full.step == 20
    for a, b in [(full.model, resumed.model), (full.ema, resumed.ema)]:
        for (name, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
            assert (p.float() - q.float()).abs().max() <= 1e-6, name

    def losses(d):
        return [json.loads(x)["loss"] for x in (d / "log.jsonl").read_text().splitlines()]

    assert losses(crashed) == pytest.approx(losses(tmp_path / "full"), rel=1e-6, abs=1e-7)
