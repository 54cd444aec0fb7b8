"""Sample grids as PNG files (pillow only; eval/plots.labelled_grid adds titles and labels).

Images are (N, C, H, W) in [-1, 1] with C = 1 (grey) or 3 (RGB). Small images are enlarged with
nearest-neighbour so each pixel stays visible.
"""

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from diffspace.files import atomic_write
from diffspace.types import UserError


def _to_uint8(x: Tensor) -> np.ndarray:
    """(N, C, H, W) in [-1, 1] -> (N, H, W, C) uint8."""
    u8 = ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return u8.permute(0, 2, 3, 1).numpy()


def image_grid(x: Tensor, ncols: int, pad: int = 1, scale: int = 1) -> Image.Image:
    """Row-major grid of the N images with `ncols` per row and `pad` white pixels between them."""
    if x.ndim != 4 or x.shape[1] not in (1, 3) or len(x) == 0:
        raise UserError(f"a picture grid needs images (N, 1 or 3, H, W), got shape {tuple(x.shape)}")
    imgs = _to_uint8(x)
    N, H, W, C = imgs.shape
    nrows = -(-N // ncols)
    canvas = np.full((nrows * (H + pad) + pad, ncols * (W + pad) + pad, C), 255, dtype=np.uint8)
    for i, im in enumerate(imgs):
        r, c = divmod(i, ncols)
        canvas[pad + r * (H + pad):pad + r * (H + pad) + H, pad + c * (W + pad):pad + c * (W + pad) + W] = im
    pic = Image.fromarray(canvas[..., 0] if C == 1 else canvas)
    return pic.resize((pic.width * scale, pic.height * scale), Image.NEAREST) if scale > 1 else pic


def save_grid(x: Tensor, path: str | Path, ncols: int, scale: int = 4) -> Path:
    """Save a sample grid; for class-conditional samples sorted by class, ncols = samples per class
    gives one row per class."""
    path = Path(path)
    with atomic_write(path) as tmp:
        image_grid(x, ncols, scale=scale).save(tmp)
    return path
