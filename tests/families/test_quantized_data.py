"""The discrete data of the likelihood families: grid round trips, binarized digits, quantized toy sets."""

import pytest
import torch

from diffspace.data.images import load_digits
from diffspace.data.quantized import BINARY, Grid, binarized_digits, check_grid, quantized_toy
from diffspace.types import UserError


def test_grid_round_trip_and_nearest_level():
    grid = Grid(17)  # the digits' grey levels on [-1, 1]
    k = torch.arange(17)
    assert torch.equal(grid.index(grid.value(k)), k)
    assert grid.delta == pytest.approx(1 / 8)
    x = torch.tensor([-3.0, -1.0 + 0.49 / 8, -1.0 + 0.51 / 8, 0.0, 5.0])
    assert grid.index(x).tolist() == [0, 0, 1, 8, 16]
    digits, _ = load_digits("test")
    assert torch.equal(grid.quantize(digits), digits)  # the digits already lie on this grid


def test_binarized_digits():
    x, y = binarized_digits("train")
    grey, labels = load_digits("train")
    assert x.shape == grey.shape and torch.equal(y, labels)
    assert set(x.unique().tolist()) == {-1.0, 1.0}
    assert torch.equal(x > 0, grey > 0) and torch.equal(BINARY.quantize(x), x)
    assert 0.2 < float((x > 0).float().mean()) < 0.5


def test_quantized_toy_lies_on_the_grid():
    grid = Grid(64, -2.5, 2.5)
    x = quantized_toy("checkerboard", 5000, grid)
    assert x.shape == (5000, 2)
    assert (x - grid.quantize(x)).abs().max() == 0
    assert (x.abs() <= 2.5).all() and len(x.unique()) > 40


@pytest.mark.parametrize("grid", [Grid(1), Grid(4, 1.0, 1.0)])
def test_bad_grid(grid):
    with pytest.raises(UserError):
        check_grid(grid)
