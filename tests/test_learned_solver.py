"""The learned multistep solver (samplers/learned.py) on exact Gaussian-mixture denoisers (float64): its
start is DPM-Solver++(2M) exactly, any weights integrate a constant denoiser exactly, it spends n calls,
learning lowers the error on held-out noise at equal NFE, the network's weights collect no gradient, and
its plan round-trips through JSON."""

import math

import pytest
import torch

from diffspace.data.gmm import eight_gaussians_mixture
from diffspace.samplers.grids import karras_sigmas, logsnr_sigmas
from diffspace.samplers.learned import LearnedSolver, dpmpp_2m_beta, learn_solver, sample_learned
from diffspace.samplers.multistep import sample_dpmpp_2m
from diffspace.samplers.ode import CountingDenoiser, sample_adaptive
from diffspace.types import UserError

SIGMA_MIN, SIGMA_MAX = 0.002, 80.0


def _noise(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * SIGMA_MAX


def _rms(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).pow(2).sum(1).mean().sqrt())


def _dpmpp_2m(sigmas: torch.Tensor) -> LearnedSolver:
    n = len(sigmas) - 1
    return LearnedSolver(sigmas, tuple(map(tuple, dpmpp_2m_beta(sigmas, 3))), (0.0,) * n)


@pytest.mark.parametrize("n", [1, 2, 5, 16])
@pytest.mark.parametrize("grid", [karras_sigmas, logsnr_sigmas])
def test_the_start_is_dpmpp_2m(n, grid):
    den, x = eight_gaussians_mixture().denoiser, _noise(32, 0)
    sigmas = grid(n, SIGMA_MIN, SIGMA_MAX)
    expected = sample_dpmpp_2m(den, x, sigmas)
    out = sample_learned(den, x, sigmas, solver=_dpmpp_2m(sigmas))
    assert torch.allclose(out, expected, rtol=0, atol=1e-12)


def test_any_weights_integrate_a_constant_denoiser_exactly():
    """D = c: the ODE's solution is c + (sigma / sigma_0) (x - c), reached at 0 as c whatever the weights
    (past outputs enter only as differences)."""
    c = torch.tensor([[0.3, -1.7]], dtype=torch.float64)
    den = lambda x, sigma: c.expand_as(x)
    sigmas = karras_sigmas(6, SIGMA_MIN, SIGMA_MAX)
    g = torch.Generator().manual_seed(0)
    beta = tuple(tuple(torch.randn(min(i, 2), generator=g).tolist()) for i in range(6))
    solver = LearnedSolver(sigmas, beta, tuple(torch.randn(6, generator=g).tolist()))
    mid = []
    out = sample_learned(den, _noise(8, 1), sigmas, solver=solver,
                         callback=lambda i, s, x, x0: mid.append((i, x)))
    assert torch.allclose(out, c.expand(8, 2), atol=1e-12)
    x0 = _noise(8, 1)
    # after step 0 (no corrector yet) the state is exactly on the solution at sigmas[1]
    assert torch.allclose(mid[0][1], c + sigmas[1] / sigmas[0] * (x0 - c), atol=1e-10)


@pytest.fixture(scope="module")
def learned():
    den = eight_gaussians_mixture().denoiser
    calib = _noise(256, 2)
    starts = [karras_sigmas(5, SIGMA_MIN, SIGMA_MAX), logsnr_sigmas(5, SIGMA_MIN, SIGMA_MAX)]
    return den, starts, learn_solver(den, calib, starts, SIGMA_MIN, iters=200)


def test_learning_lowers_the_held_out_error_at_equal_nfe(learned):
    den, starts, solver = learned
    x = _noise(2000, 3)
    ref = sample_adaptive(den, x, SIGMA_MAX, SIGMA_MIN, rtol=1e-8, atol=1e-8)
    counter = CountingDenoiser(den)
    err = _rms(sample_learned(counter, x, solver.sigmas, solver=solver), ref)
    assert counter.nfe == 5
    best_2m = min(_rms(sample_dpmpp_2m(den, x, s), ref) for s in starts)
    assert err < 0.5 * best_2m, (err, best_2m)
    assert solver.sigmas[0] == SIGMA_MAX and solver.sigmas[-1] == 0 and (solver.sigmas.diff() < 0).all()
    assert float(solver.sigmas[-2]) >= SIGMA_MIN and solver.gamma[-1] == 0.0


def test_the_network_weights_collect_no_gradient():
    net = torch.nn.Linear(2, 2).double()
    den = lambda x, sigma: net(x)
    learn_solver(den, _noise(16, 4), [karras_sigmas(3, SIGMA_MIN, SIGMA_MAX)], SIGMA_MIN, iters=4)
    assert all(p.grad is None for p in net.parameters())


def test_the_plan_round_trips_and_refuses_another_grid(learned):
    den, _, solver = learned
    again = LearnedSolver.from_json(solver.to_json())
    assert torch.equal(again.sigmas, solver.sigmas)
    assert again.beta == solver.beta and again.gamma == solver.gamma
    assert solver.n_params == 4 + (0 + 1 + 2 + 2 + 2) + 4
    with pytest.raises(UserError, match="learned on another grid"):
        sample_learned(den, _noise(4, 5), karras_sigmas(5, SIGMA_MIN, SIGMA_MAX), solver=solver)
    bad = solver.to_json() | {"beta": [[1.0]] + [[]] * 4}
    with pytest.raises(UserError, match="finite numbers that fit a grid of 5 steps"):
        LearnedSolver.from_json(bad)
    with pytest.raises(UserError, match="finite numbers"):
        LearnedSolver.from_json(solver.to_json() | {"gamma": [math.nan] * 5})


def test_bad_arguments_are_one_line():
    den = eight_gaussians_mixture().denoiser
    k3, k4 = karras_sigmas(3, SIGMA_MIN, SIGMA_MAX), karras_sigmas(4, SIGMA_MIN, SIGMA_MAX)
    with pytest.raises(UserError, match="history >= 1"):
        learn_solver(den, _noise(4, 6), [k3], SIGMA_MIN, history=0)
    with pytest.raises(UserError, match="one length"):
        learn_solver(den, _noise(4, 6), [k3, k4], SIGMA_MIN)
    with pytest.raises(UserError, match="sigma_min"):
        learn_solver(den, _noise(4, 6), [k3], 1.0)
