"""The toy generators refuse a count, split or seed they cannot draw with one line naming it (they were bare
torch errors: 'negative dimension', 'invalid combination of arguments', 'cannot sample n_sample <= 0',
a KeyError for the split)."""

import numpy as np
import pytest
import torch

from diffspace.data.toy import TOY_SETS, make_toy, pinwheel
from diffspace.types import UserError


@pytest.mark.parametrize("name", list(TOY_SETS))
@pytest.mark.parametrize("n", [0, -1, 2.5, True, "3", None])
def test_make_toy_refuses_a_count_that_is_not_a_positive_integer(name, n):
    want = rf"^make_toy\('{name}'\): n, the number of points, must be an integer >= 1, got {n!r}$"
    with pytest.raises(UserError, match=want):
        make_toy(name, n)


@pytest.mark.parametrize("name, fn", list(TOY_SETS.items()))
def test_each_generator_refuses_a_bad_count_itself(name, fn):
    g = torch.Generator().manual_seed(0)
    for n in (0, -3, 1.0):
        with pytest.raises(UserError, match=rf"^{fn.__name__}: n, the number of points, must be an integer"):
            fn(n, g)
    assert fn(1, g).shape == (1, 2) and fn(np.int64(3), g).shape == (3, 2)
    with pytest.raises(UserError, match=r"^pinwheel: arms must be an integer >= 1, got 0$"):
        pinwheel(4, g, arms=0)


def test_make_toy_refuses_an_unknown_split_or_a_seed_torch_cannot_take():
    with pytest.raises(UserError, match=r"^make_toy: split must be one of train, test, got 'val'$"):
        make_toy("moons", 4, split="val")
    for seed in (-1, 2**63, 1.5):
        with pytest.raises(UserError, match=rf"^make_toy: seed must be an integer in 0..{2**63 - 1}, got"):
            make_toy("moons", 4, seed=seed)
    x = make_toy("moons", np.int64(5), seed=np.int64(2**63 - 1), split="test")  # the largest seed, held out
    assert x.shape == (5, 2) and x.dtype == torch.float32
