"""Few steps from a trained teacher: progressive distillation and reflow (k-rectified flow), with the
straightness of a flow.

References: [PD] arXiv 2202.00512v2, [DDIM] 2010.02502v4, [RF] 2209.03003v1, [FM] 2210.02747v2.

Progressive distillation ([PD] Alg. 2), in EDM space (x = x_t / alpha_t, sigma = sigma_t / alpha_t),
so for any path. The teacher samples on a grid of 2N steps, the student on every other level (N steps).
A DDIM step (eta = 0) is x_next = x0_hat + (sigma_next / sigma)(x - x0_hat) ([DDIM] Eq. 12 divided by
alpha). For the student step sigma -> sigma'' the teacher takes two DDIM steps sigma -> sigma' -> sigma''
and lands on x''; the student target is the x0_hat whose one DDIM step lands there too:

    x'' = x~ + (sigma'' / sigma)(x - x~)   =>   x~ = (sigma x'' - sigma'' x) / (sigma - sigma'')

([PD] Alg. 2's x~ = (z'' - (sigma_t'' / sigma_t) z_t) / (alpha'' - (sigma_t'' / sigma_t) alpha_t), divided
through by alpha''; x~ = x'' on a last step to sigma'' = 0). Repeating with the student as the next
teacher halves the steps again (`halve_grid`).

Reflow ([RF] "reflow"): the deterministic coupling (eps, x0 = ODE_teacher(eps)) of a trained model's
sampler, learned again as a rectified flow on the linear path x_t = (1 - t) x0 + t eps, i.e.
`losses.flow_matching_loss(velocity, x0, t, LinearFlow(), eps=eps)` with the paired eps; the result is
the next teacher (k-rectified flow). Straightness ([RF]'s S(Z)) measures how far the flow is
from straight lines: the time average of ||(x_1 - x_0) - v(x_t, t)||^2 along its own trajectories.
"""

import torch
from torch import Tensor

from diffspace.samplers.fewstep import check_times, step_rows
from diffspace.samplers.grids import check_grid
from diffspace.samplers.ode import rk4_from
from diffspace.samplers.registry import SAMPLERS
from diffspace.samplers.sde import ddim_step
from diffspace.types import Denoiser, UserError, VelocityField
from diffspace.utils import bcast


def halve_grid(sigmas: Tensor) -> Tensor:
    """The student's grid: every other level of a teacher grid of 2N steps (N steps, ending in 0).
    Raises UserError for an invalid grid or an odd number of steps."""
    sigmas = check_grid(sigmas, what="teacher grid")
    if (len(sigmas) - 1) % 2:
        raise UserError(f"teacher grid: progressive distillation halves an even number of steps, got "
                        f"{len(sigmas) - 1}")
    return sigmas[::2]


def progressive_target(teacher: Denoiser, x: Tensor, sigma: Tensor, sigma_mid: Tensor, sigma_next: Tensor,
                       **cond) -> Tensor:
    """The student's x0 target x~ (B, ...) for one student step sigma -> sigma_next that matches two
    teacher DDIM steps through sigma_mid (per-example levels (B,), sigma > sigma_mid > sigma_next >= 0).
    [PD] Alg. 2, in EDM space (module docstring)."""
    x_mid = step_rows(ddim_step, teacher, x, sigma, sigma_mid, **cond)
    x_next = step_rows(ddim_step, teacher, x_mid, sigma_mid, sigma_next, **cond)
    s, s_next = bcast(sigma, x), bcast(sigma_next, x)
    return (s * x_next - s_next * x) / (s - s_next)


