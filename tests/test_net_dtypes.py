"""A network wrapper takes x of another floating dtype than its network (float64 noise from Python into a
float32 network): the network runs in its own dtype and the result comes back in x's (it was a bare
'mat1 and mat2 must have the same dtype' deep in the network); x in the network's dtype costs a dtype
comparison and nothing else."""

import pytest
import torch

import diffspace.param.wrappers as wrappers
from diffspace.nets.mlp import MLP
from diffspace.param import (
    ConsistencyPrecond,
    EDMPrecond,
    MapDenoiser,
    NetAverageVelocity,
    NetDenoiser,
    NetVelocity,
)
from diffspace.paths import PATHS
from diffspace.samplers.guidance import ClassifierGuidance, EDMClassifier
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
    """No cast, no lookup of the parameters: only where the dtypes differ is `to_net_dtype` called."""
    calls = []
    real = wrappers.to_net_dtype
    monkeypatch.setattr(wrappers, "to_net_dtype", lambda *a: calls.append(a[2].dtype) or real(*a))
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


# The other wrappers that call a network with x and a noise condition (param/maps.py, samplers/guidance.py)
# share the helpers: float64 x into a float32 network gives x's dtype, equal to the float32 result.

def _x_pair(seed=1):
    x32 = torch.randn(6, 2, generator=torch.Generator().manual_seed(seed))
    return x32, x32.double()


@torch.no_grad()
def test_net_average_velocity_takes_float64_x():
    torch.manual_seed(0)
    u = NetAverageVelocity(MLP(2, hidden=16, depth=1, second_cond=True).eval())
    (x32, x64), t, r = _x_pair(), torch.full((6,), 0.7, dtype=torch.float64), torch.full((6,), 0.2)
    out32, out64 = u(x32, t.float(), r), u(x64, t, r.double())
    assert out32.dtype == torch.float32 and out64.dtype == torch.float64
    torch.testing.assert_close(out64, out32.double(), rtol=1e-5, atol=1e-5)
    den = MapDenoiser(u, PATHS["cosine"]())  # the jump and the r = t Denoiser on top of it
    sigma, sigma_next = torch.full((6,), 1.5, dtype=torch.float64), torch.full((6,), 0.3, dtype=torch.float64)
    for f in (lambda x: den(x, sigma), lambda x: den.jump(x, sigma, sigma_next)):
        a32, a64 = f(x32), f(x64)
        assert a64.dtype == torch.float64
        torch.testing.assert_close(a64, a32.double(), rtol=1e-5, atol=1e-5)
    assert not any("_net_param" in k for k in u.state_dict())


@torch.no_grad()
def test_consistency_precond_takes_float64_x():
    f = ConsistencyPrecond(_net())
    x32, x64 = _x_pair()
    sigma = torch.tensor([0.002, 0.01, 0.5, 1.7, 10.0, 80.0], dtype=torch.float64)
    out32, out64 = f(x32, sigma), f(x64, sigma)
    assert out32.dtype == torch.float32 and out64.dtype == torch.float64
    torch.testing.assert_close(out64, out32.double(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out64[0], x64[0])  # the boundary condition f(x, sigma_min) = x survives
    assert not any("_net_param" in k for k in f.state_dict())


def test_edm_classifier_and_classifier_guidance_take_float64_x():
    clf = EDMClassifier(_net(1))  # an MLP's (B, 2) output read as logits of two classes
    x32, x64 = _x_pair()
    sigma = torch.full((6,), 1.7, dtype=torch.float64)
    with torch.no_grad():
        out32, out64 = clf(x32, sigma), clf(x64, sigma)
    assert out32.dtype == torch.float32 and out64.dtype == torch.float64
    torch.testing.assert_close(out64, out32.double(), rtol=1e-5, atol=1e-5)
    guided = ClassifierGuidance(EDMPrecond(_net()), clf, scale=2.0)
    labels = torch.tensor([0, 1, 0, 1, 0, 1])
    with torch.no_grad():  # the classifier's gradient in x flows back through the cast
        g32, g64 = guided(x32, sigma.float(), class_labels=labels), guided(x64, sigma, class_labels=labels)
    assert g64.dtype == torch.float64
    torch.testing.assert_close(g64, g32.double(), rtol=1e-5, atol=1e-5)
    assert not any("_net_param" in k for k in clf.state_dict())
