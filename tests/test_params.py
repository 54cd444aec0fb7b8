"""Conversions through the (x0, eps) hub, EDM preconditioning, and contract adapters (float64)."""

import pytest
import torch

from diffspace.param import PREDICTIONS, EDMPrecond, NetDenoiser, VelocityFromDenoiser, target, x0_eps
from diffspace.param.wrappers import DenoiserFromVelocity
from diffspace.paths import PATHS, Coeffs
from diffspace.utils import bcast


def _setup(name, seed=0):
    path = PATHS[name]()
    g = torch.Generator().manual_seed(seed)
    t = path.t_min + (min(path.t_max, 0.99) - path.t_min) * torch.rand(32, generator=g, dtype=torch.float64)
    x0 = torch.randn(32, 3, generator=g, dtype=torch.float64)
    eps = torch.randn(32, 3, generator=g, dtype=torch.float64)
    c = Coeffs(*(bcast(v, x0) for v in path.coeffs(t)))
    return path, t, x0, eps, c


@pytest.mark.parametrize("name", sorted(PATHS))
@pytest.mark.parametrize("prediction", sorted(PREDICTIONS))
def test_every_conversion_round_trips_on_every_path(name, prediction):
    path, t, x0, eps, c = _setup(name)
    x_t = c.alpha_t * x0 + c.sigma_t * eps
    pred = target(prediction, x0, eps, c)
    x0_back, eps_back = x0_eps(prediction, x_t, pred, c)
    torch.testing.assert_close(x0_back, x0, rtol=1e-7, atol=1e-7)
    torch.testing.assert_close(eps_back, eps, rtol=1e-7, atol=1e-7)


def test_eps_loss_is_snr_times_x0_loss():
    path, t, x0, eps, c = _setup("vp")
    x_t = c.alpha_t * x0 + c.sigma_t * eps
    x0_hat = x0 + 0.1 * torch.randn_like(x0)
    eps_hat = (x_t - c.alpha_t * x0_hat) / c.sigma_t
    lhs = ((eps_hat - eps) ** 2).sum(1)
    rhs = (c.alpha_t / c.sigma_t)[:, 0] ** 2 * ((x0_hat - x0) ** 2).sum(1)
    torch.testing.assert_close(lhs, rhs)


@pytest.mark.parametrize("sigma", [0.01, 1.0, 80.0])
def test_edm_preconditioning_gives_unit_variance_input_and_target(sigma):
    """[EDM] Table 1: Var(c_in (y + n)) = 1 and Var(F target) = 1 for data of std sigma_data."""
    sd = 0.5
    captured = {}

    class Probe(torch.nn.Module):
        def forward(self, x, noise_cond):
            captured["in"] = x
            return torch.zeros_like(x)

    pre = EDMPrecond(Probe(), sd).double()
    g = torch.Generator().manual_seed(0)
    y = sd * torch.randn(200_000, 1, generator=g, dtype=torch.float64)
    n = sigma * torch.randn(200_000, 1, generator=g, dtype=torch.float64)
    s = torch.full((200_000,), sigma, dtype=torch.float64)
    d0 = pre(y + n, s)  # with F = 0, D = c_skip x
    c_skip = sd**2 / (sigma**2 + sd**2)
    c_out = sigma * sd / (sigma**2 + sd**2) ** 0.5
    f_target = (y - c_skip * (y + n)) / c_out
    assert float(captured["in"].std()) == pytest.approx(1.0, abs=0.01)
    assert float(f_target.std()) == pytest.approx(1.0, abs=0.01)
    torch.testing.assert_close(d0, c_skip * (y + n))


class Affine(torch.nn.Module):
    """A deterministic 'network' so adapters can be compared exactly."""

    def forward(self, x, noise_cond):
        return torch.tanh(x) * (1 + noise_cond[:, None] / 1000)


@pytest.mark.parametrize("name", ["vp", "cosine", "linear", "ve", "ddpm"])
def test_velocity_and_denoiser_adapters_invert_each_other(name):
    path = PATHS[name]()
    net = Affine()
    den = NetDenoiser(net, path, "v")
    u = VelocityFromDenoiser(den, path)
    back = DenoiserFromVelocity(u, path)
    _, t, x0, _, c = _setup(name, 1)
    sigma = path.sigma(t)
    x = torch.randn_like(x0)
    torch.testing.assert_close(back(x, sigma), den(x, sigma), rtol=1e-7, atol=1e-7)


def test_net_denoiser_feeds_path_scaled_input_and_noise_cond():
    path = PATHS["vp"]()
    seen = {}

    class Probe(torch.nn.Module):
        def forward(self, x_t, noise_cond):
            seen["x_t"], seen["cond"] = x_t, noise_cond
            return torch.zeros_like(x_t)

    den = NetDenoiser(Probe(), path, "eps")
    t = torch.tensor([0.3, 0.7], dtype=torch.float64)
    x = torch.randn(2, 4, dtype=torch.float64)
    x0 = den(x, path.sigma(t))
    torch.testing.assert_close(seen["x_t"], x * path.alpha_t(t)[:, None])
    torch.testing.assert_close(seen["cond"], 1000 * t)
    torch.testing.assert_close(x0, x)  # eps_hat = 0 -> x0 = x_t / alpha = x
