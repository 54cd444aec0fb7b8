"""Noise-level grids, built apart from the solvers, and the one validator every grid goes through.

References: [EDM] arXiv 2206.00364v2 (Karras rho grid), [DPM] 2206.00927 (uniform logSNR),
[DDIM] 2010.02502 and [ZSNR] 2305.08891v4 (leading / trailing / linspace spacing of integer
timesteps), [MEANFLOW] 2505.13447v1 and [CM] 2303.01469v2 (the few-step `*_jumps` grids).

Every grid in `GRIDS` is called `fn(n, sigma_min, sigma_max, path=None)` and returns n noise levels
and a final 0 (n steps), checked by `check_grid`: n + 1 float64 values, finite, strictly decreasing,
ending in 0 and, given a path, inside the path's [sigma_min, sigma_max]. Grids on the integer
timesteps of a `diffspace.paths.DDPMDiscrete` table take their range from the table (timestep k sits
at sigma = exp(path.log_sigmas[k])) and ignore the bounds; their timesteps are formed by integer
arithmetic (never by accumulating a float step), and a timestep outside 0..T-1 is refused instead of
wrapping around the table.
"""

import math

import torch
from torch import Tensor

from diffspace.paths import DDPMDiscrete, GaussianPath
from diffspace.types import UserError

RANGE_RTOL = 1e-9  # why: float64 round trips through log/exp of the path's own range ends


def check_sigmas(sigmas: Tensor, what: str = "grid") -> Tensor:
    """The structure every sampler needs: a 1-D tensor of >= 2 finite values >= 0, strictly decreasing.

    Raises UserError naming the first fault; returns `sigmas` unchanged."""
    if not isinstance(sigmas, Tensor) or sigmas.ndim != 1 or len(sigmas) < 2:
        shape = tuple(sigmas.shape) if isinstance(sigmas, Tensor) else type(sigmas).__name__
        raise UserError(f"{what}: expected a 1-D tensor of at least 2 noise levels, got {shape}")
    if not torch.isfinite(sigmas).all():
        raise UserError(f"{what}: noise levels must be finite, got {sigmas.tolist()[:8]}")
    steps = sigmas.diff()
    if (steps >= 0).any():
        i = int((steps >= 0).nonzero()[0])
        raise UserError(f"{what}: noise levels must be strictly decreasing, got {float(sigmas[i]):.6g} "
                        f"then {float(sigmas[i + 1]):.6g} at step {i}")
    if sigmas[-1] < 0:
        raise UserError(f"{what}: noise levels must be >= 0, got {float(sigmas[-1]):.6g}")
    return sigmas


def check_grid(sigmas: Tensor, path: GaussianPath | None = None, what: str = "grid") -> Tensor:
    """A sampling grid: `check_sigmas`, float64, ending in 0 and, given `path`, with its nonzero values
    inside [path.sigma_min, path.sigma_max]. Raises UserError; returns the float64 grid."""
    sigmas = check_sigmas(torch.as_tensor(sigmas), what).to(torch.float64)
    if sigmas[-1] != 0:
        raise UserError(f"{what}: the last noise level must be 0 (the data), got {float(sigmas[-1]):.6g}")
    if path is not None:
        hi, lo = float(sigmas[0]), float(sigmas[-2])
        if hi > path.sigma_max * (1 + RANGE_RTOL) or lo < path.sigma_min * (1 - RANGE_RTOL):
            raise UserError(f"{what}: noise levels [{lo:.6g}, {hi:.6g}] leave the range "
                            f"[{path.sigma_min:.6g}, {path.sigma_max:.6g}] of path {path!r}")
    return sigmas


