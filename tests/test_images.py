"""Image loaders (embedded sets, folders and .npz written to tmp), augmentations, pictures, bad input."""

import numpy as np
import pytest
import torch
from PIL import Image

from diffspace.data.images import (
    load_digits,
    load_image_data,
    load_image_folder,
    load_lfw,
    load_npz,
    random_hflip,
)
from diffspace.data.quantized import DIGITS
from diffspace.eval.pictures import image_grid, save_grid
from diffspace.types import UserError


def test_digits_levels_and_fixed_split():
    x, y = load_digits("all")
    assert x.shape == (1797, 1, 8, 8) and x.dtype == torch.float32 and y.dtype == torch.long
    levels = torch.unique(x)
    assert len(levels) == 17 and levels[0] == -1 and levels[-1] == 1  # 0..16 mapped onto [-1, 1]
    tr, ytr = load_digits("train", seed=3)
    te, yte = load_digits("test", seed=3)
    assert len(tr) + len(te) == 1797 and len(te) == round(0.2 * 1797)
    # the split is a partition of the data, and the same seed gives the same split
    all_rows = {r.numpy().tobytes() for r in x}
    assert {r.numpy().tobytes() for r in torch.cat([tr, te])} == all_rows
    assert torch.equal(load_digits("test", seed=3)[0], te)
    assert not torch.equal(load_digits("test", seed=4)[0], te)
    assert set(ytr.tolist()) == set(range(10))


def test_lfw_sizes_and_labels():
    for size in (24, 32):
        x, y = load_lfw("all", size=size)
        assert x.shape == (200, 1, size, size) and x.min() >= -1 and x.max() <= 1
        assert y.sum() == 100
    with pytest.raises(UserError, match="24 or 32"):
        load_lfw(size=28)


def _write(path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def test_image_folder_with_classes_grey_and_rgb(tmp_path):
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (3, 5, 6), dtype=np.uint8)
    for i, im in enumerate(grey):
        _write(tmp_path / ("a" if i < 2 else "b") / f"{i}.png", im)
    x, y = load_image_folder(tmp_path)
    assert x.shape == (3, 1, 5, 6) and y.tolist() == [0, 0, 1]
    np.testing.assert_allclose(((x[:, 0] + 1) * 127.5).round().numpy(), grey)  # PNG is lossless
    # one colour image makes the whole set RGB, grey images repeated over channels
    _write(tmp_path / "b" / "z.png", rng.integers(0, 256, (5, 6, 3), dtype=np.uint8))
    x, y = load_image_folder(tmp_path)
    assert x.shape == (4, 3, 5, 6) and torch.equal(x[0, 0], x[0, 2])


def test_image_folder_without_classes_and_jpeg(tmp_path):
    for i in range(2):
        _write(tmp_path / f"{i}.jpg", np.full((4, 4, 3), 100, dtype=np.uint8))
    x, y = load_image_folder(tmp_path)
    assert y is None and x.shape == (2, 3, 4, 4)


def test_image_folder_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_image_folder(tmp_path / "nope")
    with pytest.raises(UserError, match="holds no image files"):
        load_image_folder(tmp_path)
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "b.png").write_bytes(b"not a png")  # mixed sizes and single bad files: test_user_data
    with pytest.raises(UserError, match="none of the 1 image files .* can be read"):
        load_image_folder(tmp_path)


def test_npz_layouts_and_labels(tmp_path):
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (4, 6, 6, 3), dtype=np.uint8)
    np.savez(tmp_path / "hwc.npz", x=imgs, y=np.arange(4))
    np.savez(tmp_path / "chw.npz", x=imgs.transpose(0, 3, 1, 2))
    np.savez(tmp_path / "hw.npz", x=np.zeros((2, 5, 5), np.float32))
    x, y = load_npz(tmp_path / "hwc.npz")
    x2, y2 = load_npz(tmp_path / "chw.npz")
    assert x.shape == (4, 3, 6, 6) and torch.equal(x, x2) and y.tolist() == [0, 1, 2, 3] and y2 is None
    assert x.min() >= -1 and x.max() <= 1
    assert load_npz(tmp_path / "hw.npz")[0].shape == (2, 1, 5, 5)


