"""Sampler options described in the registry (name, type, default, meaning, range) and checked with
one-line UserErrors; the sampling range is the path's own (a DDPM run starts at its sigma_max, t = 999)."""

import inspect

import pytest
import torch

from diffspace.data.gmm import GaussianMixture
from diffspace.paths import PATHS, DDPMDiscrete
from diffspace.samplers.grids import GRIDS, sampling_range
from diffspace.samplers.registry import SAMPLERS, check_sampler_options
from diffspace.types import UserError

NOT_OPTIONS = {"denoiser", "x", "sigmas", "generator", "callback", "cond"}


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_registry_describes_exactly_the_functions_options(name):
    """Every keyword option of the sampler function is declared with its default and type, and every
    declared option is one the function takes, so a validated dict can be passed straight through."""
    spec = SAMPLERS[name]
    params = {k: p for k, p in inspect.signature(spec.fn).parameters.items() if k not in NOT_OPTIONS}
    assert {o.name for o in spec.options} == set(params), name
    for opt in spec.options:
        assert params[opt.name].default == opt.default and isinstance(opt.default, opt.type), opt
        assert opt.meaning and opt.low <= opt.default <= opt.high


def test_defaults_are_filled_and_values_converted():
    assert check_sampler_options("ddim", None) == {"eta": 0.0}
    assert check_sampler_options("ddim", {"eta": 1}) == {"eta": 1.0}
    assert check_sampler_options("heun", {}) == {}
    assert check_sampler_options("unipc", {"order": 3}) == {"order": 3, "lower_order_final": True}


@pytest.mark.parametrize("name,options,words", [
    ("nope", {}, "unknown sampler 'nope'"),
    ("ddim", {"etta": 0.5}, "has no option 'etta'; its options: eta"),
    ("heun", {"eta": 0.5}, "its options: none"),
    ("ddim", {"eta": 1.5}, "must lie in [0, 1], got 1.5"),
    ("ddim", {"eta": "0.5"}, "must be float, got '0.5'"),
    ("unipc", {"order": 2.0}, "must be int, got 2.0"),
    ("unipc", {"order": 4}, "must lie in [1, 3]"),
    ("dpmpp_3m", {"lower_order_final": 0}, "must be bool, got 0"),
    ("pc", {"snr": True}, "must be float, got True"),
    ("edm_sde", {"s_churn": -1.0}, "must lie in [0, inf]"),
])
def test_bad_options_are_one_line_user_errors(name, options, words):
    with pytest.raises(UserError) as err:
        check_sampler_options(name, options)
    assert words in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("name", [n for n, s in SAMPLERS.items() if s.options and s.nfe is not None])
def test_checked_options_run(name):
    data = GaussianMixture(torch.zeros(1, 1), torch.tensor([0.7]), torch.ones(1))
    opts = check_sampler_options(name, {})
    x, g = torch.randn(4, 1, dtype=torch.float64) * 80.0, torch.Generator().manual_seed(0)
    out = SAMPLERS[name].fn(data.denoiser, x, GRIDS["karras"](4, 0.002, 80.0), generator=g, **opts)
    assert torch.isfinite(out).all()


def test_ddpm_runs_start_at_the_tables_sigma_max():
    """The run's range is the path's own: the DDPM table's last timestep (sigma ~ 157, diffusers' t = 999),
    not EDM's 80 (where a run started at about timestep 930)."""
    path = DDPMDiscrete()
    lo, hi = sampling_range(path)
    assert hi == path.sigma_max == float(torch.exp(path.log_sigmas[-1])) and 150 < hi < 160
    assert lo == path.sigma_min == float(torch.exp(path.log_sigmas[0]))
    for grid in [g for g in GRIDS if g != "leading"]:  # leading spacing never reaches T - 1, by definition
        sigmas = GRIDS[grid](10, lo, hi, path=path)
        assert float(sigmas[0]) == pytest.approx(hi, rel=1e-12), grid
        t = path.t_from_sigma(sigmas[:1])
        assert float(path.noise_cond(t)) == 999.0, grid


@pytest.mark.parametrize("name", sorted(PATHS))
def test_sampling_range_is_the_paths_own_unless_asked(name):
    path = PATHS[name]()
    assert sampling_range(path) == (path.sigma_min, path.sigma_max)
    lo, hi = path.sigma_min * 2, path.sigma_max / 2
    assert sampling_range(path, lo, hi) == (lo, hi)
    for bad in ({"sigma_max": path.sigma_max * 2}, {"sigma_min": path.sigma_min / 2},
                {"sigma_min": hi, "sigma_max": lo}):
        with pytest.raises(UserError) as err:
            sampling_range(path, **bad)
        assert "\n" not in str(err.value)


@pytest.mark.parametrize("kw", [{"n": 2.5}, {"n": "10"}, {"seed": 1.5}, {"n": True}, {"steps": 2.7},
                                {"top_k": 3.0}])
def test_options_that_must_be_integers_are_one_line_errors(kw):
    """From Python, SampleOptions(n=2.5) or n="10" was a TypeError deep in sampling; numpy integers stay
    welcome."""
    import numpy as np

    from diffspace import runs
    from diffspace.runs.options import check_options

    (name, value), = kw.items()
    with pytest.raises(UserError, match=rf"^{name} \(--{name.replace('_', '-')}\) must be an integer, got "):
        check_options(runs.SampleOptions(**kw), frozenset(kw), "continuous")
    check_options(runs.SampleOptions(n=np.int64(5)), frozenset({"n"}), "continuous")
