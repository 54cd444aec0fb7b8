"""Property tests of every path in float64: derivatives, logsnr inverse, DDPM table."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from diffspace.paths import PATHS, DDPMDiscrete

ALL = sorted(PATHS)


def _ts(path, n=64):
    lo, hi = max(path.t_min, 1e-3), min(path.t_max, 0.999)
    return torch.linspace(lo, hi, n, dtype=torch.float64)


@pytest.mark.parametrize("name", ALL)
def test_derivatives_equal_autograd(name):
    path = PATHS[name]()
    t = _ts(path)
    if name == "ddpm":  # piecewise: stay off the knots, where the derivative jumps
        t = (torch.arange(5, 995, 7, dtype=torch.float64) + 0.37) / 1000
    t.requires_grad_(True)
    for f, df in ((path.alpha_t, path.d_alpha_t), (path.sigma_t, path.d_sigma_t)):
        (g,) = torch.autograd.grad(f(t).sum() + 0 * t.sum(), t)  # + 0 t: constant alpha has no graph
        torch.testing.assert_close(df(t.detach()), g, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", ALL)
def test_logsnr_is_consistent_and_inverts(name):
    path = PATHS[name]()
    t = _ts(path)
    lam = path.logsnr(t)
    torch.testing.assert_close(lam, 2 * torch.log(path.alpha_t(t) / path.sigma_t(t)), rtol=1e-9, atol=1e-9)
    assert (lam[1:] < lam[:-1]).all(), "logsnr must decrease in t"
    torch.testing.assert_close(path.t_from_logsnr(lam), t, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(path.t_from_sigma(path.sigma(t)), t, rtol=1e-9, atol=1e-10)


@settings(max_examples=200, deadline=None)
@given(name=st.sampled_from(ALL), u=st.floats(0.0, 1.0))
def test_logsnr_inverse_property(name, u):
    path = PATHS[name]()
    t = torch.tensor([path.t_min + u * (min(path.t_max, 0.999) - path.t_min)], dtype=torch.float64)
    assert abs(float(path.t_from_logsnr(path.logsnr(t)) - t)) < 1e-9


def test_known_endpoints():
    t0 = torch.zeros(1, dtype=torch.float64)
    for name in ("vp", "subvp", "linear"):
        assert float(PATHS[name]().alpha_t(t0)) == pytest.approx(1.0)
    lin = PATHS["linear"]()
    t = torch.tensor([0.25], dtype=torch.float64)
    assert float(lin.sigma(t)) == pytest.approx(1 / 3)
    vp = PATHS["vp"]()
    # [SDE] Eq. 33 at t = 1: log alpha = -(20 - 0.1)/4 - 0.1/2
    assert float(torch.log(vp.alpha_t(torch.ones(1, dtype=torch.float64)))) == pytest.approx(-5.025)
    edm = PATHS["edm"]()
    assert edm.sigma_min == pytest.approx(0.002) and edm.sigma_max == pytest.approx(80.0)


def test_ddpm_table_matches_interpolation_at_integer_steps():
    path = DDPMDiscrete()
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    acp = torch.cumprod(1 - betas, 0)
    torch.testing.assert_close(path.alphas_cumprod, acp, rtol=0, atol=0)
    n = torch.arange(1000, dtype=torch.float64)
    t = path.t_from_timestep(n)
    torch.testing.assert_close(path.alpha_t(t) ** 2, acp, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(path.sigma_t(t) ** 2, 1 - acp, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(path.timestep_from_t(t), n, rtol=0, atol=1e-9)
    torch.testing.assert_close(path.noise_cond(t), n, rtol=0, atol=1e-9)


def test_vp_linear_is_the_continuous_limit_of_ddpm():
    """beta_i = beta(t_i) / T: the discrete table approaches VP with beta_min = 0.1, beta_max = 20."""
    ddpm, vp = DDPMDiscrete(), PATHS["vp"]()
    t = torch.linspace(0.05, 1.0, 20, dtype=torch.float64)
    torch.testing.assert_close(ddpm.alpha_t(t), vp.alpha_t(t), rtol=2e-2, atol=1e-4)
