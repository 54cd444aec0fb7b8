"""The DDPM variational bound on -log p(x0) for discrete-time models on 8-bit-style data in [-1, 1].

References: [DDPM] arXiv 2006.11239v2 Eq. 5-7, 12-13; [IDDPM] arXiv 2102.09672 Sec. 3.

    -log p(x0) <= L_T + sum_{n=1}^{T-1} L_n + L_0                                   [DDPM] Eq. 5
    L_T = KL(q(x_T | x0) || N(0, I)),   L_n = KL(q(x_{n-1} | x_n, x0) || p(x_{n-1} | x_n)),
    L_0 = -log p(x0 | x_1) with the discretized Gaussian decoder                     [DDPM] Eq. 13

Indices follow DDPMDiscrete (diffusers): timestep n in {0..T-1} has alphas_cumprod[n] and sits at
t = (n + 1) / T; DDPM's x_t is our x at timestep n = t - 1, so "term n" is DDPM's L_{t-1}. The model's
reverse mean is the posterior mean with x0 replaced by the Denoiser's x0_hat ([DDPM] Eq. 7 in the x0
parameterization, equivalent to Eq. 11 for eps); any prediction enters as a Denoiser through
diffspace.param (NetDenoiser converts through the (x0, eps) hub). Reverse variances: "small" is the
posterior variance beta_tilde_n, "large" is beta_n ([DDPM] Sec. 3.2); the decoder uses beta at
timestep 0 in both cases, since beta_tilde_0 = 0.
"""

import math

import torch
from torch import Tensor

from diffspace.paths.ddpm import DDPMDiscrete
from diffspace.types import UserError

VARIANCES = ("small", "large")


def _sum_dims(v: Tensor) -> Tensor:
    return v.flatten(1).sum(1)


def _bins(x0: Tensor, levels: int) -> tuple[Tensor, Tensor]:
    """Bin edges of each value of an L-level grid on [-1, 1]; the outer bins extend to +-inf."""
    half = 1.0 / (levels - 1)
    lo = torch.where(x0 <= -1 + half, torch.full_like(x0, -math.inf), x0 - half)
    hi = torch.where(x0 >= 1 - half, torch.full_like(x0, math.inf), x0 + half)
    return lo, hi


def discretized_gaussian_log_prob(x0: Tensor, mean: Tensor, std: Tensor | float, levels: int = 256) -> Tensor:
    """log of the N(mean, std^2) mass of x0's bin, elementwise. [DDPM] Eq. 13."""
    lo, hi = _bins(x0, levels)
    a, b = (lo - mean) / std, (hi - mean) / std
    # why: log(Phi(b) - Phi(a)) loses all digits when both lie in the upper tail; reflect those
    upper = a > 0
    a, b = torch.where(upper, -b, a), torch.where(upper, -a, b)
    log_b, log_a = torch.special.log_ndtr(b), torch.special.log_ndtr(a)
    return log_b + torch.log(-torch.expm1(log_a - log_b))


def _gaussian_kl(mean_q: Tensor, var_q: Tensor | float, mean_p: Tensor, var_p: Tensor | float) -> Tensor:
    """KL(N(mean_q, var_q) || N(mean_p, var_p)) elementwise, variances broadcastable."""
    var_q, var_p = torch.as_tensor(var_q).to(mean_q), torch.as_tensor(var_p).to(mean_q)
    return 0.5 * (torch.log(var_p / var_q) + (var_q + (mean_q - mean_p) ** 2) / var_p - 1)


def prior_term(x0: Tensor, path: DDPMDiscrete) -> Tensor:
    """L_T = KL(q(x_T | x0) || N(0, I)) in nats, (B,)."""
    abar = float(path.alphas_cumprod[-1])
    return _sum_dims(_gaussian_kl(math.sqrt(abar) * x0, 1 - abar, torch.zeros_like(x0), 1.0))


