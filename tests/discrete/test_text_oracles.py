"""Oracle tests of the discrete maths: on i.i.d. tokens with a known distribution p the exact
posterior is known, so the NELBO must equal L * H(p) and the samplers must reproduce p."""

import math

import pytest
import torch
from scipy.stats import chisquare
from torch import nn

from diffspace.discrete import sedd
from diffspace.discrete.masked import draw_noise, mask_tokens, masked_denoiser, mdlm_loss
from diffspace.discrete.sampling import (
    Sampling,
    gumbel_argmax,
    low_confidence,
    random_confidence,
    sample_categorical,
    sample_mdlm,
    sample_remasking,
)
from diffspace.discrete.schedules import SCHEDULES, make_schedule

V = 6  # data tokens; id V is the mask
MASK = V


P = torch.tensor([0.35, 0.25, 0.15, 0.12, 0.08, 0.05], dtype=torch.float64)
H = float(-(P * P.log()).sum())


class IIDOracle(nn.Module):
    """Exact for i.i.d. tokens: log p for the absorbing/masked denoisers; with `uniform` the exact
    log-ratios log p_t(y) - log p_t(x) of the uniform process, p_t = alpha_t p + (1 - alpha_t)/V."""

    def __init__(self, schedule=None):
        super().__init__()
        self.schedule = schedule

    def forward(self, x, noise_cond=None, **kw):
        logp = torch.cat([P.log(), torch.zeros(1, dtype=torch.float64)])
        if self.schedule is None:
            return logp.expand(*x.shape, V + 1).clone()
        a = self.schedule.alpha(noise_cond.double() / 1000).view(-1, 1, 1)
        log_pt = (a * P + (1 - a) / V).log().expand(*x.shape, V)
        return log_pt - log_pt.gather(-1, x[..., None])