def sampling_range(path: GaussianPath, sigma_min: float | None = None,
                   sigma_max: float | None = None) -> tuple[float, float]:
    """The noise range a run samples over: the path's own [path.sigma_min, path.sigma_max] unless the user
    gives a bound. A DDPM table thus starts at its last timestep (t = 1, sigma = 157 for the default
    betas, timestep 999 like diffusers), not at EDM's 80. A given bound must lie inside the path's range
    and leave sigma_min < sigma_max; raises UserError naming the bound otherwise."""
    lo = path.sigma_min if sigma_min is None else float(sigma_min)
    hi = path.sigma_max if sigma_max is None else float(sigma_max)
    for name, value in (("sigma_min", lo), ("sigma_max", hi)):
        if not path.sigma_min * (1 - RANGE_RTOL) <= value <= path.sigma_max * (1 + RANGE_RTOL):
            raise UserError(f"{name} = {value:.6g} is outside the range [{path.sigma_min:.6g}, "
                            f"{path.sigma_max:.6g}] of path {path!r}")
    _check_range(lo, hi)
    return lo, hi


def _append_zero(sigmas: Tensor) -> Tensor:
    return torch.cat([sigmas, sigmas.new_zeros(1)])


def _check_n(n: int, most: int | None = None) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1 or (most is not None and n > most):
        raise UserError(f"number of steps must be an integer in [1, {most or 'inf'}], got {n!r}")


def _check_range(sigma_min: float, sigma_max: float) -> None:
    if not (0 < sigma_min < sigma_max < math.inf):
        raise UserError(f"noise range must satisfy 0 < sigma_min < sigma_max < inf, got "
                        f"[{sigma_min}, {sigma_max}]")


def karras_sigmas(n: int, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0,
                  path: GaussianPath | None = None) -> Tensor:
    """[EDM] Eq. 5: n noise levels interpolated in sigma^(1/rho), then 0. rho = 7  # [EDM] Table 1."""
    _check_n(n)
    _check_range(sigma_min, sigma_max)
    ramp = torch.arange(n, dtype=torch.float64) / max(n - 1, 1)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sigmas = (hi + ramp * (lo - hi)) ** rho
    sigmas[0] = sigma_max  # why: exact ends, so a path's own sigma_max passes the range check
    if n > 1:
        sigmas[-1] = sigma_min
    return check_grid(_append_zero(sigmas), path, "karras grid")


def logsnr_sigmas(n: int, sigma_min: float = 0.002, sigma_max: float = 80.0,
                  path: GaussianPath | None = None) -> Tensor:
    """n noise levels uniform in logSNR (= uniform in log sigma), then 0. [DPM] Sec. 3.3."""
    _check_n(n)
    _check_range(sigma_min, sigma_max)
    ramp = torch.arange(n, dtype=torch.float64) / max(n - 1, 1)
    sigmas = torch.exp(math.log(sigma_max) + ramp * (math.log(sigma_min) - math.log(sigma_max)))
    sigmas[0] = sigma_max
    if n > 1:
        sigmas[-1] = sigma_min
    return check_grid(_append_zero(sigmas), path, "logsnr grid")


def uniform_t_sigmas(n: int, sigma_min: float, sigma_max: float, path: GaussianPath | None = None) -> Tensor:
    """n noise levels uniform in the path's own time t between the times of sigma_max and sigma_min."""
    _check_n(n)
    _check_range(sigma_min, sigma_max)
    if path is None:
        raise UserError("grid 'uniform_t' needs the path the model was trained on")
    t_hi, t_lo = path.t_from_sigma(torch.tensor([sigma_max, sigma_min], dtype=torch.float64)).tolist()
    ramp = torch.arange(n, dtype=torch.float64) / max(n - 1, 1)
    sigmas = path.sigma(t_hi + ramp * (t_lo - t_hi))
    sigmas[0] = sigma_max
    if n > 1:
        sigmas[-1] = sigma_min
    return check_grid(_append_zero(sigmas), path, "uniform_t grid")


def _table(path: GaussianPath | None, name: str) -> DDPMDiscrete:
    if not isinstance(path, DDPMDiscrete):
        raise UserError(f"grid {name!r} spaces the integer timesteps of a 'ddpm' path, got {path!r}")
    return path


