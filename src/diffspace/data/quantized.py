"""Discrete data for the likelihood families: a grid of levels, binarized digits, quantized 2-D sets.

Every discrete data set in diffspace is stored as float grid values `low + k * delta`,
k = 0 .. levels - 1, delta = (high - low) / (levels - 1) (the digits' 17 grey levels on [-1, 1], binary
pixels as {-1, 1}), so continuous-density families see the same tensors as the categorical ones. A
`Grid` converts between those values and the level indices k that categorical models predict; the
dequantization offset that makes a density's NLL comparable is stated in docs/likelihood.md and
computed by diffspace.eval.bits with the same (levels, low, high).
"""

from typing import NamedTuple

import torch
from torch import Tensor

from diffspace.data.images import load_digits
from diffspace.data.toy import make_toy
from diffspace.types import UserError


class Grid(NamedTuple):
    """`levels` equally spaced values from `low` to `high` (both included)."""

    levels: int
    low: float = -1.0
    high: float = 1.0

    @property
    def delta(self) -> float:
        return (self.high - self.low) / (self.levels - 1)

    def index(self, x: Tensor) -> Tensor:
        """Level index (long, shaped like x) of the nearest grid value; values outside are clamped."""
        return torch.round((x.double() - self.low) / self.delta).clamp(0, self.levels - 1).long()

    def value(self, k: Tensor, dtype=torch.float32) -> Tensor:
        return (self.low + k.double() * self.delta).to(dtype)

    def quantize(self, x: Tensor) -> Tensor:
        return self.value(self.index(x), x.dtype)


def check_grid(grid: Grid) -> Grid:
    if grid.levels < 2 or not grid.high > grid.low:
        raise UserError(f"a data grid needs levels >= 2 and high > low, got {grid}")
    return grid


BINARY = Grid(2)  # pixels off / on as -1 / 1


def binarized_digits(split: str = "train", seed: int = 0) -> tuple[Tensor, Tensor]:
    """scikit-learn's 8x8 digits with a pixel on when its grey level is above half (level > 8 of 16):
    x in {-1, 1} of shape (N, 1, 8, 8) on the BINARY grid, labels (N,); splits as in load_digits."""
    x, y = load_digits(split, seed)
    return torch.where(x > 0, 1.0, -1.0), y


def quantized_toy(name: str, n: int, grid: Grid, seed: int = 0, split: str = "train") -> Tensor:
    """n points of toy set `name` rounded to the nearest values of `grid` in each coordinate, (n, 2)
    float32; points outside [low, high] are clamped to the edge levels."""
    return check_grid(grid).quantize(make_toy(name, n, seed, split))
