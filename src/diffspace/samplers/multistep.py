"""Multistep solvers of the PF-ODE in sigma space: DPM-Solver++ 2M / 3M, UniPC, DEIS (rho-AB).

References: [DPM] arXiv 2206.00927v3, [DPM++] 2211.01095v2, [UniPC] 2302.04867v4, [DEIS] 2204.13902v4.

In EDM space (alpha = 1) with lam = -log sigma and h = lam_next - lam, the exact solution is
([DPM++] Eq. 9)

    x_next = (sigma_next / sigma) x + exp(-h) * int_0^h exp(u) x0(lam + u) du.

Expanding x0 = sum_k x0^(k) u^k / k! gives the exponential-integrator weights
c_k(h) = exp(-h) int_0^h exp(u) u^k / k! du: c_0 = -expm1(-h), c_k = h^k / k! - c_{k-1}.
The methods differ in how they estimate the derivatives x0^(k) from past (and, for UniPC's
corrector, the next) denoiser outputs. The history is explicit: a `History` of the newest values
first, passed in and returned by the loops, never kept in hidden state. A final step to sigma = 0
(h = inf) returns the last x0_hat, the limit of every formula here.
"""

import math
from typing import NamedTuple

import torch
from torch import Tensor

from diffspace.samplers.grids import check_sigmas
from diffspace.samplers.ode import Callback, sigma_batch
from diffspace.types import Denoiser


class History(NamedTuple):
    """Past noise levels and denoiser-derived values (x0_hat, or eps_hat for DEIS), newest first."""

    sigmas: tuple[float, ...] = ()
    values: tuple[Tensor, ...] = ()


def push(hist: History, sigma: float, value: Tensor, keep: int) -> History:
    return History((sigma, *hist.sigmas)[:keep], (value, *hist.values)[:keep])


def phi_weights(h: float, order: int) -> list[float]:
    """c_0 .. c_{order-1} for a step of length h in lam (see the module docstring)."""
    c = [-math.expm1(-h)]
    for k in range(1, order):
        c.append(h**k / math.factorial(k) - c[-1])
    return c


def dpmpp_2m_step(x: Tensor, sigma_next: float, hist: History) -> Tensor:
    """[DPM++] Alg. 2: first order on the first step, then the multistep 2nd-order update."""
    (sigma, *past), (x0, *x0_past) = hist.sigmas, hist.values
    if sigma_next == 0:
        return x0
    h = math.log(sigma / sigma_next)
    if past:
        r = math.log(past[0] / sigma) / h  # h_{i-1} / h_i
        x0 = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * x0_past[0]  # [DPM++] Alg. 2 line 7
    return (sigma_next / sigma) * x + (-math.expm1(-h)) * x0  # [DPM++] Eq. 9, first order in D


def dpmpp_3m_step(x: Tensor, sigma_next: float, hist: History) -> Tensor:
    """Third-order multistep in data prediction: x0 interpolated by a quadratic in lam through the last
    three outputs and integrated exactly with c_0, c_1, c_2 ([DPM] Sec. 3.2 in [DPM++] form)."""
    if len(hist.sigmas) < 3 or sigma_next == 0:
        return dpmpp_2m_step(x, sigma_next, hist)
    (s0, s1, s2), (m0, m1, m2) = hist.sigmas, hist.values
    h, h0, h1 = math.log(s0 / sigma_next), math.log(s1 / s0), math.log(s2 / s1)
    f01, f12 = (m0 - m1) / h0, (m1 - m2) / h1  # divided differences in lam
    f012 = (f01 - f12) / (h0 + h1)
    c0, c1, c2 = phi_weights(h, 3)
    return (sigma_next / s0) * x + c0 * m0 + c1 * (f01 + h0 * f012) + c2 * (2 * f012)


def exponential_update(x: Tensor, sigma: float, sigma_next: float, x0: Tensor,
                       points: list[tuple[float, Tensor]]) -> Tensor:
    """[UniPC] Eq. 7 / Alg. 2: x_next = e^-h x + c_0 x0 + sum_m a_m D_m, D_m = (x0_m - x0) / r_m,
    r_m = (lam_m - lam) / h, with a solved from the order conditions sum_m a_m r_m^(k-1) h^k/k! = c_k
    (k = 1..M) so the update is exact for x0 polynomial of degree M in lam.

    why: UniPC's B(h) only rescales this system; solving it exactly (instead of the fixed a = 1/2 its
    bh2 variant uses for one point) keeps the stated order for every step ratio.
    """
    h = math.log(sigma / sigma_next)
    c = phi_weights(h, len(points) + 1)
    out = (sigma_next / sigma) * x + c[0] * x0
    if not points:
        return out
    r = [math.log(sigma / s_m) / h for s_m, _ in points]
    M = len(points)
    A = torch.tensor([[r_m ** (k - 1) * h**k / math.factorial(k) for r_m in r] for k in range(1, M + 1)],
                     dtype=torch.float64)
    a = torch.linalg.solve(A, torch.tensor(c[1:], dtype=torch.float64)).tolist()
    for a_m, r_m, (_, x0_m) in zip(a, r, points, strict=True):
        out = out + (a_m / r_m) * (x0_m - x0)
    return out


