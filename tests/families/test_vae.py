"""VAE oracles in float64. A linear-Gaussian model has a known marginal and a known exact posterior:
with the exact posterior as encoder every importance weight equals p(x); with a wrong one the ELBO is
log p(x) - KL(q || posterior) and the IWAE bound climbs with k and stays below log p(x). A categorical
latent model small enough to enumerate gives the same oracles for the Gumbel-softmax VAE. The
Gumbel-softmax sample is checked against its exact distributions (chi-square, Kolmogorov-Smirnov)."""

import math

import pytest
import torch
from scipy.stats import chisquare, kstest
from torch import nn

from diffspace.data.quantized import BINARY, Grid
from diffspace.families.vae import (
    GaussianObservation,
    GaussianVAE,
    GridObservation,
    GumbelSoftmaxVAE,
    annealed_temperature,
    gumbel_softmax,
    importance_weighted_bound,
    vae_bound,
    vae_loss,
)
from diffspace.rng import Streams, gumbel
from diffspace.types import UserError

D, DZ, S = 4, 2, 0.5
F64 = torch.float64


def _linear_gaussian(mean_factor: float = 1.0, var_factor: float = 1.0):
    """p(z) = N(0, I), p(x | z) = N(W z + b, S^2 I) with W = U diag(d), U orthonormal columns, so the
    posterior N(var W^T (x - b) / S^2, var) has the diagonal var = 1 / (1 + d^2 / S^2). The encoder
    returns that posterior with its mean scaled by mean_factor and its variance by var_factor."""
    g = torch.Generator().manual_seed(0)
    U = torch.linalg.qr(torch.randn(D, DZ, generator=g, dtype=F64))[0]
    d = torch.tensor([1.5, 0.7], dtype=F64)
    W, b = U * d, torch.randn(D, generator=g, dtype=F64)
    var = 1 / (1 + d**2 / S**2)
    enc, dec = nn.Linear(D, 2 * DZ).double(), nn.Linear(DZ, D).double()
    A = mean_factor * var[:, None] * W.T / S**2
    with torch.no_grad():
        enc.weight.copy_(torch.cat([A, torch.zeros(DZ, D, dtype=F64)]))
        enc.bias.copy_(torch.cat([-A @ b, torch.log(var_factor * var)]))
        dec.weight.copy_(W)
        dec.bias.copy_(b)
    obs = GaussianObservation((D,)).double()
    with torch.no_grad():
        obs.log_std.fill_(math.log(S))
    model = GaussianVAE(enc, dec, obs, DZ)
    marginal = torch.distributions.MultivariateNormal(b, W @ W.T + S**2 * torch.eye(D, dtype=F64))

    def kl_to_posterior(x):
        m_p = var * ((x - b) @ W) / S**2
        v_q, m_q = var_factor * var, mean_factor * m_p
        return 0.5 * (v_q / var + (m_p - m_q) ** 2 / var - 1 + torch.log(var / v_q)).sum(1)

    return model, marginal, kl_to_posterior


def test_exact_posterior_makes_every_weight_equal_p_x():
    model, marginal, _ = _linear_gaussian()
    torch.manual_seed(1)
    x = marginal.sample((50,))
    with torch.no_grad():
        log_w = model.log_weights(x, torch.randn(50, 7, DZ, dtype=F64))
    assert (log_w - marginal.log_prob(x)[:, None]).abs().max() < 1e-10
    assert importance_weighted_bound(log_w).stderr.abs().max() < 1e-7


def test_elbo_is_log_p_minus_kl_to_the_posterior():
    """The training ELBO (closed-form KL, one reparameterized sample) averages to log p(x) - KL(q || p)."""
    model, marginal, kl = _linear_gaussian(mean_factor=0.6, var_factor=2.5)
    torch.manual_seed(2)
    x = marginal.sample((40,))
    xr = x.repeat_interleave(2000, 0)
    with torch.no_grad():
        elbo = (-vae_loss(model, {"x": xr, "eps": torch.randn(len(xr), DZ, dtype=F64)})).view(40, 2000)
    expected = marginal.log_prob(x) - kl(x)
    z = (elbo.mean(1) - expected) / (elbo.std(1) / math.sqrt(2000))
    assert z.abs().max() < 4.5, z
    assert (kl(x) > 0.05).all()  # the posterior really is wrong


def test_iwae_bound_climbs_with_k_and_stays_below_log_p():
    model, marginal, kl = _linear_gaussian(mean_factor=0.6, var_factor=2.5)
    torch.manual_seed(3)
    n, reps = 64, 200
    x = marginal.sample((n,))
    log_p = marginal.log_prob(x)
    gaps = {}
    for k in (1, 4, 16, 64):
        xr = x.repeat_interleave(reps, 0)
        b = vae_bound(model, xr, k, torch.Generator().manual_seed(k))
        gaps[k] = (b.value.view(n, reps) - log_p[:, None]).mean(1)  # (n,) estimate of L_k - log p(x)
    # the delta-method standard error of one estimate matches the spread over replicates once k is large
    spread = float(b.value.view(n, reps).std(1).mean())
    assert abs(float(b.stderr.mean()) / spread - 1) < 0.15
    assert torch.allclose(gaps[1].mean(), -kl(x).mean(), atol=4 * float(gaps[1].std()) / math.sqrt(n))
    ks = sorted(gaps)
    for lo, hi in zip(ks[:-1], ks[1:], strict=True):
        diff = gaps[hi] - gaps[lo]
        assert diff.mean() > 4 * diff.std() / math.sqrt(n), (lo, hi, float(diff.mean()))
    top = gaps[ks[-1]]
    assert top.mean() < -4 * top.std() / math.sqrt(n)  # still below log p(x)
    assert float(top.mean()) > 0.1 * float(gaps[1].mean())  # and most of the gap is closed


