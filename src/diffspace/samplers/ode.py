"""Deterministic samplers on the probability-flow ODE in sigma space ([EDM] Eq. 4 with s = 1):

    dx/dsigma = (x - D(x, sigma)) / sigma.

Pure `*_step` functions plus thin loops; history, if any, is explicit. Grids come from `grids.py`.
"""

from collections.abc import Callable

import torch
from torch import Tensor

from diffspace.types import Denoiser

Callback = Callable[[int, Tensor, Tensor, Tensor], None]  # (step, sigma, x, x0_hat)


def _sig(sigma: Tensor, x: Tensor) -> Tensor:
    """A grid value as a (B,) noise level in x's dtype."""
    return sigma.to(x).expand(x.shape[0])


def euler_step(denoiser: Denoiser, x: Tensor, sigma: Tensor, sigma_next: Tensor, **cond):
    """One Euler step of the PF-ODE; returns (x_next, x0_hat). [EDM] Alg. 1 lines 4-5."""
    x0 = denoiser(x, _sig(sigma, x), **cond)
    d = (x - x0) / sigma
    return x + (sigma_next - sigma) * d, x0


def heun_step(denoiser: Denoiser, x: Tensor, sigma: Tensor, sigma_next: Tensor, **cond):
    """[EDM] Alg. 1: Euler step, then the 2nd-order correction unless sigma_next = 0 (1 NFE there)."""
    x0 = denoiser(x, _sig(sigma, x), **cond)
    d = (x - x0) / sigma
    x_next = x + (sigma_next - sigma) * d  # Euler step
    if sigma_next > 0:  # Apply 2nd order correction
        d_next = (x_next - denoiser(x_next, _sig(sigma_next, x), **cond)) / sigma_next
        x_next = x + (sigma_next - sigma) * 0.5 * (d + d_next)
    return x_next, x0


def _loop(step, denoiser, x, sigmas, callback, cond):
    for i in range(len(sigmas) - 1):
        x, x0 = step(denoiser, x, sigmas[i], sigmas[i + 1], **cond)
        if callback is not None:
            callback(i, sigmas[i], x, x0)
    return x


def sample_euler(denoiser: Denoiser, x: Tensor, sigmas: Tensor, callback: Callback | None = None, **cond):
    """x: noise already scaled by sigmas[0]. One NFE per step."""
    return _loop(euler_step, denoiser, x, sigmas, callback, cond)


def sample_heun(denoiser: Denoiser, x: Tensor, sigmas: Tensor, callback: Callback | None = None, **cond):
    """Two NFE per step, one on a final step to sigma = 0."""
    return _loop(heun_step, denoiser, x, sigmas, callback, cond)


def sample_adaptive(denoiser: Denoiser, x: Tensor, sigma_max: float, sigma_min: float,
                    rtol: float = 1e-5, atol: float = 1e-5, method: str = "dopri5",
                    denoise_last: bool = True, **cond) -> Tensor:
    """The reference PF-ODE solution with torchdiffeq's adaptive solver, from sigma_max to sigma_min.

    Integrates in s = log sigma (dx/ds = x - D(x, sigma)), which is smooth over the whole range.
    With `denoise_last` the result is D(x, sigma_min), the Euler step to sigma = 0.
    """
    from torchdiffeq import odeint

    def f(s, y):
        return y - denoiser(y, torch.exp(s).to(y).expand(y.shape[0]), **cond)

    s_span = torch.tensor([sigma_max, sigma_min], dtype=torch.float64).log().to(x.device)
    y = odeint(f, x, s_span, rtol=rtol, atol=atol, method=method)[-1]
    if denoise_last:
        y = denoiser(y, torch.full((y.shape[0],), sigma_min, dtype=y.dtype, device=y.device), **cond)
    return y


class CountingDenoiser:
    """Wraps a Denoiser and counts network evaluations (one per call, whatever the batch)."""

    def __init__(self, denoiser: Denoiser):
        self.denoiser, self.nfe = denoiser, 0

    def __call__(self, x, sigma, **cond):
        self.nfe += 1
        return self.denoiser(x, sigma, **cond)