@pytest.mark.parametrize("arrays,match", [
    ({"images": np.zeros((2, 4, 4), np.uint8)}, "no array 'x'"),
    ({"x": np.zeros((2, 4), np.uint8)}, "must be"),
    ({"x": np.zeros((2, 5, 4, 4), np.uint8)}, "must be"),
    ({"x": np.full((2, 4, 4), 3.0)}, r"in \[-1, 1\]"),
    ({"x": np.full((2, 4, 4), np.nan)}, "finite"),
    ({"x": np.zeros((2, 4, 4), np.uint8), "y": np.zeros(3, int)}, "'y' must be"),
    ({"x": np.zeros((2, 4, 4), np.uint8), "y": np.zeros(2)}, "'y' must be"),
])
def test_npz_errors(tmp_path, arrays, match):
    np.savez(tmp_path / "d.npz", **arrays)
    with pytest.raises(UserError, match=match):
        load_npz(tmp_path / "d.npz")


def test_npz_missing_and_corrupt(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_npz(tmp_path / "none.npz")
    (tmp_path / "bad.npz").write_bytes(b"garbage")
    with pytest.raises(UserError, match="cannot read npz"):
        load_npz(tmp_path / "bad.npz")


def test_dispatch_errors_and_split(tmp_path):
    with pytest.raises(UserError, match="unknown image data"):
        load_image_data("cifar")
    with pytest.raises(UserError, match="needs a path"):
        load_image_data("folder")
    with pytest.raises(UserError, match="split"):
        load_image_data("digits", split="val")
    np.savez(tmp_path / "d.npz", x=np.zeros((10, 4, 4), np.uint8))
    assert len(load_image_data("npz", "test", path=str(tmp_path / "d.npz"))[0]) == 2


def test_digits_lie_on_their_grid():
    x, _ = load_digits("all")
    assert torch.equal(DIGITS.quantize(x), x) and len(torch.unique(x)) == 17


def test_random_hflip_flips_about_half():
    x = torch.arange(16.0).reshape(1, 1, 4, 4).repeat(1000, 1, 1, 1)
    out = random_hflip(x, torch.Generator().manual_seed(0))
    flipped = (out == x.flip(-1)).flatten(1).all(1)
    assert ((out == x).flatten(1).all(1) | flipped).all() and 400 < flipped.sum() < 600


def test_grid_pictures(tmp_path):
    x = torch.linspace(-1, 1, 6 * 4 * 5).reshape(6, 1, 4, 5)
    pic = image_grid(x, ncols=3, pad=1)
    assert pic.size == (3 * 6 + 1, 2 * 5 + 1) and pic.mode == "L"
    arr = np.asarray(pic)
    assert arr[1, 1] == 0 and arr[0, 0] == 255  # first pixel is -1 -> black; padding white
    path = save_grid(x.expand(-1, 3, -1, -1), tmp_path / "g" / "grid.png", ncols=2, scale=3)
    assert Image.open(path).size == (3 * (2 * 6 + 1), 3 * (3 * 5 + 1))
    with pytest.raises(UserError, match="picture grid"):
        image_grid(torch.zeros(2, 2, 4, 4), 2)


def test_a_file_or_size_the_image_data_cannot_use_is_refused(tmp_path):
    """data.file with digits or lfw, data.image_size with digits or npz, and a negative size were ignored
    without a word (a run config, `train-featurenet --path/--size` alike)."""
    with pytest.raises(UserError, match=r"^data 'digits' is embedded and takes no file"):
        load_image_data("digits", path="x.npz")
    with pytest.raises(UserError, match=r"^data 'lfw' is embedded and takes no file"):
        load_image_data("lfw", path="folder")
    with pytest.raises(UserError, match=r"^data 'npz' keeps its images' own size .* got 24$"):
        load_image_data("npz", path="x.npz", size=24)
    with pytest.raises(UserError, match=r"^image size must be >= 0 \(0: the data's own\), got -1$"):
        load_image_data("folder", path=str(tmp_path), size=-1)
