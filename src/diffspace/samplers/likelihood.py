"""Exact log-likelihood of a continuous model through its probability-flow ODE.

References: [SDE] arXiv 2011.13456v2 App. D.2 (likelihood of the PF-ODE), [FFJORD] arXiv 1810.01367v3
Sec. 2.1 (instantaneous change of variables) and Sec. 3.1 (Hutchinson's trace estimator).

Along an ODE dy/dt = f(t, y), d log p(y(t)) / dt = -div f   ([FFJORD] Sec. 2.1), so

    log p_{t_min}(y(t_min)) = log p_{t_max}(y(t_max)) + int_{t_min}^{t_max} div f(t, y(t)) dt.

The ODE is solved in the path's own time t (a Denoiser enters through VelocityFromDenoiser), which
keeps x_t bounded on VP paths and took fewer steps than log-sigma time on every path we tried. Both
entry points return -log p(x) where p is the model's density of x0 + sigma_min * eps in EDM space
(sigma_min = sigma_t / alpha_t at t_min), in nats per example: x enters as x_{t_min} = alpha_{t_min} x,
and the prior at t_max is N(0, sigma_t(t_max)^2 I) (docs/likelihood.md).

The prior ignores the data's own spread: its error is |E x0|^2 / (2 sigma_max^2) nats on average, plus
D s^4 / (4 sigma_max^4) for data of per-dimension variance s^2, and about |x0| / sigma_max for a single
example, so the path's EDM sigma_max must be large against the data scale. The divergence is exact
(one backward pass per dimension) or Hutchinson's estimate with probes fixed per example for the
whole solve and seeded from (seed, global example index), so a result does not depend on how the
data is batched or sharded except through the adaptive step sizes, which one batch shares (within
the solver tolerance). No collective runs inside: under torchrun each rank solves its own shard.
"""

import math
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from diffspace.param.wrappers import VelocityFromDenoiser
from diffspace.paths.base import GaussianPath
from diffspace.types import UserError

ADAPTIVE_METHODS = ("dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun")  # torchdiffeq's
Divergence = Callable[[Tensor, Tensor], Tensor]  # (f, y) -> div_y f of shape (B,)


class Likelihood(NamedTuple):
    nll: Tensor  # (B,) nats
    nfe: int  # evaluations of the ODE right-hand side (each one network call on the batch)


def exact_divergence(f: Tensor, y: Tensor) -> Tensor:
    """sum_i d f_i / d y_i by one backward pass per dimension; f = F(y) built with autograd."""
    f_flat = f.flatten(1)
    div = torch.zeros(f.shape[0], dtype=f.dtype, device=f.device)
    for i in range(f_flat.shape[1]):
        (g,) = torch.autograd.grad(f_flat[:, i].sum(), y, retain_graph=True)
        div = div + g.flatten(1)[:, i]
    return div


def hutchinson_divergence(f: Tensor, y: Tensor, probes: Tensor) -> Tensor:
    """Mean over probes e (K, B, ...) of e^T (df/dy) e, unbiased when E[e e^T] = I. [FFJORD] Sec. 3.1."""
    div = torch.zeros(f.shape[0], dtype=f.dtype, device=f.device)
    for e in probes:
        (g,) = torch.autograd.grad(f, y, grad_outputs=e, retain_graph=True)  # e^T J
        div = div + (g * e).flatten(1).sum(1)
    return div / probes.shape[0]


def per_example_draw(n: int, draw: Callable[[torch.Generator], Tensor], seed: int, index_offset: int = 0,
                     stream: int = 0) -> Tensor:
    """Stack draw(g) for examples index_offset .. index_offset + n - 1, each g seeded from
    (seed, stream, global index): the numbers do not depend on batching, sharding or the device."""
    out = []
    for i in range(n):
        state = np.random.SeedSequence([seed, stream, index_offset + i]).generate_state(1, dtype=np.uint64)
        out.append(draw(torch.Generator().manual_seed(int(state[0]))))
    return torch.stack(out)


def make_probes(shape: tuple[int, ...], n_probes: int, kind: str, seed: int, index_offset: int = 0,
                dtype=torch.float64, device=None) -> Tensor:
    """Probes (n_probes, B, ...) for a batch of `shape` (B, ...), fixed per example.

    kind "rademacher" (+-1: no variance from the Jacobian's diagonal) or "gaussian" (standard normal).
    """
    if kind not in ("rademacher", "gaussian"):
        raise UserError(f"probe must be 'rademacher' or 'gaussian', got {kind!r}")
    size = (n_probes, *shape[1:])
    if kind == "gaussian":
        draw = lambda g: torch.randn(size, generator=g, dtype=torch.float64)
    else:
        draw = lambda g: torch.randint(0, 2, size, generator=g).double() * 2 - 1
    probes = per_example_draw(shape[0], draw, seed, index_offset)  # (B, n_probes, ...)
    return probes.transpose(0, 1).to(device=device, dtype=dtype)


