"""Noise grids: shapes and dtypes, uniform-t spacing, discrete-table spacings, zero terminal SNR, and the
model-optimized grid beating the fixed ones on held-out noise."""

import math

import pytest
import torch

from diffspace.data.gmm import eight_gaussians_mixture
from diffspace.paths import DDPMDiscrete, DDPMZeroTerminalSNR, VPCosine, VPLinear
from diffspace.samplers.grids import GRIDS, table_sigmas, trailing_timesteps
from diffspace.samplers.multistep import sample_dpmpp_2m
from diffspace.samplers.ode import sample_adaptive
from diffspace.samplers.optimize_grid import grid_error, optimize_sigmas
from diffspace.types import UserError


@pytest.mark.parametrize("name", list(GRIDS))
@pytest.mark.parametrize("n", [1, 5, 40])
def test_every_grid_is_float64_descending_and_ends_in_zero(name, n):
    path = DDPMDiscrete()
    sigmas = GRIDS[name](n, path.sigma_min, 80.0, path=path)
    assert sigmas.dtype == torch.float64 and sigmas.shape == (n + 1,)
    assert sigmas[-1] == 0 and (sigmas[:-1] > 0).all()
    assert (sigmas[1:] < sigmas[:-1]).all()


@pytest.mark.parametrize("path", [VPLinear(), VPCosine()])
def test_uniform_t_is_uniform_in_the_paths_time(path):
    sigmas = GRIDS["uniform_t"](9, 0.01, 50.0, path=path)
    t = path.t_from_sigma(sigmas[:-1])
    assert torch.allclose(t.diff(), t.diff()[0].expand(8), atol=1e-9)
    assert torch.allclose(sigmas[[0, -2]], torch.tensor([50.0, 0.01], dtype=torch.float64), rtol=1e-9)


def test_bad_grid_input_is_a_user_error():
    with pytest.raises(UserError, match="ddpm"):
        GRIDS["trailing"](10, 0.01, 80.0, path=VPLinear())
    with pytest.raises(UserError, match="path"):
        GRIDS["uniform_t"](10, 0.01, 80.0)
    with pytest.raises(UserError, match="steps"):
        GRIDS["leading"](1001, path=DDPMDiscrete())
    with pytest.raises(UserError, match="steps"):
        GRIDS["karras"](0)


def test_table_grids_sit_on_the_table():
    path = DDPMDiscrete()
    s = GRIDS["trailing"](4, path=path)
    assert trailing_timesteps(4, path).tolist() == [999, 749, 499, 249]
    abar = path.alphas_cumprod[[999, 749, 499, 249]]
    assert torch.allclose(s[:-1], ((1 - abar) / abar).sqrt(), rtol=1e-12)
    assert GRIDS["leading"](4, path=path)[-2] == path.sigma_min  # leading ends at timestep 0
    assert GRIDS["linspace"](4, path=path)[0] == s[0]  # linspace and trailing both start at T - 1


def test_zero_terminal_snr_rescaling():
    """[ZSNR] Alg. 1: sqrt(alphas_cumprod) is an affine map of the original that keeps the first value
    and sends the last to 0; that last one is replaced by a finite sigma continuing the table."""
    base, zsnr = DDPMDiscrete(), DDPMZeroTerminalSNR()
    old, new = base.alphas_cumprod.sqrt(), zsnr.alphas_cumprod.sqrt()
    assert torch.isclose(new[0], old[0], rtol=1e-12)
    slope = (new[1:-1] - new[0]) / (old[1:-1] - old[0])
    affine_end = new[0] + slope[0] * (old[-1] - old[0])  # where the map sends the last entry
    assert torch.allclose(slope, slope[0].expand_as(slope), rtol=1e-8) and abs(affine_end) < 1e-12
    assert torch.allclose(zsnr.alphas_cumprod, torch.cumprod(1 - zsnr.betas, 0), rtol=1e-10)
    ls = zsnr.log_sigmas
    assert (ls.diff() > 0).all() and math.isclose(ls[-1] - ls[-2], ls[-2] - ls[-3], rel_tol=1e-12)
    sigmas = table_sigmas(zsnr, trailing_timesteps(10, zsnr))
    assert sigmas[0] > 100 * GRIDS["trailing"](10, path=base)[0]


def test_optimized_grid_beats_fixed_grids_on_held_out_noise():
    gmm = eight_gaussians_mixture()
    smin, smax, n = 0.002, 80.0, 5
    noise = torch.randn(768, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * smax
    calib, held = noise[:256], noise[256:]
    sigmas = optimize_sigmas(sample_dpmpp_2m, gmm.denoiser, calib, n, smin, smax, max_evals=400)
    assert sigmas.dtype == torch.float64 and sigmas.shape == (n + 1,)
    assert sigmas[0] == smax and sigmas[-1] == 0 and (sigmas.diff() < 0).all() and sigmas[-2] >= smin
    ref = sample_adaptive(gmm.denoiser, held, smax, smin, rtol=1e-7, atol=1e-7)
    err = lambda s: grid_error(sample_dpmpp_2m, gmm.denoiser, held, s, ref)
    fixed = min(err(GRIDS["karras"](n, smin, smax)), err(GRIDS["logsnr"](n, smin, smax)))
    assert err(sigmas) < 0.8 * fixed, (err(sigmas), fixed)
