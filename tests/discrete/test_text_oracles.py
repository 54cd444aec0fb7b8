"""Oracle tests of the discrete maths: on i.i.d. tokens with a known distribution p the exact
posterior is known, so the NELBO must equal L * H(p) and the samplers must reproduce p, for every
kind, schedule and sampler the config accepts, from t = 1 where alpha may be 0."""

import math

import pytest
import torch
from scipy.stats import chisquare
from torch import nn

from diffspace.config import build
from diffspace.discrete import sampling, sedd
from diffspace.discrete.attention import time_input
from diffspace.discrete.kinds import KINDS
from diffspace.discrete.masked import bd3_loss, draw_noise, masked_denoiser, mdlm_loss
from diffspace.discrete.processes import Absorbing, Uniform
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
from diffspace.runs.text import TextConfig, generate_tokens
from diffspace.types import UserError

V = 6  # data tokens; id V is the mask
MASK = V


P = torch.tensor([0.35, 0.25, 0.15, 0.12, 0.08, 0.05], dtype=torch.float64)
H = float(-(P * P.log()).sum())


class IIDOracle(nn.Module):
    """Exact for i.i.d. tokens: log p for the absorbing/masked denoisers (and an AR model); with a
    schedule the exact log-ratios log p_t(y) - log p_t(x) of the uniform process, p_t = alpha_t p +
    (1 - alpha_t)/V. Takes a Transformer's arguments; records the times t it is asked at."""

    def __init__(self, schedule=None):
        super().__init__()
        self.schedule = schedule
        self.anchor = nn.Parameter(torch.zeros(0))  # why: samplers read the device off the parameters
        self.times = []

    def forward(self, x, noise_cond=None, n_out=None, **kw):
        x = x[:, :n_out]
        if noise_cond is not None:
            self.times.append(noise_cond.double() / 1000)
        logp = torch.cat([P.log(), torch.full((1,), -torch.inf, dtype=torch.float64)])
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
    proc = Absorbing(make_schedule(name), MASK)
    x0, g = _data(400, 250, 1)
    t = torch.linspace(0.05, 0.95, 400, dtype=torch.float64)
    u = torch.rand(x0.shape, generator=g, dtype=torch.float64)
    frac = (proc.corrupt(x0, t, u) == MASK).double().mean(1)  # 250 tokens per t
    expect = 1 - proc.alpha(t)
    sd = (expect * (1 - expect) / 250).sqrt()
    z = (frac - expect) / sd
    assert z.abs().max() < 4.5 and abs(z.mean()) < 4 / math.sqrt(400)


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_mdlm_nelbo_of_exact_posterior_is_entropy(name):
    L = 32
    x0, g = _data(16384, L, 2)
    per_tok = mdlm_loss(IIDOracle(), x0, **draw_noise(*x0.shape, g, t_min=1e-4),
                        process=Absorbing(make_schedule(name), MASK))
    nelbo = L * per_tok.mean().item()
    assert abs(nelbo / (L * H) - 1) < 0.03, (nelbo, L * H)


def test_sedd_absorb_nelbo_of_exact_scores_is_entropy():
    L = 32
    x0, g = _data(16384, L, 3)
    nelbo = L * sedd.sedd_absorb_loss(IIDOracle(), x0, **draw_noise(*x0.shape, g, t_min=1e-4),
                                      process=Absorbing(make_schedule("loglinear"), MASK),
                                      time_cond=False).mean().item()
    assert abs(nelbo / (L * H) - 1) < 0.03, (nelbo, L * H)


def test_sedd_uniform_nelbo_of_exact_scores_is_entropy():
    L = 32
    sch = make_schedule("loglinear")
    x0, g = _data(65536, L, 4)  # this estimator has ~4x the variance of MDLM
    y = torch.randint(V, x0.shape, generator=g)
    nelbo = L * sedd.sedd_uniform_loss(IIDOracle(sch), x0, **draw_noise(*x0.shape, g, t_min=1e-4), y=y,
                                       process=Uniform(sch, V)).mean().item()
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
    out = sample_mdlm(lambda x_t, t, rows: den(x_t, t), x, Absorbing(make_schedule("cosine"), MASK), steps, g)
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

    x, proc = torch.full((200, 8), MASK), Absorbing(make_schedule("loglinear"), MASK)
    on = sample_mdlm(counting, x, proc, 64, torch.Generator().manual_seed(3), cache=True)
    per_seq = torch.bincount(torch.cat(seen), minlength=len(x))
    off = sample_mdlm(counting, x, proc, 64, torch.Generator().manual_seed(3), cache=False)
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
        net, proc, x = IIDOracle(), Absorbing(sch, MASK), torch.full((1000, 16), MASK)
        final = sedd.absorb_tweedie
    else:
        net, proc, x = IIDOracle(sch), Uniform(sch, V), torch.randint(V, (1000, 16), generator=g)
        final = sedd.uniform_tweedie
    denoise = lambda x_t, t: net(x_t, time_input(t, kind.startswith("uniform")))
    out = sedd.sample_sedd(denoise, x, proc, 8, getattr(sedd, kind), g, final)
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