def _gaussian_logp(y: Tensor, std: float) -> Tensor:
    """log N(y; 0, std^2 I) per example."""
    d = y[0].numel()
    return -0.5 * (y.flatten(1) ** 2).sum(1) / std**2 - 0.5 * d * math.log(2 * math.pi * std**2)


def _divergence_fn(divergence: str, x: Tensor, n_probes: int, probe: str, seed: int,
                   index_offset: int) -> Divergence:
    if divergence == "exact":
        return exact_divergence
    if divergence == "hutchinson":
        probes = make_probes(tuple(x.shape), n_probes, probe, seed, index_offset, x.dtype, x.device)
        return lambda f, y: hutchinson_divergence(f, y, probes)
    raise UserError(f"divergence must be 'exact' or 'hutchinson', got {divergence!r}")


def _integrate(field, y0: Tensor, span: tuple[float, float], div_fn: Divergence, rtol: float,
               atol: float, method: str, options: dict | None) -> tuple[Tensor, Tensor, int]:
    """Solve dy/dtau = field(tau, y) with d(acc)/dtau = div field; returns (y_end, acc_end, nfe)."""
    from torchdiffeq import odeint

    nfe = 0

    def rhs(tau, state):
        nonlocal nfe
        nfe += 1
        with torch.enable_grad():
            y = state[0].detach().requires_grad_(True)
            f = field(tau, y)
            div = div_fn(f, y)
        return f.detach(), div.detach()

    acc0 = torch.zeros(y0.shape[0], dtype=y0.dtype, device=y0.device)
    tau = torch.tensor(span, dtype=y0.dtype, device=y0.device)
    if method in ADAPTIVE_METHODS:
        # why: adaptive solvers otherwise step past the end and interpolate back, evaluating the
        # path beyond t_max, where e.g. the cosine schedule's alpha turns negative
        options = {"step_t": tau[1:], **(options or {})}
    ys, accs = odeint(rhs, (y0, acc0), tau, rtol=rtol, atol=atol, method=method, options=options)
    return ys[-1], accs[-1], nfe


def _check(x: Tensor, path: GaussianPath):
    if not isinstance(path, GaussianPath):
        raise UserError(f"path must be a diffspace GaussianPath, got {type(path).__name__}")
    if x.ndim < 2 or not x.is_floating_point():
        raise UserError(f"x must be a floating tensor of shape (B, ...), got {tuple(x.shape)} {x.dtype}")


def velocity_log_likelihood(velocity, x: Tensor, path: GaussianPath, *, divergence: str = "hutchinson",
                            n_probes: int = 1, probe: str = "rademacher", seed: int = 0,
                            index_offset: int = 0, rtol: float = 1e-5, atol: float = 1e-5,
                            method: str = "dopri5", options: dict | None = None, **cond) -> Likelihood:
    """-log p(x) in nats (B,) of a VelocityField's ODE on `path` from t_min to t_max.

    x is EDM-space data (x_{t_min} = alpha_{t_min} x). `index_offset` is the global index of x[0]
    (for sharded evaluation); Hutchinson probes depend only on it, the example's position and `seed`.
    """
    _check(x, path)
    div_fn = _divergence_fn(divergence, x, n_probes, probe, seed, index_offset)
    t0 = torch.tensor(path.t_min, dtype=torch.float64)
    t1 = torch.tensor(path.t_max, dtype=torch.float64)
    alpha0, std1 = float(path.alpha_t(t0)), float(path.sigma_t(t1))

    def field(t, y):
        return velocity(y, t.to(y).expand(y.shape[0]), **cond).to(y.dtype)

    y1, int_div, nfe = _integrate(field, alpha0 * x, (path.t_min, path.t_max), div_fn, rtol, atol,
                                  method, options)
    logp_t = _gaussian_logp(y1, std1) + int_div  # log p_{t_min}(alpha0 x)  [SDE] App. D.2
    # why: x_t = alpha0 x has density p_x(x) = p_t(alpha0 x) alpha0^D
    return Likelihood(-(logp_t + x[0].numel() * math.log(alpha0)), nfe)


def log_likelihood(denoiser, x: Tensor, path: GaussianPath, **kwargs) -> Likelihood:
    """-log p(x) in nats (B,) of a Denoiser's PF-ODE on `path`; options as `velocity_log_likelihood`."""
    return velocity_log_likelihood(VelocityFromDenoiser(denoiser, path), x, path, **kwargs)
