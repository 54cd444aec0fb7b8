"""Wrappers that turn a raw network into a Denoiser (sigma space) or a VelocityField (t space).

Networks know nothing about diffusion: `net(x, noise_cond, **cond)`. `noise_cond` is in
"timestep units" (about 0..1000) for every wrapper, so one embedding fits all.

Samplers call a Denoiser with one noise level for the whole batch, a stride-0 (B,) view
(`diffspace.utils.shared_level` recognises it without reading it). Every wrapper then computes its
coefficients once, on a (1,) tensor, and hands the network a (1,) `noise_cond` that broadcasts over the
batch (every net in diffspace.nets does), so a network does not embed the same level B times; a (B,)
level with one value per example (training, likelihood) keeps the per-example path. Wrappers that call
another callable pass it the (1,) level expanded back to a stride-0 (B,) view, so the contract
(level of shape (B,)) holds and the inner callable shares the saving.

sigma -> t runs in float64, and the noise condition is formed from the float64 t: a DDPM table point
reaches the network as its exact integer timestep (`DDPMDiscrete.noise_cond`).

x may be of another floating dtype than the network's parameters (float64 noise from Python into a float32
network): the network is then handed its input in its parameters' dtype, and the result comes back in x's
dtype, so the sampler's arithmetic stays in x's dtype (`to_net_dtype`).
"""


import torch
from torch import Tensor, nn

from diffspace.param.predictions import NEEDS_DERIVATIVES, SKIP_IS_ONE, x0_eps
from diffspace.paths.base import Coeffs, GaussianPath
from diffspace.utils import LevelMemo, bcast, in_dtype_of


def _coeffs(path: GaussianPath, t: Tensor, x: Tensor) -> Coeffs:
    return Coeffs(*(bcast(c, x) for c in path.coeffs(t)))


def first_param(net) -> tuple:
    """(net, its first parameter), the parameter None for a function or a module without parameters: a
    tuple, so that keeping it on a wrapper registers no parameter (the state_dict keeps its keys). The
    parameter follows net.to(...) / net.double() (they convert it in place)."""
    params = getattr(net, "parameters", None)
    return net, (next(params(), None) if callable(params) else None)


def to_net_dtype(wrapper: nn.Module, net, x_in: Tensor, *conds: Tensor) -> tuple[Tensor, ...]:
    """(x_in, *conds) (the noise condition(s)) in the dtype of `net`'s parameters; called only where x's
    dtype is not the one of the parameter the wrapper remembers (`_net_param`, set by `first_param`), or
    the wrapper's network is another one than it remembers, so the parameter is looked up again here.
    Shared by every wrapper that calls a network with x and a noise condition (param/maps.py, the guiding
    classifier of samplers/guidance.py).

    why cast rather than refuse: float64 sampling around a float32 network is a fair use (the samplers
    and the exact toy denoisers work in any floating dtype, and float64 steps keep the sampler's own
    rounding out of an accuracy study); refused, it was a bare 'mat1 and mat2 must have the same dtype'
    deep in the network. The common path (x in the network's dtype) pays one dtype comparison with the
    remembered parameter: no copy and no walk over the parameters."""
    wrapper._net_param = first_param(net)
    p = wrapper._net_param[1]
    if p is None or p.dtype == x_in.dtype or not (p.is_floating_point() and x_in.is_floating_point()):
        return (x_in, *conds)
    return (x_in.to(p.dtype), *(c.to(p.dtype) for c in conds))


