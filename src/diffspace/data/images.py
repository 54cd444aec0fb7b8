"""Image data sets as tensors: x float32 (N, C, H, W) in [-1, 1] and labels long (N,) or None.

Embedded sets (no download): scikit-learn's digits (1797 x 8x8, 17 grey levels, labels 0-9) and
scikit-image's `lfw_subset` (200 x 25x25, 100 faces then 100 non-faces: labels 1 / 0). User data
comes from an image folder (class = subfolder) or an `.npz` file. Augmentations are functions.

Image folders follow stated rules (`read_images`):
- every format Pillow reads (.png, .jpg, .webp, .bmp, .gif, .tif, ...), chosen by file suffix;
- transparency is composited on white (RGBA, LA, palette images with a transparent colour), then
  the image is grey (L) if it was grey, else RGB; 16-bit grey is scaled to 8 bits;
- files Pillow cannot decode are skipped, and one warning gives their count and first names;
- images of another size are brought to one square size: `fit` = "crop" scales the shorter side to
  `size` and cuts the centre (aspect kept), "resize" stretches to size x size (bicubic both). size 0
  keeps the images as they are when all share one size, else uses the smallest side among them.
"""

import functools
import logging
import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from diffspace.types import UserError

log = logging.getLogger("diffspace")
SPLITS = ("train", "test", "all")
FITS = ("crop", "resize")  # how an image of another size becomes size x size (see the module docstring)
LFW_SIZE = 24  # lfw's size when none is given
SHOW_NAMES = 3  # skipped files named in the warning


def _split(x: Tensor, y: Tensor, split: str, seed: int, test_fraction: float):
    """A fixed, seeded permutation: the first `test_fraction` of it is the test split."""
    if split not in SPLITS:
        raise UserError(f"split {split!r} is not one of {', '.join(SPLITS)}")
    if split == "all":
        return x, y
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    n_test = round(test_fraction * len(x))
    idx = perm[:n_test] if split == "test" else perm[n_test:]
    return x[idx], None if y is None else y[idx]


def load_digits(split: str = "train", seed: int = 0, test_fraction: float = 0.2) -> tuple[Tensor, Tensor]:
    """scikit-learn's 8x8 digits, levels 0..16 scaled to [-1, 1], shape (N, 1, 8, 8)."""
    from sklearn.datasets import load_digits as sk_digits

    bunch = sk_digits()
    x = torch.from_numpy(bunch.images).float()[:, None] / 8.0 - 1.0
    y = torch.from_numpy(bunch.target).long()
    return _split(x, y, split, seed, test_fraction)


def load_lfw(split: str = "train", seed: int = 0, size: int = 24,
             test_fraction: float = 0.2) -> tuple[Tensor, Tensor]:
    """scikit-image's `lfw_subset` resized (bilinear) from 25x25 to size x size, shape (N, 1, size, size)."""
    from PIL import Image
    from skimage.data import lfw_subset

    size = size or LFW_SIZE
    if size not in (24, 32):
        raise UserError(f"lfw size must be 24 or 32, got {size}")
    imgs = lfw_subset()  # (200, 25, 25) float64 in [0, 1]
    resized = [np.asarray(Image.fromarray(im.astype(np.float32), mode="F").resize((size, size),
                                                                              Image.BILINEAR))
               for im in imgs]
    x = torch.from_numpy(np.stack(resized)).clamp(0, 1)[:, None] * 2 - 1
    y = torch.cat([torch.ones(100), torch.zeros(100)]).long()  # faces come first in lfw_subset
    return _split(x, y, split, seed, test_fraction)


def image_suffixes() -> frozenset[str]:
    """File suffixes of every format Pillow can open here (.png, .jpg, .webp, .bmp, ...)."""
    from PIL import Image

    Image.init()
    return frozenset(ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN)


