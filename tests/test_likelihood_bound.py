"""The DDPM variational bound, bits/dim and dequantization against quantities known exactly."""

import math

import pytest
import torch

from diffspace.data.gmm import GaussianMixture
from diffspace.data.quantized import Grid
from diffspace.eval.bits import bits_per_dim, dequantized_nll, nll_report
from diffspace.losses.vlb import ddpm_bound, discretized_gaussian_log_prob
from diffspace.param import NetDenoiser
from diffspace.paths import EDM, DDPMDiscrete
from diffspace.types import UserError

LEVELS, STD, DIM = 256, 0.3, 2
GRID = Grid(LEVELS)
DELTA = 2 / (LEVELS - 1)  # bin width of the 256-level grid on [-1, 1]



def quantized_gaussian(n: int, seed: int = 0):
    """N(0, STD^2 I) data rounded to the 256-level grid, and each example's exact -log P(bins)."""
    gm = GaussianMixture(torch.zeros(1, DIM), torch.tensor(STD))
    k = ((gm.sample(n, torch.Generator().manual_seed(seed)) + 1) / DELTA).round().clamp(0, LEVELS - 1)
    x0 = k * DELTA - 1
    cdf = torch.distributions.Normal(0.0, STD).cdf
    lo = torch.where(k == 0, -math.inf, x0 - DELTA / 2)
    hi = torch.where(k == LEVELS - 1, math.inf, x0 + DELTA / 2)
    return gm, x0, -torch.log(cdf(hi) - cdf(lo)).sum(1)


def expected_gap_per_dim(path: DDPMDiscrete, variance: str) -> float:
    """E[bound] - h per dimension for continuous N(0, s^2) data and its exact denoiser, in closed form.

    Given x_n, x0 ~ N(x0_hat, v_n) with v_n = s^2 sig_n^2 / (s^2 + sig_n^2), so each KL's expectation
    is the variance mismatch plus c0^2 v_n / (2 var_p). The decoder term is the Gaussian NLL minus
    log(delta) and the data entropy h also carries -log(delta), so delta cancels (bins << s).
    """
    ab, beta = path.alphas_cumprod, path.betas
    ab_prev = torch.cat([torch.ones(1, dtype=ab.dtype), ab[:-1]])
    s2, sig2 = STD**2, (1 - ab) / ab
    v = s2 * sig2 / (s2 + sig2)
    c0 = ab_prev.sqrt() * beta / (1 - ab)
    var_q = (1 - ab_prev) / (1 - ab) * beta
    var_p = var_q if variance == "small" else beta
    r = var_q[1:] / var_p[1:]
    kl = 0.5 * (r - 1 - torch.log(r)) + c0[1:] ** 2 * v[1:] / (2 * var_p[1:])
    dec = 0.5 * math.log(2 * math.pi * beta[0]) + v[0] / (2 * beta[0])
    prior = 0.5 * (ab[-1] * s2 - ab[-1] - torch.log(1 - ab[-1]))
    return float(kl.sum() + dec + prior - 0.5 * math.log(2 * math.pi * math.e * s2))


@pytest.mark.parametrize("variance", ["small", "large"])
def test_bound_with_exact_denoiser_is_above_true_nll_by_the_predicted_gap(variance):
    gm, x0, true_nll = quantized_gaussian(4000)
    path = DDPMDiscrete()
    bound = ddpm_bound(gm.denoiser, x0, path, variance=variance, generator=torch.Generator().manual_seed(1))
    gap = (bound - true_nll) / DIM
    se = gap.std() / math.sqrt(len(gap))
    expected = expected_gap_per_dim(path, variance)  # 0.446 (small), 0.0037 (large) nats/dim
    assert expected >= 0
    assert gap.mean() > -3 * se, "the bound must not fall below the true NLL"
    assert (gap.mean() - expected).abs() < 3 * se, f"gap {gap.mean():.4f} vs {expected:.4f} +- {se:.4f}"


