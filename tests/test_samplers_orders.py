"""Multistep orders on coarse grids (samplers/multistep.py `step_orders`): lower-order final steps, the
extrapolation-ratio limit and the curvature radius keep 3M no worse than 2M at 5 steps on every grid and
stable across the 18x sigma jump of `uniform_t` on the DDPM table, against the exact mixture denoiser;
each rule fires only on coarse grids (fine grids keep their orders, tests/test_samplers_ode.py)."""

import math

import pytest
import torch

from diffspace.data.gmm import eight_gaussians_mixture
from diffspace.paths import DDPMDiscrete
from diffspace.samplers import multistep
from diffspace.samplers.grids import GRIDS, logsnr_sigmas, sampling_range
from diffspace.samplers.multistep import sample_dpmpp_2m, sample_dpmpp_3m, step_orders
from diffspace.samplers.ode import sample_adaptive

PATH = DDPMDiscrete()
LO, HI = sampling_range(PATH)
GRID_NAMES = ["karras", "logsnr", "uniform_t", "trailing", "linspace"]


@pytest.fixture(scope="module", params=[0.1, 0.5], ids=["std0.1", "std0.5"])
def problem(request):
    """x_T ~ N(0, I) in VP space from sigma_max of the DDPM table, and the adaptive PF-ODE solution."""
    gmm = eight_gaussians_mixture(2.0, request.param)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 2, dtype=torch.float64, generator=g) * math.sqrt(1 + HI**2)
    return gmm, x, sample_adaptive(gmm.denoiser, x, HI, LO, rtol=1e-8, atol=1e-8)


def rmse(fn, problem, sigmas, **opts) -> float:
    gmm, x, ref = problem
    return float((fn(gmm.denoiser, x, sigmas, **opts) - ref).pow(2).sum(1).mean().sqrt())


@pytest.mark.parametrize("grid", GRID_NAMES)
def test_3m_at_5_steps_is_no_worse_than_2m_on_every_grid(problem, grid):
    sigmas = GRIDS[grid](5, LO, HI, path=PATH)
    e2, e3 = rmse(sample_dpmpp_2m, problem, sigmas), rmse(sample_dpmpp_3m, problem, sigmas)
    assert e3 <= e2, (grid, e3, e2)


def test_without_the_rules_3m_falls_apart(problem, monkeypatch):
    """The test above has power: without the three rules 3M at 5 uniform-logSNR steps and at 20
    uniform_t steps (the 18x jump before sigma_min) is several times worse than with them."""
    cases = [(GRIDS["logsnr"](5, LO, HI, path=PATH)), GRIDS["uniform_t"](20, LO, HI, path=PATH)]
    guarded = [rmse(sample_dpmpp_3m, problem, s) for s in cases]
    monkeypatch.setattr(multistep, "MAX_EXTRAPOLATION", math.inf)
    monkeypatch.setattr(multistep, "TAYLOR_RADIUS", math.inf)
    bare = [rmse(sample_dpmpp_3m, problem, s, lower_order_final=False) for s in cases]
    assert all(b > 2 * g for b, g in zip(bare, guarded, strict=True)), (bare, guarded)


def test_the_18x_jump_of_uniform_t_is_taken_at_first_order():
    sigmas = GRIDS["uniform_t"](20, LO, HI, path=PATH).tolist()
    assert sigmas[-3] / sigmas[-2] > 15  # the jump into sigma_min
    orders = step_orders(sigmas, 3)
    assert orders[-2] == 1 and orders[1:-2] == [2] + [3] * 16 and orders[-1] == 1


def test_lower_order_final_below_15_steps_and_full_orders_on_fine_grids():
    fine = logsnr_sigmas(40, 0.002, 80.0).tolist()  # h = 0.27 in lam: no rule fires
    assert step_orders(fine, 3) == [1, 2] + [3] * 37 + [1]
    eight = logsnr_sigmas(8, 0.002, 80.0).tolist()  # h = 1.51 < pi / 2
    assert step_orders(eight, 3) == [1, 2, 3, 3, 3, 3, 2, 1]
    assert step_orders(eight, 3, lower_order_final=False) == [1, 2, 3, 3, 3, 3, 3, 1]
    coarse = logsnr_sigmas(5, 0.002, 80.0).tolist()  # h = 2.65 > pi / 2: no quadratic
    assert step_orders(coarse, 3) == [1, 2, 2, 2, 1]
    assert step_orders(coarse, 2, corrector=True) == [1, 1, 1, 1, 1]  # UniC would make it quadratic
