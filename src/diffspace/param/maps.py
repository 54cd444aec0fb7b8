"""Few-step parameterizations: a two-time flow map read as an average velocity, and the consistency
function with its boundary condition built in.

References: [MEANFLOW] arXiv 2505.13447v1, [SHORTCUT] 2410.12557v3, [CM] 2303.01469v2, [EDM] 2206.00364v2.

Average velocity ([MEANFLOW] Eq. 3): on a path's PF-ODE dx_t/dt = v(x_t, t),

    u(x_t, r, t) = 1 / (t - r) * int_r^t v(x_tau, tau) dtau,   so   x_r = x_t - (t - r) u(x_t, r, t),

a jump along the trajectory from t to r (Eq. 12), and u -> v as r -> t. A shortcut model's velocity for
a step of size d from t ([SHORTCUT] Sec. 3) is the same object at r = t - d. A network with two time
inputs becomes this map through `NetAverageVelocity`; it is called `(x_t, t, r)`, extending the
VelocityField's `(x_t, t)` (the paper writes u(z_t, r, t)).

How these join the (x0, eps) hub of param/predictions.py: a prediction there is a function of one
(x_t, t) that fixes (x0_hat, eps_hat); u over [r, t] with r < t is not (it depends on the trajectory
between r and t), so it is no new entry. Its one pointwise reading, r = t, *is* the hub's `velocity`:
`InstantVelocity` gives that VelocityField and `DenoiserFromVelocity` the Denoiser, so every ODE sampler
applies to a map network; `MapDenoiser` is that Denoiser with the map's jumps in EDM space beside it (the
registry's `flow_map` sampler). The consistency function's output f(x, sigma) is the PF-ODE endpoint at
sigma_min, an estimate of the clean sample: it is read as the hub's `x0`, and `ConsistencyPrecond` is
a Denoiser-shaped wrapper like `EDMPrecond`, with [CM]'s coefficients in place of [EDM]'s.
"""

import torch
from torch import Tensor, nn

from diffspace.param.wrappers import DenoiserFromVelocity, first_param, to_net_dtype
from diffspace.paths.base import GaussianPath
from diffspace.utils import bcast, in_dtype_of


class NetAverageVelocity(nn.Module):
    """A network with a second noise condition (built with `second_cond=True`) read as the average
    velocity u(x_t, r, t): forward(x_t (B, ...), t (B,), r (B,), **cond) -> (B, ...).

    The network sees time_scale * t and, as the second condition, the interval time_scale * (t - r)
    ([MEANFLOW] Sec. 4.3 conditions on (t, t - r), the best of its Fig. 4c variants).

    why time_scale = 1 (the times themselves, as the SiT code MeanFlow builds on feeds its embedding),
    not the 1000 t "timestep units" of `NetVelocity`: the MeanFlow target differentiates the network
    in t, and the sinusoidal features of 1000 t (periods down to 0.006 in t) make d_t u dominate it: on
    a fresh MLP |d_t u| is 16 |u|. On the checkerboard after 3 CPU-minutes, sliced W2 over the data
    baseline's at 1 / 2 / 4 jumps: 2.8 / 2.3 / 1.6 with time_scale 1, 7.5 / 5.2 / 7.4 with 1000
    (benchmarks/fewstep_feasibility.py, docs/fewstep.md).

    x_t may be of another floating dtype than the network: it runs in its own and u comes back in x_t's
    (as `NetVelocity`, param/wrappers.py).
    """

    def __init__(self, net: nn.Module, time_scale: float = 1.0):
        super().__init__()
        self.net, self.time_scale = net, time_scale
        self._net_param = first_param(net)  # its dtype is the network's (`to_net_dtype`)

    def forward(self, x_t: Tensor, t: Tensor, r: Tensor, **cond) -> Tensor:
        c = self.time_scale
        net, x_in, c_t, c_gap, (known, p) = self.net, x_t, c * t, c * (t - r), self._net_param
        if known is not net or (p is not None and p.dtype is not x_t.dtype):
            x_in, c_t, c_gap = to_net_dtype(self, net, x_in, c_t, c_gap)
        return in_dtype_of(net(x_in, c_t, noise_cond_2=c_gap, **cond), x_t)