class NetDenoiser(nn.Module):
    """A network trained on `path` to predict `prediction`, seen as an EDM-space Denoiser in the form of
    [EDM] Table 1: D(x, sigma) = c_skip x + c_out F(c_in x, c_noise). c_in = alpha_t (the network sees
    x_t = alpha_t x), c_noise is the path's noise_cond, and c_skip, c_out are read off the (x0, eps) hub,
    whose conversion is affine in (x_t, F): eps gives c_skip = 1, c_out = -sigma (Table 1's VP and VE
    columns), x0 gives 0 and 1.

    forward(x (B, ...), sigma (B,), **cond) -> x0_hat (B, ...) in x's dtype, whatever the network's (see
    the module docstring). The path's derivatives are computed only for predictions that need them
    (velocity)."""

    def __init__(self, net: nn.Module, path: GaussianPath, prediction: str):
        super().__init__()
        self.net, self.path, self.prediction = net, path, prediction
        self._memo, self._slope_memo = LevelMemo(), LevelMemo()
        self._net_param = first_param(net)  # its dtype is the network's (`to_net_dtype`)

    def _coefficients(self, s: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(alpha_t, c_skip, c_out, t) in float64 at the float64 level s."""
        t = self.path.t_from_sigma(s)
        if self.prediction in NEEDS_DERIVATIVES:
            c = self.path.coeffs(t)
        else:
            alpha = self.path.alpha_from_sigma(s)
            c = Coeffs(alpha, alpha * s, None, None)  # sigma_t = alpha_t sigma
        zero, one = torch.zeros_like(s), torch.ones_like(s)
        c_skip = x0_eps(self.prediction, c.alpha_t, zero, c)[0]  # x0 at x = 1 (x_t = alpha_t), F = 0
        c_out = x0_eps(self.prediction, zero, one, c)[0]  # x0 at x = 0, F = 1
        return c.alpha_t, c_skip, c_out, t

    def level(self, sigma: Tensor, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(c_in, c_skip, c_out) broadcast against x and c_noise in x's dtype, at sigma of shape (1,) or
        (B,), computed in float64."""
        c_in, c_skip, c_out, t = self._coefficients(sigma.double())
        return bcast(c_in, x), bcast(c_skip, x), bcast(c_out, x), self.path.noise_cond(t).to(x.dtype)

    def slope_level(self, sigma: Tensor, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """`level` for `slope`: c_in, (1 - c_skip) / sigma, -c_out / sigma and c_noise, formed in float64."""
        s = sigma.double()
        c_in, c_skip, c_out, t = self._coefficients(s)
        return (bcast(c_in, x), bcast((1 - c_skip) / s, x), bcast(-c_out / s, x),
                self.path.noise_cond(t).to(x.dtype))

    def forward(self, x: Tensor, sigma: Tensor, **cond) -> Tensor:
        c_in, c_skip, c_out, c_noise = self._memo(self.level, sigma, x)
        net, x_in, (known, p) = self.net, c_in * x, self._net_param
        if known is not net or (p is not None and p.dtype is not x.dtype):
            x_in, c_noise = to_net_dtype(self, net, x_in, c_noise)
        f = in_dtype_of(net(x_in, c_noise, **cond), x)
        # why: where c_skip is 1 by construction, one pass over the batch instead of two
        return torch.addcmul(x if self.prediction in SKIP_IS_ONE else c_skip * x, c_out, f)

    def slope(self, x: Tensor, sigma: float, **cond) -> Tensor:
        """(x - D(x, sigma)) / sigma at one level sigma > 0 for the batch (a Python float), the PF-ODE's
        slope ([EDM] Eq. 4, s = 1), with a pass over the batch less than through `forward`: for an eps
        network the prediction itself ([DDIM] Eq. 14, dx/dsigma = eps(x / sqrt(sigma^2 + 1))), else
        (1 - c_skip) / sigma x - c_out / sigma F. Samplers reach it through `samplers.ode.slope`; the
        coefficients are remembered by the float (`LevelMemo.at`)."""
        c_in, k_x, k_f, c_noise = self._slope_memo.at(self.slope_level, sigma, x)
        # why not `self.net`: nn.Module.__getattr__ is a Python call per network call, on a path that runs
        # with the caches the network left cold (a plain function given as the net is a plain attribute)
        net, x_in, (known, p) = self._modules.get("net") or self.net, c_in * x, self._net_param
        if known is not net or (p is not None and p.dtype is not x.dtype):
            x_in, c_noise = to_net_dtype(self, net, x_in, c_noise)
        f = net(x_in, c_noise, **cond)
        f = f if f.dtype is x.dtype else f.to(x.dtype)  # `in_dtype_of` inline (one frame less per call)
        return f if self.prediction == "eps" else torch.addcmul(k_x * x, k_f, f)


class EDMPrecond(nn.Module):
    """[EDM] Table 1 preconditioning: D(x, s) = c_skip x + c_out F(c_in x, c_noise)."""

    def __init__(self, net: nn.Module, sigma_data: float = 0.5):
        super().__init__()
        self.net, self.sigma_data = net, sigma_data
        self._memo, self._slope_memo = LevelMemo(), LevelMemo()
        self._net_param = first_param(net)  # its dtype is the network's (`to_net_dtype`)

    def level(self, s: Tensor, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(c_skip, c_out, c_in) broadcast against x and c_noise, at s of shape (1,) or (B,)."""
        sd = self.sigma_data
        c_skip = sd**2 / (s**2 + sd**2)
        c_out = s * sd / torch.sqrt(s**2 + sd**2)
        c_in = 1 / torch.sqrt(s**2 + sd**2)
        # [EDM] Table 1 has c_noise = ln(sigma) / 4; times 1000 to put it in timestep units
        return bcast(c_skip, x), bcast(c_out, x), bcast(c_in, x), 250.0 * torch.log(s)

    def slope_level(self, s: Tensor, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """`level` for `slope`: c_in, (1 - c_skip) / s = s / (s^2 + sigma_data^2), -c_out / s and c_noise."""
        sd, norm = self.sigma_data, torch.sqrt(s**2 + self.sigma_data**2)
        return (bcast(1 / norm, x), bcast(s / norm**2, x), bcast(-sd / norm, x),
                (250.0 * torch.log(s)).to(x.dtype))

    def forward(self, x: Tensor, sigma: Tensor, **cond) -> Tensor:
        c_skip, c_out, c_in, c_noise = self._memo(self.level, sigma, x)
        net, x_in, (known, p) = self.net, c_in * x, self._net_param
        if known is not net or (p is not None and p.dtype is not x.dtype):
            x_in, c_noise = to_net_dtype(self, net, x_in, c_noise)
        return torch.addcmul(c_skip * x, c_out, in_dtype_of(net(x_in, c_noise, **cond), x))

    def slope(self, x: Tensor, sigma: float, **cond) -> Tensor:
        """(x - D(x, sigma)) / sigma at one level sigma > 0 (a Python float), in as many passes over the
        batch as `forward` (see `NetDenoiser.slope`)."""
        c_in, k_x, k_f, c_noise = self._slope_memo.at(self.slope_level, sigma, x)
        net, x_in, (known, p) = self._modules.get("net") or self.net, c_in * x, self._net_param  # NetDenoiser
        if known is not net or (p is not None and p.dtype is not x.dtype):
            x_in, c_noise = to_net_dtype(self, net, x_in, c_noise)
        f = net(x_in, c_noise, **cond)
        f = f if f.dtype is x.dtype else f.to(x.dtype)
        return torch.addcmul(k_x * x, k_f, f)


class VelocityFromDenoiser(nn.Module):
    """u(x_t, t) = d_alpha x0_hat + d_sigma eps_hat with x0_hat from the Denoiser at sigma_t / alpha_t."""

    def __init__(self, denoiser, path: GaussianPath):
        super().__init__()
        self.denoiser, self.path = denoiser, path
        self._memo = LevelMemo()

    def level(self, t: Tensor, x_t: Tensor) -> tuple[Coeffs, Tensor]:
        """Coefficients broadcast against x_t and sigma in x_t's dtype, at t of shape (1,) or (B,)."""
        t = t.double()
        return _coeffs(self.path, t, x_t), self.path.sigma(t).to(x_t.dtype)

    def forward(self, x_t: Tensor, t: Tensor, **cond) -> Tensor:
        c, sigma = self._memo(self.level, t, x_t)
        x0 = self.denoiser(x_t / c.alpha_t, sigma.expand(len(x_t)), **cond)
        eps = (x_t - c.alpha_t * x0) / c.sigma_t
        return c.d_alpha_t * x0 + c.d_sigma_t * eps


class DenoiserFromVelocity(nn.Module):
    """The Denoiser of a velocity field trained on `path` (inverse of VelocityFromDenoiser)."""

    def __init__(self, velocity, path: GaussianPath):
        super().__init__()
        self.velocity, self.path = velocity, path
        self._memo = LevelMemo()

    def level(self, sigma: Tensor, x: Tensor) -> tuple[Coeffs, Tensor]:
        """Coefficients broadcast against x and t in x's dtype, at sigma of shape (1,) or (B,)."""
        t = self.path.t_from_sigma(sigma.double())
        return _coeffs(self.path, t, x), t.to(x.dtype)

    def forward(self, x: Tensor, sigma: Tensor, **cond) -> Tensor:
        c, t = self._memo(self.level, sigma, x)
        x_t = c.alpha_t * x
        return x0_eps("velocity", x_t, self.velocity(x_t, t.expand(len(x)), **cond), c)[0]


class NetVelocity(nn.Module):
    """A raw network whose output is read as the velocity dx_t/dt on `path` (flow matching)."""

    def __init__(self, net: nn.Module, path: GaussianPath):
        super().__init__()
        self.net, self.path = net, path
        self._memo = LevelMemo()
        self._net_param = first_param(net)  # its dtype is the network's (`to_net_dtype`)

    def level(self, t: Tensor, x_t: Tensor) -> Tensor:
        """The network's noise_cond in x_t's dtype at t of shape (1,) or (B,), formed in float64."""
        return self.path.noise_cond(t.double()).to(x_t.dtype)

    def forward(self, x_t: Tensor, t: Tensor, **cond) -> Tensor:
        net, x_in, c_noise, (known, p) = self.net, x_t, self._memo(self.level, t, x_t), self._net_param
        if known is not net or (p is not None and p.dtype is not x_t.dtype):
            x_in, c_noise = to_net_dtype(self, net, x_in, c_noise)
        return in_dtype_of(net(x_in, c_noise, **cond), x_t)