def table_sigmas(path: DDPMDiscrete, timesteps: Tensor) -> Tensor:
    """Noise levels of descending integer timesteps of the discrete table, then 0.

    Raises UserError for a timestep that is not an integer in 0..T-1 (no wrap-around indexing)."""
    ts = torch.as_tensor(timesteps, dtype=torch.float64)
    if ts.numel() == 0 or (ts != ts.round()).any() or ts.min() < 0 or ts.max() > path.T - 1:
        raise UserError(f"table timesteps must be integers in [0, {path.T - 1}], got {ts.tolist()[:8]}")
    return check_grid(_append_zero(torch.exp(path.log_sigmas[ts.long()])), path, "table grid")


def leading_timesteps(n: int, path: DDPMDiscrete) -> Tensor:
    """[DDIM] App. D.2 / [ZSNR] Table 2 'leading': (n-1) T//n, ..., T//n, 0 (never reaches T - 1)."""
    return torch.arange(n - 1, -1, -1, dtype=torch.float64) * (path.T // n)


def trailing_timesteps(n: int, path: DDPMDiscrete) -> Tensor:
    """[ZSNR] Sec. 3.3 'trailing': T - round(k T / n) - 1 for k = 0..n-1, so the first step is at t = 1.

    k T / n is formed from the exact integer k T (round half to even, like numpy), so there are
    exactly n timesteps, ending at round(T / n) - 1 >= 0."""
    k = torch.arange(n, dtype=torch.float64)
    return path.T - torch.round(k * path.T / n) - 1


def linspace_timesteps(n: int, path: DDPMDiscrete) -> Tensor:
    """[ZSNR] Table 2 'linspace': n points from T - 1 to 0, rounded (DDIM's rounding)."""
    k = torch.arange(n - 1, -1, -1, dtype=torch.float64)
    return torch.round(k * (path.T - 1) / max(n - 1, 1))


def _table_grid(timesteps_fn, name):
    def grid(n: int, sigma_min: float | None = None, sigma_max: float | None = None,
             path: GaussianPath | None = None) -> Tensor:
        table = _table(path, name)
        _check_n(n, table.T)
        return table_sigmas(table, timesteps_fn(n, table))

    grid.__name__ = f"{name}_sigmas"
    grid.__doc__ = f"Noise levels of the {name!r} integer timesteps of a DDPMDiscrete table, then 0."
    return grid


leading_sigmas = _table_grid(leading_timesteps, "leading")
trailing_sigmas = _table_grid(trailing_timesteps, "trailing")
linspace_sigmas = _table_grid(linspace_timesteps, "linspace")

def _jumps(grid_fn, name: str):
    def grid(n: int, sigma_min: float, sigma_max: float, path: GaussianPath | None = None) -> Tensor:
        _check_n(n)
        levels = grid_fn(n + 1, sigma_min, sigma_max, path=path)[:-2]  # drop sigma_min and the final 0
        return check_grid(_append_zero(levels), path, f"{name}_jumps grid")

    grid.__name__ = f"{name}_jumps_sigmas"
    grid.__doc__ = (f"The first n of the {name!r} grid's n + 1 levels, then 0: the last step goes from "
                    "the lowest level straight to the data, never to sigma_min. The grids of few-step "
                    "samplers (a flow map's N jumps [MEANFLOW], consistency sampling [CM] Alg. 1), for which "
                    "a step ending at sigma_min would spend a network call on nothing; the n-step grid is "
                    "every other level of the 2n-step one (progressive distillation halves it exactly).")
    return grid


karras_jumps_sigmas = _jumps(karras_sigmas, "karras")
uniform_t_jumps_sigmas = _jumps(uniform_t_sigmas, "uniform_t")

GRIDS = {
    "karras": karras_sigmas,
    "logsnr": logsnr_sigmas,
    "uniform_t": uniform_t_sigmas,
    "karras_jumps": karras_jumps_sigmas,
    "uniform_t_jumps": uniform_t_jumps_sigmas,
    "leading": leading_sigmas,
    "trailing": trailing_sigmas,
    "linspace": linspace_sigmas,
}
