"""Stochastic samplers with the exact denoiser of a 1-D Gaussian mixture reproduce the data
distribution (Kolmogorov-Smirnov against the exact CDF), and the sigma-space identities behind them."""

import math

import pytest
import torch
from scipy import stats

from diffspace.data.gmm import GaussianMixture
from diffspace.paths import DDPMDiscrete
from diffspace.samplers.grids import karras_sigmas, table_sigmas
from diffspace.samplers.registry import SAMPLERS
from diffspace.samplers.sde import ddim_step

# unequal weights, widths and gaps: a wrong noise scale or drift moves mass between the modes
DATA = GaussianMixture(torch.tensor([[-2.0], [0.5], [2.5]]), torch.tensor([0.3, 0.2, 0.5]),
                       torch.tensor([0.3, 0.2, 0.5]))
N = 4000
KS_CRIT = 1.95 / math.sqrt(N)  # one-sample KS at level 0.001


def data_cdf(x):
    m, s, w = (DATA.means[:, 0].numpy(), DATA.stds.numpy(), DATA.weights.numpy())
    return (w * stats.norm.cdf((x[:, None] - m) / s)).sum(1)


def ks(samples: torch.Tensor) -> float:
    return stats.kstest(samples[:, 0].numpy(), data_cdf).statistic


def draw(name, sigmas, denoiser=DATA.denoiser, seed=0, **opts):
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(N, 1, dtype=torch.float64, generator=g)
    return SAMPLERS[name].fn(denoiser, noise * sigmas[0], sigmas, generator=g, **opts)


STOCHASTIC = ["ddpm", "euler_ancestral", "euler_maruyama", "edm_sde", "dpmpp_2m_sde", "pc"]


@pytest.mark.parametrize("name", STOCHASTIC)
def test_stochastic_sampler_reproduces_the_data(name):
    assert SAMPLERS[name].stochastic
    x = draw(name, karras_sigmas(256, 0.002, 80.0))
    assert ks(x) < KS_CRIT, (name, ks(x))


def test_ddim_with_eta_reproduces_the_data():
    x = draw("ddim", karras_sigmas(256, 0.002, 80.0), eta=0.5)
    assert ks(x) < KS_CRIT


def test_ddpm_ancestral_on_the_1000_step_table():
    """[DDPM] Alg. 2: every timestep of the discrete table, starting from x_T ~ N(0, I) in VP space
    (x = noise / alpha_T in sigma space)."""
    path = DDPMDiscrete()
    sigmas = table_sigmas(path, torch.arange(path.T - 1, -1, -1))
    g = torch.Generator().manual_seed(1)
    noise = torch.randn(N, 1, dtype=torch.float64, generator=g)
    x = SAMPLERS["ddpm"].fn(DATA.denoiser, noise * math.sqrt(1 + float(sigmas[0]) ** 2), sigmas, generator=g)
    assert ks(x) < KS_CRIT


def test_the_test_has_power():
    """The same check rejects samples of a mixture whose weights are slightly off, and samples from
    too coarse an Euler-Maruyama grid: the thresholds above are not vacuous."""
    other = GaussianMixture(DATA.means, DATA.stds, torch.tensor([0.35, 0.2, 0.45]))
    assert ks(draw("ddpm", karras_sigmas(256, 0.002, 80.0), denoiser=other.denoiser)) > KS_CRIT
    assert ks(draw("euler_maruyama", karras_sigmas(8, 0.002, 80.0))) > KS_CRIT


def test_stochastic_samplers_follow_the_generator():
    sigmas = karras_sigmas(10, 0.002, 80.0)
    for name in STOCHASTIC:
        a, b, c = draw(name, sigmas, seed=3), draw(name, sigmas, seed=3), draw(name, sigmas, seed=4)
        assert torch.equal(a, b) and not torch.equal(a, c), name


def test_ddpm_step_is_the_exact_posterior():
    """With data a point mass at c the denoiser is exact (x0_hat = c), so one ancestral step from x at
    sigma must draw x_next from the true conditional of the forward Brownian motion x = x_next +
    sqrt(sigma^2 - sigma_next^2) z, x_next = c + sigma_next eps: by the joint Gaussian, mean
    c + Cov/Var (x - c) and variance sigma_next^2 - Cov^2 / Var, Cov = sigma_next^2, Var = sigma^2."""
    c, sigma, sigma_next, x_val = 0.3, 1.3, 0.4, 0.9
    point = GaussianMixture(torch.tensor([[c]]), torch.tensor([0.0]))
    x = torch.full((200_000, 1), x_val, dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    y = ddim_step(point.denoiser, x, sigma, sigma_next, eta=1.0, generator=g)[0]
    mean = c + sigma_next**2 / sigma**2 * (x_val - c)
    var = sigma_next**2 - sigma_next**4 / sigma**2
    assert abs(float(y.mean()) - mean) < 4 * math.sqrt(var / len(y))
    assert abs(float(y.var()) / var - 1) < 4 * math.sqrt(2 / len(y))


def test_euler_ancestral_split_is_ddim_eta():
    """k-diffusion's split (sigma_up = eta * posterior std, sigma_down = sqrt(sigma_next^2 - sigma_up^2),
    x + (sigma_down - sigma) d + sigma_up z) is DDIM(eta) written from x instead of x0_hat."""
    x = torch.randn(64, 1, dtype=torch.float64) * 3
    sigma, sigma_next, eta = 2.0, 0.7, 0.6
    g = torch.Generator().manual_seed(5)
    out = ddim_step(DATA.denoiser, x, sigma, sigma_next, eta=eta, generator=g)[0]
    z = torch.randn(x.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    up = eta * math.sqrt(sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2)
    down = math.sqrt(sigma_next**2 - up**2)
    d = (x - DATA.denoiser(x, torch.full((64,), sigma, dtype=torch.float64))) / sigma
    assert torch.allclose(out, x + (down - sigma) * d + up * z, atol=1e-12)
