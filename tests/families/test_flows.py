"""Normalizing flows against their own definition, in float64 with random (non-identity) weights: the
inverse inverts (to 1e-10), the log-determinant is log|det| of the autograd Jacobian, the density
integrates to 1, and sampling with temperature T is the inverse of T z.

In float32 the round trip of these heavily perturbed flows is about 1e-5 (1.1e-5 measured on the image
Glow, each of its layers exact to one ulp); that is rounding, so the identities are tested in float64."""

import math

import pytest
import torch

from diffspace.families.flows import ActNorm, Flow, InvertibleLinear, flow_loss, glow, nice, realnvp
from diffspace.rng import Streams
from diffspace.types import UserError

FLOWS = {
    "nice-2": lambda: nice((2,), couplings=4, hidden=16, depth=2),
    "nice-5": lambda: nice((5,), couplings=4, hidden=16, depth=2),
    "nice-img": lambda: nice((1, 4, 4), couplings=2, hidden=16, depth=1),
    "realnvp-2": lambda: realnvp((2,), couplings=4, hidden=16),
    "realnvp-5": lambda: realnvp((5,), couplings=4, hidden=16),
    "realnvp-img": lambda: realnvp((1, 4, 4), hidden=8, levels=2),
    "realnvp-img-2ch": lambda: realnvp((2, 4, 4), hidden=8, levels=1),
    "glow-2": lambda: glow((2,), steps=3, hidden=16),
    "glow-3": lambda: glow((3,), steps=3, hidden=16),
    "glow-img": lambda: glow((1, 4, 4), steps=2, hidden=8, levels=2),
}


def _random_flow(name: str) -> Flow:
    """A float64 flow with ActNorm initialized on data and every weight moved off its (identity) init."""
    torch.manual_seed(0)
    with torch.device("cpu"):
        torch.set_default_dtype(torch.float64)
        try:
            flow = FLOWS[name]()
        finally:
            torch.set_default_dtype(torch.float32)
    flow.initialize(1.5 * torch.randn(64, *flow.shape, dtype=torch.float64) + 0.3)
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return flow


@pytest.mark.parametrize("name", list(FLOWS))
def test_inverse_and_log_det_match_autograd(name):
    flow = _random_flow(name)
    x = torch.randn(6, *flow.shape, dtype=torch.float64)
    with torch.no_grad():
        z, logdet = flow(x)
        assert (flow.inverse(z) - x).abs().max() < 1e-10
        assert (flow(flow.inverse(z))[0] - z).abs().max() < 1e-10
    assert z.shape == (6, math.prod(flow.shape)) and z.dtype == torch.float64
    for i in range(3):
        jac = torch.autograd.functional.jacobian(lambda xi: flow(xi[None])[0][0], x[i])
        _, logabsdet = torch.linalg.slogdet(jac.reshape(z.shape[1], -1))
        assert abs(float(logabsdet - logdet[i])) < 1e-9, (name, float(logabsdet), float(logdet[i]))


@pytest.mark.parametrize("name", ["nice-2", "realnvp-2", "glow-2"])
def test_density_integrates_to_one(name):
    """Midpoint rule on [-16, 16]^2 (the tails beyond hold < 1e-5 of the mass for these flows)."""
    flow = _random_flow(name)
    n, lim = 800, 16.0
    h = 2 * lim / n
    c = -lim + h * (torch.arange(n, dtype=torch.float64) + 0.5)
    grid = torch.stack(torch.meshgrid(c, c, indexing="ij"), -1).reshape(-1, 2)
    with torch.no_grad():
        p = torch.cat([flow.log_prob(g).exp() for g in grid.split(40_000)]).reshape(n, n)
    assert abs(float(p.sum()) * h * h - 1) < 1e-4


def test_flow_loss_is_negative_log_prob():
    flow = _random_flow("glow-img")
    x = torch.randn(5, *flow.shape, dtype=torch.float64)
    assert torch.allclose(flow_loss(flow, {"x": x}), -flow.log_prob(x), rtol=0, atol=1e-12)


def test_sampling_with_temperature_inverts_scaled_noise():
    """x = f^-1(T z) with z from per-example streams: f(x) recovers T z, and sample i depends only on i."""
    flow = _random_flow("realnvp-img")
    T = 0.7
    x = flow.sample(8, Streams(5, 8), temperature=T)
    z = T * Streams(5, 8).randn((8, 16), dtype=torch.float64)
    assert (flow(x)[0] - z).abs().max() < 1e-10
    assert torch.equal(flow.sample(3, Streams(5, 3, offset=5), temperature=T), x[5:])


def test_actnorm_data_init_standardizes_each_channel():
    norm = ActNorm(3).double()
    x = torch.randn(50, 3, 4, 4, dtype=torch.float64) * torch.tensor([0.1, 2.0, 5.0]).view(1, 3, 1, 1) + 3.0
    y, logdet = norm(x)
    assert torch.allclose(y.mean((0, 2, 3)), torch.zeros(3, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(y.std((0, 2, 3), correction=0), torch.ones(3, dtype=torch.float64), atol=1e-5)
    assert float(norm.initialized) == 1.0
    with torch.no_grad():
        y2, _ = norm(2 * x)  # initialized once: a second batch does not re-initialize
        assert torch.allclose(y2, 2 * y - norm.bias.view(1, 3, 1, 1) * norm.log_scale.exp().view(1, 3, 1, 1))
    expected = -16 * torch.log(x.std((0, 2, 3), correction=0) + 1e-6).sum()
    assert torch.allclose(logdet, expected.expand(50))


def test_lu_weight_has_the_stated_log_det():
    torch.manual_seed(3)
    lin = InvertibleLinear(5).double()
    with torch.no_grad():
        for p in lin.parameters():
            p.add_(0.3 * torch.randn_like(p))
    with torch.no_grad():
        sign, logabsdet = torch.linalg.slogdet(lin.weight())
        assert abs(float(logabsdet - lin.log_s.sum())) < 1e-12 and sign != 0


@pytest.mark.parametrize("build", [lambda: realnvp((1,)), lambda: glow((1,)), lambda: nice((1,)),
                                   lambda: realnvp((1, 5, 5)), lambda: glow((1, 2, 2), levels=2),
                                   lambda: realnvp((4, 4))])
def test_non_invertible_configs_are_refused(build):
    with pytest.raises(UserError) as err:
        build()
    assert "\n" not in str(err.value)
