"""The discrete roles against their definitions: the processes' weights against autograd of their
schedules, the uniform corruption's and prior's frequencies, and the two decoding contexts against one
network pass over the whole sequence with the block-causal mask."""

import pytest
import torch
from scipy.stats import chisquare

from diffspace import rng
from diffspace.discrete.attention import KVContext, TokenContext, block_causal_mask, causal_mask
from diffspace.discrete.kinds import BLOCK_SAMPLERS, KINDS
from diffspace.discrete.processes import Absorbing, Uniform
from diffspace.discrete.schedules import SCHEDULES, make_schedule
from diffspace.nets.transformer import Transformer, TransformerConfig

V = 7


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_weights_are_their_definitions_by_autograd(name):
    """Absorbing: -alpha'/(1 - alpha) ([MDLM] Eq. 10); uniform: SEDD's rate d/dt of -log alpha."""
    sch = make_schedule(name)
    t = torch.linspace(0.01, 0.99, 50, dtype=torch.float64, requires_grad=True)
    d_alpha, = torch.autograd.grad(sch.alpha(t).sum(), t)
    d_sigma_bar, = torch.autograd.grad((-torch.log(sch.alpha(t))).sum(), t)
    t = t.detach()
    torch.testing.assert_close(Absorbing(sch, V).weight(t), -d_alpha / (1 - sch.alpha(t)), rtol=1e-12, atol=0)
    torch.testing.assert_close(Uniform(sch, V).weight(t), d_sigma_bar, rtol=1e-12, atol=0)


def test_uniform_corruption_keeps_alpha_plus_its_share_and_spreads_the_rest_evenly():
    """P(x_t = x0) = alpha_t + (1 - alpha_t) / V, and every other token (1 - alpha_t) / V."""
    proc, n, L = Uniform(make_schedule("cosine"), V), 4000, 50
    g = torch.Generator().manual_seed(0)
    x0 = torch.zeros(n, L, dtype=torch.long)
    t = torch.full((n,), 0.6, dtype=torch.float64)
    x_t = proc.corrupt(x0, t, torch.rand(n, L, generator=g, dtype=torch.float64), **proc.draw(n, L, g))
    a = float(proc.alpha(t[0]))
    expect = torch.full((V,), (1 - a) / V, dtype=torch.float64)
    expect[0] += a
    counts = torch.bincount(x_t.flatten(), minlength=V).double()
    assert chisquare(counts.numpy(), (expect * counts.sum()).numpy()).pvalue > 1e-3


def test_uniform_prior_is_uniform_and_row_i_is_stream_i():
    proc = Uniform(make_schedule("loglinear"), V)
    x = torch.full((5, 2000), V)
    five = proc.prior(x, rng.Streams(3, 5))
    assert torch.equal(proc.prior(x[:2], rng.Streams(3, 2)), five[:2])
    counts = torch.bincount(five.flatten(), minlength=V).double()
    assert chisquare(counts.numpy()).pvalue > 1e-3 and len(counts) == V
    assert torch.equal(Absorbing(make_schedule("linear"), V).prior(x, rng.Streams(3, 5)), x)  # all masks


def test_block_1_is_causal():
    assert torch.equal(block_causal_mask(9, 1), causal_mask(9))


def _net(noise_cond):
    torch.manual_seed(0)
    net = Transformer(TransformerConfig(vocab_size=V + 1, max_len=32, dim=32, depth=2, heads=4,
                                        noise_cond=noise_cond))
    for blk in net.blocks if noise_cond else ():  # why: adaLN-Zero starts at the identity
        torch.nn.init.normal_(blk.ada.weight, std=0.05)
    return net.eval()


@pytest.mark.parametrize("kv", [True, False])
@pytest.mark.parametrize("noise_cond", [False, True])
@torch.no_grad()
def test_contexts_read_after_the_prefix_like_one_pass_over_the_whole_sequence(kv, noise_cond):
    """Two finished blocks of 4 in the prefix, then a noisy block read for rows 0 and 2 at times t:
    the logits of one pass over [prefix, block] with the block-causal mask (the prefix at t = 0); and
    AR's extend(read=True) from the start token gives the causal pass's logits."""
    net, g = _net(noise_cond), torch.Generator().manual_seed(1)
    prefix, xb = torch.randint(V, (3, 8), generator=g), torch.randint(V + 1, (3, 4), generator=g)
    rows, t = torch.tensor([0, 2]), torch.tensor([0.3, 0.8], dtype=torch.float64)
    ctx = (KVContext if kv else TokenContext)(net, 4, time_cond=noise_cond)
    ctx.extend(prefix[:, :4])
    ctx.extend(prefix[:, 4:])
    got = ctx(xb[rows], t, rows)
    seq = torch.cat([prefix, xb], dim=1)[rows]
    nc = torch.cat([torch.zeros(2, 8), 1000 * t.float()[:, None].expand(2, 4)], dim=1) if noise_cond else None
    torch.testing.assert_close(got, net(seq, nc, mask=block_causal_mask(12, 4))[:, 8:], rtol=1e-4, atol=1e-5)
    assert ctx.evals == (3 + 3 if kv else 0) + 2  # keys and values cost a call per finished block

    ar = (KVContext if kv else TokenContext)(net, 1)
    first, nxt = ar.extend(seq[:, :5], read=True), ar.extend(seq[:, 5:6], read=True)
    full = net(seq[:, :6], mask=causal_mask(6))
    torch.testing.assert_close(torch.cat([first, nxt], dim=1), full, rtol=1e-4, atol=1e-5)
    assert ar.evals == 2 + 2


def test_the_kind_table_resolves_every_default_and_states_its_constraints():
    for kind in KINDS.values():
        sampler, steps, block = kind.resolve("auto", 3, 0, 4, 16)
        assert sampler == next(iter(kind.samplers)) and steps == 3 and block == (4 if kind.t_per_block else 0)
        assert kind.config_problem(16, 4, kind.schedule or "loglinear", False, True) is None
    assert BLOCK_SAMPLERS == ("remask", "remask_random", "bd3")
    assert "alpha_1 > 0" in KINDS["sedd_uniform"].config_problem(16, 4, "linear", True, True)
    assert "'linear'" in KINDS["llada"].config_problem(16, 4, "cosine", False, True)
    assert "multiple of model.block=5" in KINDS["bd3"].config_problem(16, 5, "loglinear", False, True)
