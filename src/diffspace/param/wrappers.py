"""Wrappers that turn a raw network into a Denoiser (sigma space) or a VelocityField (t space).

Networks know nothing about diffusion: `net(x, noise_cond, **cond)`. `noise_cond` is in
"timestep units" (about 0..1000) for every wrapper, so one embedding fits all.
"""


import torch
from torch import Tensor, nn

from diffspace.param.predictions import x0_eps
from diffspace.paths.base import Coeffs, GaussianPath
from diffspace.utils import bcast


def _coeffs(path: GaussianPath, t: Tensor, x: Tensor) -> Coeffs:
    return Coeffs(*(bcast(c, x) for c in path.coeffs(t)))


class NetDenoiser(nn.Module):
    """A network trained on `path` to predict `prediction`, seen as an EDM-space Denoiser."""

    def __init__(self, net: nn.Module, path: GaussianPath, prediction: str):
        super().__init__()
        self.net, self.path, self.prediction = net, path, prediction

    def forward(self, x: Tensor, sigma: Tensor, **cond) -> Tensor:
        t = self.path.t_from_sigma(sigma.double()).to(x.dtype)
        c = _coeffs(self.path, t, x)
        x_t = c.alpha_t * x  # EDM space x = x_t / alpha_t
        pred = self.net(x_t, self.path.noise_cond(t), **cond)
        return x0_eps(self.prediction, x_t, pred.to(x.dtype), c)[0]


class EDMPrecond(nn.Module):
    """[EDM] Table 1 preconditioning: D(x, s) = c_skip x + c_out F(c_in x, c_noise)."""

    def __init__(self, net: nn.Module, sigma_data: float = 0.5):
        super().__init__()
        self.net, self.sigma_data = net, sigma_data

    def forward(self, x: Tensor, sigma: Tensor, **cond) -> Tensor:
        sd = self.sigma_data
        s = bcast(sigma, x)
        c_skip = sd**2 / (s**2 + sd**2)
        c_out = s * sd / torch.sqrt(s**2 + sd**2)
        c_in = 1 / torch.sqrt(s**2 + sd**2)
        # [EDM] Table 1 has c_noise = ln(sigma) / 4; times 1000 to put it in timestep units
        c_noise = 250.0 * torch.log(sigma)
        return c_skip * x + c_out * self.net(c_in * x, c_noise, **cond).to(x.dtype)


class VelocityFromDenoiser(nn.Module):
    """u(x_t, t) = d_alpha x0_hat + d_sigma eps_hat with x0_hat from the Denoiser at sigma_t / alpha_t."""

    def __init__(self, denoiser, path: GaussianPath):
        super().__init__()
        self.denoiser, self.path = denoiser, path

    def forward(self, x_t: Tensor, t: Tensor, **cond) -> Tensor:
        c = _coeffs(self.path, t, x_t)
        x0 = self.denoiser(x_t / c.alpha_t, self.path.sigma(t).to(x_t.dtype), **cond)
        eps = (x_t - c.alpha_t * x0) / c.sigma_t
        return c.d_alpha_t * x0 + c.d_sigma_t * eps


class DenoiserFromVelocity(nn.Module):
    """The Denoiser of a velocity field trained on `path` (inverse of VelocityFromDenoiser)."""

    def __init__(self, velocity, path: GaussianPath):
        super().__init__()
        self.velocity, self.path = velocity, path

    def forward(self, x: Tensor, sigma: Tensor, **cond) -> Tensor:
        t = self.path.t_from_sigma(sigma.double()).to(x.dtype)
        c = _coeffs(self.path, t, x)
        x_t = c.alpha_t * x
        return x0_eps("velocity", x_t, self.velocity(x_t, t, **cond), c)[0]


class NetVelocity(nn.Module):
    """A raw network whose output is read as the velocity dx_t/dt on `path` (flow matching)."""

    def __init__(self, net: nn.Module, path: GaussianPath):
        super().__init__()
        self.net, self.path = net, path

    def forward(self, x_t: Tensor, t: Tensor, **cond) -> Tensor:
        return self.net(x_t, self.path.noise_cond(t), **cond).to(x_t.dtype)