def _categorical_model(straight_through: bool):
    """N = 2 latents of K = 3 classes (9 codes), binary data of dimension 5, random linear maps."""
    torch.manual_seed(4)
    enc, dec = nn.Linear(5, 6).double(), nn.Linear(6, 10).double()
    with torch.no_grad():
        for p in (*enc.parameters(), *dec.parameters()):
            p.mul_(3)
    return GumbelSoftmaxVAE(enc, dec, GridObservation((5,), BINARY), 2, 3, straight_through)


def _enumerate(model: GumbelSoftmaxVAE, x):
    """Exact log p(x) and ELBO by summing over the 9 codes."""
    codes = torch.cartesian_prod(torch.arange(3), torch.arange(3))  # (9, 2)
    z = nn.functional.one_hot(codes, 3).double().flatten(1)  # (9, 6)
    with torch.no_grad():
        log_px = torch.stack([model.observation.log_prob(model.decoder(z[j].expand(len(x), -1)), x)
                              for j in range(9)], 1)  # (B, 9)
        log_q_all = torch.log_softmax(model.encoder(x).view(-1, 2, 3), -1)
        log_q = log_q_all[:, 0, codes[:, 0]] + log_q_all[:, 1, codes[:, 1]]  # (B, 9)
    joint = log_px - 2 * math.log(3)
    return torch.logsumexp(joint, 1), (log_q.exp() * (joint - log_q)).sum(1)


@pytest.mark.parametrize("straight_through", [False, True])
def test_categorical_latents_match_enumeration(straight_through):
    model = _categorical_model(straight_through)
    x = torch.where(torch.rand(6, 5, generator=torch.Generator().manual_seed(5)) > 0.5, 1.0, -1.0).double()
    log_p, elbo = _enumerate(model, x)
    n = 20_000
    with torch.no_grad():
        log_w = model.log_weights(x, gumbel((6, n, 2, 3), torch.Generator().manual_seed(6)))
    mc, se = log_w.mean(1), log_w.std(1) / math.sqrt(n)
    assert ((mc - elbo) / se).abs().max() < 4.5
    assert (elbo < log_p - 0.01).all()
    iw = importance_weighted_bound(log_w)  # k = 20000 on 9 codes: the bound is log p(x) up to its s.e.
    assert ((iw.value - log_p).abs() < 4 * iw.stderr + 1e-12).all()
    if straight_through:  # hard codes forward, closed-form KL: the training objective averages to the ELBO
        xr = x.repeat_interleave(n, 0)
        with torch.no_grad():
            obj = model(xr, gumbel((6 * n, 2, 3), torch.Generator().manual_seed(7)), 0.3).view(6, n)
        assert (((obj.mean(1) - elbo) / (obj.std(1) / math.sqrt(n))).abs() < 4.5).all()


def test_gumbel_softmax_at_low_temperature_is_categorical():
    """The soft samples' class totals pass a chi-square test against Cat(p) at tau = 0.01, and the
    samples approach one-hot vectors linearly in tau."""
    p = torch.tensor([0.4, 0.25, 0.2, 0.1, 0.05], dtype=F64)
    n = 40_000
    g = gumbel((n, 5), torch.Generator().manual_seed(8))
    assert g.dtype == F64
    y = {tau: gumbel_softmax(p.log().expand(n, 5), g, tau) for tau in (1.0, 0.1, 0.01)}
    assert chisquare(y[0.01].sum(0).numpy(), (n * p).numpy()).pvalue > 1e-3
    dist = {tau: float((1 - v.max(1).values).mean()) for tau, v in y.items()}  # E ||y - one_hot||_1 / 2
    assert dist[1.0] / dist[0.1] > 5 and dist[0.1] / dist[0.01] > 5, dist


@pytest.mark.parametrize("tau", [0.5, 2.0])
def test_binary_concrete_distribution(tau):
    """[CONCRETE] Sec. 3.3: with two classes y_1 = sigmoid((l_1 - l_0 + L) / tau), L logistic, so
    P(y_1 <= t) = sigmoid(tau logit(t) - (l_1 - l_0)) at every temperature."""
    logits = torch.tensor([0.3, -0.9], dtype=F64)
    y1 = gumbel_softmax(logits.expand(20_000, 2), gumbel((20_000, 2), Streams(9, 20_000)), tau)[:, 1]
    delta = float(logits[1] - logits[0])
    cdf = lambda t: torch.sigmoid(tau * torch.logit(torch.as_tensor(t, dtype=F64)) - delta).numpy()
    assert kstest(y1.numpy(), cdf).pvalue > 1e-3


def test_gumbel_noise_is_standard_gumbel():
    g = gumbel((50_000,), torch.Generator().manual_seed(10))
    assert kstest(g.numpy(), lambda t: torch.exp(-torch.exp(-torch.as_tensor(t))).numpy()).pvalue > 1e-3


def test_annealed_temperature_schedule():
    assert annealed_temperature(0) == 1.0 and annealed_temperature(499) == 1.0
    assert annealed_temperature(500) == pytest.approx(math.exp(-0.05))
    assert annealed_temperature(10**6) == 0.5


def test_bad_grid_is_refused():
    with pytest.raises(UserError):
        GridObservation((4,), Grid(1))
