"""Noise-level grids, built apart from the solvers. All grids are float64, descending, and end in 0."""

import math

import torch
from torch import Tensor


def _append_zero(sigmas: Tensor) -> Tensor:
    return torch.cat([sigmas, sigmas.new_zeros(1)])


def karras_sigmas(n: int, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0) -> Tensor:
    """[EDM] Eq. 5: n noise levels interpolated in sigma^(1/rho), then 0. rho = 7  # [EDM] Table 1."""
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return _append_zero((hi + ramp * (lo - hi)) ** rho)


def logsnr_sigmas(n: int, sigma_min: float = 0.002, sigma_max: float = 80.0) -> Tensor:
    """n noise levels uniform in logSNR (= uniform in log sigma), then 0. [DPM] Sec. 3.3."""
    return _append_zero(torch.exp(torch.linspace(math.log(sigma_max), math.log(sigma_min), n,
                                                 dtype=torch.float64)))


GRIDS = {"karras": karras_sigmas, "logsnr": logsnr_sigmas}
