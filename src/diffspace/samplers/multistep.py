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

The order of each step is fixed by the grid alone (`step_orders`): a step of order k reads the newest
k values of the history. Three rules lower it (each tested in tests/test_samplers_orders.py):

- lower-order final steps: on a grid of fewer than 15 steps, step i of n has order <= n - i (the last
  step to 0 is first order, the one before it at most second order, ...), the `lower_order_final` of
  DPM-Solver's reference code (github.com/LuChengTHU/dpm-solver for [DPM++]: "a key to stabilizing the
  sampling by DPM-Solver with very few steps (especially for steps <= 10)") and of diffusers'
  multistep schedulers. Why: a step of order k integrates the polynomial through the last k outputs in
  place of x0(lam); its error is the extrapolation error, about x0^(k) h (h + h_1) ... (h + h_{k-1}) / k!,
  which grows like h^k, and a few-step grid ends with its longest steps in lam (Karras rho = 7 puts them
  last), where x0_hat also changes fastest as it locks onto the data.
- extrapolation ratio: a step of order k >= 2 is taken only if h <= MAX_EXTRAPOLATION (= 2) times
  the mean spacing of the k nodes it extrapolates from, (lam_i - lam_{i-k+1}) / (k - 1). Why: the
  weights on the past outputs grow like (h / spacing)^(k-1); with 2M, x0 is replaced by
  (1 + h / (2 h_1)) x0_i - h / (2 h_1) x0_{i-1}, weights summing in absolute value to 1 + h / h_1. The last
  step of `uniform_t` on the DDPM table (sigma / 18, h = 2.9 after steps of about 0.7) gives weights of
  about 5 in 2M and about 20 in 3M's quadratic, so the step amplifies the outputs' errors instead of
  cancelling the truncation error (3M at 20 steps: RMSE 0.82 without the rule, 0.039 with it, on the
  mixture of tests/test_samplers_orders.py).
- curvature radius: a polynomial of degree >= 2 in lam (3M, DEIS-3, UniPC's corrector on a 2-point
  predictor) is used only on steps h <= TAYLOR_RADIUS = pi / 2. Why: x0_hat depends on lam through
  logistic functions of 2 lam (a Gaussian's shrink factor s^2 / (s^2 + sigma^2) = sigmoid(2 lam + 2 log s),
  and the posterior weights between modes), which are analytic only in a strip |Im lam| < pi / 2, so their
  Taylor series in lam converge within pi / 2; across a longer step a quadratic extrapolation is not a
  better model of x0 than the line. The line is kept: the exponential integrator's weight on the linear
  term, c_1 / c_0 <= h - 1 + e^-h, grows only linearly (2M stays stable at 5 steps, [DPM++] Sec. 5).
  Measured on the mixtures of the tests (std 0.1 and 0.5, DDPM range): 3M at 5 uniform-logSNR steps
  (h = 2.4) has RMSE 0.78 and 1.2 without this rule, the same as 2M (0.26, 0.27) with it.

