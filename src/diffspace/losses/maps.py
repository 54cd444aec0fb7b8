"""Per-example losses (B,) of flow maps trained from scratch: MeanFlow and shortcut models, with their
(t, r) draws. The map is an average velocity `avg_velocity(x_t, t, r, **cond)` (param/maps.py).

References: [MEANFLOW] arXiv 2505.13447v1, [SHORTCUT] 2410.12557v3, [FM] 2210.02747v2, [SD3] 2403.03206.

MeanFlow. Differentiating (t - r) u(x_t, r, t) = int_r^t v dtau (Eq. 4) in t along the trajectory gives
the MeanFlow identity (Eq. 6)

    u(x_t, r, t) = v(x_t, t) - (t - r) d/dt u(x_t, r, t),   d/dt u = v . d_x u + d_t u   (Eq. 8),

the total derivative being the Jacobian-vector product of u with the tangent (v, 1, 0) in (x_t, t, r).
The loss regresses u_theta on the stop-gradient target with v replaced by the conditional velocity
v_t = d_alpha x0 + d_sigma eps of any Gaussian path (Eq. 11, [FM]). The target is affine in v_t, so its
expectation given x_t is the target with the marginal v: the conditional velocity keeps the minimizer.
At r = t the target is v_t and the loss is flow matching on the instantaneous velocity.

Shortcut models. A jump of size t - r is consistent with two half jumps through s = (t + r) / 2:

    (t - r) u(x_t, r, t) = (t - s) u(x_t, s, t) + (s - r) u(x_s, r, s),   x_s = x_t - (t - s) u(x_t, s, t)

([SHORTCUT] Sec. 3 self-consistency, here in the flow-map form of [MEANFLOW] Sec. 3); rows with r = t
regress on the conditional velocity (flow matching), rows with r < t on the stop-gradient two-half-jump
target.
"""

import torch
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel

from diffspace import rng
from diffspace.paths.base import GaussianPath
from diffspace.types import UserError
from diffspace.utils import bcast, select_rows


def _per_example_mean(sq: Tensor) -> Tensor:
    return sq.flatten(1).mean(1)


def _interpolate(x0: Tensor, eps: Tensor, t: Tensor, path: GaussianPath) -> tuple[Tensor, Tensor]:
    """x_t = alpha_t x0 + sigma_t eps and the conditional velocity d_alpha_t x0 + d_sigma_t eps."""
    alpha, sigma, d_alpha, d_sigma = (bcast(c, x0) for c in path.coeffs(t.to(x0.dtype)))
    return alpha * x0 + sigma * eps, d_alpha * x0 + d_sigma * eps


def meanflow_target(avg_velocity, x_t: Tensor, t: Tensor, r: Tensor, v: Tensor,
                    **cond) -> tuple[Tensor, Tensor]:
    """(u, sg(u_tgt)) at (x_t, t, r): u = avg_velocity(x_t, t, r) and u_tgt = v - (t - r) d/dt u with the
    total derivative by `torch.func.jvp` along the tangent (v, 1, 0). [MEANFLOW] Eq. 8, 10; Alg. 1.

    v: the velocity dx_t/dt at (x_t, t), conditional (training) or marginal (the identity itself).
    """
    fn = lambda x, t_, r_: avg_velocity(x, t_, r_, **cond)
    # why: PyTorch's fused attention kernels have no forward-mode derivative; the math kernel does
    with sdpa_kernel(SDPBackend.MATH):
        u, du_dt = torch.func.jvp(fn, (x_t, t, r), (v, torch.ones_like(t), torch.zeros_like(r)))
    return u, (v - bcast(t - r, v) * du_dt).detach()  # [MEANFLOW] Eq. 6 / 10 as the target


def meanflow_loss(avg_velocity, x0: Tensor, eps: Tensor, t: Tensor, r: Tensor, path: GaussianPath,
                  **cond) -> Tensor:
    """mean ||u_theta(x_t, r, t) - sg(u_tgt)||^2 per example (B,) with the conditional velocity. [MEANFLOW]
    Eq. 9, 11. t, r: (B,) with 0 <= r <= t <= 1; x0, eps: (B, ...). Scale by `adaptive_weight` for the
    paper's adaptive loss."""
    x_t, v = _interpolate(x0, eps, t, path)
    u, u_tgt = meanflow_target(avg_velocity, x_t, t.to(x0.dtype), r.to(x0.dtype), v, **cond)
    return _per_example_mean((u - u_tgt) ** 2)


