"""Noise grids optimized for one model and one solver on a calibration batch, by search or by dynamic
programming.

Nelder-Mead (`optimize_sigmas`), in the spirit of Align Your Steps: [AYS] arXiv 2404.14507v1 chooses
the steps that minimize a bound on the sampling error; here the error itself is small enough to
measure: the RMSE between the solver's output and the adaptive PF-ODE solution from the same
calibration noise. The n - 1 interior noise levels (the first is sigma_max, where the noise is given,
and the grid ends in 0) are searched in log sigma with Nelder-Mead, started from the better of the
Karras and uniform-logSNR grids. Gradient-free, so it works for any solver and any denoiser; its
budget is `max_evals` runs of the n-step solver.

Dynamic programming (`dp_schedule`), after the time schedule of [GITS] arXiv 2405.11326: PF-ODE
trajectories are regular enough that the error of ONE step from candidate level i to a lower level j,
started on the reference trajectory, measures how well that step fits it. On a fine candidate set
(uniform in log sigma, then 0) the adaptive solution of the calibration batch is recorded at every
level (`reference_trajectory`); every one-step move i -> j is costed as the RMS (per-example norm) of
its distance to the reference at j; and the path from sigma_max to 0 of least total cost with a given
number of network calls is found exactly by dynamic programming over (level, calls used). With
several solver orders (1: Euler, 1 call; 2: Heun, 2 calls, [EDM] Alg. 1) every move is costed once
per order and the DP also picks the order of each step, at a fixed NFE. Costs: the reference solve,
one call per candidate level for the cached x0_hat, and for order 2 one stacked call per level (all
Heun corrections that end there). The result is a `Schedule` (float64 grid and orders), JSON
round-trippable, sampled by `sample_schedule`; its grid alone also serves any sampler.

The DP minimizes a sum of one-step errors, not the final error: errors made at high sigma shrink on
the way down and errors partly cancel, so the DP's plan can trail a searched one (on the 8-gaussians
mixture at 10 Euler steps it trails the Karras grid, benchmarks/results/schedule_lab.md); its strength
is few steps at a fixed, small cost, and its grid is a good start for `optimize_sigmas(starts=...)`.

Store results with the run and pass the grid as `sigmas`. Everything is deterministic given the
calibration batch.
"""

import math
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from diffspace.samplers.grids import check_grid, check_sigmas, karras_sigmas, logsnr_sigmas
from diffspace.samplers.ode import Callback, euler_step, heun_step, sample_adaptive, sigma_batch
from diffspace.types import Denoiser, UserError
from diffspace.utils import lincomb


def _grid(log_sigmas: np.ndarray, sigma_min: float, sigma_max: float) -> Tensor:
    """[sigma_max, interior (clamped to the range, sorted descending), 0] as float64."""
    inner = np.sort(np.clip(log_sigmas, math.log(sigma_min), math.log(sigma_max)))[::-1]
    return torch.tensor([sigma_max, *np.exp(inner), 0.0], dtype=torch.float64)


def grid_error(sampler, denoiser: Denoiser, x: Tensor, sigmas: Tensor, reference: Tensor, **cond) -> float:
    """RMSE of sampler(denoiser, x, sigmas) against the reference solution."""
    with torch.no_grad():
        out = sampler(denoiser, x, sigmas.to(x.device), **cond)
    return float((out - reference).double().pow(2).mean().sqrt())


