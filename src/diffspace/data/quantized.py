"""Discrete data for the likelihood families: a grid of levels, binarized digits, quantized 2-D sets.

Every discrete data set in diffspace is stored as float grid values `low + k * delta`,
k = 0 .. levels - 1, delta = (high - low) / (levels - 1) (the digits' 17 grey levels on [-1, 1], binary
pixels as {-1, 1}), so continuous-density families see the same tensors as the categorical ones. A
`Grid` converts between those values and the level indices k that categorical models predict, and
dequantizes them: y = x + delta (u - 1/2), u ~ U[0, 1)^D, fills each value's own bin of width delta
centred on it (uniform dequantization, [RNVP] arXiv 1605.08803v3 Sec. 4.1). The offset that turns a
density's NLL of y into a bound on the discrete NLL is derived once, in docs/likelihood.md, and computed
by diffspace.eval.bits.dequantization_offset.
"""

from typing import NamedTuple

import torch
from torch import Tensor

from diffspace import rng
from diffspace.data.checks import check_count
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

    def dequantize(self, x: Tensor, generator: rng.Generator | None) -> Tensor:
        """y = x + delta (u - 1/2) for grid values x (B, ...), u ~ U[0, 1) drawn in float64: a generator
        for training batches, or rng.Streams (row i from example i's stream) for evaluation, so that
        a sharded or re-batched evaluation dequantizes every example the same way."""
        u = rng.rand(tuple(x.shape), generator, torch.float64, x.device)
        return (x.double() + self.delta * (u - 0.5)).to(x.dtype)


def check_grid(grid: Grid) -> Grid:
    if grid.levels < 2 or not grid.high > grid.low:
        raise UserError(f"a data grid needs levels >= 2 and high > low, got {grid}")
    return grid


BINARY = Grid(2)  # pixels off / on as -1 / 1
DIGITS = Grid(17)  # scikit-learn's 8x8 digits: grey levels 0..16 as -1 + k / 8


def binarized_digits(split: str = "train", seed: int = 0) -> tuple[Tensor, Tensor]:
    """scikit-learn's 8x8 digits with a pixel on when its grey level is above half (level > 8 of 16):
    x in {-1, 1} of shape (N, 1, 8, 8) on the BINARY grid, labels (N,); splits as in load_digits."""
    x, y = load_digits(split, seed)
    return binarize(x), y


def binarize(x: Tensor) -> Tensor:
    """Values above the middle of [-1, 1] on (1), the rest off (-1): the BINARY grid."""
    return torch.where(x > 0, 1.0, -1.0).to(x.dtype)


def quantized_toy(name: str, n: int, grid: Grid, seed: int = 0, split: str = "train") -> Tensor:
    """n points of toy set `name` rounded to the nearest values of `grid` in each coordinate, (n, 2)
    float32; points outside [low, high] are clamped to the edge levels. UserError as `make_toy`."""
    check_count(n, f"quantized_toy({name!r})")
    return check_grid(grid).quantize(make_toy(name, n, seed, split))
