"""Consistency models: consistency distillation from any diffspace teacher and consistency training
without one, as per-example losses (B,), with [ICT]'s discretization curriculum and level proposal.

References: [CM] arXiv 2303.01469v2, [ICT] 2310.14189v1, [EDM] 2206.00364v2.

A consistency function f(x, sigma) (param/maps.py `ConsistencyPrecond`, EDM space, f(x, sigma_min) = x
by construction) maps every point of a PF-ODE trajectory to the trajectory's point at sigma_min. On
noise levels sigma_max = levels[0] > ... > levels[N-1] = sigma_min (the Karras grid, [CM] Sec. 5) each
training pair of adjacent levels (hi, lo) = (levels[k], levels[k+1]) gives

    loss = lambda(hi, lo) d(f_theta(x_hi, hi), sg f_theta-(x_lo, lo))                   [CM] Eq. 7, 10

with x_hi = x0 + hi z and x_lo either one ODE step of a teacher from x_hi down to lo (distillation,
[CM] Eq. 6, Alg. 2; any one-step sampler of samplers/ode.py or sde.ddim_step on any Denoiser) or
x0 + lo z with the same z (training, [CM] Alg. 3: the teacher step with the data point as x0_hat, an
Euler step of the one-sample denoiser). The target f_theta- is the EMA of the weights in [CM] (the
Trainer's EMA, passed as `target_model`) and the model itself under stop-gradient in [ICT] Sec. 3.2
(the default here). [ICT]: lambda = 1 / (hi - lo) (Sec. 3.1), d pseudo-Huber with c = 0.00054 sqrt(D)
(Sec. 3.3), N doubling every K' steps from s0 = 10 to s1 = 1280 (Sec. 3.4), pairs drawn by a discretized
log-normal with P_mean = -1.1, P_std = 2.0 (Sec. 3.5).
"""

import math

import torch
from torch import Tensor

from diffspace import rng
from diffspace.samplers.fewstep import step_rows
from diffspace.samplers.grids import karras_sigmas
from diffspace.types import UserError
from diffspace.utils import bcast

ICT_HUBER = 0.00054  # [ICT] Sec. 3.3: c = 0.00054 sqrt(D)


def squared_l2(diff: Tensor) -> Tensor:
    """||diff||^2 per example (B,), the [CM] L2 metric."""
    return (diff**2).flatten(1).sum(1)


def pseudo_huber(diff: Tensor, c: float | None = None) -> Tensor:
    """sqrt(||diff||^2 + c^2) - c per example (B,), c = 0.00054 sqrt(D) by default ([ICT] Sec. 3.3)."""
    if c is None:
        c = ICT_HUBER * math.sqrt(diff[0].numel())
    return torch.sqrt(squared_l2(diff) + c**2) - c


def ict_weight(hi: Tensor, lo: Tensor) -> Tensor:
    """lambda = 1 / (hi - lo) for adjacent levels hi > lo (B,). [ICT] Sec. 3.1."""
    return 1.0 / (hi - lo)


def consistency_loss(model, x_hi: Tensor, hi: Tensor, x_lo: Tensor, lo: Tensor, weight: Tensor,
                     distance=pseudo_huber, target_model=None, **cond) -> Tensor:
    """weight * distance(f(x_hi, hi) - sg f-(x_lo, lo)) (B,): the consistency loss of [CM] Eq. 7 / 10 for
    given points. `target_model` None: the model itself under no_grad ([ICT] Sec. 3.2)."""
    with torch.no_grad():
        f_lo = (model if target_model is None else target_model)(x_lo, lo.to(x_lo.dtype), **cond)
    f_hi = model(x_hi, hi.to(x_hi.dtype), **cond)
    return weight.to(x_hi.dtype) * distance(f_hi - f_lo)


