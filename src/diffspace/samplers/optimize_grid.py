"""A noise grid optimized for one model and one solver, in the spirit of Align Your Steps.

[AYS] arXiv 2404.14507v1 chooses the steps that minimize a bound on the sampling error; here the
error itself is small enough to measure: the RMSE between the solver's output and the adaptive
PF-ODE solution from the same calibration noise. The n - 1 interior noise levels (the first is
sigma_max, where the noise is given, and the grid ends in 0) are searched in log sigma with
Nelder-Mead, started from the better of the Karras and uniform-logSNR grids. Gradient-free, so it
works for any solver and any denoiser, and a few hundred evaluations of an n-step solver on a
calibration batch cost seconds for small networks. Store the result with the run (a float64 tensor)
and pass it to any sampler as `sigmas`.
"""

import math

import numpy as np
import torch
from torch import Tensor

from diffspace.samplers.grids import check_grid, karras_sigmas, logsnr_sigmas
from diffspace.samplers.ode import sample_adaptive
from diffspace.types import Denoiser, UserError


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
