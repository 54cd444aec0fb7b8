"""The transformer's attention modes and key/value cache against the losses that use them: block
diffusion at both ends of its range (L' = 1 is AR, L' = L is MDLM) and cached = uncached decoding."""

import pytest
import torch

from diffspace.discrete.attention import causal_mask, context
from diffspace.discrete.masked import ar_inputs, bd3_loss, draw_mask_counts, draw_noise, mdlm_loss, subs
from diffspace.discrete.processes import Absorbing
from diffspace.discrete.sampling import sample_ar, sample_bd3
from diffspace.discrete.schedules import make_schedule
from diffspace.nets.transformer import Transformer, TransformerConfig

V, MASK, L = 11, 10, 16


def _net(noise_cond=False, seed=0):
    torch.manual_seed(seed)
    cfg = TransformerConfig(vocab_size=V, max_len=64, dim=32, depth=2, heads=4, noise_cond=noise_cond)
    net = Transformer(cfg)
    if noise_cond:  # why: adaLN-Zero starts at the identity; perturb it so the conditioning matters
        for blk in net.blocks:
            torch.nn.init.normal_(blk.ada.weight, std=0.05)
    return net.eval()


def _x0(n=3, seed=1):
    return torch.randint(MASK, (n, L), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def test_block_diffusion_with_block_1_is_the_autoregressive_nll():
    net, x0 = _net(), _x0()
    # t = 1 under the linear schedule: every token masked, NELBO weight -alpha'/(1 - alpha) = 1
    noise = draw_noise(len(x0), L, torch.Generator().manual_seed(0), t_min=1.0, t_per_seq=L)
    loss = bd3_loss(net, x0, **noise, process=Absorbing(make_schedule("linear"), MASK), block=1)
    # the same model read as an AR model: token l is predicted from a mask at l after the cached x_<l
    cache, nll, masks = net.new_cache(), torch.zeros(len(x0)), torch.full((len(x0), 1), MASK)
    for i in range(L):
        pos = torch.tensor([i])
        logp = subs(net(masks, pos=pos, cache=cache), masks, MASK)
        nll -= logp[:, 0].gather(-1, x0[:, i:i + 1])[:, 0]
        net(x0[:, i:i + 1], pos=pos, cache=cache, commit=True)
    torch.testing.assert_close(loss, nll / L, rtol=1e-5, atol=1e-6)


@torch.no_grad()
def test_block_diffusion_with_one_block_is_mdlm():
    net, x0, proc = _net(), _x0(), Absorbing(make_schedule("cosine"), MASK)
    noise = draw_noise(len(x0), L, torch.Generator().manual_seed(3))
    a = bd3_loss(net, x0, **noise, process=proc, block=L)
    b = mdlm_loss(net, x0, **noise, process=proc)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@torch.no_grad()
def test_ar_predictions_depend_only_on_the_past():
    net, x0 = _net(), _x0()
    y = x0.clone()
    y[:, 5] = (y[:, 5] + 1) % MASK
    la, lb = (net(ar_inputs(z, MASK), mask=causal_mask(L)) for z in (x0, y))
    assert torch.equal(la[:, :6], lb[:, :6]) and (la[:, 6:] - lb[:, 6:]).abs().amax() > 1e-4


@torch.no_grad()
def test_ar_kv_cache_gives_the_same_tokens():
    net = _net()
    prompt = _x0(4)[:, :3]
    a, b = (sample_ar(context(net, 1, kv_cache=kv), prompt, 24, MASK, torch.Generator().manual_seed(9))
            for kv in (True, False))
    assert torch.equal(a.tokens, b.tokens) and a.tokens.shape == (4, 24)
    assert torch.equal(a.tokens[:, :3], prompt)


@pytest.mark.parametrize("noise_cond", [False, True])
@torch.no_grad()
def test_block_diffusion_kv_cache_gives_the_same_tokens(noise_cond):
    net, proc = _net(noise_cond), Absorbing(make_schedule("loglinear"), MASK)
    x = torch.full((4, 24), MASK)
    x[:, :6] = _x0(4)[:, :6]  # a prompt that ends inside the second block
    a, b = (sample_bd3(context(net, 4, noise_cond, kv), x, 4, 5, proc, torch.Generator().manual_seed(2),
                       cache=not noise_cond) for kv in (True, False))
    assert torch.equal(a.tokens, b.tokens)
    assert torch.equal(a.tokens[:, :6], x[:, :6]) and (a.tokens != MASK).all()


class VisibleTokenVote(torch.nn.Module):
    """Predicts each position from the tokens it may attend to that are not masked (logits = 2 x their
    counts): sharp when much is visible, uniform when nothing is, as a trained denoiser would be."""

    def forward(self, x, noise_cond=None, pos=None, mask=None, n_out=None):
        seen = torch.nn.functional.one_hot(x, V).double() * (x != MASK)[..., None]
        attend = torch.ones(x.shape[1], x.shape[1]) if mask is None else mask.double()
        return 2.0 * torch.einsum("ij,bjv->biv", attend[:n_out].double(), seen)


@pytest.mark.parametrize("block", [4, L])
@torch.no_grad()
def test_mask_count_estimator_has_the_time_estimators_mean_and_less_variance(block):
    """For a network without t input the count form (k ~ U{1..block} masks, weight block/k) is the
    same NELBO as drawing t, with less variance. The vote network's loss per masked token falls from
    log V (nothing visible) to near 0, so a wrong weighting of k would show against the exact value."""
    net, g = VisibleTokenVote(), torch.Generator().manual_seed(6)
    proc = Absorbing(make_schedule("linear"), MASK)
    x0 = torch.randint(MASK, (64, 1), generator=g).expand(64, L)  # constant sequences

    def loss(noise):
        return bd3_loss(net, x0, **noise, process=proc, block=block)

    count = torch.cat([loss(draw_mask_counts(len(x0), L, g, block)) for _ in range(100)])
    time = torch.cat([loss(draw_noise(len(x0), L, g, t_min=1e-6, t_per_seq=L // block)) for _ in range(100)])
    # exact: a block's NELBO is sum_k (1/k) E[loss of its k masked]; a masked token that sees m equal
    # tokens loses log(1 + 9 e^{-2m}), and summing over blocks and k leaves (1/L) sum_{m<L} of it
    m = torch.arange(L, dtype=torch.float64)
    exact = float(torch.log1p((MASK - 1) * torch.exp(-2 * m)).mean())
    for est in (count, time):
        assert abs(est.mean() - exact) < 4 * est.std() / len(est) ** 0.5, (est.mean(), exact)
    assert count.var() < 0.9 * time.var(), (count.var(), time.var())


@pytest.mark.parametrize("noise_cond", [False, True])
@torch.no_grad()
def test_n_out_computes_the_same_leading_logits(noise_cond):
    """Skipping the queries of the trailing positions in the last block changes nothing before them."""
    net, x = _net(noise_cond), _x0(n=2, seed=7).repeat(1, 2)
    nc = torch.rand(2, 2 * L) * 1000 if noise_cond else None
    mask = torch.rand(2 * L, 2 * L, generator=torch.Generator().manual_seed(8)) < 0.6
    mask |= torch.eye(2 * L, dtype=torch.bool)
    full = net(x, nc, mask=mask)
    part = net(x, nc, mask=mask, n_out=L)
    assert part.shape == (2, L, V)
    torch.testing.assert_close(part, full[:, :L], rtol=1e-5, atol=1e-5)