class InstantVelocity(nn.Module):
    """The VelocityField of an average-velocity map at r = t: v(x_t, t) = u(x_t, t, t) ([MEANFLOW] Sec. 3,
    lim_{r -> t} u = v)."""

    def __init__(self, avg_velocity):
        super().__init__()
        self.avg_velocity = avg_velocity

    def forward(self, x_t: Tensor, t: Tensor, **cond) -> Tensor:
        return self.avg_velocity(x_t, t, t, **cond)


class MapDenoiser(DenoiserFromVelocity):
    """An average-velocity map trained on `path`, as a Denoiser that can also jump.

    forward(x (B, ...), sigma (B,), **cond) -> x0_hat: the Denoiser of the map's r = t velocity
    (`DenoiserFromVelocity(InstantVelocity(map))`), so every sampler of the registry applies.
    jump(x, sigma, sigma_next, **cond) -> x at sigma_next < sigma: one jump along the map in EDM space
    (x = x_t / alpha_t): with t, r the path's times of sigma, sigma_next (r = 0 for sigma_next = 0),
    x_r = x_t - (t - r) u(x_t, r, t) ([MEANFLOW] Eq. 12), returned divided by alpha_r.
    """

    def __init__(self, avg_velocity, path: GaussianPath):
        super().__init__(InstantVelocity(avg_velocity), path)

    @property
    def avg_velocity(self):
        return self.velocity.avg_velocity

    def jump(self, x: Tensor, sigma: Tensor, sigma_next: Tensor, **cond) -> Tensor:
        levels = torch.stack([sigma, sigma_next]).double()  # (2, B)
        # why: sigma = 0 is the data end, t = 0, where t_from_sigma would take log 0
        t, r = torch.where(levels > 0, self.path.t_from_sigma(levels.clamp(min=1e-300)), 0.0)
        alpha_t, alpha_r, gap = (bcast(c, x) for c in (self.path.alpha_t(t), self.path.alpha_t(r), t - r))
        x_t = alpha_t * x
        u = self.avg_velocity(x_t, t.to(x.dtype), r.to(x.dtype), **cond)
        return (x_t - gap * u) / alpha_r  # [MEANFLOW] Eq. 12


class ConsistencyPrecond(nn.Module):
    """[CM] Eq. 5 with App. C's coefficients: f(x, sigma) = c_skip x + c_out F(c_in x, c_noise),

        c_skip = sigma_data^2 / ((sigma - sigma_min)^2 + sigma_data^2),
        c_out  = sigma_data (sigma - sigma_min) / sqrt(sigma_data^2 + sigma^2),

    so c_skip(sigma_min) = 1 and c_out(sigma_min) = 0: f(x, sigma_min) = x exactly, whatever the (finite)
    network output.
    EDM space (x = x_t / alpha_t, sigma (B,)), called like a Denoiser; c_in and c_noise as `EDMPrecond`.
    sigma_min = 0.002 and sigma_data = 0.5 are [CM] App. C's. x may be of another floating dtype than the
    network, as for `EDMPrecond`.
    """

    def __init__(self, net: nn.Module, sigma_data: float = 0.5, sigma_min: float = 0.002):
        super().__init__()
        self.net, self.sigma_data, self.sigma_min = net, sigma_data, sigma_min
        self._net_param = first_param(net)  # its dtype is the network's (`to_net_dtype`)

    def forward(self, x: Tensor, sigma: Tensor, **cond) -> Tensor:
        sd = self.sigma_data
        s = bcast(sigma, x)
        c_skip = sd**2 / ((s - self.sigma_min) ** 2 + sd**2)
        c_out = sd * (s - self.sigma_min) / torch.sqrt(sd**2 + s**2)
        c_in = 1 / torch.sqrt(s**2 + sd**2)
        c_noise = 250.0 * torch.log(sigma)  # [EDM] Table 1 ln(sigma) / 4, in timestep units (x 1000)
        net, x_in, (known, p) = self.net, c_in * x, self._net_param
        if known is not net or (p is not None and p.dtype is not x.dtype):
            x_in, c_noise = to_net_dtype(self, net, x_in, c_noise)
        return c_skip * x + c_out * in_dtype_of(net(x_in, c_noise, **cond), x)
