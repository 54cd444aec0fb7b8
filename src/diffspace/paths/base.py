"""Gaussian paths x_t = alpha_t * x0 + sigma_t * eps with t in [0, 1], t = 0 data.

Every path gives closed-form alpha, sigma, their t-derivatives, logsnr and its inverse. The EDM
noise level sigma = sigma_t / alpha_t depends only on logsnr (sigma = exp(-logsnr / 2)), so one
sigma-space sampler serves every path: the path only decides the grid and the scaling.
"""

import math
from typing import NamedTuple

import torch
from torch import Tensor


class Coeffs(NamedTuple):
    alpha: Tensor
    sigma: Tensor
    d_alpha: Tensor
    d_sigma: Tensor


class Path:
    """Base class. Subclasses implement alpha, sigma, d_alpha, d_sigma and t_from_logsnr.

    `t_min`/`t_max` bound the usable interval (a path may be singular at the ends); `noise_cond`
    is what a raw network is shown for time t, in "timestep units" (about 0..1000).
    """

    name: str = "path"
    t_min: float = 0.0
    t_max: float = 1.0

    def alpha(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def sigma(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def d_alpha(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def d_sigma(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def t_from_logsnr(self, logsnr: Tensor) -> Tensor:
        raise NotImplementedError

    def coeffs(self, t: Tensor) -> Coeffs:
        return Coeffs(self.alpha(t), self.sigma(t), self.d_alpha(t), self.d_sigma(t))

    def logsnr(self, t: Tensor) -> Tensor:
        return 2 * (torch.log(self.alpha(t)) - torch.log(self.sigma(t)))

    def edm_sigma(self, t: Tensor) -> Tensor:
        """EDM noise level sigma_t / alpha_t."""
        return self.sigma(t) / self.alpha(t)

    def t_from_sigma(self, sigma: Tensor) -> Tensor:
        return self.t_from_logsnr(-2 * torch.log(sigma))

    def noise_cond(self, t: Tensor) -> Tensor:
        return 1000.0 * t

    @property
    def sigma_min(self) -> float:
        return float(self.edm_sigma(torch.tensor(self.t_min, dtype=torch.float64)))

    @property
    def sigma_max(self) -> float:
        return float(self.edm_sigma(torch.tensor(self.t_max, dtype=torch.float64)))

    def prior_std(self) -> float:
        """Std of x_{t_max} for unit-scale data, used to draw the sampler's starting noise."""
        return float(self.sigma(torch.tensor(self.t_max, dtype=torch.float64)))

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def softplus(x: Tensor) -> Tensor:
    return torch.nn.functional.softplus(x)


LOG_PI_HALF = math.log(math.pi / 2)