def _data(n, L, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.multinomial(P, n * L, replacement=True, generator=g).view(n, L), g


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_masking_frequency_is_one_minus_alpha(name):
    sch = make_schedule(name)
    x0, g = _data(400, 250, 1)
    t = torch.linspace(0.05, 0.95, 400, dtype=torch.float64)
    u = torch.rand(x0.shape, generator=g, dtype=torch.float64)
    frac = (mask_tokens(x0, sch.alpha(t), MASK, u) == MASK).double().mean(1)  # 250 tokens per t
    expect = 1 - sch.alpha(t)
    sd = (expect * (1 - expect) / 250).sqrt()
    z = (frac - expect) / sd
    assert z.abs().max() < 4.5 and abs(z.mean()) < 4 / math.sqrt(400)


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_mdlm_nelbo_of_exact_posterior_is_entropy(name):
    L = 32
    x0, g = _data(16384, L, 2)
    per_tok = mdlm_loss(IIDOracle(), x0, **draw_noise(*x0.shape, g, t_min=1e-4), schedule=make_schedule(name),
                        mask_id=MASK)
    nelbo = L * per_tok.mean().item()
    assert abs(nelbo / (L * H) - 1) < 0.03, (nelbo, L * H)


def test_sedd_absorb_nelbo_of_exact_scores_is_entropy():
    L = 32
    x0, g = _data(16384, L, 3)
    nelbo = L * sedd.sedd_absorb_loss(IIDOracle(), x0, **draw_noise(*x0.shape, g, t_min=1e-4),
                                      schedule=make_schedule("loglinear"), mask_id=MASK,
                                      time_cond=False).mean().item()
    assert abs(nelbo / (L * H) - 1) < 0.03, (nelbo, L * H)


def test_sedd_uniform_nelbo_of_exact_scores_is_entropy():
    L = 32
    sch = make_schedule("loglinear")
    x0, g = _data(65536, L, 4)  # this estimator has ~4x the variance of MDLM
    y = torch.randint(V, x0.shape, generator=g)
    nelbo = L * sedd.sedd_uniform_loss(IIDOracle(sch), x0, **draw_noise(*x0.shape, g, t_min=1e-4), y=y,
                                       schedule=sch, n_tokens=V).mean().item()
    # the prior term KL(q_1 || uniform) is O(eps^2) for alpha_1 = eps = 1e-3, hence left out
    assert abs(nelbo / (L * H) - 1) < 0.03, (nelbo, L * H)


def _chi2_matches_p(tokens):
    assert (tokens < V).all()
    counts = torch.bincount(tokens.flatten(), minlength=V).double()
    return chisquare(counts.numpy(), (P * counts.sum()).numpy()).pvalue


@pytest.mark.parametrize("steps", [1, 8])
def test_mdlm_ancestral_with_oracle_reproduces_p(steps):
    g = torch.Generator().manual_seed(5)
    x = torch.full((1000, 16), MASK)
    den = masked_denoiser(IIDOracle(), MASK, time_cond=False)
    out = sample_mdlm(lambda x_t, t, rows: den(x_t, t), x, make_schedule("cosine"), steps, MASK, g)
    assert _chi2_matches_p(out.tokens) > 1e-3
    assert out.nfe <= steps  # the no-change cache may skip calls, never adds


def test_mdlm_per_sequence_cache_gives_the_same_tokens_with_fewer_evaluations():
    """A sequence that did not change is not evaluated again; the draws are unchanged. With 64 steps
    for 8 tokens most steps change nothing in a given sequence: at most 8 + 1 evaluations each."""
    den = masked_denoiser(IIDOracle(), MASK, time_cond=False)
    seen = []

    def counting(x_t, t, rows):
        seen.append(rows.clone())
        return den(x_t, t)

    x, sch = torch.full((200, 8), MASK), make_schedule("loglinear")
    on = sample_mdlm(counting, x, sch, 64, MASK, torch.Generator().manual_seed(3), cache=True)
    per_seq = torch.bincount(torch.cat(seen), minlength=len(x))
    off = sample_mdlm(counting, x, sch, 64, MASK, torch.Generator().manual_seed(3), cache=False)
    assert torch.equal(on.tokens, off.tokens)
    assert off.nfe == 64 and on.nfe == per_seq.double().mean().item()
    assert int(per_seq.max()) <= 8 + 1 and on.nfe < 64 / 4


def test_random_remasking_with_oracle_reproduces_p_and_low_confidence_is_biased():
    den = masked_denoiser(IIDOracle(), MASK, time_cond=False)
    x = torch.full((1000, 16), MASK)
    rnd = sample_remasking(den, x, 8, MASK, torch.Generator().manual_seed(6), block=4,
                           confidence=random_confidence)
    assert _chi2_matches_p(rnd.tokens) > 1e-3
    low = sample_remasking(den, x, 8, MASK, torch.Generator().manual_seed(6), confidence=low_confidence)
    # keeping the most probable draws first over-represents the mode: a real property, not a bug
    mode = int(P.argmax())
    assert (low.tokens == mode).double().mean() > P[mode] + 0.05


@pytest.mark.parametrize("kind", ["absorb_euler", "absorb_tweedie", "uniform_tweedie"])
def test_sedd_samplers_with_oracle_reproduce_p(kind):
    sch = make_schedule("loglinear")
    g = torch.Generator().manual_seed(7)
    if kind.startswith("absorb"):
        net, x = IIDOracle(), torch.full((1000, 16), MASK)
        step = getattr(sedd, kind)
        bind = lambda f: lambda r, x, a, b: f(r, x, a, b, MASK)
        out = sedd.sample_sedd(net, x, sch, 8, bind(step), g, bind(sedd.absorb_tweedie), time_cond=False)
    else:
        net, x = IIDOracle(sch), torch.randint(V, (1000, 16), generator=g)
        out = sedd.sample_sedd(net, x, sch, 8, sedd.uniform_tweedie, g, sedd.uniform_tweedie, n_tokens=V)
    assert _chi2_matches_p(out.tokens) > 1e-3


def test_float64_gumbel_matches_categorical_at_a_million_draws():
    g = torch.Generator().manual_seed(8)
    p = torch.tensor([0.5, 0.2, 0.15, 0.1, 0.04, 0.009, 0.0009, 0.0001], dtype=torch.float64)
    draws = gumbel_argmax(p.log().expand(1_000_000, -1), g)
    counts = torch.bincount(draws, minlength=len(p)).double()
    assert chisquare(counts.numpy(), (p * 1e6).numpy()).pvalue > 1e-3


def test_top_k_top_p_and_temperature_draw_the_renormalized_distribution():
    g = torch.Generator().manual_seed(9)
    logits = P.log().expand(200_000, -1)
    k2 = sample_categorical(logits, g, Sampling(top_k=2))
    assert set(k2.unique().tolist()) == {0, 1}
    assert _chi2_on(k2, P[:2] / P[:2].sum()) > 1e-3
    p6 = sample_categorical(logits, g, Sampling(top_p=0.55))  # 0.35 + 0.25 crosses 0.55: keeps two
    assert set(p6.unique().tolist()) == {0, 1}
    hot = sample_categorical(logits, g, Sampling(temperature=0.5))  # p^2, renormalized
    assert _chi2_on(hot, P**2 / (P**2).sum()) > 1e-3


def _chi2_on(tokens, q):
    counts = torch.bincount(tokens, minlength=len(q)).double()[: len(q)]
    return chisquare(counts.numpy(), (q * counts.sum()).numpy()).pvalue
