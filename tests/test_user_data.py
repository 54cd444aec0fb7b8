"""User data that just works: text tables with any delimiter and a header, vector files far from the
origin (standardised for training, undone when sampling), image folders of mixed sizes and formats
with transparency and an unreadable file, and captioned folders read by the same rules."""

import json
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from diffspace import runs
from diffspace.cli.main import main
from diffspace.data.captions import load_captioned_folder
from diffspace.data.files import load_vectors, standardize_stats
from diffspace.data.images import load_image_folder, read_images
from diffspace.data.toy import make_toy
from diffspace.types import UserError
from test_cli import cli


@pytest.mark.parametrize("delimiter", [",", ";", "\t", " ", "|", ", "])
@pytest.mark.parametrize("header", [True, False])
def test_tables_with_any_delimiter_and_an_optional_header(tmp_path, delimiter, header, caplog):
    x = np.array([[1.5, -2.0, 3e-3], [4.0, 5.25, -6e4], [7.0, 8.0, 9.0]])
    lines = ([delimiter.join(["x", "y value", "z"])] if header else []) + \
        [delimiter.join(f"{v:g}" for v in row) for row in x]
    path = tmp_path / "data.csv"
    path.write_text("\n".join(lines) + "\n")
    with caplog.at_level(logging.INFO, logger="diffspace"):
        got = load_vectors(path)
    np.testing.assert_allclose(got.numpy(), x.astype(np.float32))
    assert any("is a header" in r.message for r in caplog.records) == header


def test_table_edge_cases(tmp_path):
    one = tmp_path / "one.txt"
    one.write_text("value\n1\n2\n3\n")  # one column: no delimiter to detect
    assert load_vectors(one).tolist() == [[1.0], [2.0], [3.0]]
    (tmp_path / "h.csv").write_text("a,b\n")
    with pytest.raises(UserError, match="only a header row"):
        load_vectors(tmp_path / "h.csv")
    (tmp_path / "bad.csv").write_text("1,2\n3,x\n")
    with pytest.raises(UserError, match="cannot read data"):
        load_vectors(tmp_path / "bad.csv")


def test_an_archive_of_several_arrays_needs_a_key_and_a_folder_is_not_a_file(tmp_path):
    """An .npz of two arrays trained on the first without a word; a folder was 'not found'."""
    path = tmp_path / "two.npz"
    np.savez(path, a=np.ones((4, 2)), b=np.zeros((4, 3)))
    with pytest.raises(UserError, match=r"holds 2 arrays \(a, b\); name one with data.key$"):
        load_vectors(path)
    assert load_vectors(path, "b").shape == (4, 3)
    np.savez(tmp_path / "one.npz", only=np.ones((4, 2)))
    assert load_vectors(tmp_path / "one.npz").shape == (4, 2)
    with pytest.raises(UserError, match=r"is a folder; give a \.npy"):
        load_vectors(tmp_path)


def test_standardize_stats_and_a_constant_column():
    x = torch.tensor([[1.0, 5.0], [3.0, 5.0]])
    mean, std = standardize_stats(x)
    assert mean.tolist() == [2.0, 5.0] and std.tolist() == pytest.approx([2**0.5, 1.0])


@pytest.mark.slow
def test_data_around_5000_trains_within_twice_its_baseline(tmp_path):
    x = make_toy("8gaussians", 20_000, seed=0).numpy()
    x = 5000 + 1000 * x / x.std(0)  # data around 5000 +- 1000 with a header row
    np.savetxt(tmp_path / "big.csv", x, delimiter=",", header="a,b", comments="")
    run_dir = tmp_path / "run"
    res = cli("train", "configs/demo.toml", "--set", f"run.dir={run_dir}", "--set", "data.name=file",
              "--set", f"data.file={tmp_path / 'big.csv'}", "--set", "model.mlp.hidden=64",
              "--set", "model.mlp.depth=2", "--set", "train.steps=600", "--set", "train.batch_size=256",
              "--set", "train.lr=3e-3", "--set", "train.warmup_steps=20",
              "--set", "train.ema_halflife_steps=50", "--no-progress")
    assert res.returncode == 0, res.stderr
    assert main(["eval", str(run_dir), "--n", "2000", "--sampler", "heun", "--steps", "12"]) == 0
    m = json.loads((run_dir / "metrics.json").read_text())
    print(f"5000 +- 1000 data: sliced W2 {m['sw2']:.1f}, data baseline {m['sw2_data_baseline']:.1f}")
    assert m["sw2"] <= 2 * m["sw2_data_baseline"]
    out = tmp_path / "s.npz"
    assert main(["sample", str(run_dir), "--n", "2000", "--steps", "12", "--out", str(out)]) == 0
    s = np.load(out)["samples"]
    np.testing.assert_allclose(s.mean(0), x.mean(0), rtol=0.02)  # in the data's units, not standardised
    np.testing.assert_allclose(s.std(0), x.std(0), rtol=0.1)


def _save(path, arr, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, mode).save(path)