def vlb_term(denoiser, x0: Tensor, path: DDPMDiscrete, n: Tensor, *, variance: str = "small",
             clip: bool = True, levels: int = 256, generator: torch.Generator | None = None,
             **cond) -> Tensor:
    """L_n in nats (B,) for per-example timesteps n (B,) in {0..T-1}, one draw of x_n ~ q(x_n | x0)."""
    abar_all = path.alphas_cumprod.to(x0.device, x0.dtype)
    shape = (-1,) + (1,) * (x0.ndim - 1)
    abar = abar_all[n].reshape(shape)
    abar_prev = torch.where(n > 0, abar_all[(n - 1).clamp(min=0)], 1.0).reshape(shape)
    beta = path.betas.to(x0.device, x0.dtype)[n].reshape(shape)
    eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)
    x_n = abar.sqrt() * x0 + (1 - abar).sqrt() * eps  # [DDPM] Eq. 4
    sigma = ((1 - abar) / abar).sqrt().flatten()
    x0_hat = denoiser(x_n / abar.sqrt(), sigma, **cond).to(x0.dtype)
    if clip:  # why: data lie in [-1, 1], and projecting x0_hat there only moves it closer to x0
        x0_hat = x0_hat.clamp(-1, 1)
    # [DDPM] Eq. 7: posterior mean coefficients on x0 and x_n, and beta_tilde
    c0 = abar_prev.sqrt() * beta / (1 - abar)
    cn = (1 - beta).sqrt() * (1 - abar_prev) / (1 - abar)
    var_q = (1 - abar_prev) / (1 - abar) * beta
    var_p = var_q if variance == "small" else beta
    out = torch.zeros(x0.shape[0], dtype=x0.dtype, device=x0.device)
    dec, k = n == 0, n > 0  # why: index each term's examples so no work is spent on the other term
    if dec.any():  # L_0, [DDPM] Eq. 13
        out[dec] = -_sum_dims(discretized_gaussian_log_prob(x0[dec], x0_hat[dec], beta[dec].sqrt(), levels))
    if k.any():
        mean_q, mean_p = c0[k] * x0[k] + cn[k] * x_n[k], c0[k] * x0_hat[k] + cn[k] * x_n[k]
        out[k] = _sum_dims(_gaussian_kl(mean_q, var_q[k], mean_p, var_p[k]))
    return out


def _check(x0: Tensor, path, variance: str, levels: int):
    if not isinstance(path, DDPMDiscrete):
        raise UserError(f"the DDPM bound needs a DDPMDiscrete path, got {type(path).__name__}")
    if variance not in VARIANCES:
        raise UserError(f"variance must be one of {VARIANCES}, got {variance!r}")
    if x0.abs().max() > 1:
        raise UserError(f"the DDPM bound needs data in [-1, 1], got values up to {float(x0.abs().max()):.3g}")
    grid = (x0 + 1) * (levels - 1) / 2
    if (grid - grid.round()).abs().max() > 1e-3:
        raise UserError(f"the DDPM bound needs data on the {levels}-level grid of [-1, 1] "
                        "(k / (levels - 1) * 2 - 1); dequantized or continuous data have no decoder bin")


def ddpm_bound(denoiser, x0: Tensor, path: DDPMDiscrete, *, n_t: int | None = None,
               variance: str = "small", clip: bool = True, levels: int = 256,
               generator: torch.Generator | None = None, **cond) -> Tensor:
    """The bound L_T + sum_n L_n in nats per example (B,); bits/dim = value / (D ln 2).

    n_t None sums all T terms (T network calls); otherwise each example draws n_t timesteps uniformly
    and the sum is estimated as T * their mean, an unbiased estimate whose spread over examples the
    caller's standard error then includes.
    """
    _check(x0, path, variance, levels)
    kw = dict(variance=variance, clip=clip, levels=levels, generator=generator, **cond)
    total = prior_term(x0, path)
    B, T = x0.shape[0], path.T
    if n_t is None:
        for n in range(T):
            total = total + vlb_term(denoiser, x0, path, torch.full((B,), n, device=x0.device), **kw)
        return total
    n = torch.randint(0, T, (n_t, B), generator=generator).to(x0.device)
    mc = sum(vlb_term(denoiser, x0, path, n_k, **kw) for n_k in n)
    return total + T * mc / n_t