def unipc_predict(x: Tensor, sigma_next: float, hist: History) -> Tensor:
    """UniP: the update through the current and past outputs in `hist` (order = len(hist))."""
    if sigma_next == 0:
        return hist.values[0]
    points = list(zip(hist.sigmas[1:], hist.values[1:], strict=True))
    return exponential_update(x, hist.sigmas[0], sigma_next, hist.values[0], points)


def unipc_correct(x: Tensor, sigma_next: float, hist: History, x0_next: Tensor) -> Tensor:
    """UniC ([UniPC] Alg. 1): redo the step from x (at hist.sigmas[0]) with the new output x0_next at
    sigma_next as one more point; raises the order by one at no extra NFE."""
    points = [*zip(hist.sigmas[1:], hist.values[1:], strict=True), (sigma_next, x0_next)]
    return exponential_update(x, hist.sigmas[0], sigma_next, hist.values[0], points)


def _lagrange_integrals(nodes: list[float], a: float, b: float) -> list[float]:
    """int_a^b L_j(s) ds for the Lagrange basis on `nodes` (plain floats: at most 4 nodes)."""
    out = []
    for j, s_j in enumerate(nodes):
        poly = [1.0]  # coefficients of L_j, lowest degree first
        for s_k in nodes[:j] + nodes[j + 1:]:
            shifted = [0.0, *poly]
            poly = [(q - s_k * p) / (s_j - s_k) for q, p in zip(shifted, [*poly, 0.0], strict=True)]
        out.append(sum(p / (i + 1) * (b ** (i + 1) - a ** (i + 1)) for i, p in enumerate(poly)))
    return out


def deis_step(x: Tensor, sigma_next: float, hist: History) -> Tensor:
    """[DEIS] rho-AB (Eq. 15 with rho = sigma): dx/dsigma = eps_hat, eps_hat extrapolated by the
    Lagrange polynomial in sigma through the stored eps values and integrated exactly. This is also
    the linear multistep (LMS) method of the sigma-space ODE."""
    weights = _lagrange_integrals(list(hist.sigmas), hist.sigmas[0], sigma_next)
    for w, eps in zip(weights, hist.values, strict=True):
        x = x + w * eps
    return x


def multistep_loop(step, keep: int, denoiser: Denoiser, x: Tensor, sigmas: Tensor, callback: Callback | None,
                   cond: dict, value=lambda x, x0, sigma: x0) -> Tensor:
    """The thin loop of multistep samplers: one NFE per step, `value(x, x0_hat, sigma)` pushed onto a
    History of length `keep`, then x = step(x, sigma_next, history)."""
    grid, hist = check_sigmas(sigmas).tolist(), History()
    for i in range(len(grid) - 1):
        x0 = denoiser(x, sigma_batch(grid[i], x), **cond)
        hist = push(hist, grid[i], value(x, x0, grid[i]), keep)
        x = step(x, grid[i + 1], hist)
        if callback is not None:
            callback(i, grid[i], x, x0)
    return x


def sample_dpmpp_2m(denoiser: Denoiser, x: Tensor, sigmas: Tensor, *, generator=None,
                    callback: Callback | None = None, **cond) -> Tensor:
    return multistep_loop(dpmpp_2m_step, 2, denoiser, x, sigmas, callback, cond)


def sample_dpmpp_3m(denoiser: Denoiser, x: Tensor, sigmas: Tensor, *, generator=None,
                    callback: Callback | None = None, **cond) -> Tensor:
    return multistep_loop(dpmpp_3m_step, 3, denoiser, x, sigmas, callback, cond)


def sample_unipc(denoiser: Denoiser, x: Tensor, sigmas: Tensor, *, order: int = 2, generator=None,
                 callback: Callback | None = None, **cond) -> Tensor:
    """UniPC: UniP of `order` (multistep) and, after every network call at sigma > 0, UniC on the step
    that led there (order + 1 overall). One NFE per step."""
    grid, hist = check_sigmas(sigmas).tolist(), History()
    x_prev = x
    for i in range(len(grid) - 1):
        x0 = denoiser(x, sigma_batch(grid[i], x), **cond)
        if hist.sigmas:  # correct the step just taken, reusing x0 evaluated before the correction
            x = unipc_correct(x_prev, grid[i], hist, x0)
        hist, x_prev = push(hist, grid[i], x0, order), x
        x = unipc_predict(x, grid[i + 1], hist)
        if callback is not None:
            callback(i, grid[i], x, x0)
    return x


def sample_deis(denoiser: Denoiser, x: Tensor, sigmas: Tensor, *, order: int = 3, generator=None,
                callback: Callback | None = None, **cond) -> Tensor:
    eps = lambda y, x0, sigma: (y - x0) / sigma
    return multistep_loop(deis_step, order, denoiser, x, sigmas, callback, cond, value=eps)