def _levels_at(levels: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
    if k.min() < 0 or k.max() > len(levels) - 2:
        raise UserError(f"pair indices must lie in [0, {len(levels) - 2}] for {len(levels)} levels, got "
                        f"[{int(k.min())}, {int(k.max())}]")
    levels = levels.to(k.device)
    return levels[k], levels[k + 1]


def consistency_training_loss(model, x0: Tensor, z: Tensor, k: Tensor, levels: Tensor,
                              distance=pseudo_huber, target_model=None, **cond) -> Tensor:
    """[CM] Alg. 3 with [ICT]'s weight: x_hi = x0 + hi z, x_lo = x0 + lo z, (hi, lo) = levels[k], levels[k+1].

    x0, z: (B, ...) data and standard normal noise; k: (B,) pair indices (`draw_pairs`); levels: descending
    float64 (`ict_levels`). Returns (B,)."""
    hi, lo = _levels_at(levels, k)
    return consistency_loss(model, x0 + bcast(hi, x0) * z, hi, x0 + bcast(lo, x0) * z, lo, ict_weight(hi, lo),
                            distance, target_model, **cond)


def consistency_distillation_loss(model, teacher, step, x0: Tensor, z: Tensor, k: Tensor, levels: Tensor,
                                  weight: Tensor | None = None, distance=pseudo_huber, target_model=None,
                                  **cond) -> Tensor:
    """[CM] Alg. 2: x_hi = x0 + hi z, x_lo = one `step` of the teacher Denoiser from hi to lo ([CM] Eq. 6;
    Heun in [CM], `samplers.ode.heun_step`). weight None: [ICT]'s 1 / (hi - lo) ([CM] uses 1).
    Returns (B,)."""
    hi, lo = _levels_at(levels, k)
    x_hi = x0 + bcast(hi, x0) * z
    with torch.no_grad():
        x_lo = step_rows(step, teacher, x_hi, hi, lo, **cond)
    weight = ict_weight(hi, lo) if weight is None else weight
    return consistency_loss(model, x_hi, hi, x_lo, lo, weight, distance, target_model, **cond)


def ict_num_levels(step: int, total_steps: int, s0: int = 10, s1: int = 1280) -> int:
    """The number of levels at training step k of K: N(k) = min(s0 2^floor(k / K'), s1) + 1 with
    K' = floor(K / (log2 floor(s1 / s0) + 1)). [ICT] Sec. 3.4."""
    k_prime = math.floor(total_steps / (math.log2(math.floor(s1 / s0)) + 1))
    return min(s0 * 2 ** (step // max(k_prime, 1)), s1) + 1


def ict_levels(n: int, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0) -> Tensor:
    """n Karras levels from sigma_max down to sigma_min (float64, no final 0). [CM] Sec. 5, [EDM] Eq. 5;
    the values are [CM]'s and [ICT]'s."""
    return karras_sigmas(n, sigma_min, sigma_max, rho)[:-1]


def ict_pair_probs(levels: Tensor, p_mean: float = -1.1, p_std: float = 2.0) -> Tensor:
    """Probabilities (N - 1,) of the adjacent pairs (levels[k], levels[k+1]) of descending levels:
    p_k proportional to erf((ln hi - P_mean) / (sqrt 2 P_std)) - erf((ln lo - P_mean) / (sqrt 2 P_std)),
    the log-normal mass between them. [ICT] Sec. 3.5."""
    e = torch.erf((levels.double().log() - p_mean) / (math.sqrt(2) * p_std))
    mass = e[:-1] - e[1:]
    return mass / mass.sum()


def pair_index(u: Tensor, probs: Tensor) -> Tensor:
    """Pair indices (B,) for uniforms u (B,) in [0, 1): the inverse CDF of `probs` (a training batch draws
    u, and the loss maps it once the step's levels are known)."""
    cdf = probs.double().to(u.device).cumsum(0)
    return torch.searchsorted(cdf, u.double() * cdf[-1], right=True).clamp(max=len(probs) - 1)


def draw_pairs(n: int, probs: Tensor, generator: rng.Generator | None) -> Tensor:
    """n pair indices (B,) drawn from `probs` by inverting the CDF of one uniform per row."""
    return pair_index(rng.rand((n,), generator, torch.float64), probs)