def test_monte_carlo_over_timesteps_agrees_with_full_sum():
    gm, x0, _ = quantized_gaussian(2000, seed=2)
    path = DDPMDiscrete()
    full = ddpm_bound(gm.denoiser, x0, path, generator=torch.Generator().manual_seed(3))
    mc = ddpm_bound(gm.denoiser, x0, path, n_t=4, generator=torch.Generator().manual_seed(4))
    se = math.sqrt(mc.var() / len(mc) + full.var() / len(full))
    assert (mc.mean() - full.mean()).abs() < 3 * se


def test_eps_prediction_network_gives_the_same_bound():
    """An eps network on the DDPM path, wrapped by NetDenoiser, sees integer timesteps n."""
    gm, x0, _ = quantized_gaussian(64, seed=5)
    path = DDPMDiscrete()
    seen = []

    def eps_net(x_t, n):
        seen.append(n)
        abar = path.alphas_cumprod[n.round().long()][:, None]
        x0_hat = gm.denoiser(x_t / abar.sqrt(), ((1 - abar) / abar).sqrt()[:, 0])
        return (x_t - abar.sqrt() * x0_hat) / (1 - abar).sqrt()

    wrapped = NetDenoiser(eps_net, path, "eps")
    a = ddpm_bound(wrapped, x0, path, n_t=3, generator=torch.Generator().manual_seed(6))
    b = ddpm_bound(gm.denoiser, x0, path, n_t=3, generator=torch.Generator().manual_seed(6))
    n = torch.cat(seen)
    assert (n - n.round()).abs().max() < 1e-6 and n.min() >= 0 and n.max() <= path.T - 1
    assert torch.allclose(a, b, rtol=1e-6, atol=1e-6)


def test_discretized_gaussian_is_a_distribution_over_the_grid():
    grid = torch.linspace(-1, 1, LEVELS, dtype=torch.float64)
    for mean, std in [(0.0, 0.3), (0.5, 0.01), (-0.999, 1e-3), (3.0, 0.05), (0.2, 1e-5)]:
        logp = discretized_gaussian_log_prob(grid, torch.tensor(mean, dtype=torch.float64), std)
        assert torch.isfinite(logp).all() or mean == 3.0  # far outside, inner bins underflow to -inf
        assert abs(float(logp.exp().sum()) - 1) < 1e-9, (mean, std)


def test_bound_rejects_data_off_the_grid():
    gm, x0, _ = quantized_gaussian(8)
    with pytest.raises(UserError, match="grid"):
        ddpm_bound(gm.denoiser, GRID.dequantize(x0, torch.Generator()), DDPMDiscrete())
    with pytest.raises(UserError, match="DDPMDiscrete"):
        ddpm_bound(gm.denoiser, x0, "vp")


def test_dequantization_offset_recovers_discrete_entropy_exactly():
    """A density constant on each bin (P(k) / delta) makes Jensen's bound tight: after the offset, the
    dequantized NLL in bits/dim equals -log2 P(x) / D for every example, whatever u was drawn."""
    probs = torch.tensor([0.5, 0.25, 0.125, 0.0625, 0.0625], dtype=torch.float64)  # entropy 1.875 bits
    levels = torch.tensor([0, 1, 7, 128, 255])  # first and last bins sit on the edges of [-1, 1]
    g = torch.Generator().manual_seed(0)
    idx = torch.multinomial(probs, 3000 * DIM, replacement=True, generator=g).reshape(-1, DIM)
    x = levels[idx].double() * DELTA - 1
    density = torch.zeros(LEVELS, dtype=torch.float64).index_put_((levels,), probs / DELTA)
    seen = []

    def density_nll(y):
        seen.append(y)
        return -torch.log(density[((y + 1) / DELTA).round().long()]).sum(1)  # the bin y fell in

    bpd = bits_per_dim(dequantized_nll(density_nll, x, GRID, seed=1), DIM)
    assert ((seen[0] - x).abs() <= DELTA / 2).all() and not torch.equal(seen[0], x)
    assert torch.allclose(bpd, -torch.log2(probs[idx]).sum(1) / DIM, atol=1e-12)
    entropy_bits = float(-(probs * probs.log2()).sum())
    assert abs(float(bpd.mean()) - entropy_bits) < 3 * float(bpd.std()) / math.sqrt(len(bpd))


