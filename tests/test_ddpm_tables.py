"""A DDPM path from the table a network was trained with: a diffusers scheduler config gives diffusers'
`alphas_cumprod` bit for bit for every beta schedule; a given table is kept exactly; bad tables and
configs are one-line UserErrors; every path's closed-form alpha_from_sigma is alpha_t at t(sigma)."""

import json

import pytest
import torch

from diffspace.paths import PATHS, DDPMDiscrete, DDPMZeroTerminalSNR
from diffspace.paths.ddpm import ddpm_from_scheduler_config
from diffspace.samplers.grids import GRIDS, sampling_range
from diffspace.types import UserError

diffusers = pytest.importorskip("diffusers")

CONFIGS = [
    {"beta_schedule": "linear"},
    {"beta_schedule": "linear", "num_train_timesteps": 500, "beta_start": 0.0002, "beta_end": 0.03},
    {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012},  # Stable Diffusion's
    {"beta_schedule": "squaredcos_cap_v2"},
    {"trained_betas": torch.linspace(1e-4, 0.02, 100).tolist(), "num_train_timesteps": 100},
]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.get("beta_schedule", "trained_betas"))
def test_scheduler_config_reproduces_diffusers_alphas_cumprod_bit_for_bit(config, tmp_path):
    theirs = diffusers.DDPMScheduler(**config).alphas_cumprod  # float32
    file = tmp_path / "scheduler_config.json"
    file.write_text(json.dumps({"_class_name": "DDPMScheduler", "prediction_type": "epsilon", **config}))
    for source in (file, str(file), config):
        path = ddpm_from_scheduler_config(source)
        assert type(path) is DDPMDiscrete and path.T == len(theirs)
        assert torch.equal(path.alphas_cumprod.float(), theirs)  # float32 -> float64 -> float32 is exact
        assert torch.equal(path.alphas_cumprod, theirs.double())
        # sigma at every timestep from that table, so a grid's timestep k is the network's timestep k
        k = torch.arange(path.T, dtype=torch.float64)
        assert torch.equal(path.noise_cond(path.t_from_sigma(torch.exp(path.log_sigmas))), k)


def test_the_float32_table_differs_from_the_float64_rebuild():
    """Why a table is accepted: the float32 cumprod diffusers trains with is not the float64 rebuild."""
    ours, theirs = DDPMDiscrete(), ddpm_from_scheduler_config({})
    gap = (ours.log_sigmas - theirs.log_sigmas).abs().max()
    assert 1e-5 < float(gap) < 1e-3


def test_zero_terminal_snr_config_is_a_zsnr_path():
    config = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012,
              "rescale_betas_zero_snr": True}
    path = ddpm_from_scheduler_config(config)
    theirs = diffusers.DDPMScheduler(**config).alphas_cumprod.double()
    assert isinstance(path, DDPMZeroTerminalSNR)
    torch.testing.assert_close(path.alphas_cumprod[:-1], theirs[:-1], rtol=1e-5, atol=1e-7)
    assert float(theirs[-1]) == 0 and float(path.alphas_cumprod[-1]) > 0  # ours stays finite in sigma


def test_from_alphas_cumprod_keeps_the_table():
    table = diffusers.DDPMScheduler().alphas_cumprod
    path = DDPMDiscrete.from_alphas_cumprod(table)
    assert torch.equal(path.alphas_cumprod, table.double()) and path.T == 1000
    torch.testing.assert_close(torch.cumprod(1 - path.betas, 0), path.alphas_cumprod, rtol=1e-12, atol=0)
    assert "alphas_cumprod" in repr(path)
    lo, hi = sampling_range(path)
    assert GRIDS["trailing"](10, path=path)[0] == hi == pytest.approx(float(torch.exp(path.log_sigmas[-1])))


@pytest.mark.parametrize("table,words", [
    ([0.9], "at least 2"),
    ([[0.9, 0.8]], "1-D"),
    ([0.9, 1.2], "(0, 1)"),
    ([0.9, 0.0], "(0, 1)"),
    ([0.9, float("nan")], "(0, 1)"),
    ([0.8, 0.9], "strictly decrease"),
])
def test_bad_tables_are_user_errors(table, words):
    with pytest.raises(UserError) as err:
        DDPMDiscrete.from_alphas_cumprod(torch.tensor(table, dtype=torch.float64))
    assert words in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("config,words", [
    ({"beta_schedule": "sigmoid"}, "'sigmoid' is not supported"),
    ({"num_train_timesteps": "1000"}, "num_train_timesteps"),
    ({"beta_start": None}, "beta_start"),
    ({"trained_betas": [0.1, 1.5]}, "(0, 1)"),
])
def test_bad_configs_are_user_errors(config, words, tmp_path):
    with pytest.raises(UserError) as err:
        ddpm_from_scheduler_config(config)
    assert words in str(err.value) and "\n" not in str(err.value)
    broken = tmp_path / "scheduler_config.json"
    broken.write_text("{not json")
    with pytest.raises(UserError, match="the scheduler config .*scheduler_config.json: not valid JSON"):
        ddpm_from_scheduler_config(broken)
    with pytest.raises(UserError, match="the scheduler config .*missing.json: No such file"):
        ddpm_from_scheduler_config(tmp_path / "missing.json")
    broken.write_text("[0.1, 0.2]")  # was an AttributeError ('list' object has no attribute 'items')
    with pytest.raises(UserError, match="scheduler_config.json: expected a JSON object, found array"):
        ddpm_from_scheduler_config(broken)


@pytest.mark.parametrize("name", sorted(PATHS))
def test_alpha_from_sigma_is_alpha_at_the_time_of_sigma(name):
    path = PATHS[name]()
    t = torch.linspace(max(path.t_min, 1e-3), min(path.t_max, 0.999), 50, dtype=torch.float64)
    torch.testing.assert_close(path.alpha_from_sigma(path.sigma(t)), path.alpha_t(t), rtol=1e-10, atol=1e-12)
