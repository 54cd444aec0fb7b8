"""Closed-form continuous paths. References: [SDE] arXiv 2011.13456v2, [EDM] 2206.00364v2,
[IDDPM] 2102.09672, [VDM] 2107.00630, [RF] 2209.03003, [FM] 2210.02747.
"""

import math

import torch
from torch import Tensor

from diffspace.paths.base import GaussianPath, softplus


class VPLinear(GaussianPath):
    """Variance preserving with linear beta(t) = beta_min + t (beta_max - beta_min). [SDE] Eq. 11, 33."""

    name = "vp"

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, t_min: float = 1e-5):
        self.beta_min, self.beta_max, self.t_min = beta_min, beta_max, t_min

    def _log_alpha(self, t: Tensor) -> Tensor:
        # [SDE] Eq. 33: log alpha_t = -1/4 t^2 (b_max - b_min) - 1/2 t b_min
        return -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

    def _d_log_alpha(self, t: Tensor) -> Tensor:
        return -0.5 * t * (self.beta_max - self.beta_min) - 0.5 * self.beta_min

    def alpha_t(self, t):
        return torch.exp(self._log_alpha(t))

    def sigma_t(self, t):
        # why: -expm1 keeps precision where alpha^2 is close to 1 (small t)
        return torch.sqrt(-torch.expm1(2 * self._log_alpha(t)))

    def d_alpha_t(self, t):
        return self.alpha_t(t) * self._d_log_alpha(t)

    def d_sigma_t(self, t):
        a = self.alpha_t(t)
        return -(a**2) * self._d_log_alpha(t) / self.sigma_t(t)

    def logsnr(self, t):
        la2 = 2 * self._log_alpha(t)
        return la2 - torch.log(-torch.expm1(la2))

    def alpha_from_sigma(self, sigma):
        return torch.rsqrt(1 + sigma**2)  # variance preserving: alpha^2 (1 + sigma^2) = 1

    def _t_from_log_alpha(self, log_alpha: Tensor) -> Tensor:
        # solve 1/4 t^2 d + 1/2 t b_min = -log alpha for t >= 0
        d = self.beta_max - self.beta_min
        return (-self.beta_min + torch.sqrt(self.beta_min**2 - 4 * d * log_alpha)) / d

    def t_from_logsnr(self, logsnr):
        # alpha^2 = sigmoid(logsnr)  =>  log alpha = -softplus(-logsnr) / 2
        return self._t_from_log_alpha(-0.5 * softplus(-logsnr))

    def __repr__(self):
        return f"VPLinear(beta_min={self.beta_min}, beta_max={self.beta_max})"


class SubVP(VPLinear):
    """sub-VP SDE: same mean as VP, sigma_t = 1 - alpha_t^2. [SDE] Eq. 17, 29."""

    name = "subvp"

    def sigma_t(self, t):
        return -torch.expm1(2 * self._log_alpha(t))

    def d_sigma_t(self, t):
        return -2 * self.alpha_t(t) ** 2 * self._d_log_alpha(t)

    def logsnr(self, t):
        la = self._log_alpha(t)
        return 2 * la - 2 * torch.log(-torch.expm1(2 * la))

    def alpha_from_sigma(self, sigma):
        # sigma = (1 - alpha^2) / alpha: the positive root of alpha^2 + sigma alpha - 1, written stably
        return 2 / (sigma + torch.sqrt(sigma**2 + 4))

    def t_from_logsnr(self, logsnr):
        # alpha / (1 - alpha^2) = r = exp(logsnr / 2)  =>  r alpha^2 + alpha - r = 0
        r = torch.exp(0.5 * logsnr)
        alpha = 2 * r / (1 + torch.sqrt(1 + 4 * r**2))  # the positive root, written stably
        return self._t_from_log_alpha(torch.log(alpha))

    def __repr__(self):
        return f"SubVP(beta_min={self.beta_min}, beta_max={self.beta_max})"