On a grid that refines smoothly, h tends to 0 and the ratio to 1, so no rule fires on fine grids and the
convergence orders are untouched (tests/test_samplers_ode.py).
"""

import math
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from diffspace.samplers.grids import check_sigmas
from diffspace.samplers.ode import Callback, sigma_batch
from diffspace.types import Denoiser
from diffspace.utils import lincomb


class History(NamedTuple):
    """Past noise levels and denoiser-derived values (x0_hat, or eps_hat for DEIS), newest first."""

    sigmas: tuple[float, ...] = ()
    values: tuple[Tensor, ...] = ()


def push(hist: History, sigma: float, value: Tensor, keep: int) -> History:
    return History((sigma, *hist.sigmas)[:keep], (value, *hist.values)[:keep])


def newest(hist: History, k: int) -> History:
    """The newest k entries: what a step of order k reads."""
    return History(hist.sigmas[:k], hist.values[:k])


LOWER_ORDER_FINAL_BELOW = 15  # steps; DPM-Solver's reference code and diffusers use `steps < 15`
MAX_EXTRAPOLATION = 2.0  # step / mean node spacing in lam (module docstring)
TAYLOR_RADIUS = math.pi / 2  # lam; convergence radius of a logistic function of 2 lam (module docstring)


def step_orders(grid: list[float], order: int, lower_order_final: bool = True,
                corrector: bool = False) -> list[int]:
    """The order k of each of the n = len(grid) - 1 steps of a multistep method of `order` on `grid`
    (descending noise levels ending in 0): k <= i + 1 at step i (the history there); k <= n - i with
    `lower_order_final` on a grid of fewer than LOWER_ORDER_FINAL_BELOW steps; then lowered while the step
    is longer than MAX_EXTRAPOLATION mean node spacings, and while it fits a polynomial of degree >= 2
    (k - 1, plus one with a `corrector`) over a step longer than TAYLOR_RADIUS (module docstring)."""
    n = len(grid) - 1
    lam = [-math.log(s) if s > 0 else math.inf for s in grid]
    orders = []
    for i in range(n):
        k = min(order, i + 1)
        if lower_order_final and n < LOWER_ORDER_FINAL_BELOW:
            k = min(k, n - i)
        h = lam[i + 1] - lam[i]
        while k > 1 and h * (k - 1) > MAX_EXTRAPOLATION * (lam[i] - lam[i - k + 1]):
            k -= 1
        while k > 1 and k - 1 + corrector >= 2 and h > TAYLOR_RADIUS:
            k -= 1
        orders.append(k)
    return orders


def phi_weights(h: float, order: int) -> list[float]:
    """c_0 .. c_{order-1} for a step of length h in lam (see the module docstring)."""
    c = [-math.expm1(-h)]
    for k in range(1, order):
        c.append(h**k / math.factorial(k) - c[-1])
    return c


def dpmpp_2m_weight(sigma_prev: float, sigma: float, sigma_next: float) -> float:
    """DPM-Solver++(2M)'s weight on the previous output D_{i-1} in its combined output ([DPM++] Alg. 2
    line 7: D = (1 + 1 / 2r) D_i - (1 / 2r) D_{i-1}, r = h_{i-1} / h_i): -h_i / (2 h_{i-1}), with
    h_i = lambda_{i+1} - lambda_i and lambda = -log sigma."""
    return -math.log(sigma / sigma_next) / (2 * math.log(sigma_prev / sigma))


def dpmpp_2m_step(x: Tensor, sigma_next: float, hist: History) -> Tensor:
    """[DPM++] Alg. 2: first order on the first step, then the multistep 2nd-order update."""
    (sigma, *past), (x0, *x0_past) = hist.sigmas, hist.values
    if sigma_next == 0:
        return x0
    if past:  # Alg. 2 line 7, as one lerp
        x0 = torch.lerp(x0, x0_past[0], dpmpp_2m_weight(past[0], sigma, sigma_next))
    # [DPM++] Eq. 9, first order in D: (sigma_next / sigma) x + (1 - sigma_next / sigma) D, as one lerp
    return torch.lerp(x0, x, sigma_next / sigma)


def dpmpp_3m_step(x: Tensor, sigma_next: float, hist: History) -> Tensor:
    """Third-order multistep in data prediction: x0 interpolated by a quadratic in lam through the last
    three outputs and integrated exactly with c_0, c_1, c_2 ([DPM] Sec. 3.2 in [DPM++] form)."""
    if len(hist.sigmas) < 3 or sigma_next == 0:
        return dpmpp_2m_step(x, sigma_next, hist)
    s0, s1, s2 = hist.sigmas
    h, h0, h1 = math.log(s0 / sigma_next), math.log(s1 / s0), math.log(s2 / s1)
    c0, c1, c2 = phi_weights(h, 3)
    # Newton form in lam through the outputs m0, m1, m2: divided differences f01 = (m0 - m1) / h0,
    # f12 = (m1 - m2) / h1, f012 = (f01 - f12) / (h0 + h1); x0 ~ m0 + (f01 + h0 f012) u + f012 u^2, so
    # the update c0 m0 + c1 (f01 + h0 f012) + 2 c2 f012 is linear in the outputs, with these weights
    # (plain floats: on the CPU array code would cost more host time than the step's pass over the batch)
    # f012 = q (m0 / h0 - (1 / h0 + 1 / h1) m1 + m2 / h1) with q = 1 / (h0 + h1); g is f012's weight
    g, q = c1 * h0 + 2 * c2, 1 / (h0 + h1)
    w = (c0 + c1 / h0 + g * q / h0, -c1 / h0 - g * q * (1 / h0 + 1 / h1), g * q / h1)
    return lincomb((sigma_next / s0, x), *zip(w, hist.values, strict=True))


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
    if not points:
        return lincomb((sigma_next / sigma, x), (c[0], x0))
    r = [math.log(sigma / s_m) / h for s_m, _ in points]
    M = len(points)
    A = [[r_m ** (k - 1) * h**k / math.factorial(k) for r_m in r] for k in range(1, M + 1)]
    w = (np.linalg.solve(A, c[1:]) / r).tolist()  # a_m / r_m, the weight of x0_m - x0
    past = [x0_m for _, x0_m in points]
    return lincomb((sigma_next / sigma, x), (c[0] - sum(w), x0), *zip(w, past, strict=True))


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
    return lincomb((1.0, x), *zip(weights, hist.values, strict=True))


def multistep_loop(step, order: int, denoiser: Denoiser, x: Tensor, sigmas: Tensor, callback: Callback | None,
                   cond: dict, value=lambda x, x0, sigma: x0, lower_order_final: bool = True) -> Tensor:
    """The thin loop of multistep samplers: one NFE per step, `value(x, x0_hat, sigma)` pushed onto a
    History of length `order`, then x = step(x, sigma_next, newest k of the history) with k from
    `step_orders`."""
    grid = check_sigmas(sigmas).tolist()
    orders, hist = step_orders(grid, order, lower_order_final), History()
    levels = [sigma_batch(s, x) for s in grid[:-1]]  # why: before the loop (sigma_batch's docstring)
    for i in range(len(grid) - 1):
        x0 = denoiser(x, levels[i], **cond)
        hist = push(hist, grid[i], value(x, x0, grid[i]), order)
        x = step(x, grid[i + 1], newest(hist, orders[i]))
        if callback is not None:
            callback(i, grid[i], x, x0)
    return x


def sample_dpmpp_2m(denoiser: Denoiser, x: Tensor, sigmas: Tensor, *, lower_order_final: bool = True,
                    generator=None, callback: Callback | None = None, **cond) -> Tensor:
    return multistep_loop(dpmpp_2m_step, 2, denoiser, x, sigmas, callback, cond,
                          lower_order_final=lower_order_final)


def sample_dpmpp_3m(denoiser: Denoiser, x: Tensor, sigmas: Tensor, *, lower_order_final: bool = True,
                    generator=None, callback: Callback | None = None, **cond) -> Tensor:
    return multistep_loop(dpmpp_3m_step, 3, denoiser, x, sigmas, callback, cond,
                          lower_order_final=lower_order_final)


def sample_unipc(denoiser: Denoiser, x: Tensor, sigmas: Tensor, *, order: int = 2,
                 lower_order_final: bool = True, generator=None, callback: Callback | None = None,
                 **cond) -> Tensor:
    """UniPC: UniP of `order` (multistep) and, after every network call at sigma > 0, UniC on the step
    that led there, with the same history (order + 1 overall). One NFE per step."""
    grid = check_sigmas(sigmas).tolist()
    orders = step_orders(grid, order, lower_order_final, corrector=True)
    hist, used, x_prev = History(), History(), x
    levels = [sigma_batch(s, x) for s in grid[:-1]]  # why: before the loop (sigma_batch's docstring)
    for i in range(len(grid) - 1):
        x0 = denoiser(x, levels[i], **cond)
        if used.sigmas:  # correct the step just taken, reusing x0 evaluated before the correction
            x = unipc_correct(x_prev, grid[i], used, x0)
        hist, x_prev = push(hist, grid[i], x0, order), x
        used = newest(hist, orders[i])
        x = unipc_predict(x, grid[i + 1], used)
        if callback is not None:
            callback(i, grid[i], x, x0)
    return x


def sample_deis(denoiser: Denoiser, x: Tensor, sigmas: Tensor, *, order: int = 3,
                lower_order_final: bool = True, generator=None, callback: Callback | None = None,
                **cond) -> Tensor:
    eps = lambda y, x0, sigma: (y - x0) / sigma
    return multistep_loop(deis_step, order, denoiser, x, sigmas, callback, cond, value=eps,
                          lower_order_final=lower_order_final)