# ---- a schedule's ends: alpha_1 = 0 (linear, cosine) and alpha_0 = 1 ----------------------------------

SWEEP = [(kind, name, sampler) for kind in KINDS for name in SCHEDULES for sampler in KINDS[kind].samplers]
# llada is the linear schedule; the uniform process has no limit at alpha = 0 (see discrete/sedd.py)
REFUSED = {("llada", "cosine"), ("llada", "loglinear"), ("sedd_uniform", "linear"),
           ("sedd_uniform", "cosine")}


@pytest.mark.parametrize("kind, name, sampler", SWEEP)
def test_every_accepted_combination_samples_from_t_1_with_finite_probabilities_and_reproduces_p(
        kind, name, sampler, monkeypatch):
    """Every (kind, schedule, sampler) the config accepts samples from t = 1 (alpha = 0 for linear and
    cosine) with finite probabilities at every draw, and with the exact denoiser of i.i.d. tokens the
    token frequencies are p's: token 0 at its 0.35, not the 100 % that argmax over NaN rows gave."""
    raw = {"task": "text", "data": {"seq_len": 16},
           "model": {"kind": kind, "block": 4, "noise_cond": kind.startswith("sedd")},
           "loss": {"schedule": name}, "sample": {"sampler": sampler, "steps": 32}}
    if (kind, name) in REFUSED:
        with pytest.raises(UserError, match=r"loss\.schedule"):
            build(TextConfig, raw, "t.toml")
        return
    cfg = build(TextConfig, raw, "t.toml")
    bad = []

    def checked(logits, g):  # every categorical draw of every text sampler goes through here
        bad.append(bool(logits.isnan().any() or not logits.double().logsumexp(-1).isfinite().all()))
        return gumbel_argmax(logits, g)

    monkeypatch.setattr(sampling, "gumbel_argmax", checked)
    monkeypatch.setattr(sedd, "gumbel_argmax", checked)
    net = IIDOracle(make_schedule(name) if kind == "sedd_uniform" else None)
    out = generate_tokens(net, cfg, V, 1000, torch.Generator().manual_seed(11), kv_cache=False)
    assert bad and not any(bad)
    if net.times:  # the time-conditioned kinds show where sampling started
        assert float(net.times[0].max()) == 1.0
    assert ((out.tokens >= 0) & (out.tokens < V)).all()
    freq = torch.bincount(out.tokens.flatten(), minlength=V).double() / out.tokens.numel()
    if sampler == "remask":  # low confidence keeps the mode first: biased by design (test above)
        assert (freq > 0).all() and P[0] + 0.05 < freq[0] < 1
        return
    assert _chi2_matches_p(out.tokens) > 1e-3
    sd = math.sqrt(P[0] * (1 - P[0]) / out.tokens.numel())
    assert abs(freq[0] - P[0]) < 4 * sd, (freq[0], P[0])


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_every_loss_is_exact_at_both_ends_of_every_schedule(name):
    """At t = 0 nothing is masked, so the masked losses are 0 (not inf * 0 = NaN from the infinite
    weight); at t = 1 each equals weight(1) * sum over the masked tokens of -log p(x0) / L for the
    exact denoiser (the absorbing score entropy too: sum_y p_y - log p_x0 - 1 = -log p_x0). The uniform
    process's loss, where the config allows it (alpha_1 > 0), is finite at both ends."""
    sch, B, L = make_schedule(name), 64, 16
    proc = Absorbing(sch, MASK)
    x0, g = _data(B, L, 12)
    u = torch.rand(B, L, generator=g, dtype=torch.float64)
    y = torch.randint(V, (B, L), generator=g)
    for t_end in (0.0, 1.0):
        t = torch.full((B,), t_end, dtype=torch.float64)
        losses = [mdlm_loss(IIDOracle(), x0, t, u, proc),
                  bd3_loss(IIDOracle(), x0, t[:, None].expand(B, L // 4), u, proc, block=4),
                  sedd.sedd_absorb_loss(IIDOracle(), x0, t, u, proc, time_cond=False)]
        masked = u < 1 - sch.alpha(t)[:, None]  # all of them at t = 1 of linear and cosine
        expect = proc.weight(t) * torch.where(masked, -P.log()[x0], 0.0).mean(1) if t_end else 0 * t
        for loss in losses:
            torch.testing.assert_close(loss, expect, rtol=1e-12, atol=0)
        if sch.alpha(torch.tensor(1.0)) > 0:
            uni = sedd.sedd_uniform_loss(IIDOracle(sch), x0, t, u, y, Uniform(sch, V))
            assert uni.isfinite().all() and (uni >= 0).all()


@pytest.mark.parametrize("step", [sedd.uniform_euler, sedd.uniform_tweedie])
def test_uniform_steps_refuse_alpha_0_where_the_scores_say_nothing(step):
    raw, x = torch.zeros(2, 4, V, dtype=torch.float64), torch.zeros(2, 4, dtype=torch.long)
    proc = Uniform(make_schedule("linear"), V)  # alpha_1 = 0
    with pytest.raises(UserError, match="needs alpha_t > 0"):
        step(raw, x, torch.ones(2, dtype=torch.float64), torch.full((2,), 0.5, dtype=torch.float64), proc)
