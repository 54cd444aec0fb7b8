"""Per-example training losses, shape (B,).

denoising_loss: w(sigma) * mean ||D(x0 + sigma eps, sigma) - x0||^2 in EDM space, for any Denoiser
(so any path and prediction, through diffspace.param wrappers) ([EDM] Eq. 2, 8).
flow_matching_loss: mean ||u(x_t, t) - (d_alpha x0 + d_sigma eps)||^2 on a path ([FM] Eq. 23 for
the conditional path; [RF] Eq. 1 for the linear one), on a VelocityField.
"""

import torch
from torch import Tensor

from diffspace.paths.base import GaussianPath
from diffspace.utils import bcast


def _per_example_mean(sq: Tensor) -> Tensor:
    return sq.flatten(1).mean(1)


def denoising_loss(denoiser, x0: Tensor, sigma: Tensor, weight: Tensor, eps: Tensor | None = None,
                   generator: torch.Generator | None = None, **cond) -> Tensor:
    """sigma, weight: (B,). eps is drawn with `generator` unless given."""
    if eps is None:
        eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)
    s = sigma.to(x0.dtype)
    x0_hat = denoiser(x0 + bcast(s, x0) * eps, s, **cond)
    return weight.to(x0.dtype) * _per_example_mean((x0_hat - x0) ** 2)


def flow_matching_loss(velocity, x0: Tensor, t: Tensor, path: GaussianPath, eps: Tensor | None = None,
                       generator: torch.Generator | None = None, **cond) -> Tensor:
    """t: (B,) in [0, 1]. The target is the conditional velocity d_alpha x0 + d_sigma eps."""
    if eps is None:
        eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)
    t = t.to(x0.dtype)
    alpha, sigma, d_alpha, d_sigma = (bcast(c, x0) for c in path.coeffs(t))
    u = velocity(alpha * x0 + sigma * eps, t, **cond)
    return _per_example_mean((u - (d_alpha * x0 + d_sigma * eps)) ** 2)