def test_transparency_is_composited_on_white_and_grey_stays_grey(tmp_path):
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[0, 0] = (255, 0, 0, 0)  # fully transparent red: white
    rgba[0, 1] = (255, 0, 0, 255)  # opaque red
    rgba[1, 0] = (0, 0, 0, 128)  # half-transparent black: mid grey
    rgba[1, 1] = (0, 0, 255, 255)
    _save(tmp_path / "a.png", rgba)
    x, kept = read_images([tmp_path / "a.png"])
    u8 = ((x[0] + 1) * 127.5).round().permute(1, 2, 0).int().tolist()
    assert kept == [0] and u8[0] == [[255, 255, 255], [255, 0, 0]] and u8[1][1] == [0, 0, 255]
    assert u8[1][0] == [127, 127, 127]  # 255 * (1 - 128 / 255)
    la = np.stack([np.full((2, 2), 0, np.uint8), np.full((2, 2), 0, np.uint8)], axis=-1)
    _save(tmp_path / "la.png", la, "LA")
    x, _ = read_images([tmp_path / "la.png"])
    assert x.shape == (1, 1, 2, 2) and x.min() == 1.0  # transparent black on white, still grey


def test_crop_keeps_the_centre_and_resize_keeps_everything(tmp_path):
    im = np.zeros((4, 8), np.uint8)
    im[:, 2:6] = 255  # a white centre square between black side bands
    _save(tmp_path / "wide.png", im)
    crop, _ = read_images([tmp_path / "wide.png"], size=4, fit="crop")
    resize, _ = read_images([tmp_path / "wide.png"], size=4, fit="resize")
    assert crop.shape == resize.shape == (1, 1, 4, 4)
    assert crop.min() > 0.95  # only the white centre is left
    assert resize[0, 0, :, 0].max() < -0.5  # the black bands are squeezed in
    with pytest.raises(UserError, match="image fit"):
        read_images([tmp_path / "wide.png"], size=4, fit="pad")


def test_mixed_sizes_and_formats_with_one_corrupt_file(tmp_path, caplog):
    rng = np.random.default_rng(0)
    _save(tmp_path / "cats" / "a.png", rng.integers(0, 256, (12, 10, 3), dtype=np.uint8))
    _save(tmp_path / "cats" / "b.webp", rng.integers(0, 256, (16, 16, 3), dtype=np.uint8))
    _save(tmp_path / "dogs" / "c.bmp", rng.integers(0, 256, (9, 14), dtype=np.uint8))
    _save(tmp_path / "dogs" / "d.png", rng.integers(0, 256, (20, 20, 4), dtype=np.uint8))
    (tmp_path / "dogs" / "broken.png").write_bytes(b"\x89PNG not really")
    (tmp_path / "dogs" / "notes.txt").write_text("not an image: not counted")
    with caplog.at_level(logging.INFO, logger="diffspace"):
        x, y = load_image_folder(tmp_path)
    assert x.shape == (4, 3, 9, 9) and y.tolist() == [0, 0, 1, 1]  # the smallest side, RGB
    warnings = [r.message for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "skipped 1 of 5 image files" in warnings[0] and "broken.png" in warnings[0]
    x, _ = load_image_folder(tmp_path, size=6, fit="resize")
    assert x.shape == (4, 3, 6, 6)


@pytest.mark.slow
def test_cli_trains_on_a_mixed_folder_with_a_corrupt_file(tmp_path):
    rng = np.random.default_rng(1)
    for i in range(12):
        h, w = (8, 8) if i % 3 else (12, 10)
        _save(tmp_path / "data" / f"k{i % 2}" / f"{i}.png", rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    (tmp_path / "data" / "k0" / "bad.jpg").write_bytes(b"garbage")
    run_dir = tmp_path / "run"
    res = cli("train", "configs/digits-edm.toml", "--set", f"run.dir={run_dir}", "--set", "data.name=folder",
              "--set", f"data.file={tmp_path / 'data'}", "--set", "model.num_classes=2",
              "--set", "model.unet.channels=8", "--set", "model.unet.attn_resolutions=[]",
              "--set", "train.steps=2", "--set", "train.batch_size=4", "--no-progress")
    assert res.returncode == 0, res.stderr
    assert res.stderr.count("skipped 1 of 13 image files that cannot be read: bad.jpg") == 1, res.stderr
    assert "brought 4 of 12 images to 8x8" in res.stderr
    assert runs.load_run(run_dir).meta["data_shape"] == [3, 8, 8]


def test_captioned_folder_skips_an_unreadable_image_with_its_captions(tmp_path):
    _save(tmp_path / "a.png", np.full((6, 4, 3), 200, np.uint8))
    _save(tmp_path / "b.webp", np.full((4, 4, 3), 10, np.uint8))
    (tmp_path / "c.png").write_bytes(b"broken")
    rows = [{"file_name": "a.png", "text": "bright"}, {"file_name": "c.png", "text": "lost"},
            {"file_name": "b.webp", "text": "dark"}]
    (tmp_path / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    d = load_captioned_folder(tmp_path)
    assert d.x.shape == (2, 3, 4, 4) and d.captions == [("bright",), ("dark",)]
