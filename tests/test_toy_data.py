"""The toy generators refuse a count, split or seed they cannot draw with one line naming it (they were bare
torch errors: 'negative dimension', 'invalid combination of arguments', 'cannot sample n_sample <= 0',
a KeyError for the split)."""

from pathlib import Path

import numpy as np
import pytest
import torch

from diffspace.data.gmm import GaussianMixture, eight_gaussians_mixture
from diffspace.data.quantized import DIGITS, quantized_toy
from diffspace.data.shapes import make_shapes
from diffspace.data.toy import TOY_SETS, make_toy, pinwheel
from diffspace.runs import load_config
from diffspace.types import UserError

ROOT = Path(__file__).resolve().parents[1]


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


@pytest.mark.parametrize("n", [0, -1, 2.5, True, "3", None])
def test_the_other_data_generators_refuse_a_bad_count(n):
    g, gmm = torch.Generator().manual_seed(0), eight_gaussians_mixture()
    with pytest.raises(UserError, match=rf"^GaussianMixture.sample: n, the number of points, must be an "
                                        rf"integer >= 1, got {n!r}$"):
        gmm.sample(n, g)
    with pytest.raises(UserError, match=r"^GaussianMixture.entropy: n, the number of Monte Carlo draws,"):
        gmm.entropy(n)
    with pytest.raises(UserError, match=r"^quantized_toy\('moons'\): n, the number of points, must be an"):
        quantized_toy("moons", n, DIGITS)
    with pytest.raises(UserError, match=r"^make_shapes: n, the number of images, must be an integer >= 1"):
        make_shapes(n)


def test_the_other_data_generators_still_draw_a_good_count():
    gmm = GaussianMixture(torch.zeros(1, 3), torch.tensor(0.5))
    assert gmm.sample(np.int64(4), torch.Generator().manual_seed(0)).shape == (4, 3)
    assert eight_gaussians_mixture().entropy(n=100) > 0
    assert quantized_toy("moons", 5, DIGITS).shape == (5, 2)
    assert make_shapes(2, size=16).x.shape == (2, 3, 16, 16)


@pytest.mark.parametrize("override", ["data.n_train=0", "data.n_train=-5", "data.n_test=0", "data.n_test=-1"])
def test_a_config_refuses_a_count_naming_its_key(override):
    """It failed deep inside make_toy, with a message that named no config key."""
    key, value = override.split("=")
    with pytest.raises(UserError, match=rf"demo.toml: {key} must be an integer >= 1, got {value}$"):
        load_config(ROOT / "configs/demo.toml", [override])
    assert load_config(ROOT / "configs/demo.toml", ["data.n_train=1", "data.n_test=1"]).data.n_test == 1
