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
    """alpha_t, sigma_t and their t-derivatives at some times t (the derivatives may be None where no
    conversion reads them, see diffspace.param.predictions.NEEDS_DERIVATIVES)."""

    alpha_t: Tensor
    sigma_t: Tensor
    d_alpha_t: Tensor | None
    d_sigma_t: Tensor | None


class GaussianPath:
    """Base class. Subclasses implement alpha_t, sigma_t, d_alpha_t, d_sigma_t and t_from_logsnr.

    Names: `alpha_t(t)`, `sigma_t(t)` are the coefficients of x_t = alpha_t x0 + sigma_t eps; `sigma(t)`
    is the EDM noise level sigma_t / alpha_t, the quantity that `sigma_min`, `sigma_max`, grids and
    samplers speak of.

    `t_min`/`t_max` bound the usable interval (a path may be singular at the ends); `noise_cond`
    is what a raw network is shown for time t, in "timestep units" (about 0..1000).
    """

    name: str = "path"
    t_min: float = 0.0
    t_max: float = 1.0

    def alpha_t(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def sigma_t(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def d_alpha_t(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def d_sigma_t(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def t_from_logsnr(self, logsnr: Tensor) -> Tensor:
        raise NotImplementedError

    def coeffs(self, t: Tensor) -> Coeffs:
        return Coeffs(self.alpha_t(t), self.sigma_t(t), self.d_alpha_t(t), self.d_sigma_t(t))

    def logsnr(self, t: Tensor) -> Tensor:
        return 2 * (torch.log(self.alpha_t(t)) - torch.log(self.sigma_t(t)))

    def sigma(self, t: Tensor) -> Tensor:
        """EDM noise level sigma_t / alpha_t."""
        return self.sigma_t(t) / self.alpha_t(t)

    def t_from_sigma(self, sigma: Tensor) -> Tensor:
        return self.t_from_logsnr(-2 * torch.log(sigma))

    def alpha_from_sigma(self, sigma: Tensor) -> Tensor:
        """alpha_t at the time whose EDM noise level is sigma (paths with a closed form override this)."""
        return self.alpha_t(self.t_from_sigma(sigma))

    def noise_cond(self, t: Tensor) -> Tensor:
        return 1000.0 * t

    @property
    def sigma_min(self) -> float:
        return float(self.sigma(torch.tensor(self.t_min, dtype=torch.float64)))

    @property
    def sigma_max(self) -> float:
        return float(self.sigma(torch.tensor(self.t_max, dtype=torch.float64)))

    def prior_std(self) -> float:
        """Std of x_{t_max} for unit-scale data, used to draw the sampler's starting noise."""
        return float(self.sigma_t(torch.tensor(self.t_max, dtype=torch.float64)))

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def softplus(x: Tensor) -> Tensor:
    return torch.nn.functional.softplus(x)


LOG_PI_HALF = math.log(math.pi / 2)
