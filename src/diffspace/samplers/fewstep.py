"""Few-step samplers: N jumps of a flow map in t, and multistep consistency sampling in sigma.

References: [MEANFLOW] arXiv 2505.13447v1, [SHORTCUT] 2410.12557v3, [CM] 2303.01469v2.

Flow map. An average-velocity map u(x_t, r, t) (param/maps.py, called `avg_velocity(x_t, t, r)`) jumps
along its ODE by x_r = x_t - (t - r) u(x_t, r, t) ([MEANFLOW] Eq. 12). On a time grid
t_0 > t_1 > ... > t_N (N jumps, N NFE; `uniform_times(N)` spaces them evenly from 1 to 0 as both papers
sample) the jumps compose to the map from t_0 to t_N; with the exact u every N gives the exact ODE
endpoint, and a learned u trades NFE for accuracy. N = 1 is one-step generation x_0 = x_1 - u(x_1, 0, 1).
The registry's `flow_map` sampler (`sample_map_jumps`) takes the same jumps on a noise-level grid, through
a map's `jump(x, sigma, sigma_next)` in EDM space (`param.maps.MapDenoiser`), so a map run samples like
every other run; its grids are the `*_jumps` grids of samplers/grids.py (N levels then 0, no step to
sigma_min).

Consistency. A consistency function f(x, sigma) (param/maps.py `ConsistencyPrecond`, EDM space) maps a
point on the PF-ODE to its endpoint at sigma_min. [CM] Alg. 1: x0_hat = f(x, sigma_0), then for each
further level x = x0_hat + sqrt(sigma_i^2 - sigma_min^2) z and x0_hat = f(x, sigma_i). The grid is a
sampler grid (sigmas[0] = the starting level, last value 0): N = len(sigmas) - 1 steps, N NFE, called
like every registry sampler.
"""

import math

import torch
from torch import Tensor

from diffspace.rng import Generator, randn_like
from diffspace.samplers.grids import check_grid
from diffspace.samplers.ode import Callback, euler_step, sigma_batch
from diffspace.types import UserError
from diffspace.utils import select_rows