def optimize_sigmas(sampler, denoiser: Denoiser, x: Tensor, n: int, sigma_min: float, sigma_max: float, *,
                    reference: Tensor | None = None, starts: list[Tensor] = (), max_evals: int = 600,
                    **cond) -> Tensor:
    """The n-step grid (n + 1 float64 values, sigma_max first, 0 last) that minimizes the RMSE of
    `sampler` from x (calibration noise already scaled to sigma_max) to `reference` (default: the
    adaptive solution with rtol = atol = 1e-5, denoised at sigma_min). The search starts from the best
    of the Karras grid, the uniform-logSNR grid and `starts` (n-step grids from sigma_max)."""
    from scipy.optimize import minimize

    if n < 1:
        raise UserError(f"an optimized grid needs at least 1 step, got {n}")
    if reference is None:
        with torch.no_grad():
            reference = sample_adaptive(denoiser, x, sigma_max, sigma_min, rtol=1e-5, atol=1e-5, **cond)
    starts = [g(n, sigma_min, sigma_max) for g in (karras_sigmas, logsnr_sigmas)] + list(starts)
    best = min(starts, key=lambda s: grid_error(sampler, denoiser, x, s, reference, **cond))
    if n == 1:
        return best

    def loss(u: np.ndarray) -> float:
        grid = _grid(u, sigma_min, sigma_max)
        if (grid.diff() >= 0).any():  # why: clamping can merge levels; a zero-length step is no grid
            return math.inf
        return grid_error(sampler, denoiser, x, grid, reference, **cond)

    u = best[1:-1].log().numpy()
    for _ in range(2):  # why: one restart lets Nelder-Mead escape a collapsed simplex
        u = minimize(loss, u, method="Nelder-Mead",
                     options={"maxfev": max_evals // 2, "xatol": 1e-4, "fatol": 1e-7}).x
    grid = _grid(u, sigma_min, sigma_max)
    return check_grid(grid, what="optimized grid") if loss(u) < math.inf else best


# ---- dynamic programming over a candidate set ([GITS]) ------------------------------------------------

STEPS = {1: euler_step, 2: heun_step}  # solver order -> one step (both [EDM] Alg. 1)


def step_nfe(order: int, to_zero: bool) -> int:
    """Network calls of one step: a Heun step to sigma = 0 is its Euler step ([EDM] Alg. 1)."""
    return 1 if order == 1 or to_zero else 2


class Schedule(NamedTuple):
    """A step plan: a float64 grid (n + 1 levels ending in 0) and the solver order of each of its n steps
    (keys of STEPS)."""

    sigmas: Tensor
    orders: tuple[int, ...]

    @property
    def nfe(self) -> int:
        return sum(step_nfe(o, s == 0) for o, s in zip(self.orders, self.sigmas[1:].tolist(), strict=True))

    def to_json(self) -> dict:
        return {"sigmas": self.sigmas.tolist(), "orders": list(self.orders)}

    @classmethod
    def from_json(cls, data: dict) -> "Schedule":
        """Raises UserError for a bad grid, an unknown order or a length mismatch."""
        sigmas = check_grid(torch.tensor(data["sigmas"], dtype=torch.float64), what="stored schedule")
        orders = tuple(int(o) for o in data["orders"])
        if len(orders) != len(sigmas) - 1 or any(o not in STEPS for o in orders):
            raise UserError(f"stored schedule: expected {len(sigmas) - 1} orders from {sorted(STEPS)}, "
                            f"got {list(orders)}")
        return cls(sigmas, orders)


def sample_schedule(denoiser: Denoiser, x: Tensor, sigmas: Tensor, *, orders: tuple[int, ...],
                    generator=None, callback: Callback | None = None, **cond) -> Tensor:
    """Step i from sigmas[i] to sigmas[i + 1] with the solver of order orders[i] (Euler or Heun).
    x: noise already scaled by sigmas[0]. NFE: Schedule(sigmas, orders).nfe."""
    grid = check_sigmas(sigmas).tolist()
    if len(orders) != len(grid) - 1 or any(o not in STEPS for o in orders):
        raise UserError(f"expected {len(grid) - 1} step orders from {sorted(STEPS)}, got {list(orders)}")
    for i, order in enumerate(orders):
        x, x0 = STEPS[order](denoiser, x, grid[i], grid[i + 1], want_x0=callback is not None, **cond)
        if callback is not None:
            callback(i, grid[i], x, x0)
    return x


def reference_trajectory(denoiser: Denoiser, x: Tensor, sigmas: Tensor, rtol: float = 1e-5,
                         atol: float = 1e-5, **cond) -> Tensor:
    """The adaptive PF-ODE solution from x (at sigmas[0]) at every level of the descending `sigmas`,
    (len(sigmas), B, ...); at a final level 0 the value is the denoised solution at the last nonzero
    level (the convention of `sample_adaptive`, whose solver, dopri5 in log sigma, this is)."""
    from torchdiffeq import odeint

    def f(s, y):
        return y - denoiser(y, torch.exp(s).to(y).expand(y.shape[0]), **cond)

    nonzero = check_sigmas(sigmas)[sigmas > 0]
    ys = odeint(f, x, nonzero.log().to(x.device), rtol=rtol, atol=atol, method="dopri5")
    if sigmas[-1] == 0:
        last = denoiser(ys[-1], sigma_batch(float(nonzero[-1]), ys[-1]), **cond)
        ys = torch.cat([ys, last[None]])
    return ys


def _rms(err: Tensor) -> Tensor:
    """RMS over the batch of each example's error norm: (J, B, ...) -> (J,)."""
    return err.flatten(2).pow(2).sum(2).mean(1).sqrt()


def _repeat(cond: dict, k: int) -> dict:
    return {key: v.repeat(k, *[1] * (v.ndim - 1)) if isinstance(v, Tensor) else v for key, v in cond.items()}


def _euler(traj: Tensor, x0: Tensor, lv: list[float], i: int, j: int) -> Tensor:
    return torch.lerp(x0[i], traj[i], lv[j] / lv[i])  # [EDM] Alg. 1 line 5


def _heun_costs(denoiser: Denoiser, traj: Tensor, x0: Tensor, lv: list[float], cond: dict) -> Tensor:
    """C[i, j] of Heun steps i -> j: one stacked call per target level j before the final 0 for the
    corrections of every step that ends there; into the final 0 a Heun step is its Euler step ([EDM]
    Alg. 1, as `heun_step`), so a plan of Heun steps alone can end."""
    n = len(lv)
    c = torch.full((n, n), math.inf, dtype=torch.float64)
    c[:n - 1, n - 1] = _rms(torch.stack([_euler(traj, x0, lv, i, n - 1) for i in range(n - 1)]) - traj[n - 1])
    for j in range(1, n - 1):
        pred = torch.stack([_euler(traj, x0, lv, i, j) for i in range(j)])  # (j, B, ...)
        flat = pred.flatten(0, 1)
        x0_j = denoiser(flat, sigma_batch(lv[j], flat), **_repeat(cond, j)).reshape(pred.shape)
        for i in range(j):  # [EDM] Alg. 1 line 8, as in ode.heun_step
            a, b = 0.5 * (lv[j] - lv[i]) / lv[i], 0.5 * (lv[j] - lv[i]) / lv[j]
            step = lincomb((1 + a, traj[i]), (-a, x0[i]), (b, pred[i]), (-b, x0_j[i]))
            c[i, j] = _rms((step - traj[j])[None])[0]
    return c


def step_costs(denoiser: Denoiser, levels: Tensor, traj: Tensor, orders: tuple[int, ...],
               **cond) -> dict[int, Tensor]:
    """{order: C} with C[i, j] the RMS distance between one step of that order from traj[i] (at
    levels[i]) to levels[j] and traj[j], for i < j (inf elsewhere; order 2 into a final 0 is the Euler
    step, and `best_path` then prefers order 1). levels: descending, ending in 0; traj:
    reference_trajectory(levels).
    Network calls: len(levels) - 1, and as many again for order 2."""
    lv = levels.tolist()
    n = len(lv)
    with torch.no_grad():
        x0 = torch.stack([denoiser(traj[i], sigma_batch(lv[i], traj[i]), **cond) for i in range(n - 1)])
        costs = {}
        if 1 in orders:
            costs[1] = torch.full((n, n), math.inf, dtype=torch.float64)
            for i in range(n - 1):
                steps = torch.stack([_euler(traj, x0, lv, i, j) for j in range(i + 1, n)])
                costs[1][i, i + 1:] = _rms(steps - traj[i + 1:])
        if 2 in orders:
            costs[2] = _heun_costs(denoiser, traj, x0, lv, cond)
    return costs


def best_path(costs: dict[int, Tensor], nfe: int) -> list[tuple[int, int]]:
    """The path 0 -> n - 1 through the nodes of the (n, n) cost matrices that uses exactly `nfe` network
    calls (`step_nfe`; node n - 1 is the final level 0) at the least total cost, as [(node, order of the
    step that reached it)], by dynamic programming over (node, calls used). Raises UserError when no
    path uses exactly `nfe` calls."""
    n = next(iter(costs.values())).shape[0]
    best = torch.full((nfe + 1, n), math.inf, dtype=torch.float64)
    best[0, 0] = 0.0
    came = {}  # (calls, node) -> (previous node, order)
    for m in range(1, nfe + 1):
        for order, c in sorted(costs.items()):
            for j in range(1, n):
                k = step_nfe(order, j == n - 1)
                if k > m:
                    continue
                total = best[m - k, :j] + c[:j, j]
                i = int(torch.argmin(total))  # first minimum: deterministic ties
                if total[i] < best[m, j]:
                    best[m, j], came[m, j] = total[i], (i, order)
    if not math.isfinite(best[nfe, n - 1]):
        raise UserError(f"no schedule on these candidates uses exactly {nfe} network calls")
    path, m, j = [], nfe, n - 1
    while j != 0:
        i, order = came[m, j]
        path.append((j, order))
        m, j = m - step_nfe(order, j == n - 1), i
    return path[::-1]


def candidate_sigmas(n_candidates: int, sigma_min: float, sigma_max: float) -> Tensor:
    """The DP's candidate levels: n_candidates uniform in log sigma from sigma_max to sigma_min, then 0."""
    return logsnr_sigmas(n_candidates, sigma_min, sigma_max)


def check_dp_plan(nfe: int, orders: tuple[int, ...]) -> None:
    """UserError unless `orders` is a non-empty subset of STEPS and `nfe` a positive integer that such a
    plan can spend: Heun steps alone make an odd NFE (2 per step, 1 for the last step into 0)."""
    if not orders or any(o not in STEPS for o in orders):
        raise UserError(f"orders must be a non-empty subset of {sorted(STEPS)}, got {orders}")
    if isinstance(nfe, bool) or not isinstance(nfe, int) or nfe < 1:
        raise UserError(f"nfe must be a positive integer, got {nfe!r}")
    if set(orders) == {2} and nfe % 2 == 0:
        raise UserError(f"a plan of Heun steps alone makes an odd NFE (2 per step, 1 for the last step into "
                        f"0), not {nfe}; ask {nfe - 1} or {nfe + 1}, or allow Euler steps too "
                        "(orders (1, 2), --orders 1,2)")


def dp_schedule(denoiser: Denoiser, x: Tensor, nfe: int, sigma_min: float, sigma_max: float, *,
                orders: tuple[int, ...] = (1,), n_candidates: int = 64, candidates: Tensor | None = None,
                reference: Tensor | None = None, **cond) -> Schedule:
    """The schedule from sigma_max to 0 with exactly `nfe` network calls and the least total one-step
    error against the adaptive solution of the calibration noise x (already scaled to sigma_max), over
    `candidates` (default `candidate_sigmas(n_candidates, ...)`; descending from sigma_max, ending in 0)
    and the solver `orders` (1: Euler, 2: Heun). `reference`: reference_trajectory(candidates), if
    already computed. Raises UserError for bad orders, candidates or an NFE no path can use."""
    check_dp_plan(nfe, orders)
    levels = candidate_sigmas(n_candidates, sigma_min, sigma_max) if candidates is None else \
        check_grid(candidates, what="candidate levels")
    if reference is None:
        with torch.no_grad():
            reference = reference_trajectory(denoiser, x, levels, **cond)
    path = best_path(step_costs(denoiser, levels, reference, tuple(orders), **cond), nfe)
    sigmas = torch.cat([levels[:1], levels[[j for j, _ in path]]])
    return Schedule(check_grid(sigmas, what="DP schedule"), tuple(o for _, o in path))
