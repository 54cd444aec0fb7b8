"""CLIP and SigLIP losses against their definitions written out term by term (float64), the towers'
indifference to padding, retrieval recall@1 and zero-shot picks on constructed embeddings."""

import math

import pytest
import torch
from torch.nn import functional as F

from diffspace.families.contrastive import (
    CLIP_INIT,
    SIGLIP_INIT,
    ContrastiveEncoder,
    clip_loss,
    nearest,
    recall_at_1,
    siglip_loss,
)
from diffspace.nets.towers import ImageTower, TextTower


def _pairs(B=5, E=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    img = F.normalize(torch.randn(B, E, generator=g, dtype=torch.float64), dim=1)
    txt = F.normalize(torch.randn(B, E, generator=g, dtype=torch.float64), dim=1)
    return img, txt


def test_clip_loss_is_the_symmetric_cross_entropy():
    img, txt = _pairs()
    t = torch.tensor(1.3, dtype=torch.float64)
    s = [[math.exp(1.3) * float(img[i] @ txt[j]) for j in range(5)] for i in range(5)]
    rows = [-s[i][i] + math.log(sum(math.exp(v) for v in s[i])) for i in range(5)]  # image i -> its text
    cols = [-s[j][j] + math.log(sum(math.exp(s[i][j]) for i in range(5))) for j in range(5)]  # text -> image
    expected = (sum(rows) / 5 + sum(cols) / 5) / 2
    terms = clip_loss(img, txt, t)
    assert terms.shape == (5,) and terms.mean().item() == pytest.approx(expected, rel=1e-12)
    assert terms.tolist() == pytest.approx([(r + c) / 2 for r, c in zip(rows, cols, strict=True)], rel=1e-12)


def test_clip_scale_is_clipped_at_100():
    img, txt = _pairs(seed=1)
    big = clip_loss(img, txt, torch.tensor(math.log(1e4), dtype=torch.float64))
    torch.testing.assert_close(big, clip_loss(img, txt, torch.tensor(math.log(100.0), dtype=torch.float64)))


def test_siglip_loss_is_the_pairwise_sigmoid_definition():
    img, txt = _pairs(B=6, seed=2)
    t, b = 2.1, -3.0
    per_image = [0.0] * 6
    for i in range(6):
        for j in range(6):
            z = 1.0 if i == j else -1.0
            per_image[i] += -math.log(1 / (1 + math.exp(-z * (math.exp(t) * float(img[i] @ txt[j]) + b))))
    got = siglip_loss(img, txt, torch.tensor(t, dtype=torch.float64), torch.tensor(b, dtype=torch.float64))
    assert got.tolist() == pytest.approx(per_image, rel=1e-12)
    assert got.mean().item() == pytest.approx(sum(per_image) / 6, rel=1e-12)  # [SIGLIP] Eq. 1's 1/B sum


def test_learned_temperature_and_bias_get_gradients():
    img, txt = _pairs()
    towers = ImageTower(3, 4, width=4, levels=2), TextTower(10, 8, 4, dim=8, depth=1, heads=2)
    model = ContrastiveEncoder(*towers, SIGLIP_INIT)
    siglip_loss(img.float(), txt.float(), model.logit_scale, model.logit_bias).mean().backward()
    assert model.logit_scale.grad.abs() > 0 and model.logit_bias.grad.abs() > 0
    assert model.logit_scale.item() == pytest.approx(math.log(10)) and model.logit_bias.item() == -10
    clip = ContrastiveEncoder(model.image_tower, model.text_tower, CLIP_INIT)
    assert clip.logit_bias is None and clip.logit_scale.exp().item() == pytest.approx(1 / 0.07)


def test_text_tower_ignores_padding_and_image_tower_sees_position():
    torch.manual_seed(0)
    tower = TextTower(vocab_size=20, context_len=7, embed_dim=6, dim=16, depth=2, heads=4).eval()
    ids = torch.randint(1, 20, (3, 7))
    mask = torch.arange(7)[None] < torch.tensor([[2], [5], [7]])
    other = torch.where(mask, ids, torch.randint(1, 20, (3, 7)))
    assert not torch.equal(other, ids)
    with torch.no_grad():
        (tok_a, pool_a), (tok_b, pool_b) = tower(ids, mask), tower(other, mask)
        torch.testing.assert_close(pool_a, pool_b, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(tok_a[mask], tok_b[mask], rtol=1e-6, atol=1e-6)
        changed = ids.clone()
        changed[0, 1] = (ids[0, 1] % 19) + 1  # a real token
        assert (tower(changed, mask)[1][0] - pool_a[0]).abs().max() > 1e-4
        # a blob at the top left and the same blob at the bottom right embed differently
        image = ImageTower(3, 8, width=4, levels=2).eval()
        x = torch.zeros(2, 3, 16, 16)
        x[0, :, :4, :4], x[1, :, -4:, -4:] = 1, 1
        e = image(x)
        assert (e[0] - e[1]).abs().max() > 1e-4


def test_colour_blind_stem_ignores_which_plane_holds_the_colour():
    torch.manual_seed(0)
    tower = ImageTower(3, 8, width=4, levels=2, plane_stem=5).eval()
    red = torch.full((1, 3, 16, 16), -0.8)
    red[0, 0, 4:9, 3:10] = 0.9  # a red block on a grey background
    green = red[:, [1, 0, 2]]  # the same block in green
    with torch.no_grad():
        assert torch.equal(tower.form(red), tower.form(green)) and tower.form(red).shape == (1, 5, 16, 16)
        moved = red.roll(4, dims=-1)
        assert (tower.form(moved) - tower.form(red)).abs().max() > 1e-3  # it sees where the block is
        assert (tower(red) - tower(green)).abs().max() > 1e-4  # the tower still sees the colour


def test_recall_at_1_and_nearest():
    img = torch.eye(4)
    txt = torch.eye(4)[[0, 1, 3, 2]]  # texts 2 and 3 swapped: half the pairs are found
    assert recall_at_1(img, txt) == (0.5, 0.5)
    assert recall_at_1(img, img) == (1.0, 1.0)
    assert nearest(img[:2], txt).tolist() == [0, 1]
