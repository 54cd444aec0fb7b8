"""Stochastic samplers in sigma space.

References: [DDPM] arXiv 2006.11239v2, [DDIM] 2010.02502v4, [SDE] 2011.13456v2, [EDM] 2206.00364v2,
[DPM++] 2211.01095v2.

Why one sigma-space formula serves every Gaussian path: in EDM space x = x_t / alpha_t the forward
Markov chain of any path is x_t = x_s + sqrt(sigma_t^2 - sigma_s^2) z (divide x_t = (alpha_t/alpha_s)
x_s + ... by alpha_t), a Brownian motion in sigma^2. So the exact DDPM posterior q(x_s | x_t, x0)
([DDPM] Eq. 6-7) is the Brownian bridge

    x_s ~ N(x0 + (sigma_s^2 / sigma_t^2)(x_t - x0),  sigma_s^2 (sigma_t^2 - sigma_s^2) / sigma_t^2),

whatever the path; the discrete table only decides which sigmas the steps visit. DDIM(eta) keeps
a fraction eta of that posterior noise; eta = 1 is DDPM ancestral sampling, which is also the
"Euler ancestral" step (sigma_down = sigma_next^2 / sigma, sigma_up = posterior std) and the
first-order SDE-DPM-Solver++ ([DPM++] Eq. 18). Every sampler takes a torch.Generator or, so that
sample i depends only on its own seed whatever the batch, a `diffspace.rng.Streams` (one generator
per sample); a last step to sigma = 0 returns x0_hat.
"""

import math

import torch
from torch import Tensor

from diffspace.rng import Generator, randn_like
from diffspace.samplers.multistep import History, multistep_loop, phi_weights
from diffspace.samplers.ode import Callback, euler_step, heun_step, run_steps, sigma_batch, slope_steps
from diffspace.types import Denoiser
from diffspace.utils import bcast, lincomb


def ddim_step(denoiser: Denoiser, x: Tensor, sigma: float, sigma_next: float, *, eta: float = 0.0,
              generator: Generator | None = None, **cond):
    """[DDIM] Eq. 12 with sigma_t(eta) of Eq. 16, divided by alpha_{t-1}: returns (x_next, x0_hat)."""
    x0 = denoiser(x, sigma_batch(sigma, x), **cond)
    if sigma_next == 0:
        return x0, x0
    noise_std = eta * sigma_next * math.sqrt(1 - (sigma_next / sigma) ** 2)  # eta * posterior std
    # x0 + sqrt(sigma_next^2 - noise_std^2) eps_hat with eps_hat = (x - x0) / sigma, as one lerp
    x_next = torch.lerp(x0, x, math.sqrt(max(sigma_next**2 - noise_std**2, 0.0)) / sigma)
    if noise_std > 0:
        x_next = x_next + noise_std * randn_like(x, generator)
    return x_next, x0


def euler_maruyama_step(denoiser: Denoiser, x: Tensor, sigma: float, sigma_next: float, *,
                        generator: Generator | None = None, **cond):
    """The reverse SDE of dx = sqrt(2 sigma) dW in sigma ([SDE] Eq. 6 with [EDM] Eq. 6, beta = 1/sigma):
    dx = 2 (x - D) / sigma dsigma + sqrt(2 sigma) dW_bar, one Euler-Maruyama step (score = (D - x) /
    sigma^2, [SDE] Eq. 7). A last step to sigma = 0 returns x0_hat (the final denoising of [SDE] App. G)."""
    x0 = denoiser(x, sigma_batch(sigma, x), **cond)
    if sigma_next == 0:
        return x0, x0
    drift = 2 * (sigma_next - sigma) * (x - x0) / sigma
    return x + drift + math.sqrt(2 * sigma * (sigma - sigma_next)) * randn_like(x, generator), x0


def langevin_correct(denoiser: Denoiser, x: Tensor, sigma: float, *, snr: float,
                     generator: Generator | None = None, **cond) -> Tensor:
    """[SDE] Alg. 4 corrector: one Langevin step at sigma with step size 2 (snr |z| / |score|)^2.

    why: each sample's step uses its own |score| and E|z|^2 = D (the paper's code takes batch means of
    both norms, which makes a sample depend on the others in its batch; a per-sample |z| would tie the
    step size to the noise it scales). |score| is floored at sqrt(D) / sigma, the norm of the noise's
    own score: a sample on a mode has |score| ~ 0 and would otherwise take an unbounded step. The floor
    caps the step at 2 snr^2 sigma^2, the annealed-Langevin step proportional to sigma^2 of NCSN (Song &
    Ermon 2019, arXiv 1907.05600 Alg. 1)."""
    score = (denoiser(x, sigma_batch(sigma, x), **cond) - x) / sigma**2
    z = randn_like(x, generator)
    mean_sq = score.flatten(1).pow(2).mean(1)  # |score|^2 / D
    step = bcast(2 * snr**2 / mean_sq.clamp_min(1 / sigma**2), x)
    return x + step * score + torch.sqrt(2 * step) * z


def edm_churn_step(denoiser: Denoiser, x: Tensor, sigma: float, sigma_next: float, *, gamma: float,
                   s_noise: float = 1.0, generator: Generator | None = None, want_x0: bool = True, **cond):
    """[EDM] Alg. 2: raise the noise to sigma_hat = (1 + gamma) sigma, then a Heun step to sigma_next
    (x0_hat at sigma_hat, None unless `want_x0`)."""
    sigma_hat = sigma * (1 + gamma)  # Increase noise temporarily
    if gamma > 0:
        x = x + math.sqrt(sigma_hat**2 - sigma**2) * s_noise * randn_like(x, generator)
    return heun_step(denoiser, x, sigma_hat, sigma_next, want_x0=want_x0, **cond)


