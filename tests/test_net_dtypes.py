"""A network wrapper takes x of another floating dtype than its network (float64 noise from Python into a
float32 network): the network runs in its own dtype and the result comes back in x's (it was a bare
'mat1 and mat2 must have the same dtype' deep in the network); x in the network's dtype costs a dtype
comparison and nothing else."""

import pytest
import torch

import diffspace.param.wrappers as wrappers
from diffspace.nets.mlp import MLP
from diffspace.param import EDMPrecond, NetDenoiser, NetVelocity
from diffspace.paths import PATHS
from diffspace.samplers.multistep import sample_dpmpp_2m
from diffspace.samplers.ode import sample_euler, sample_velocity_midpoint, slope


def _net(seed=0):
    torch.manual_seed(seed)
    return MLP(2, hidden=16, depth=1).eval()


def _wrappers():
    return {"net_denoiser_eps": NetDenoiser(_net(), PATHS["vp"](), "eps"),
            "net_denoiser_v": NetDenoiser(_net(), PATHS["vp"](), "v"),
            "edm": EDMPrecond(_net()),
            "velocity": NetVelocity(_net(), PATHS["vp"]())}


@pytest.mark.parametrize("name", list(_wrappers()))
@torch.no_grad()
def test_float64_x_into_a_float32_network_comes_back_in_float64(name):
    wrapper = _wrappers()[name]
    x32 = torch.randn(6, 2, generator=torch.Generator().manual_seed(1))
    x64 = x32.double()
    level = torch.full((6,), 0.5 if name == "velocity" else 1.7, dtype=torch.float64)
    out32, out64 = wrapper(x32, level), wrapper(x64, level)
    assert out32.dtype == torch.float32 and out64.dtype == torch.float64
    torch.testing.assert_close(out64, out32.double(), rtol=1e-5, atol=1e-5)
    if name != "velocity":
        s32, s64 = slope(wrapper, x32, 1.7, {}), slope(wrapper, x64, 1.7, {})
        assert s64.dtype == torch.float64
        torch.testing.assert_close(s64, s32.double(), rtol=1e-5, atol=1e-5)
    assert not any("_net_param" in k for k in wrapper.state_dict())  # no parameter registered by the probe


@torch.no_grad()
def test_samplers_take_float64_noise_and_keep_it():
    sigmas = torch.tensor([80.0, 10.0, 1.0, 0.1, 0.002], dtype=torch.float64)
    x = torch.randn(8, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 80
    for sampler in (sample_euler, sample_dpmpp_2m):
        for den in (NetDenoiser(_net(), PATHS["vp"](), "eps"), EDMPrecond(_net())):
            out64, out32 = sampler(den, x, sigmas), sampler(den, x.float(), sigmas)
            assert out64.dtype == torch.float64 and out32.dtype == torch.float32
            torch.testing.assert_close(out64.float(), out32, rtol=1e-3, atol=1e-3)
    ts = torch.linspace(1.0, 1e-3, 5, dtype=torch.float64)
    out = sample_velocity_midpoint(NetVelocity(_net(), PATHS["vp"]()), x[:, :] / 80, ts)
    assert out.dtype == torch.float64 and torch.isfinite(out).all()


@torch.no_grad()
def test_x_in_the_networks_dtype_takes_the_fast_path(monkeypatch):
    """No cast, no lookup of the parameters: only where the dtypes differ is `_to_net_dtype` called."""
    calls = []
    real = wrappers._to_net_dtype
    monkeypatch.setattr(wrappers, "_to_net_dtype", lambda *a: calls.append(a[2].dtype) or real(*a))
    den = NetDenoiser(_net(), PATHS["vp"](), "eps")
    x = torch.randn(4, 2)
    den(x, torch.full((4,), 2.0)), slope(den, x, 2.0, {})
    assert calls == []
    den(x.double(), torch.full((4,), 2.0, dtype=torch.float64))
    assert calls == [torch.float64]


class _Affine(torch.nn.Module):
    """A network that runs in any dtype (diffspace's nets embed the level in float32)."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(2, 2)

    def forward(self, x, noise_cond):
        return self.lin(x) + 1e-3 * noise_cond.reshape(-1, 1)


@torch.no_grad()
def test_a_network_converted_after_wrapping_is_followed():
    """net.double() after the wrapper was built: float64 x needs no cast, float32 x is cast up to it."""
    den = EDMPrecond(_Affine())
    den.double()
    x = torch.randn(4, 2, dtype=torch.float64)
    level = torch.full((4,), 1.0, dtype=torch.float64)
    assert den(x, level).dtype == torch.float64
    assert den(x.float(), level).dtype == torch.float32
    den.net = _Affine()  # a new float32 network: the remembered parameter is stale, looked up again
    assert den(x, level).dtype == torch.float64 and den(x.float(), level).dtype == torch.float32
