"""The DDPM discrete-time schedule ([DDPM] Sec. 4: T = 1000, beta linear 1e-4..0.02) as a path.

Timestep n in {0..T-1} (diffusers' indexing, alphas_cumprod[n] = prod_{i<=n} (1 - beta_i)) sits at
t = (n + 1) / T. Between timesteps, log of the EDM noise level is linear in t, which is exactly the
interpolation diffusers uses for fractional timesteps (`_sigma_to_t`), so a network trained the
diffusers way sees the same conditioning here. Below t = 1/T the first segment is extended.
"""

import torch
from torch import Tensor

from diffspace.paths.base import GaussianPath


class DDPMDiscrete(GaussianPath):
    name = "ddpm"

    def __init__(self, num_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02):
        self.T = num_timesteps
        self.betas = torch.linspace(beta_start, beta_end, num_timesteps, dtype=torch.float64)
        self.alphas_cumprod = torch.cumprod(1 - self.betas, 0)
        # log EDM sigma at the knots t_n = (n + 1) / T
        self.log_sigmas = 0.5 * torch.log((1 - self.alphas_cumprod) / self.alphas_cumprod)
        self.t_min, self.t_max = 1.0 / num_timesteps, 1.0
        self._args = (num_timesteps, beta_start, beta_end)

    def timestep_from_t(self, t: Tensor) -> Tensor:
        return t * self.T - 1

    def t_from_timestep(self, n: Tensor) -> Tensor:
        return (n + 1) / self.T

    def noise_cond(self, t: Tensor) -> Tensor:
        return self.timestep_from_t(t)

    def _segment(self, pos: Tensor):
        """Left knot index and fraction for a fractional timestep position (extended at both ends)."""
        i = pos.floor().clamp(0, self.T - 2).long()
        return i, pos - i

    def _log_sigma(self, t: Tensor):
        ls = self.log_sigmas.to(t.device, t.dtype)
        i, f = self._segment(self.timestep_from_t(t))
        slope = (ls[i + 1] - ls[i]) * self.T  # d log sigma / dt on this segment
        return ls[i] + f * (ls[i + 1] - ls[i]), slope

    def sigma(self, t):
        return torch.exp(self._log_sigma(t)[0])

    def alpha_t(self, t):
        s = self.sigma(t)
        return torch.rsqrt(1 + s**2)

    def sigma_t(self, t):
        s = self.sigma(t)
        return s * torch.rsqrt(1 + s**2)

    def d_alpha_t(self, t):
        # alpha = (1 + s^2)^(-1/2), ds/dt = s * slope
        log_s, slope = self._log_sigma(t)
        s = torch.exp(log_s)
        return -(s**2) * slope * (1 + s**2) ** -1.5

    def d_sigma_t(self, t):
        log_s, slope = self._log_sigma(t)
        s = torch.exp(log_s)
        return s * slope * (1 + s**2) ** -1.5

    def logsnr(self, t):
        return -2 * self._log_sigma(t)[0]

    def t_from_logsnr(self, logsnr):
        log_s = -0.5 * logsnr
        ls = self.log_sigmas.to(logsnr.device, logsnr.dtype)
        i = (torch.searchsorted(ls, log_s.contiguous()) - 1).clamp(0, self.T - 2)
        pos = i + (log_s - ls[i]) / (ls[i + 1] - ls[i])
        return self.t_from_timestep(pos)

    def __repr__(self):
        n, b0, b1 = self._args
        return f"DDPMDiscrete(num_timesteps={n}, beta_start={b0}, beta_end={b1})"


class DDPMZeroTerminalSNR(DDPMDiscrete):
    """A DDPM table rescaled to zero terminal SNR ([ZSNR] arXiv 2305.08891v4). [ZSNR] Alg. 1: shift and
    scale sqrt(alphas_cumprod) so its last value is 0 and its first is unchanged.

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


