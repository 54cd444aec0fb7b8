"""The schedule lab on exact Gaussian-mixture denoisers (float64): the DP's step costs are the samplers'
own steps, its path is the brute-force optimum, its grid beats Karras at equal NFE on held-out noise;
PAS with identity coordinates is Euler, its coordinates are the least-squares optimum, and learned ones
lower the error on held-out noise at the same NFE."""

import itertools
import math

import pytest
import torch

from diffspace.data.gmm import GaussianMixture, eight_gaussians_mixture
from diffspace.samplers.grids import karras_sigmas
from diffspace.samplers.ode import (
    CountingDenoiser,
    euler_step,
    heun_step,
    sample_adaptive,
    sample_euler,
    sample_heun,
)
from diffspace.samplers.optimize_grid import (
    Schedule,
    best_path,
    candidate_sigmas,
    dp_schedule,
    reference_trajectory,
    sample_schedule,
    step_costs,
    step_nfe,
)
from diffspace.samplers.pas import (
    PASCorrection,
    _fit,
    _principal,
    direction_basis,
    learn_pas,
    sample_euler_pas,
)
from diffspace.types import UserError

SIGMA_MIN, SIGMA_MAX = 0.002, 80.0


def _noise(n: int, dim: int, seed: int) -> torch.Tensor:
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * SIGMA_MAX


def _rms(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).flatten(1).pow(2).sum(1).mean().sqrt())