def uniform_times(n: int, t_hi: float = 1.0, t_lo: float = 0.0) -> Tensor:
    """n jumps evenly spaced from t_hi down to t_lo: (n + 1,) float64. Raises UserError unless n is an
    integer >= 1 and 0 <= t_lo < t_hi <= 1."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise UserError(f"number of jumps must be an integer >= 1, got {n!r}")
    if not 0 <= t_lo < t_hi <= 1:
        raise UserError(f"jump times must satisfy 0 <= t_lo < t_hi <= 1, got [{t_lo}, {t_hi}]")
    return torch.linspace(t_hi, t_lo, n + 1, dtype=torch.float64)


def check_times(ts: Tensor) -> Tensor:
    """A jump grid: a 1-D tensor of >= 2 finite times in [0, 1], strictly decreasing. Raises UserError
    naming the fault; returns the float64 grid."""
    if not isinstance(ts, Tensor) or ts.ndim != 1 or len(ts) < 2:
        shape = tuple(ts.shape) if isinstance(ts, Tensor) else type(ts).__name__
        raise UserError(f"jump grid: expected a 1-D tensor of at least 2 times (1 jump), got {shape}")
    ts = ts.to(torch.float64)
    if not torch.isfinite(ts).all() or ts.min() < 0 or ts.max() > 1 or (ts.diff() >= 0).any():
        raise UserError(f"jump grid: times must be finite, in [0, 1] and strictly decreasing, got "
                        f"{ts.tolist()[:8]}")
    return ts


def flow_map_step(avg_velocity, x_t: Tensor, t: float, r: float, **cond) -> Tensor:
    """One jump from t to r < t: x_r = x_t - (t - r) u(x_t, r, t). [MEANFLOW] Eq. 12."""
    u = avg_velocity(x_t, sigma_batch(t, x_t), sigma_batch(r, x_t), **cond)
    return x_t - (t - r) * u


def sample_flow_map(avg_velocity, x_t: Tensor, ts: Tensor, *, callback: Callback | None = None,
                    **cond) -> Tensor:
    """len(ts) - 1 jumps along the grid ts (from `uniform_times`), x_t the state at ts[0] (for noise at
    t = 1 on a path with sigma_t(1) = 1, the standard normal draw itself). One NFE per jump;
    `callback(i, t_i, x, None)` after each."""
    grid = check_times(ts).tolist()
    for i in range(len(grid) - 1):
        x_t = flow_map_step(avg_velocity, x_t, grid[i], grid[i + 1], **cond)
        if callback is not None:
            callback(i, grid[i], x_t, None)
    return x_t


def sample_map_jumps(denoiser, x: Tensor, sigmas: Tensor, *, generator: Generator | None = None,
                     callback: Callback | None = None, **cond) -> Tensor:
    """len(sigmas) - 1 jumps of a flow map down the noise-level grid `sigmas` (x: noise scaled by
    sigmas[0], EDM space), one NFE each: x = denoiser.jump(x, sigma_i, sigma_i+1) (a flow map,
    `param.maps.MapDenoiser`). A Denoiser without `jump` takes its Euler step instead (the jump with u
    read as the velocity at t, the map's first-order approximation). `callback(i, sigma_i, x, x0_hat)`
    after each, x0_hat the jump's chord extended to sigma = 0 (no extra call). `generator` is unused:
    the jumps are deterministic."""
    grid = check_grid(sigmas, what="jump grid").tolist()
    for i in range(len(grid) - 1):
        if hasattr(denoiser, "jump"):
            x_next = denoiser.jump(x, sigma_batch(grid[i], x), sigma_batch(grid[i + 1], x), **cond)
        else:
            x_next = euler_step(denoiser, x, grid[i], grid[i + 1], want_x0=False, **cond)[0]
        if callback is not None:
            x0 = torch.lerp(x, x_next, grid[i] / (grid[i] - grid[i + 1]))  # the chord's value at sigma = 0
            callback(i, grid[i], x_next, x0)
        x = x_next
    return x


def sample_consistency(denoiser, x: Tensor, sigmas: Tensor, *, boundary: float = 0.002,
                       generator: Generator | None = None, callback: Callback | None = None,
                       **cond) -> Tensor:
    """[CM] Alg. 1, multistep consistency sampling with the consistency function `denoiser` (called like
    a Denoiser: `param.maps.ConsistencyPrecond`; any Denoiser's x0_hat is used the same way): x is the
    noise scaled by sigmas[0]; every nonzero level must be >= `boundary`, [CM]'s epsilon = sigma_min of
    the consistency function (f(x, epsilon) = x; UserError otherwise).
    `generator` (or rng.Streams) draws the noise of each further step; `callback(i, sigma_i, x, x0_hat)`
    after each step."""
    grid = check_grid(sigmas, what="consistency grid").tolist()
    if grid[-2] < boundary:
        raise UserError(f"consistency grid: noise levels must be >= the boundary level {boundary}, "
                        f"got {grid[-2]:.6g}")
    for i in range(len(grid) - 1):
        x0 = denoiser(x, sigma_batch(grid[i], x), **cond)
        x = x0
        if grid[i + 1] > 0:  # [CM] Alg. 1: x_tau = x + sqrt(tau^2 - eps^2) z
            x = x0 + math.sqrt(grid[i + 1] ** 2 - boundary**2) * randn_like(x0, generator)
        if callback is not None:
            callback(i, grid[i], x, x0)
    return x


def step_rows(step, denoiser, x: Tensor, sigma: Tensor, sigma_next: Tensor, **cond) -> Tensor:
    """One step of a one-step sampler (`euler_step`, `heun_step`, `ddim_step`, ...: step(denoiser, x,
    sigma, sigma_next, **cond) -> (x_next, x0_hat) with float levels) where every row has its own levels
    sigma, sigma_next (B,): rows that share a pair of levels take the step together. Training losses that
    run a teacher between per-example levels use this (families/consistency.py, families/distill.py)."""
    pairs = torch.stack([sigma, sigma_next], 1).double()
    out = torch.empty_like(x)
    for s, s_next in pairs.unique(dim=0).tolist():
        rows = ((pairs[:, 0] == s) & (pairs[:, 1] == s_next)).nonzero().flatten().to(x.device)
        out[rows] = step(denoiser, x[rows], s, s_next, **select_rows(cond, rows, len(x)))[0]
    return out