def test_dequantization_is_uniform_in_each_bin_and_batch_independent():
    """Grid.dequantize fills each value's own bin uniformly (levels 17 on [-1, 1] and 5 on [-2, 3]);
    the evaluation path draws per example, so shards give what one pass gives."""
    for grid in (Grid(17), Grid(5, -2.0, 3.0)):
        k = torch.arange(4000) % grid.levels
        x = grid.value(k, torch.float64)[:, None]
        u = (grid.dequantize(x, torch.Generator().manual_seed(2)) - x) / grid.delta + 0.5
        assert grid.index(grid.dequantize(x, torch.Generator()))[:, 0].equal(k)  # stays in its bin
        assert 0 <= float(u.min()) and float(u.max()) < 1
        assert abs(float(u.mean()) - 0.5) < 3 * math.sqrt(1 / 12 / 4000)
        assert abs(float(u.var()) - 1 / 12) < 0.005
    x = torch.zeros(20, 3, dtype=torch.float64)
    ident = lambda y: y.sum(1)
    split = torch.cat([dequantized_nll(ident, x[:10], GRID, seed=2),
                       dequantized_nll(ident, x[10:], GRID, seed=2, index_offset=10)])
    assert torch.equal(split, dequantized_nll(ident, x, GRID, seed=2))


def test_nll_report_on_continuous_and_8bit_data():
    gm, x0, true_nll = quantized_gaussian(300, seed=7)
    cont = gm.sample(300, torch.Generator().manual_seed(8))
    path = DDPMDiscrete()
    r = nll_report(gm.denoiser, path, cont, rtol=1e-6, atol=1e-6)
    true_cont = -gm.log_prob(cont)
    assert abs(r["nll_nats"] - float(true_cont.mean())) < 0.01  # prior error ~ |x0| / sigma_max, averaged
    assert math.isclose(r["bits_per_dim"], r["nll_nats"] / (DIM * math.log(2)))
    assert r["nfe"] > 0 and "bound_bits_per_dim" not in r
    # 8-bit data: dequantized ODE NLL + offset, and the bound, both bound the same discrete NLL
    q = nll_report(gm.denoiser, path, x0, grid=GRID, rtol=1e-6, atol=1e-6, bound_n_t=20)
    true_bpd = float(true_nll.mean()) / (DIM * math.log(2))
    assert abs(q["bits_per_dim"] - true_bpd) < 3 * q["bits_per_dim_stderr"] + 0.01
    assert q["bound_bits_per_dim"] > true_bpd - 3 * q["bound_bits_per_dim_stderr"]
    assert math.isclose(q["dequantization_offset_bits"], math.log2(1 / DELTA))


def test_nll_report_slices_per_example_conditioning():
    """Two classes with their own means; the report's NLL is the class-conditional Gaussian NLL."""
    means = torch.tensor([[1.0, -1.0], [-2.0, 0.5]], dtype=torch.float64)
    labels = torch.arange(300) % 2
    g = torch.Generator().manual_seed(9)
    x = means[labels] + STD * torch.randn(300, DIM, generator=g, dtype=torch.float64)

    def denoiser(x, sigma, class_labels):
        mu = means[class_labels]
        return mu + STD**2 / (STD**2 + sigma[:, None] ** 2) * (x - mu)

    r = nll_report(denoiser, EDM(sigma_max=1e4), x, cond={"class_labels": labels}, batch_size=64,
                   rtol=1e-6, atol=1e-6)
    true = -torch.distributions.Normal(means[labels], STD).log_prob(x).sum(1)
    assert abs(r["nll_nats"] - float(true.mean())) < 1e-3