def _mixture16() -> GaussianMixture:
    means = torch.randn(6, 16, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    return GaussianMixture(means, torch.tensor(0.3))


@pytest.fixture(scope="module")
def tiny():
    """7 nodes (6 levels and 0) with their reference trajectory and costs, 8 gaussians, 64 noises."""
    den = eight_gaussians_mixture().denoiser
    levels = candidate_sigmas(6, SIGMA_MIN, SIGMA_MAX)
    traj = reference_trajectory(den, _noise(64, 2, 0), levels)
    return den, levels, traj, step_costs(den, levels, traj, (1, 2))


def test_step_costs_are_the_samplers_steps(tiny):
    den, levels, traj, costs = tiny
    lv = levels.tolist()
    for (i, j), (order, step) in itertools.product([(0, 1), (0, 5), (2, 4), (3, 6), (1, 6)],
                                                   [(1, euler_step), (2, heun_step)]):
        if order == 2 and j == len(lv) - 1:
            assert costs[2][i, j] == costs[1][i, j]  # a Heun step to 0 is the Euler step ([EDM] Alg. 1)
        direct = _rms(step(den, traj[i], lv[i], lv[j])[0], traj[j])
        assert costs[order][i, j] == pytest.approx(direct, rel=1e-10)
    lower = torch.ones_like(costs[1], dtype=torch.bool).tril()
    assert torch.isinf(costs[1][lower]).all() and torch.isfinite(costs[1][~lower]).all()  # only steps down


def _brute_force(costs: dict[int, torch.Tensor], nfe: int) -> float:
    n = costs[1].shape[0]
    best = math.inf
    for k in range(1, n):
        for inner in itertools.combinations(range(1, n - 1), k - 1):
            nodes = (0, *inner, n - 1)
            for orders in itertools.product(sorted(costs), repeat=k):
                calls = sum(step_nfe(o, j == n - 1) for o, j in zip(orders, nodes[1:], strict=True))
                if calls == nfe:
                    steps = zip(orders, nodes[:-1], nodes[1:], strict=True)
                    best = min(best, sum(float(costs[o][a, b]) for o, a, b in steps))
    return best


@pytest.mark.parametrize("nfe", [1, 2, 3, 4, 5, 7, 9])
def test_best_path_is_the_brute_force_optimum(tiny, nfe):
    costs = tiny[3]
    path = best_path(costs, nfe)
    nodes, n = [0] + [j for j, _ in path], costs[1].shape[0]
    assert nodes[-1] == n - 1 and all(a < b for a, b in zip(nodes, nodes[1:], strict=False))
    assert sum(step_nfe(o, j == n - 1) for j, o in path) == nfe
    total = sum(float(costs[o][a, j]) for a, (j, o) in zip(nodes[:-1], path, strict=True))
    assert total == pytest.approx(_brute_force(costs, nfe), rel=1e-12)


def test_best_path_refuses_an_nfe_no_path_uses(tiny):
    with pytest.raises(UserError, match="exactly 20 network calls"):
        best_path({1: tiny[3][1]}, 20)  # 6 Euler steps at most on 7 nodes


@pytest.mark.parametrize("nfe", [1, 3, 4, 5])
def test_a_plan_of_heun_steps_alone_ends_with_its_euler_step(nfe):
    """orders (2,), what optimize-grid --method dp plans for heun: the last step into 0 is Heun's Euler
    step (1 call), so odd NFE are reached and sampled by plain heun on the grid; an even NFE is refused
    before any network call, naming what would work (before, no plan of Heun steps could end, whatever
    the NFE; then an even NFE was refused only after the reference solve and the step costs)."""
    den = eight_gaussians_mixture().denoiser
    if nfe % 2 == 0:
        counter = CountingDenoiser(den)
        with pytest.raises(UserError, match=f"odd NFE .* not {nfe}; ask {nfe - 1} or {nfe + 1}, or allow "
                                            "Euler steps too"):
            dp_schedule(counter, _noise(64, 2, 0), nfe, SIGMA_MIN, SIGMA_MAX, orders=(2,), n_candidates=16)
        assert counter.nfe == 0
        return
    plan = dp_schedule(den, _noise(64, 2, 0), nfe, SIGMA_MIN, SIGMA_MAX, orders=(2,), n_candidates=16)
    counter = CountingDenoiser(den)
    sample_heun(counter, _noise(8, 2, 1), plan.sigmas)
    assert set(plan.orders) == {2} and plan.nfe == counter.nfe == nfe


def test_dp_beats_karras_at_equal_nfe_on_held_out_noise():
    """8 gaussians, 5 network calls: the DP schedule (Euler; Euler or Heun per step) against Euler and
    Heun on the Karras grid, all measured against the adaptive solution of 1000 held-out noises."""
    den = eight_gaussians_mixture().denoiser
    test = _noise(1000, 2, 1)
    ref = sample_adaptive(den, test, SIGMA_MAX, SIGMA_MIN)
    karras_euler = _rms(sample_euler(den, test, karras_sigmas(5, SIGMA_MIN, SIGMA_MAX)), ref)
    heun_grid = karras_sigmas(3, SIGMA_MIN, SIGMA_MAX)  # 2 + 2 + 1 calls
    karras_heun = _rms(sample_schedule(den, test, heun_grid, orders=(2, 2, 2)), ref)
    for orders in [(1,), (1, 2)]:
        counter = CountingDenoiser(den)
        plan = dp_schedule(counter, _noise(256, 2, 0), 5, SIGMA_MIN, SIGMA_MAX, orders=orders,
                           n_candidates=32)
        assert plan.nfe == 5 and plan.sigmas.dtype == torch.float64
        run = CountingDenoiser(den)
        err = _rms(sample_schedule(run, test, plan.sigmas, orders=plan.orders), ref)
        assert run.nfe == 5
        assert err < 0.8 * min(karras_euler, karras_heun), (orders, err, karras_euler, karras_heun)


def test_dp_is_deterministic_and_round_trips():
    den = eight_gaussians_mixture().denoiser
    a = dp_schedule(den, _noise(64, 2, 0), 6, SIGMA_MIN, SIGMA_MAX, orders=(1, 2), n_candidates=16)
    b = dp_schedule(den, _noise(64, 2, 0), 6, SIGMA_MIN, SIGMA_MAX, orders=(1, 2), n_candidates=16)
    assert torch.equal(a.sigmas, b.sigmas) and a.orders == b.orders
    back = Schedule.from_json(a.to_json())
    assert torch.equal(back.sigmas, a.sigmas) and back.orders == a.orders
    with pytest.raises(UserError, match="orders"):
        Schedule.from_json({"sigmas": a.sigmas.tolist(), "orders": [3] * len(a.orders)})
    with pytest.raises(UserError, match="orders"):
        dp_schedule(den, _noise(8, 2, 0), 3, SIGMA_MIN, SIGMA_MAX, orders=(4,))


def test_pas_with_identity_coordinates_is_euler():
    den = _mixture16().denoiser
    sigmas, x = karras_sigmas(6, SIGMA_MIN, SIGMA_MAX), _noise(32, 16, 2)
    pas = PASCorrection(sigmas, 3, {i: [1.0, 0.0, 0.0] for i in range(6)})
    torch.testing.assert_close(sample_euler_pas(den, x, sigmas, pas=pas), sample_euler(den, x, sigmas),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("m, dim", [(3, 2), (12, 2), (5, 16), (4, 4)])
def test_pas_principal_directions_are_the_svds(m, dim):
    """_principal reads the singular values and directions of the centred history off the eigenvectors of
    the smaller of C^T C and C C^T: the SVD's values, and its directions up to sign, wherever the value
    is not round-off (a centred history of m rows has rank m - 1 at most)."""
    g = torch.Generator().manual_seed(m * dim)
    stacked = torch.randn(200, m, dim, generator=g)
    centred = stacked.double() - stacked.double().mean(1, keepdim=True)
    _, s_svd, vh_svd = torch.linalg.svd(centred, full_matrices=False)
    s, vh = _principal(stacked)
    assert s.shape == s_svd.shape and vh.shape == vh_svd.shape == (200, min(m, dim), dim)
    torch.testing.assert_close(s, s_svd, rtol=0, atol=1e-7 * float(s_svd.max()))
    real = s_svd > 1e-6 * s_svd[:, :1]
    assert real.sum() == 200 * min(m - 1, dim)
    cos = (vh * vh_svd).sum(-1).abs()[real]
    torch.testing.assert_close(cos, torch.ones_like(cos))


def test_pas_basis_is_orthonormal_and_fit_is_least_squares():
    g = torch.Generator().manual_seed(4)
    history = [torch.randn(50, 16, generator=g, dtype=torch.float64) for _ in range(4)]
    x, x_start, d = (torch.randn(50, 16, generator=g, dtype=torch.float64) for _ in range(3))
    basis = direction_basis(history + [d], d, x, x_start, 4)
    eye = torch.eye(4, dtype=torch.float64).expand(50, 4, 4)
    torch.testing.assert_close(basis @ basis.transpose(1, 2), eye)
    torch.testing.assert_close(basis[:, 0], d / d.norm(dim=1, keepdim=True))
    assert ((basis[:, 1:] * (x - x_start)[:, None]).sum(2) >= 0).all()  # signed along the drift
    target, h = torch.randn(50, 16, generator=g, dtype=torch.float64), -0.7
    design = (h * d.norm(dim=1))[:, None, None] * basis.transpose(1, 2)  # (B, D, k)
    lstsq = torch.linalg.lstsq(design.reshape(-1, 4), (target - x).reshape(-1, 1)).solution[:, 0]
    torch.testing.assert_close(_fit(x, d, basis, h, target), lstsq, rtol=1e-10, atol=1e-12)


def test_pas_lowers_the_error_on_held_out_noise():
    """A 16-d mixture, Euler with 6 steps on the Karras grid: coordinates learned on 512 calibration
    noises lower the error on 1000 other noises, at the same NFE and with at most k per step."""
    den = _mixture16().denoiser
    sigmas = karras_sigmas(6, SIGMA_MIN, SIGMA_MAX)
    pas = learn_pas(den, _noise(512, 16, 0), sigmas, k=4)
    again = learn_pas(den, _noise(512, 16, 0), sigmas, k=4)
    assert pas.coords == again.coords and 0 < pas.n_params <= 4 * 6
    test = _noise(1000, 16, 1)
    ref = sample_adaptive(den, test, SIGMA_MAX, SIGMA_MIN)
    counter = CountingDenoiser(den)
    corrected = _rms(sample_euler_pas(counter, test, sigmas, pas=PASCorrection.from_json(pas.to_json())), ref)
    assert counter.nfe == 6
    assert corrected < 0.8 * _rms(sample_euler(den, test, sigmas), ref)


def test_pas_refuses_another_grid():
    sigmas = karras_sigmas(4, SIGMA_MIN, SIGMA_MAX)
    pas = PASCorrection(sigmas, 2, {0: [1.0, 0.0]})
    with pytest.raises(UserError, match="another grid"):
        other = karras_sigmas(5, SIGMA_MIN, SIGMA_MAX)
        sample_euler_pas(eight_gaussians_mixture().denoiser, _noise(4, 2, 0), other, pas=pas)
    with pytest.raises(UserError, match="do not fit"):
        PASCorrection.from_json({"sigmas": sigmas.tolist(), "k": 2, "coords": {"7": [1.0, 0.0]}})