def dpmpp_2m_sde_step(x: Tensor, sigma_next: float, hist: History, *,
                      generator: Generator | None = None) -> Tensor:
    """SDE-DPM-Solver++(2M) ([DPM++] Eq. 18 and App. B) in EDM space: with e = sigma_next / sigma,
    x_next = e^2 x + (1 - e^2) x0 + sigma_next sqrt(1 - e^2) z, plus the exact integral
    int_0^h 2 e^{-2(h-u)} u du = h - (1 - e^2) / 2 of the linear-in-lam extrapolation of x0."""
    (sigma, *past), (x0, *x0_past) = hist.sigmas, hist.values
    if sigma_next == 0:
        return x0
    h = math.log(sigma / sigma_next)
    one_minus = phi_weights(2 * h, 1)[0]  # 1 - e^{-2h}, via expm1
    noise = randn_like(x, generator)
    terms = [(1 - one_minus, x), (one_minus, x0), (sigma_next * math.sqrt(one_minus), noise)]
    if past:  # + (h - (1 - e^-2h) / 2) times the slope d x0 / d lam = (x0 - x0_past) / (lam - lam_past)
        k = (h - one_minus / 2) / math.log(past[0] / sigma)
        terms += [(k, x0), (-k, x0_past[0])]
    return lincomb(*terms)


def sample_ddim(denoiser: Denoiser, x: Tensor, sigmas: Tensor, *, eta: float = 0.0,
                generator: Generator | None = None, callback: Callback | None = None, **cond) -> Tensor:
    """DDIM with eta (0: deterministic, equal to Euler in sigma). One NFE per step."""
    if eta == 0:  # why: ddim_step's update at eta = 0 is Euler's step; euler_step takes it on the slope
        return slope_steps(euler_step, denoiser, x, sigmas, callback, cond)
    step = lambda d, y, s, s_next, **c: ddim_step(d, y, s, s_next, eta=eta, generator=generator, **c)
    return run_steps(step, denoiser, x, sigmas, callback, cond)


def sample_ddpm(denoiser: Denoiser, x: Tensor, sigmas: Tensor, *, generator: Generator | None = None,
                callback: Callback | None = None, **cond) -> Tensor:
    """Ancestral sampling from the exact posterior (DDIM eta = 1, = Euler ancestral). With the grid of
    every table timestep (`table_sigmas(path, arange(T).flip(0))`) this is [DDPM] Alg. 2."""
    return sample_ddim(denoiser, x, sigmas, eta=1.0, generator=generator, callback=callback, **cond)


def sample_euler_maruyama(denoiser: Denoiser, x: Tensor, sigmas: Tensor, *,
                          generator: Generator | None = None, callback: Callback | None = None,
                          **cond) -> Tensor:
    step = lambda d, y, s, s_next, **c: euler_maruyama_step(d, y, s, s_next, generator=generator, **c)
    return run_steps(step, denoiser, x, sigmas, callback, cond)


def sample_pc(denoiser: Denoiser, x: Tensor, sigmas: Tensor, *, snr: float = 0.16,
              generator: Generator | None = None, callback: Callback | None = None, **cond) -> Tensor:
    """[SDE] Alg. 4 order: Euler-Maruyama predictor, then one Langevin corrector step at the new
    sigma (none at sigma = 0). snr = 0.16  # [SDE] App. G (CIFAR-10 VE). 2 NFE per step, 1 on the last."""

    def step(d, y, s, s_next, **c):
        y, x0 = euler_maruyama_step(d, y, s, s_next, generator=generator, **c)
        if s_next > 0:
            y = langevin_correct(d, y, s_next, snr=snr, generator=generator, **c)
        return y, x0

    return run_steps(step, denoiser, x, sigmas, callback, cond)


def sample_edm_sde(denoiser: Denoiser, x: Tensor, sigmas: Tensor, *, s_churn: float = 40.0,
                   s_tmin: float = 0.05, s_tmax: float = 50.0, s_noise: float = 1.0,
                   generator: Generator | None = None, callback: Callback | None = None,
                   **cond) -> Tensor:
    """[EDM] Alg. 2. Defaults S_churn = 40, S_tmin = 0.05, S_tmax = 50 from [EDM] Table 5 (ImageNet-64);
    S_noise = 1 because its 1.003 compensates a network's over-denoising, not part of the maths."""
    n = len(sigmas) - 1

    def step(d, y, s, s_next, **c):
        gamma = min(s_churn / n, math.sqrt(2) - 1) if s_tmin <= s <= s_tmax else 0.0
        return edm_churn_step(d, y, s, s_next, gamma=gamma, s_noise=s_noise, generator=generator, **c)

    return slope_steps(step, denoiser, x, sigmas, callback, cond)


def sample_dpmpp_2m_sde(denoiser: Denoiser, x: Tensor, sigmas: Tensor, *, lower_order_final: bool = True,
                        generator: Generator | None = None, callback: Callback | None = None,
                        **cond) -> Tensor:
    step = lambda y, s_next, hist: dpmpp_2m_sde_step(y, s_next, hist, generator=generator)
    return multistep_loop(step, 2, denoiser, x, sigmas, callback, cond, lower_order_final=lower_order_final)