class VPCosine(GaussianPath):
    """Cosine schedule alpha = cos(u), sigma = sin(u), u linear in t, i.e. logsnr = -2 log tan(u).

    [IDDPM] Eq. 17 in continuous time ([VDM] App. D form): u runs from atan(sigma_min) to
    atan(sigma_max) so the EDM noise level spans [sigma_min, sigma_max] over t in [0, 1].
    """

    name = "cosine"

    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0):
        self.u0 = math.atan(sigma_min)
        self.du = math.atan(sigma_max) - self.u0
        self._smin, self._smax = sigma_min, sigma_max

    def _u(self, t):
        return self.u0 + self.du * t

    def alpha_t(self, t):
        return torch.cos(self._u(t))

    def sigma_t(self, t):
        return torch.sin(self._u(t))

    def d_alpha_t(self, t):
        return -self.du * torch.sin(self._u(t))

    def d_sigma_t(self, t):
        return self.du * torch.cos(self._u(t))

    def logsnr(self, t):
        return -2 * torch.log(torch.tan(self._u(t)))

    def alpha_from_sigma(self, sigma):
        return torch.rsqrt(1 + sigma**2)  # cos^2 + sin^2 = 1

    def t_from_logsnr(self, logsnr):
        return (torch.atan(torch.exp(-0.5 * logsnr)) - self.u0) / self.du

    def __repr__(self):
        return f"VPCosine(sigma_min={self._smin}, sigma_max={self._smax})"


class VE(GaussianPath):
    """Variance exploding: alpha = 1, sigma = sigma_min (sigma_max / sigma_min)^t. [SDE] Eq. 9, 31."""

    name = "ve"

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0):
        self._smin, self._smax = sigma_min, sigma_max
        self.log_ratio = math.log(sigma_max / sigma_min)

    def alpha_t(self, t):
        return torch.ones_like(t)

    def sigma_t(self, t):
        return self._smin * torch.exp(self.log_ratio * t)

    def d_alpha_t(self, t):
        return torch.zeros_like(t)

    def d_sigma_t(self, t):
        return self.sigma_t(t) * self.log_ratio

    def logsnr(self, t):
        return -2 * (math.log(self._smin) + self.log_ratio * t)

    def alpha_from_sigma(self, sigma):
        return torch.ones_like(sigma)

    def t_from_logsnr(self, logsnr):
        return (-0.5 * logsnr - math.log(self._smin)) / self.log_ratio

    def t_from_sigma(self, sigma):
        return (torch.log(sigma) - math.log(self._smin)) / self.log_ratio

    def __repr__(self):
        return f"VE(sigma_min={self._smin}, sigma_max={self._smax})"


class EDM(GaussianPath):
    """EDM's choice sigma(t) = t, alpha = 1 ([EDM] Sec. 3), rescaled to t in [0, 1]: sigma = sigma_max t."""

    name = "edm"

    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0):
        self._smin, self._smax = sigma_min, sigma_max
        self.t_min = sigma_min / sigma_max

    def alpha_t(self, t):
        return torch.ones_like(t)

    def sigma_t(self, t):
        return self._smax * t

    def d_alpha_t(self, t):
        return torch.zeros_like(t)

    def d_sigma_t(self, t):
        return torch.full_like(t, self._smax)

    def alpha_from_sigma(self, sigma):
        return torch.ones_like(sigma)

    def t_from_logsnr(self, logsnr):
        return torch.exp(-0.5 * logsnr) / self._smax

    def t_from_sigma(self, sigma):
        return sigma / self._smax

    def __repr__(self):
        return f"EDM(sigma_min={self._smin}, sigma_max={self._smax})"


class LinearFlow(GaussianPath):
    """Linear / rectified flow (CondOT): alpha = 1 - t, sigma = t. [RF] Eq. 1, [FM] Eq. 20."""

    name = "linear"

    def __init__(self, t_min: float = 1e-4, t_max: float = 1.0 - 1e-4):
        self.t_min, self.t_max = t_min, t_max

    def alpha_t(self, t):
        return 1 - t

    def sigma_t(self, t):
        return t.clone()

    def d_alpha_t(self, t):
        return -torch.ones_like(t)

    def d_sigma_t(self, t):
        return torch.ones_like(t)

    def logsnr(self, t):
        return 2 * (torch.log1p(-t) - torch.log(t))

    def alpha_from_sigma(self, sigma):
        return 1 / (1 + sigma)  # sigma = t / (1 - t)

    def t_from_logsnr(self, logsnr):
        return torch.sigmoid(-0.5 * logsnr)

    def prior_std(self) -> float:
        return 1.0

    def __repr__(self):
        return "LinearFlow()"
