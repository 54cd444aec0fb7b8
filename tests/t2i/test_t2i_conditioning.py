"""Text conditioning of the UNet and the DiT: padding tokens change nothing, an all-padding caption is
the null caption, a (1,) noise condition broadcasts, nets without text are unchanged; caption dropout
happens at its configured rate (binomial test)."""

import pytest
import torch
from scipy.stats import binomtest

from diffspace.data.captions import drop_captions
from diffspace.nets.dit import DiT
from diffspace.nets.unet import UNet
from diffspace.rng import Streams
from diffspace.types import UserError

TEXT_DIM, POOLED_DIM, L = 12, 6, 5
NETS = {
    "unet": lambda **kw: UNet(3, 8, channels=16, channel_mults=(1, 2), num_res_blocks=1,
                              attn_resolutions=(4,), heads=2, dropout=0.0, **kw),
    "dit": lambda **kw: DiT(3, 8, patch=2, hidden=32, depth=2, heads=4, **kw),
}


def _inputs(B=3):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(B, 3, 8, 8, generator=g)
    nc = torch.tensor([20.0, 500.0, 900.0])[:B]
    text = torch.randn(B, L, TEXT_DIM, generator=g)
    mask = torch.arange(L)[None] < torch.tensor([[2], [4], [5]])[:B]
    pooled = torch.randn(B, POOLED_DIM, generator=g)
    return x, nc, text, mask, pooled


@pytest.mark.parametrize("name", NETS)
def test_padding_tokens_change_nothing_and_real_tokens_do(name, randomize):
    torch.manual_seed(0)
    net = randomize(NETS[name](text_dim=TEXT_DIM, text_pooled_dim=POOLED_DIM))
    x, nc, text, mask, pooled = _inputs()
    garbage = torch.where(mask[..., None], text, 100 * torch.randn_like(text))
    with torch.no_grad():
        out = net(x, nc, text_emb=text, text_mask=mask, text_pooled=pooled)
        torch.testing.assert_close(net(x, nc, text_emb=garbage, text_mask=mask, text_pooled=pooled), out,
                                   rtol=1e-6, atol=1e-6)
        real = text.clone()
        real[:, 0] += 1.0  # the first token is real in every row
        assert (net(x, nc, text_emb=real, text_mask=mask, text_pooled=pooled) - out).abs().max() > 1e-3
        assert (net(x, nc, text_emb=text, text_mask=mask, text_pooled=pooled + 1) - out).abs().max() > 1e-3


@pytest.mark.parametrize("name", NETS)
def test_empty_caption_is_the_null_caption(name, randomize):
    """A row with no real token ignores its token features and pooled vector: it equals the text-free call."""
    torch.manual_seed(0)
    net = randomize(NETS[name](text_dim=TEXT_DIM, text_pooled_dim=POOLED_DIM))
    x, nc, text, mask, pooled = _inputs()
    null_mask = mask.clone()
    null_mask[1] = False
    with torch.no_grad():
        out = net(x, nc, text_emb=text, text_mask=null_mask, text_pooled=pooled)
        torch.testing.assert_close(out[1:2], net(x[1:2], nc[1:2]), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(out[0], net(x, nc, text_emb=text, text_mask=mask, text_pooled=pooled)[0])
        assert (out[1] - net(x, nc, text_emb=text, text_mask=mask, text_pooled=pooled)[1]).abs().max() > 1e-3


@pytest.mark.parametrize("name", NETS)
@pytest.mark.parametrize("text", [False, True])
def test_one_noise_level_broadcasts_over_the_batch(name, text, randomize):
    torch.manual_seed(0)
    kw = {"text_dim": TEXT_DIM, "text_pooled_dim": POOLED_DIM} if text else {}
    net = randomize(NETS[name](num_classes=4, **kw))
    x, _, t, mask, pooled = _inputs()
    cond = {"text_emb": t, "text_mask": mask, "text_pooled": pooled} if text else {}
    labels = torch.tensor([0, 2, 4])
    with torch.no_grad():
        one = net(x, torch.tensor([300.0]), labels, **cond)
        torch.testing.assert_close(one, net(x, torch.full((3,), 300.0), labels, **cond), rtol=1e-5, atol=1e-5)
        assert net(x, torch.tensor([300.0])).shape == x.shape  # no labels, no text: the null caption


@pytest.mark.parametrize("name", NETS)
def test_nets_without_text_are_unchanged_and_refuse_text(name):
    plain = NETS[name]()
    assert not [k for k in plain.state_dict() if "cross" in k or k.startswith("text.")]
    assert plain.text is None
    x, nc, text, mask, pooled = _inputs()
    with pytest.raises(ValueError, match="without text conditioning"):
        plain(x, nc, text_emb=text, text_mask=mask, text_pooled=pooled)
    with_text = NETS[name](text_dim=TEXT_DIM)
    with pytest.raises(ValueError, match="needs text_mask"):
        with_text(x, nc, text_emb=text)


@pytest.mark.parametrize("name", NETS)
def test_fresh_text_net_outputs_zero_and_trains_its_text_parts(name, randomize):
    torch.manual_seed(0)
    net = NETS[name](text_dim=TEXT_DIM, text_pooled_dim=POOLED_DIM)
    x, nc, text, mask, pooled = _inputs()
    null = mask.clone()
    null[0] = False  # one null caption, so the learned null embeddings are used
    assert torch.equal(net(x, nc, text_emb=text, text_mask=null, text_pooled=pooled), torch.zeros_like(x))
    net = randomize(net).train()
    net(x, nc, text_emb=text, text_mask=null, text_pooled=pooled).square().mean().backward()
    for key in ("text.null_token", "text.null_pooled", "text.pooled.weight"):
        assert net.get_parameter(key).grad.abs().max() > 0, key
    assert all(p.grad.abs().max() > 0 for n, p in net.named_parameters() if ".cross." in n and "kv" in n)


def test_caption_dropout_rate_matches_the_config():
    n = 20_000
    mask = torch.ones(n, 3, dtype=torch.bool)
    for p in (0.1, 0.5):
        dropped = ~drop_captions(mask, p, torch.Generator().manual_seed(7)).any(dim=1)
        assert binomtest(int(dropped.sum()), n, p).pvalue > 1e-3
    assert drop_captions(mask[:50], 0.0, torch.Generator()).all()
    assert not drop_captions(mask[:50], 1.0, torch.Generator()).any()
    # padding stays padding; with per-example streams a row's draw does not depend on the batch
    partial = torch.arange(3)[None] < torch.tensor([[1], [2], [3], [3]])
    kept = drop_captions(partial, 0.5, Streams(0, 4))
    assert not (kept & ~partial).any()
    assert torch.equal(drop_captions(partial[2:], 0.5, Streams(0, 2, offset=2)), kept[2:])
    with pytest.raises(UserError, match=r"in \[0, 1\], got 1.5"):
        drop_captions(mask, 1.5, torch.Generator())
