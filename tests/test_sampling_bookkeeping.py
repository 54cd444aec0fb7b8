"""Sampling bookkeeping (issue 11): every grid exact and valid for every step count, table lookups that
refuse instead of wrapping, and every random draw of a continuous sampler taken per sample, so that
sample i is the same whatever the batch it is drawn in."""

import math
from fractions import Fraction

import pytest
import torch

from diffspace.data.gmm import GaussianMixture
from diffspace.paths import PATHS, DDPMDiscrete, DDPMZeroTerminalSNR
from diffspace.rng import Streams
from diffspace.samplers.grids import GRIDS, check_grid, table_sigmas, trailing_timesteps
from diffspace.samplers.ode import CountingDenoiser
from diffspace.samplers.registry import SAMPLERS
from diffspace.types import UserError

TABLE_GRIDS = ("leading", "trailing", "linspace")


def _grid_cases():
    """(grid name, path) pairs that make sense: table spacings on the tables, the rest on every path."""
    for name in GRIDS:
        for path_name, cls in PATHS.items():
            table = issubclass(cls, DDPMDiscrete)
            if name in TABLE_GRIDS and not table:
                continue
            yield name, path_name


@pytest.mark.parametrize("name,path_name", list(_grid_cases()))
def test_every_grid_is_valid_for_every_step_count(name, path_name):
    """n + 1 float64 values, finite, strictly decreasing, ending in 0, inside the path's range, for every
    n in 1..1000 (the property behind the trailing-spacing fault)."""
    path = PATHS[path_name]()
    lo, hi = path.sigma_min, path.sigma_max
    for n in range(1, 1001):
        sigmas = GRIDS[name](n, lo, hi, path=path)
        assert sigmas.dtype == torch.float64 and sigmas.shape == (n + 1,), (name, n)
        check_grid(sigmas, path)  # raises on any fault


def _trailing_expected(n: int, T: int = 1000) -> list[int]:
    # round half to even on exact rationals, as numpy's round does
    return [T - round(Fraction(k * T, n)) - 1 for k in range(n)]


def test_trailing_has_exactly_n_timesteps_for_every_n():
    path = DDPMDiscrete()
    assert trailing_timesteps(61, path)[-3:].tolist() == [48.0, 32.0, 15.0]
    for n in range(1, 1001):
        assert trailing_timesteps(n, path).tolist() == _trailing_expected(n), n


def test_trailing_61_steps_does_not_collapse_the_samples():
    """Before the fix the 61-step trailing grid jumped back to sigma_max just before 0, so Euler with the
    exact denoiser of N(0, 0.7^2) returned the mean for every sample (std 0.0003 instead of ~0.675)."""
    data = GaussianMixture(torch.zeros(1, 1), torch.tensor([0.7]), torch.ones(1))
    path = DDPMDiscrete()
    noise = torch.randn(4000, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    std = {}
    for n in (60, 61):
        sigmas = GRIDS["trailing"](n, path=path)
        x = SAMPLERS["euler"].fn(data.denoiser, noise * math.sqrt(1 + float(sigmas[0]) ** 2), sigmas)
        std[n] = float(x.std())
    assert 0.6 < std[60] < 0.75 and abs(std[61] - std[60]) < 0.005, std


def test_table_lookup_refuses_instead_of_wrapping():
    path = DDPMDiscrete()
    for bad in ([10, -1], [1000, 5], [3.5, 1]):
        with pytest.raises(UserError, match="timesteps must be integers in"):
            table_sigmas(path, torch.tensor(bad))


@pytest.mark.parametrize("bad,words", [
    ([80.0, 1.0, 1.0, 0.0], "strictly decreasing"),
    ([80.0, float("nan"), 0.0], "finite"),
    ([80.0, 1.0, 0.5], "last noise level must be 0"),
    ([500.0, 1.0, 0.0], "leave the range"),
    ([80.0, 1e-9, 0.0], "leave the range"),
    ([1.0], "at least 2"),
])
def test_user_grids_go_through_the_validator(bad, words):
    with pytest.raises(UserError, match=words):
        check_grid(torch.tensor(bad, dtype=torch.float64), PATHS["edm"]())


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_samplers_refuse_a_grid_that_is_not_decreasing(name):
    data = GaussianMixture(torch.zeros(1, 1), torch.tensor([0.7]), torch.ones(1))
    with pytest.raises(UserError, match="strictly decreasing"):
        bad = torch.tensor([1.0, 2.0, 0.0], dtype=torch.float64)
        SAMPLERS[name].fn(data.denoiser, torch.zeros(2, 1), bad, generator=torch.Generator())


def test_zero_terminal_snr_is_a_path():
    path = PATHS["ddpm_zsnr"]()
    assert isinstance(path, DDPMZeroTerminalSNR) and path.sigma_max > 1e4
    sigmas = GRIDS["trailing"](10, path=path)
    assert float(sigmas[0]) == pytest.approx(path.sigma_max, rel=1e-12)


STOCHASTIC = [name for name, spec in SAMPLERS.items() if spec.stochastic]


@pytest.mark.parametrize("name", STOCHASTIC)
def test_stochastic_samples_do_not_depend_on_the_batch(name):
    """Sample i of a batch of 3 equals sample i of a batch of 5 and of a batch drawn as [2, 3]: each
    sample's initial noise and every later draw come from its own stream (diffspace.rng.Streams)."""
    data = GaussianMixture(torch.tensor([[-1.0, 0.0], [1.0, 0.5]]), torch.tensor([0.3, 0.2]),
                           torch.tensor([0.4, 0.6]))
    sigmas = GRIDS["karras"](6, 0.002, 80.0)

    def draw(n, offset=0):
        streams = Streams(5, n, offset)
        x = streams.randn((n, 2), torch.float64) * sigmas[0]
        return SAMPLERS[name].fn(data.denoiser, x, sigmas, generator=streams)

    five, three = draw(5), draw(3)
    split = torch.cat([draw(2), draw(3, offset=2)])
    assert torch.equal(three, five[:3]) and torch.equal(split, five)
    assert not torch.equal(five[0], five[1])


@pytest.mark.parametrize("name", [n for n, s in SAMPLERS.items() if s.nfe is not None])
@pytest.mark.parametrize("steps", [1, 2, 5])
def test_network_calls_equal_the_declared_nfe(name, steps):
    data = GaussianMixture(torch.zeros(1, 1), torch.tensor([0.7]), torch.ones(1))
    den = CountingDenoiser(data.denoiser)
    sigmas = GRIDS["karras"](steps, 0.002, 80.0)
    SAMPLERS[name].fn(den, torch.randn(4, 1, dtype=torch.float64) * 80.0, sigmas,
                      generator=torch.Generator().manual_seed(0))
    assert den.nfe == SAMPLERS[name].nfe(steps), (name, steps, den.nfe)