def _opaque(im):
    """The module docstring's colour rule: alpha composited on white, then grey ("L") or "RGB"."""
    from PIL import Image

    grey = im.mode in ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F") or \
        (im.mode == "P" and im.palette is not None and im.palette.mode == "L")
    if im.mode.startswith("I;16"):  # why: convert("L") clips 16-bit values instead of scaling them
        return Image.fromarray((np.asarray(im, dtype=np.float64) / 257).round().astype(np.uint8))
    if "A" in im.mode or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        im = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    return im.convert("L" if grey else "RGB")


def _fitted(im, size: int, fit: str):
    """im brought to size x size by the rule `fit` (bicubic)."""
    from PIL import Image, ImageOps

    if im.size == (size, size):
        return im
    if fit == "resize":
        return im.resize((size, size), Image.BICUBIC)
    return ImageOps.fit(im, (size, size), Image.BICUBIC)


def _read_image(path: Path):
    """The opaque Pillow image of a file; UserError if Pillow cannot decode it."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            return _opaque(im)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise UserError(f"cannot read image {path}: {e}") from None


def read_images(files: list[Path], size: int = 0, fit: str = "crop") -> tuple[Tensor, list[int]]:
    """Images (N, C, H, W) in [-1, 1] of the readable files and their indices into `files`, by the rules
    of the module docstring (C = 1 when every image is grey, else 3). UserError when none is readable,
    for a negative size or an unknown fit."""
    if fit not in FITS or size < 0:
        raise UserError(f"image fit must be one of {', '.join(FITS)} with size >= 0, got {fit!r}, {size}")
    images, kept, bad = [], [], []
    for i, f in enumerate(files):
        try:
            images.append(_read_image(f))
            kept.append(i)
        except UserError as e:
            bad.append((f, str(e).rsplit(": ", 1)[-1]))
    if bad:
        names = ", ".join(f"{f.name} ({why})" for f, why in bad[:SHOW_NAMES])
        log.warning("skipped %d of %d image files that cannot be read: %s%s", len(bad), len(files), names,
                    ", ..." if len(bad) > SHOW_NAMES else "")
    if not images:
        raise UserError(f"none of the {len(files)} image files in {files[0].parent} can be read")
    sizes = {im.size for im in images}
    if size or len(sizes) > 1:
        side = size or min(min(s) for s in sizes)
        changed = sum(im.size != (side, side) for im in images)
        if changed:
            log.info("brought %d of %d images to %dx%d (fit %r; sizes were %s)", changed, len(images), side,
                     side, fit, ", ".join(f"{w}x{h}" for w, h in sorted(sizes)[:4]))
        images = [_fitted(im, side, fit) for im in images]
    colour = any(im.mode == "RGB" for im in images)
    arrays = [np.asarray(im.convert("RGB") if colour else im) for im in images]
    x = torch.from_numpy(np.stack(arrays))
    x = x.permute(0, 3, 1, 2) if colour else x[:, None]
    return x.float() / 127.5 - 1.0, kept


def _listing(folder: Path, suffixes: frozenset[str]) -> list[Path]:
    return sorted(f for f in folder.iterdir() if f.is_file() and f.suffix.lower() in suffixes
                  and not f.name.startswith("."))


def load_image_folder(path: str | Path, size: int = 0, fit: str = "crop") -> tuple[Tensor, Tensor | None]:
    """Image files (see the module docstring); subfolders are classes (sorted names -> 0, 1, ...); without
    subfolders, no labels. `size` and `fit` as in `read_images`."""
    root = Path(path)
    if not root.is_dir():
        raise UserError(f"image folder {root} does not exist or is not a folder")
    suffixes = image_suffixes()
    classes = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    groups = [(i, _listing(d, suffixes)) for i, d in enumerate(classes)] or [(None, _listing(root, suffixes))]
    files = [(label, f) for label, fs in groups for f in fs]
    if not files:
        raise UserError(f"image folder {root} holds no image files (.png, .jpg, .webp, .bmp, ... any format "
                        "Pillow reads)")
    stamp = tuple((str(f), os.stat(f).st_mtime_ns, os.stat(f).st_size) for _, f in files)
    x, kept = _read_folder(stamp, size, fit)
    x = x.clone()  # why: the remembered tensor must not change under a caller
    labels = None if groups[0][0] is None else torch.tensor([files[i][0] for i in kept])
    return x, labels


@functools.lru_cache(maxsize=2)
def _read_folder(stamp: tuple, size: int, fit: str) -> tuple[Tensor, list[int]]:
    """read_images, remembered by the files' names, times and sizes: the train and the test split of one
    run read (and report skipped files) once."""
    return read_images([Path(name) for name, _, _ in stamp], size, fit)


def load_npz(path: str | Path) -> tuple[Tensor, Tensor | None]:
    """An .npz with array `x` (N, H, W), (N, C, H, W) or (N, H, W, C) with C in {1, 3}, and optional `y` (N,).

    uint8 images are scaled from 0..255; float images must already lie in [-1, 1].
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"npz file {path} does not exist")
    try:
        with np.load(path) as f:
            arrays = {k: f[k] for k in f.files}
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read npz file {path}: {e}") from None
    if "x" not in arrays:
        raise UserError(f"npz file {path} has no array 'x' (found: {', '.join(arrays) or 'nothing'})")
    x = _layout(arrays["x"], path)
    y = arrays.get("y")
    if y is not None and (y.shape != (len(x),) or not np.issubdtype(y.dtype, np.integer)):
        raise UserError(f"npz file {path}: 'y' must be integer labels of shape ({len(x)},), got "
                        f"{y.dtype} {y.shape}")
    return x, None if y is None else torch.from_numpy(y).long()