def progressive_distillation_loss(student: Denoiser, teacher: Denoiser, x0: Tensor, eps: Tensor, k: Tensor,
                                  sigmas: Tensor, weight: Tensor, **cond) -> Tensor:
    """weight * mean ||student(x, sigma) - x~||^2 (B,) with x = x0 + sigma eps at the student's level k
    (sigma = sigmas[2k], through sigmas[2k+1] to sigmas[2k+2]; k (B,) uniform on 0..N-1 as [PD] draws t).

    sigmas: the teacher's grid of 2N steps (UserError otherwise). weight (B,) on the x0 MSE: [PD] Sec. 4
    uses truncated SNR max(SNR, 1) or SNR + 1, the latter being `losses.WEIGHTINGS["v"]`."""
    levels = halve_grid(sigmas).to(x0.device)  # validates the teacher grid
    if k.min() < 0 or k.max() > len(levels) - 2:
        raise UserError(f"student step indices must lie in [0, {len(levels) - 2}], got "
                        f"[{int(k.min())}, {int(k.max())}]")
    sigmas = sigmas.to(x0.device, torch.float64)
    sigma, sigma_mid, sigma_next = sigmas[2 * k], sigmas[2 * k + 1], sigmas[2 * k + 2]
    x = x0 + bcast(sigma, x0) * eps
    with torch.no_grad():
        target = progressive_target(teacher, x, sigma, sigma_mid, sigma_next, **cond)
    x0_hat = student(x, sigma.to(x0.dtype), **cond)
    return weight.to(x0.dtype) * ((x0_hat - target) ** 2).flatten(1).mean(1)


def reflow_pairs(denoiser: Denoiser, sampler: str, eps: Tensor, sigmas: Tensor, **cond) -> Tensor:
    """x0 (B, ...) = the deterministic `sampler` (a name in samplers.registry.SAMPLERS) run on `denoiser`
    from eps * sigmas[0] down the grid `sigmas`: with eps (B, ...) standard normal, (eps, x0) is the
    coupling a rectified flow is trained on next ([RF] "reflow"). Raises UserError for an
    unknown or stochastic sampler (a stochastic coupling is not the teacher's ODE map) or a bad grid."""
    if sampler not in SAMPLERS:
        raise UserError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
    if SAMPLERS[sampler].stochastic:
        deterministic = ", ".join(n for n, s in SAMPLERS.items() if not s.stochastic)
        raise UserError(f"reflow needs a deterministic sampler, got stochastic {sampler!r}; choose one of "
                        f"{deterministic}")
    sigmas = check_grid(sigmas, what="reflow grid")
    with torch.no_grad():
        return SAMPLERS[sampler].fn(denoiser, eps * float(sigmas[0]), sigmas, **cond)


def straightness(velocity: VelocityField, x_start: Tensor, ts: Tensor, **cond) -> Tensor:
    """S per example (B,): the flow's trajectory from x_start at ts[0] down to ts[-1] by RK4 on the grid
    ts (check_times; 4 NFE a step, one more at the end), and the trapezoidal time average of
    ||(x_a - x_b) / (a - b) - v(x_t, t)||^2 over it, a = ts[0], b = ts[-1]. On [0, 1] this is [RF]'s
    S(Z) = int_0^1 E||(Z_1 - Z_0) - dZ_t/dt||^2 dt; 0 exactly for straight constant-speed paths.

    A teacher trained on another path is measured on the linear path's clock through
    `VelocityFromDenoiser(denoiser, LinearFlow())`, so every flow is compared on the same time."""
    grid = check_times(ts).tolist()
    f = lambda y, t: velocity(y, y.new_full((y.shape[0],), t), **cond)
    x, vs = x_start, []
    with torch.no_grad():
        for i in range(len(grid) - 1):
            vs.append(f(x, grid[i]).clone())  # why: kept across calls, and a net may reuse its output buffer
            x = rk4_from(f, x, grid[i], grid[i + 1], vs[-1])
        vs.append(f(x, grid[-1]))
    chord = (x_start - x) / (grid[0] - grid[-1])
    dev = torch.stack([((chord - v) ** 2).flatten(1).sum(1) for v in vs])  # (n + 1, B)
    dt = torch.tensor(grid, dtype=dev.dtype, device=dev.device).diff().abs()[:, None]
    return ((dev[1:] + dev[:-1]) / 2 * dt).sum(0) / (grid[0] - grid[-1])