def adaptive_weight(loss: Tensor, p: float = 1.0, c: float = 1e-3) -> Tensor:
    """sg(w) with w = 1 / (loss + c)^p ([MEANFLOW] Sec. 4.3 "Loss Metrics"; p = 1 is its best, Fig. 4e, and
    p = 0.5 is close to a pseudo-Huber loss). `loss` is the per-example mean square here, the paper's
    ||Delta||^2 divided by the dimension; c = 1e-3 is the paper's example value. With p = 1 the loss is
    about log ||Delta||^2, whose minimizer is not the conditional mean: on the 2-D checkerboard it
    biased every NFE (docs/fewstep.md), so p = 0 (plain L2) is the safe default."""
    return 1.0 / (loss.detach() + c) ** p


def shortcut_loss(avg_velocity, x0: Tensor, eps: Tensor, t: Tensor, r: Tensor, path: GaussianPath,
                  target_map=None, **cond) -> Tensor:
    """Per-example (B,) shortcut loss ([SHORTCUT] Sec. 3): rows with r = t regress u(x_t, t, t) on the
    conditional velocity, rows with r < t regress u(x_t, t, r) on the two half jumps of `target_map`
    (default: the model itself), under no_grad (the stop-gradient target)."""
    x_t, v = _interpolate(x0, eps, t, path)
    t, r = t.to(x0.dtype), r.to(x0.dtype)
    u = avg_velocity(x_t, t, r, **cond)
    target, jump = v, (r < t).nonzero().flatten()
    if len(jump):
        with torch.no_grad():
            teacher = avg_velocity if target_map is None else target_map
            half = _two_half_jumps(teacher, x_t[jump], t[jump], r[jump], select_rows(cond, jump, len(x0)))
        target = v.index_copy(0, jump, half)
    return _per_example_mean((u - target) ** 2)


def _two_half_jumps(avg_velocity, x_t: Tensor, t: Tensor, r: Tensor, cond: dict) -> Tensor:
    s = (t + r) / 2
    u_1 = avg_velocity(x_t, t, s, **cond)
    x_s = x_t - bcast(t - s, x_t) * u_1  # [MEANFLOW] Eq. 12: a jump from t to s
    u_2 = avg_velocity(x_s, s, r, **cond)
    return (u_1 + u_2) / 2  # equal halves: (t - s) = (s - r) = (t - r) / 2


def draw_meanflow_times(n: int, generator: rng.Generator | None, ratio: float = 0.25, mean: float = -0.4,
                        std: float = 1.0) -> tuple[Tensor, Tensor]:
    """(t, r), each (B,) float64 with r <= t: two logit-normal draws ([SD3] Eq. 19), the larger is t; a
    fraction 1 - `ratio` of the rows (in expectation) get r = t. [MEANFLOW] Sec. 4.3 "Sampling Time
    Steps"; 25 % of r != t is its best ratio (Fig. 4a), logit-normal its best sampler (Fig. 4d)."""
    a = torch.sigmoid(mean + std * rng.randn((n, 2), generator, torch.float64))
    t, r = a.max(1).values, a.min(1).values
    keep = rng.rand((n,), generator, torch.float64) < ratio
    return t, torch.where(keep, r, t)


def draw_shortcut_times(n: int, generator: rng.Generator | None, max_steps: int = 128,
                        fraction: float = 0.25) -> tuple[Tensor, Tensor]:
    """(t, r), each (B,) float64 ([SHORTCUT] Sec. 3, with max_steps M = 128 and a quarter of the batch on
    self-consistency, its defaults). The first round(fraction n) rows jump by 2d with d = 2^k / M,
    k ~ U{0 .. log2(M) - 1}, from t on the grid of d (t in {2d, 3d, .., 1}); the others have r = t with
    t ~ U(0, 1) (flow matching)."""
    m = round(fraction * n)
    levels = max_steps.bit_length() - 1  # log2(M)
    if max_steps != 2**levels or levels < 1:
        raise UserError(f"max_steps must be a power of two >= 2, got {max_steps!r}")
    k = rng.randint(levels, (n,), generator)[:m]
    d = 2.0 ** k.double() / max_steps
    j = 2 + (rng.rand((n,), generator, torch.float64)[:m] * (1 / d - 1)).floor()  # j in {2 .. 1/d}
    t = rng.rand((n,), generator, torch.float64)
    t[:m] = j * d
    r = t.clone()
    r[:m] = t[:m] - 2 * d
    return t, r
