"""Image data sets as tensors: x float32 (N, C, H, W) in [-1, 1] and labels long (N,) or None.

Embedded sets (no download): scikit-learn's digits (1797 x 8x8, 17 grey levels, labels 0-9) and
scikit-image's `lfw_subset` (200 x 25x25, 100 faces then 100 non-faces: labels 1 / 0). User data
comes from an image folder (class = subfolder) or an `.npz` file. Augmentations are functions.
"""

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from diffspace.types import UserError

SPLITS = ("train", "test", "all")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


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

    if size not in (24, 32):
        raise UserError(f"lfw size must be 24 or 32, got {size}")
    imgs = lfw_subset()  # (200, 25, 25) float64 in [0, 1]
    resized = [np.asarray(Image.fromarray(im.astype(np.float32), mode="F").resize((size, size),
                                                                              Image.BILINEAR))
               for im in imgs]
    x = torch.from_numpy(np.stack(resized)).clamp(0, 1)[:, None] * 2 - 1
    y = torch.cat([torch.ones(100), torch.zeros(100)]).long()  # faces come first in lfw_subset
    return _split(x, y, split, seed, test_fraction)


def _read_image(path: Path) -> np.ndarray:
    """(H, W) for greyscale, (H, W, 3) for colour, uint8."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            return np.asarray(im.convert("L" if im.mode in ("L", "1", "I;16", "I", "F") else "RGB"))
    except (UnidentifiedImageError, OSError) as e:
        raise UserError(f"cannot read image {path}: {e}") from None


def _to_tensor(arrays: list[np.ndarray], names: list) -> Tensor:
    """Stack uint8 images of one size into (N, C, H, W) in [-1, 1]; greyscale is kept if all are grey."""
    sizes = {a.shape[:2] for a in arrays}
    if len(sizes) > 1:
        raise UserError(f"images have mixed sizes {sorted(sizes)} (first two: {names[0]}, {names[-1]}); "
                        "resize them to one size")
    if any(a.ndim == 3 for a in arrays):
        arrays = [a if a.ndim == 3 else np.repeat(a[..., None], 3, axis=2) for a in arrays]
        x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)
    else:
        x = torch.from_numpy(np.stack(arrays))[:, None]
    return x.float() / 127.5 - 1.0


def load_image_folder(path: str | Path) -> tuple[Tensor, Tensor | None]:
    """PNG/JPEG files; subfolders are classes (sorted names -> 0, 1, ...); without subfolders, no labels."""
    root = Path(path)
    if not root.is_dir():
        raise UserError(f"image folder {root} does not exist or is not a folder")
    classes = sorted(p for p in root.iterdir() if p.is_dir())
    groups = [(i, sorted(f for f in d.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES))
              for i, d in enumerate(classes)] or \
             [(None, sorted(f for f in root.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES))]
    files = [(label, f) for label, fs in groups for f in fs]
    if not files:
        raise UserError(f"image folder {root} holds no .png/.jpg/.jpeg files")
    x = _to_tensor([_read_image(f) for _, f in files], [f for _, f in files])
    labels = None if groups[0][0] is None else torch.tensor([label for label, _ in files])
    return x, labels


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


def dequantize(x: Tensor, levels: int, generator: torch.Generator | None = None) -> Tensor:
    """Uniform dequantization: level k of `levels` becomes (k + U) / levels, rescaled to [-1, 1]."""
    k = torch.round((x + 1) / 2 * (levels - 1))
    u = torch.rand(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    return (k + u) / levels * 2 - 1


def random_hflip(x: Tensor, generator: torch.Generator | None = None, p: float = 0.5) -> Tensor:
    """Mirror each image left-right with probability p."""
    flip = torch.rand(x.shape[0], generator=generator, device=x.device) < p
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def load_image_data(name: str, split: str = "train", seed: int = 0, path: str | None = None,
                    size: int = 24) -> tuple[Tensor, Tensor | None]:
    """Dispatch by data name: digits, lfw, folder, npz; every source is split the same way by seed."""
    if name == "digits":
        return load_digits(split, seed)
    if name == "lfw":
        return load_lfw(split, seed, size)
    if name in ("folder", "npz"):
        if path is None:
            raise UserError(f"data {name!r} needs a path")
        x, y = load_image_folder(path) if name == "folder" else load_npz(path)
        return _split(x, y, split, seed, 0.2)
    raise UserError(f"unknown image data {name!r} (expected digits, lfw, folder or npz)")