def _layout(a: np.ndarray, path: Path) -> Tensor:
    if a.ndim == 3:
        a = a[:, None]
    elif a.ndim == 4 and a.shape[1] not in (1, 3) and a.shape[-1] in (1, 3):
        a = a.transpose(0, 3, 1, 2)
    if a.ndim != 4 or a.shape[1] not in (1, 3) or len(a) == 0:
        raise UserError(f"npz file {path}: 'x' must be (N, H, W), (N, C, H, W) or (N, H, W, C) with "
                        f"C in 1, 3 and N > 0; got shape {a.shape}")
    if a.dtype == np.uint8:
        return torch.from_numpy(np.ascontiguousarray(a)).float() / 127.5 - 1.0
    x = torch.from_numpy(np.ascontiguousarray(a)).float()
    if not torch.isfinite(x).all() or x.abs().max() > 1:
        raise UserError(f"npz file {path}: float 'x' must be finite and in [-1, 1] (or give uint8 0..255)")
    return x


def random_hflip(x: Tensor, generator: torch.Generator | None = None, p: float = 0.5) -> Tensor:
    """Mirror each image left-right with probability p."""
    flip = torch.rand(x.shape[0], generator=generator, device=x.device) < p
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def load_image_data(name: str, split: str = "train", seed: int = 0, path: str | None = None,
                    size: int = 0, fit: str = "crop") -> tuple[Tensor, Tensor | None]:
    """Dispatch by data name: digits, lfw, folder, npz; every source is split the same way by seed.
    `size`: lfw 24 or 32 (0: 24); a folder's square side (0: see `read_images`), with `fit`. UserError
    for a path or size the data cannot use (they were ignored without a word), or a negative size."""
    if size < 0:
        raise UserError(f"image size must be >= 0 (0: the data's own), got {size}")
    if path and name in ("digits", "lfw"):
        raise UserError(f"data {name!r} is embedded and takes no file (a file is for folder or npz data), "
                        f"got {path!r}")
    if size and name in ("digits", "npz"):
        raise UserError(f"data {name!r} keeps its images' own size (a size is for lfw, 24 or 32, or folder "
                        f"data), got {size}")
    if name == "digits":
        return load_digits(split, seed)
    if name == "lfw":
        return load_lfw(split, seed, size)
    if name in ("folder", "npz"):
        if path is None:
            raise UserError(f"data {name!r} needs a path")
        x, y = load_image_folder(path, size, fit) if name == "folder" else load_npz(path)
        return _split(x, y, split, seed, 0.2)
    raise UserError(f"unknown image data {name!r} (expected digits, lfw, folder or npz)")
