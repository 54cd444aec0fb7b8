"""Noise-level grids, built apart from the solvers. All grids are float64, descending, and end in 0.

References: [EDM] arXiv 2206.00364v2 (Karras rho grid), [DPM] 2206.00927 (uniform logSNR),
[DDIM] 2010.02502 and [ZSNR] 2305.08891v4 (leading / trailing / linspace spacing of integer
timesteps, zero terminal SNR).

Every grid in `GRIDS` is called `fn(n, sigma_min, sigma_max, path=None)` and returns n noise levels
and a final 0 (n steps). Grids on the integer timesteps of `diffspace.paths.DDPMDiscrete` take their
range from the table (timestep k sits at sigma = exp(path.log_sigmas[k])) and ignore the bounds.
"""

import math

import torch
from torch import Tensor

from diffspace.paths import DDPMDiscrete, GaussianPath
from diffspace.types import UserError


def _append_zero(sigmas: Tensor) -> Tensor:
    return torch.cat([sigmas, sigmas.new_zeros(1)])


def _check_n(n: int, most: int | None = None) -> None:
    if not isinstance(n, int) or n < 1 or (most is not None and n > most):
        raise UserError(f"number of steps must be an integer in [1, {most or 'inf'}], got {n!r}")


def karras_sigmas(n: int, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0,
                  path: GaussianPath | None = None) -> Tensor:
    """[EDM] Eq. 5: n noise levels interpolated in sigma^(1/rho), then 0. rho = 7  # [EDM] Table 1."""
    _check_n(n)
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return _append_zero((hi + ramp * (lo - hi)) ** rho)


def logsnr_sigmas(n: int, sigma_min: float = 0.002, sigma_max: float = 80.0,
                  path: GaussianPath | None = None) -> Tensor:
    """n noise levels uniform in logSNR (= uniform in log sigma), then 0. [DPM] Sec. 3.3."""
    _check_n(n)
    return _append_zero(torch.exp(torch.linspace(math.log(sigma_max), math.log(sigma_min), n,
                                                 dtype=torch.float64)))


def uniform_t_sigmas(n: int, sigma_min: float, sigma_max: float, path: GaussianPath | None = None) -> Tensor:
    """n noise levels uniform in the path's own time t between the times of sigma_max and sigma_min."""
    _check_n(n)
    if path is None:
        raise UserError("grid 'uniform_t' needs the path the model was trained on")
    ends = path.t_from_sigma(torch.tensor([sigma_max, sigma_min], dtype=torch.float64))
    t = torch.linspace(float(ends[0]), float(ends[1]), n, dtype=torch.float64)
    return _append_zero(path.sigma(t))


def _table(path: GaussianPath | None, name: str) -> DDPMDiscrete:
    if not isinstance(path, DDPMDiscrete):
        raise UserError(f"grid {name!r} spaces the integer timesteps of a 'ddpm' path, got {path!r}")
    return path


def table_sigmas(path: DDPMDiscrete, timesteps: Tensor) -> Tensor:
    """Noise levels of descending integer timesteps of the discrete table, then 0."""
    return _append_zero(torch.exp(path.log_sigmas[timesteps.long()]))


def leading_timesteps(n: int, path: DDPMDiscrete) -> Tensor:
    """[DDIM] App. D.2 / [ZSNR] Table 2 'leading': 0, T//n, 2T//n, ... (never reaches T - 1)."""
    return torch.arange(n, dtype=torch.float64).mul(path.T // n).flip(0)


def trailing_timesteps(n: int, path: DDPMDiscrete) -> Tensor:
    """[ZSNR] Sec. 3.3 'trailing': T - 1, T - 1 - T/n, ... rounded, so the first step is at t = 1."""
    return torch.round(torch.arange(path.T, 0, -path.T / n, dtype=torch.float64)) - 1


def linspace_timesteps(n: int, path: DDPMDiscrete) -> Tensor:
    """[ZSNR] Table 2 'linspace': n points from T - 1 to 0, rounded (DDIM's rounding)."""
    return torch.round(torch.linspace(0, path.T - 1, n, dtype=torch.float64)).flip(0)


def _table_grid(timesteps_fn, name):
    def grid(n: int, sigma_min: float | None = None, sigma_max: float | None = None,
             path: GaussianPath | None = None) -> Tensor:
        table = _table(path, name)
        _check_n(n, table.T)
        return table_sigmas(table, timesteps_fn(n, table))

    grid.__name__ = f"{name}_sigmas"
    grid.__doc__ = f"Noise levels of the {name!r} integer timesteps of a DDPMDiscrete table, then 0."
    return grid


leading_sigmas = _table_grid(leading_timesteps, "leading")
trailing_sigmas = _table_grid(trailing_timesteps, "trailing")
linspace_sigmas = _table_grid(linspace_timesteps, "linspace")


class DDPMZeroTerminalSNR(DDPMDiscrete):
    """A DDPM table rescaled to zero terminal SNR. [ZSNR] Alg. 1: shift and scale sqrt(alphas_cumprod)
    so its last value is 0 and its first is unchanged.

    why: in sigma space a zero terminal SNR is sigma = inf, which no sampler can start from. The last
    log sigma is instead continued by the table's last increment (sigma_T = sigma_{T-1}^2 / sigma_{T-2},
    about 3e4 for the default betas), finite and still increasing. (diffusers' Euler sets the last
    alphas_cumprod to 2^-24, which for these betas is larger than the one before it: sigma_T < sigma_{T-1}.)
    Zero terminal SNR is meant for v- or x0-prediction: eps cannot be read back at alpha_t = 0.
    """

    name = "ddpm_zsnr"

    def __init__(self, num_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02):
        super().__init__(num_timesteps, beta_start, beta_end)
        root = self.alphas_cumprod.sqrt()
        root = (root - root[-1]) * root[0] / (root[0] - root[-1])  # [ZSNR] Alg. 1
        log_sigmas = 0.5 * torch.log((1 - root[:-1] ** 2) / root[:-1] ** 2)
        self.log_sigmas = torch.cat([log_sigmas, 2 * log_sigmas[-1:] - log_sigmas[-2:-1]])
        self.alphas_cumprod = torch.sigmoid(-2 * self.log_sigmas)  # alpha^2 = 1 / (1 + sigma^2)
        prev = torch.cat([self.alphas_cumprod.new_ones(1), self.alphas_cumprod[:-1]])
        self.betas = 1 - self.alphas_cumprod / prev

    def __repr__(self):
        n, b0, b1 = self._args
        return f"DDPMZeroTerminalSNR(num_timesteps={n}, beta_start={b0}, beta_end={b1})"


GRIDS = {
    "karras": karras_sigmas,
    "logsnr": logsnr_sigmas,
    "uniform_t": uniform_t_sigmas,
    "leading": leading_sigmas,
    "trailing": trailing_sigmas,
    "linspace": linspace_sigmas,
}
