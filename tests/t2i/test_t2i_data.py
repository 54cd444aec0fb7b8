"""Captioned data: the procedural shapes (attributes agree with the pixels, held-out combinations never
in training, determinism), digit stroke measures against exact constructions, caption folders, and
tokenized captions with their one-line errors."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from diffspace.data import shapes as sh
from diffspace.data.captions import (
    load_captioned_digits,
    load_captioned_folder,
    split_captioned,
    stroke_measures,
    tokenize_captions,
)
from diffspace.data.images import load_digits
from diffspace.data.text import ByteTokenizer, make_tokenizer
from diffspace.types import UserError


def _one_line(excinfo):
    assert "\n" not in str(excinfo.value)


@pytest.fixture(scope="module")
def shapes32():
    return sh.make_shapes(600, "train", seed=3, size=32)


def test_shapes_layout_and_determinism(shapes32):
    d = shapes32
    assert d.x.shape == (600, 3, 32, 32) and d.x.dtype == torch.float32
    assert d.x.min() >= -1 and d.x.max() <= 1
    assert d.attrs.shape == (600, 8) and len(d.captions) == 600
    assert all(len(c) == len(sh.TEMPLATES) for c in d.captions)
    short = sh.make_shapes(300, "train", seed=3, size=32)  # a longer set extends a shorter one
    assert torch.equal(short.x, d.x[:300]) and torch.equal(short.attrs, d.attrs[:300])
    assert not torch.equal(sh.make_shapes(300, "test", seed=3, size=32).x, short.x)
    small = sh.make_shapes(10, "heldout", size=16)
    assert small.x.shape == (10, 3, 16, 16)
    two = (d.attrs[:, 4] >= 0).float().mean().item()
    assert 0.15 < two < 0.35  # p_two = 0.25
    both = d.attrs[d.attrs[:, 4] >= 0]
    assert (both[:, 3] != both[:, 7]).all()  # two objects never share a place


def test_attributes_agree_with_the_pixels(shapes32):
    """One-object images: the object's pixels lie in the named place's cell and have the named colour."""
    d = shapes32
    one = (d.attrs[:, 4] < 0).nonzero().flatten()
    img = (d.x[one] + 1) / 2  # (n, 3, 32, 32) in [0, 1]
    ink = (img - torch.tensor(sh.BACKGROUND)[:, None, None]).abs().sum(1) > 0.3  # (n, 32, 32)
    ys, xs = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    w = ink.float()
    cx, cy = (w * (xs + 0.5)).sum((1, 2)) / w.sum((1, 2)), (w * (ys + 0.5)).sum((1, 2)) / w.sum((1, 2))
    place = (cy // (32 / 3)).long() * 3 + (cx // (32 / 3)).long()
    assert torch.equal(place, d.attrs[one, 3])
    # edges are blends alpha * colour + (1 - alpha) * background: fit alpha per pixel for each colour
    bg = torch.tensor(sh.BACKGROUND)
    v = torch.tensor(list(sh.COLOURS.values())) - bg  # (K, 3)
    d_ = (img - bg[:, None, None]).permute(0, 2, 3, 1)[..., None, :]  # (n, H, W, 1, 3)
    alpha = ((d_ * v).sum(-1) / v.square().sum(-1)).clamp(0, 1)  # (n, H, W, K)
    residual = ((d_ - alpha[..., None] * v).square().sum(-1) * w[..., None]).sum((1, 2))  # (n, K)
    assert torch.equal(residual.argmin(1), d.attrs[one, 1])
    area, shape, size = w.sum((1, 2)), d.attrs[one, 0], d.attrs[one, 2]
    for k in range(len(sh.SHAPES)):  # a large object covers more pixels than any small one of its shape
        assert area[(shape == k) & (size == 1)].min() > area[(shape == k) & (size == 0)].max()


def test_held_out_combinations_never_occur_in_training():
    held = {(sh.SHAPES.index(s), sh.COLOUR_NAMES.index(c)) for s, c in sh.HELD_OUT}
    for split in ("train", "test"):
        a = sh.make_shapes(3000, split, seed=0, size=16).attrs
        objects = torch.cat([a[:, [0, 1]], a[a[:, 4] >= 0][:, [4, 5]]])
        pairs = {tuple(p) for p in objects.tolist()}
        assert not pairs & held
        assert len(pairs) == len(sh.SHAPES) * len(sh.COLOURS) - len(held)  # every other pair is seen
    firsts = {tuple(p) for p in sh.make_shapes(500, "heldout", size=16).attrs[:, [0, 1]].tolist()}
    assert firsts == held
    # each held-out pair has its own shape and colour, so each shape and colour is seen in training
    assert len({s for s, _ in sh.HELD_OUT}) == len({c for _, c in sh.HELD_OUT}) == len(sh.HELD_OUT)


def test_captions_name_every_attribute(shapes32):
    d = shapes32
    for i in range(40):
        a = d.attrs[i].tolist()
        for caption in d.captions[i]:
            for o in range(2 if a[4] >= 0 else 1):
                s, c, z, p = a[4 * o: 4 * o + 4]
                words = f" {caption} "
                assert all(f" {w}" in words for w in (sh.SHAPES[s], sh.COLOUR_NAMES[c], sh.SIZES[z]))
                assert f" {sh.PLACES[p]}" in words
    prompts, combos = sh.single_object_prompts()
    assert len(set(prompts)) == len(prompts) == 4 * 6 * 2 * 9 and combos.shape == (432, 4)
    assert prompts[0] == "a small red circle at the top left"


def test_stroke_measures_on_exact_constructions():
    x = -torch.ones(3, 1, 8, 8)
    x[0, 0, :, 3] = 1  # a vertical bar: upright
    for r in range(8):
        x[1, 0, r, 7 - r] = 1  # a diagonal whose top is to the right: one column right per row up
    x[2, 0, :, 3:5] = 1  # a bar twice as thick
    mass, slant = stroke_measures(x)
    assert mass.tolist() == [8.0, 8.0, 16.0]
    assert slant.tolist() == pytest.approx([0.0, 1.0, 0.0], abs=1e-12)
    assert stroke_measures(x.flip(-1))[1][1].item() == pytest.approx(-1.0)


def test_captioned_digits_follow_the_digit_split():
    d = load_captioned_digits("test")
    _, y = load_digits("test")
    assert torch.equal(d.attrs[:, 0], y) and d.x.shape == (len(y), 1, 8, 8)
    assert all("digit" in c[0] or "number" in c[0] for c in d.captions)
    train = load_captioned_digits("train")
    assert len(train) + len(d) == 1797
    assert set(train.attrs[:, 1].tolist()) == {0, 1, 2} and set(train.attrs[:, 2].tolist()) == {0, 1, 2}
    counts = torch.bincount(load_captioned_digits("all").attrs[:, 1], minlength=3)
    assert (counts - 1797 / 3).abs().max() < 15  # thickness is in thirds within each digit


def _folder(tmp_path, rows):
    for name in ("a.png", "b.png"):
        Image.fromarray(np.full((4, 4, 3), 200 if name == "a.png" else 10, np.uint8)).save(tmp_path / name)
    lines = [json.dumps(r) if isinstance(r, dict) else r for r in rows]
    (tmp_path / "metadata.jsonl").write_text("\n".join(lines))
    return tmp_path


def test_caption_folder(tmp_path):
    rows = [{"file_name": "a.png", "text": "a bright square"}, {"file_name": "b.png", "text": "dark"},
            {"file_name": "a.png", "text": "light grey"}]
    d = load_captioned_folder(_folder(tmp_path, rows))
    assert d.x.shape == (2, 3, 4, 4) and d.captions == [("a bright square", "light grey"), ("dark",)]
    assert d.x[0].min() > 0.5 and d.x[1].max() < -0.5
    assert len(split_captioned(d, "test", test_fraction=0.5)) == 1
    assert d.pick(torch.tensor([0, 1, 0]), torch.Generator().manual_seed(0))[1] == "dark"


@pytest.mark.parametrize("rows, match", [
    ([{"file_name": "missing.png", "text": "x"}], "names image 'missing.png', which does not exist"),
    (["{not json"], "line 1: not valid JSON"),
    ([{"file_name": "a.png"}], "line 1: expected an object with string keys"),
    ([{"file_name": "a.png", "text": "ok"}, {"file_name": "b.png", "text": "  "}],
     "line 2: the caption of 'b.png' is empty"),
])
def test_caption_folder_errors(tmp_path, rows, match):
    with pytest.raises(UserError, match=match) as e:
        load_captioned_folder(_folder(tmp_path, rows))
    _one_line(e)


def test_caption_folder_without_metadata(tmp_path):
    with pytest.raises(UserError, match="no metadata.jsonl") as e:
        load_captioned_folder(tmp_path)
    _one_line(e)


def test_tokenized_captions_and_their_errors(shapes32):
    ids, mask = tokenize_captions(ByteTokenizer(), ["ab", "abcd"], 6)
    assert ids.dtype == torch.long and mask.dtype == torch.bool and ids.shape == mask.shape == (2, 6)
    assert ids[0].tolist() == [97, 98, 0, 0, 0, 0] and mask.sum(1).tolist() == [2, 4]
    texts = [c for caps in shapes32.captions for c in caps]
    bpe = make_tokenizer("bpe", [t.encode() for t in texts], 128)
    ids, mask = tokenize_captions(bpe, texts[:8], 32)
    assert [bpe.decode(i[m].tolist()) for i, m in zip(ids, mask, strict=True)] == texts[:8]
    with pytest.raises(UserError, match="caption 1 is empty") as e:
        tokenize_captions(ByteTokenizer(), ["fine", "   "], 8)
    _one_line(e)
    with pytest.raises(UserError, match="is 12 tokens long .byte tokenizer.; the text context holds 8") as e:
        tokenize_captions(ByteTokenizer(), ["a red circle"], 8)
    _one_line(e)
    with pytest.raises(UserError, match="is not one of train, test, heldout") as e:
        sh.make_shapes(4, "val")
    _one_line(e)
