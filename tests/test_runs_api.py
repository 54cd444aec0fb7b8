"""The runs API as a Python user meets it: sampling ranges, options honoured or refused, configs that cannot
contradict themselves."""

import pytest
import torch

from diffspace import runs
from diffspace.runs.continuous import build_path
from diffspace.runs.sampling import run_sigmas
from diffspace.types import UserError

TINY = {"data": {"name": "moons", "n_train": 500, "n_test": 100},
        "model": {"mlp": {"hidden": 16, "depth": 1}},
        "train": {"steps": 4, "batch_size": 32, "log_every": 100, "ckpt_every": 100}}


@pytest.fixture(scope="module")
def ddpm_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("api") / "ddpm"
    config = {**TINY, "run": {"dir": str(d)},
              "model": {**TINY["model"], "path": "ddpm", "parameterization": "eps"},
              "loss": {"weighting": "eps", "proposal": "uniform"}}
    return runs.train(config)


def test_a_ddpm_run_starts_at_the_tables_sigma_max(ddpm_run):
    """Issue 13 item 4: the first level is timestep 999 (sigma ~ 157), as diffusers starts, not EDM's 80."""
    path = build_path(ddpm_run.cfg)
    for grid in ("karras", "trailing", "logsnr"):
        sigmas = run_sigmas(ddpm_run, grid, 5, "heun")
        assert float(sigmas[0]) == pytest.approx(path.sigma_max, rel=1e-12), grid
    abar = path.alphas_cumprod[-1]  # timestep 999
    assert path.sigma_max == pytest.approx(float(((1 - abar) / abar).sqrt()), rel=1e-12)
    narrowed = run_sigmas(ddpm_run, "karras", 5, "heun", sigma_max=80.0)
    assert float(narrowed[0]) == 80.0
    with pytest.raises(UserError, match="outside the range"):
        run_sigmas(ddpm_run, "karras", 5, "heun", sigma_max=1000.0)


def test_options_a_run_cannot_honour_are_refused(ddpm_run):
    with pytest.raises(UserError, match=r"continuous runs cannot use the option 'prompts' \(--prompt\)"):
        runs.sample(ddpm_run, runs.SampleOptions(n=2, prompts=("hello",)))
    with pytest.raises(UserError, match="class-conditional"):
        runs.sample(ddpm_run, runs.SampleOptions(n=2, guidance=2.0))
    with pytest.raises(UserError, match="has no option 'eta'"):
        runs.sample(ddpm_run, runs.SampleOptions(n=2, sampler="heun", sampler_options={"eta": 0.5}))
    with pytest.raises(UserError, match=r"n \(--n\) must be positive"):
        runs.sample(ddpm_run, runs.SampleOptions(n=-1))
    x = runs.sample(ddpm_run, runs.SampleOptions(n=3, sampler="ddim", steps=3, sampler_options={"eta": 0.5}))
    assert x.shape == (3, 2) and torch.isfinite(x).all()


@pytest.mark.parametrize("override,words", [
    ({"sample": {"sampler": "heunn"}}, "sample.sampler = 'heunn'"),
    ({"sample": {"grid": "trailing"}}, "spaces the timesteps of a DDPM table"),
    ({"loss": {"objective": "flow"}}, "model.parameterization = 'velocity'"),
    ({"model": {"precond": "edm"}}, "unknown key 'model.precond'"),
])
def test_configs_cannot_contradict_themselves(override, words):
    merged = {k: {**TINY.get(k, {}), **v} for k, v in override.items()}
    with pytest.raises(UserError, match=words.replace(".", r"\.").replace("(", r"\(").replace(")", r"\)")):
        runs.load_config({**TINY, **merged})
