"""The three callable contracts every part of diffspace speaks (docs/design.md, section 3).

Wrappers (preconditioning, guidance, adapters) take one of these and return one of the same kind;
samplers are plain functions over them.
"""

from typing import Protocol

from torch import Tensor


class Denoiser(Protocol):
    """EDM space: x = x_t / alpha_t, sigma = sigma_t / alpha_t of shape (B,); returns x0_hat shaped like x.

    Optionally a method `slope(x, sigma: float, **cond)`, the PF-ODE's slope (x - x0_hat) / sigma at one
    level sigma > 0 for the batch, which the one-step samplers use instead (`samplers.ode.slope`)."""

    def __call__(self, x: Tensor, sigma: Tensor, **cond) -> Tensor: ...


class VelocityField(Protocol):
    """t in [0, 1] with t = 0 data, shape (B,); returns dx_t/dt shaped like x_t."""

    def __call__(self, x_t: Tensor, t: Tensor, **cond) -> Tensor: ...


class DiscreteDenoiser(Protocol):
    """Token ids x_t (B, L), t (B,); returns logits of p(x0 | x_t), shape (B, L, V)."""

    def __call__(self, x_t: Tensor, t: Tensor, **cond) -> Tensor: ...


class UserError(ValueError):
    """Bad input from a user: the CLI prints its one-line message and exits with status 2."""


class TrainingError(RuntimeError):
    """A run that cannot go on (non-finite loss, a lost rank): the CLI prints one line, exit 1."""
