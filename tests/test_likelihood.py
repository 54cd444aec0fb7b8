"""PF-ODE likelihood against exact answers: Gaussian data with its exact denoiser has a known NLL."""

import math

import pytest
import torch

from diffspace.param import EDMPrecond
from diffspace.paths import EDM, VE, LinearFlow, SubVP, VPCosine, VPLinear
from diffspace.samplers.likelihood import (
    exact_divergence,
    hutchinson_divergence,
    log_likelihood,
    make_probes,
    velocity_log_likelihood,
)
from diffspace.types import UserError


class FullGaussian:
    """N(mu, cov) with a non-diagonal cov (so Hutchinson has variance) and its exact denoiser."""

    def __init__(self, dim: int = 3, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        a = torch.randn(dim, dim, generator=g, dtype=torch.float64)
        self.mu = torch.randn(dim, generator=g, dtype=torch.float64)
        self.cov = 0.5 * a @ a.T / dim + 0.1 * torch.eye(dim, dtype=torch.float64)
        self.lam, self.U = torch.linalg.eigh(self.cov)
        self.dist = torch.distributions.MultivariateNormal(self.mu, self.cov)

    def denoiser(self, x, sigma):
        # E[x0 | x0 + sigma eps = x] = mu + cov (cov + sigma^2 I)^-1 (x - mu), in the eigenbasis
        shrink = self.lam / (self.lam + sigma[:, None] ** 2)  # (B, D)
        return self.mu + ((x - self.mu) @ self.U * shrink) @ self.U.T

    def sample(self, n: int, seed: int = 1):
        z = torch.randn(n, len(self.mu), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        return self.mu + (z * self.lam.sqrt()) @ self.U.T


# sigma_max is chosen against the data scale: the N(0, sigma_max^2) prior is off by about
# |x0| / sigma_max nats per example (module docstring), so 1e-3 nats needs sigma_max near 1e4.
PATHS = {
    "vp": VPLinear(beta_max=40.0),  # EDM sigma_max = 2.3e4
    "subvp": SubVP(beta_max=40.0),
    "edm": EDM(sigma_max=1e4),
    "linear": LinearFlow(),  # t_max = 1 - 1e-4: sigma_max = 1e4
    "cosine": VPCosine(sigma_max=1e4),
    "ve": VE(sigma_min=0.002, sigma_max=1e4),
}


@pytest.mark.parametrize("name", list(PATHS))
def test_exact_divergence_nll_equals_gaussian_nll(name):
    data = FullGaussian()
    x = data.sample(32)
    r = log_likelihood(data.denoiser, x, PATHS[name], divergence="exact", rtol=1e-8, atol=1e-8)
    err = (r.nll - (-data.dist.log_prob(x))).abs().max()
    assert err < 1e-3, f"{name}: max |NLL - true| = {err:.2e} nats"
    assert r.nfe > 0


@pytest.mark.parametrize("name,probe", [("vp", "rademacher"), ("linear", "gaussian"), ("edm", "rademacher")])
def test_hutchinson_nll_unbiased_for_gaussian(name, probe):
    data = FullGaussian()
    x = data.sample(200, seed=2)
    r = log_likelihood(data.denoiser, x, PATHS[name], divergence="hutchinson", probe=probe, n_probes=2,
                       seed=3)
    err = r.nll - (-data.dist.log_prob(x))
    se = err.std() / math.sqrt(len(err))
    assert se > 1e-3, "the estimate should be random here (non-diagonal Jacobian)"
    assert err.mean().abs() < 3 * se, f"mean error {err.mean():.4f} vs standard error {se:.4f}"


class TinyNet(torch.nn.Module):
    """An untrained network; under EDMPrecond any such net is a smooth Denoiser with a finite NLL."""

    def __init__(self, dim: int = 4):
        super().__init__()
        torch.manual_seed(0)
        lin = torch.nn.Linear
        self.net = torch.nn.Sequential(lin(dim + 1, 32), torch.nn.Tanh(), lin(32, dim))
        self.double()

    def forward(self, x, noise_cond):  # noise_cond (B,) or (1,): one level for the batch
        return self.net(torch.cat([x, noise_cond.expand(len(x))[:, None] / 1000], 1))


def random_denoiser():
    return EDMPrecond(TinyNet(), sigma_data=1.0)


def test_hutchinson_divergence_unbiased_against_exact():
    model, K = random_denoiser(), 4000
    y0 = torch.randn(3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    sigma = torch.tensor([0.3, 1.0, 3.0], dtype=torch.float64)
    y = y0.repeat(K, 1).requires_grad_()  # K copies of each point: one probe per copy
    f = model(y, sigma.repeat(K))
    exact = exact_divergence(f, y)[:3]
    single = hutchinson_divergence(f, y, make_probes((3 * K, 4), 1, "gaussian", seed=1)).reshape(K, 3)
    se = single.std(0) / math.sqrt(K)
    assert (se > 1e-3).all() and ((single.mean(0) - exact).abs() < 3 * se).all()


def test_hutchinson_nll_unbiased_against_exact_on_network():
    model, path = random_denoiser(), VPCosine()
    x = torch.randn(128, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    exact = log_likelihood(model, x, path, divergence="exact").nll
    hutch = log_likelihood(model, x, path, divergence="hutchinson", seed=5).nll
    diff = hutch - exact
    se = diff.std() / math.sqrt(len(diff))
    assert se > 1e-3 and diff.mean().abs() < 3 * se, f"bias {diff.mean():.4f}, standard error {se:.4f}"


def test_result_does_not_depend_on_batching():
    model, path = random_denoiser(), VPCosine()
    x = torch.randn(6, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    kw = dict(divergence="hutchinson", seed=7, method="rk4", options={"step_size": 0.05})
    whole = log_likelihood(model, x, path, **kw).nll
    parts = torch.cat([log_likelihood(model, x[:2], path, **kw).nll,
                       log_likelihood(model, x[2:], path, index_offset=2, **kw).nll])
    assert torch.allclose(whole, parts, rtol=0, atol=1e-10)
    other_seed = log_likelihood(model, x, path, **{**kw, "seed": 8}).nll
    assert not torch.allclose(whole, other_seed)


def test_velocity_entry_point_matches_flow_of_gaussian():
    """Linear flow of N(mu, cov): the exact velocity u = d_alpha x0_hat + d_sigma eps_hat written out."""
    data, path = FullGaussian(), LinearFlow()
    x = data.sample(16, seed=9)

    def velocity(x_t, t):  # alpha = 1 - t, sigma_t = t: u = (x_t - x0_hat) / t, EDM sigma = t / (1 - t)
        x0_hat = data.denoiser(x_t / (1 - t[:, None]), t / (1 - t))
        return (x_t - x0_hat) / t[:, None]

    r = velocity_log_likelihood(velocity, x, path, divergence="exact", rtol=1e-8, atol=1e-8)
    assert (r.nll + data.dist.log_prob(x)).abs().max() < 1e-3


def test_bad_input_raises_user_error():
    data, path = FullGaussian(), VPCosine()
    x = data.sample(4)
    with pytest.raises(UserError, match="divergence"):
        log_likelihood(data.denoiser, x, path, divergence="trace")
    with pytest.raises(UserError, match="probe"):
        log_likelihood(data.denoiser, x, path, probe="sphere")
    with pytest.raises(UserError, match="shape"):
        log_likelihood(data.denoiser, x[0], path)
    with pytest.raises(UserError, match="Path"):
        log_likelihood(data.denoiser, x, "vp")
