"""The loop's step-dependent hyperparameters and optimizer betas: a scheduled value (the Gumbel-softmax
temperature, annealed every step) reaches the loss as a batch entry equal to schedule(step), is logged,
and a run interrupted and resumed ends bit-identical to one trained straight through."""

import json

import pytest
import torch

from diffspace.config import build
from diffspace.data.quantized import BINARY
from diffspace.families.vae import GridObservation, annealed_temperature, gumbel_softmax_vae, vae_loss
from diffspace.train.loop import TrainConfig, Trainer, TrainSetup, train
from diffspace.types import UserError

CFG = TrainConfig(steps=12, batch_size=16, lr=1e-2, warmup_steps=2, ckpt_every=5, log_every=1,
                  ema_halflife_steps=2.0, betas=[0.5, 0.99])


def tau_at(step: int) -> float:
    return annealed_temperature(step, tau0=1.0, rate=0.05, tau_min=0.3, every=1)  # changes every step


def _setup(seen: list | None = None) -> TrainSetup:
    torch.manual_seed(0)
    obs = GridObservation((6,), BINARY)
    model = gumbel_softmax_vae((6,), obs, n_latents=2, n_classes=3, hidden=8, depth=1)
    data = torch.randint(0, 2, (64, 6)).float() * 2 - 1

    def batch(g, n):
        return {"x": data[torch.randint(len(data), (n,), generator=g)], **model.noise(n, 1, g)}

    def loss(m, b):
        if seen is not None:
            seen.append(b["tau"].clone())
        return vae_loss(m, {"x": b["x"], "gumbel": b["gumbel"][:, 0], "tau": b["tau"]})

    return TrainSetup(model, batch, loss, schedule=lambda step: {"tau": tau_at(step)})


def test_scheduled_value_joins_the_batch_and_the_log(tmp_path):
    seen: list = []
    tr = train(_setup(seen), CFG, tmp_path, {}, progress=False)
    assert len(seen) == CFG.steps
    for step, tau in enumerate(seen):  # step k's batch carries schedule(k) for every example
        assert tau.shape == (CFG.batch_size,) and torch.all(tau == tau_at(step))
    rows = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["tau"] for r in rows] == [tau_at(r["step"] - 1) for r in rows]
    assert tr.opt.param_groups[0]["betas"] == (0.5, 0.99)


def test_resume_with_annealing_is_exact(tmp_path):
    full = train(_setup(), CFG, tmp_path / "full", {}, progress=False)
    part = tmp_path / "part"
    train(_setup(), CFG, part, {}, progress=False, stop_after=5)  # checkpoint at step 5, tau annealed
    resumed = train(_setup(), CFG, part, {}, resume=True, progress=False)
    assert resumed.step == full.step == CFG.steps
    for a, b in [(full.model, resumed.model), (full.ema, resumed.ema)]:
        for (name, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
            assert torch.equal(p, q), name
    rows = lambda d: map(json.loads, (d / "log.jsonl").read_text().splitlines())
    log = lambda d: [(r["loss"], r["tau"]) for r in rows(d)]
    assert log(part) == log(tmp_path / "full")


@pytest.mark.parametrize("betas", [[0.9], [0.5, 1.0], [-0.1, 0.9]])
def test_bad_betas_are_refused(betas):
    with pytest.raises(UserError, match="train.betas"):
        build(TrainConfig, {"betas": betas})


def test_betas_reach_adamw(tmp_path):
    tr = Trainer(_setup(), build(TrainConfig, {"betas": [0.0, 0.9]}), tmp_path, {}, seed=0)
    assert tr.opt.param_groups[0]["betas"] == (0.0, 0.9)
