"""One noise level for the whole batch: every wrapper computes its coefficients once and hands the network
a (1,) noise condition, with the same outputs as the per-example (B,) path; every net broadcasts a (1,)
condition; a DDPM table point reaches the network as its exact integer timestep."""

import pytest
import torch

from diffspace.nets.classifier import ConvClassifier
from diffspace.nets.dit import DiT
from diffspace.nets.mlp import MLP
from diffspace.nets.transformer import Transformer, TransformerConfig
from diffspace.nets.unet import UNet
from diffspace.param import (
    PREDICTIONS,
    DenoiserFromVelocity,
    EDMPrecond,
    NetDenoiser,
    NetVelocity,
    VelocityFromDenoiser,
)
from diffspace.paths import PATHS, DDPMDiscrete
from diffspace.samplers.ode import sigma_batch
from diffspace.utils import shared_level

B = 5


class Probe(torch.nn.Module):
    """A smooth 'network' that records the noise conditions it is given; it broadcasts a (1,) one."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, x, noise_cond):
        self.seen.append(noise_cond)
        return torch.tanh(x) * (1 + noise_cond[:, None] / 1000)


def _x(dtype=torch.float64):
    return torch.randn(B, 3, dtype=dtype, generator=torch.Generator().manual_seed(0))


def test_shared_level_is_recognised_by_layout_only():
    x = _x()
    assert shared_level(sigma_batch(2.0, x)).shape == (1,)
    assert shared_level(torch.full((B,), 2.0)).shape == (B,)  # equal values but per-example storage
    assert shared_level(torch.tensor([2.0])).shape == (1,)
    real = shared_level(torch.tensor([3 + 4j], dtype=torch.complex128).real.expand(B))  # its base is complex
    assert real.dtype == torch.float64 and real.tolist() == [3.0]


@pytest.mark.parametrize("path_name", ["ddpm", "vp", "cosine", "subvp", "ve", "edm", "linear"])
@pytest.mark.parametrize("prediction", sorted(PREDICTIONS))
def test_net_denoiser_shared_level_equals_per_example(path_name, prediction):
    path, x = PATHS[path_name](), _x()
    for sigma in (path.sigma_min * 1.5, 0.3, 7.0, path.sigma_max / 1.5):
        probe = Probe()
        den = NetDenoiser(probe, path, prediction)
        with torch.no_grad():
            shared = den(x, sigma_batch(sigma, x))
            each = den(x, torch.full((B,), sigma, dtype=x.dtype))
        assert probe.seen[0].shape == (1,) and probe.seen[1].shape == (B,)
        torch.testing.assert_close(probe.seen[0].expand(B), probe.seen[1], rtol=0, atol=0)
        torch.testing.assert_close(shared, each, rtol=1e-12, atol=1e-12)


def test_every_wrapper_hands_the_network_one_level():
    x = _x()
    for make, level in [
        (lambda p: EDMPrecond(p, 0.5), 3.0),
        (lambda p: DenoiserFromVelocity(NetVelocity(p, PATHS["linear"]()), PATHS["linear"]()), 3.0),
        (lambda p: VelocityFromDenoiser(NetDenoiser(p, PATHS["vp"](), "v"), PATHS["vp"]()), 0.4),
        (lambda p: NetVelocity(p, PATHS["linear"]()), 0.4),
    ]:
        probe = Probe()
        wrapper = make(probe)
        with torch.no_grad():
            shared = wrapper(x, sigma_batch(level, x))
            each = wrapper(x, torch.full((B,), level, dtype=x.dtype))
        assert [c.shape for c in probe.seen] == [(1,), (B,)]
        torch.testing.assert_close(shared, each, rtol=1e-12, atol=1e-12)


class Smooth(torch.nn.Module):
    """Probe's map without the record (a traced graph replays no Python side effects)."""

    def forward(self, x, noise_cond):
        return torch.tanh(x) * (1 + noise_cond[:, None] / 1000)


@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
def test_every_wrapper_compiles_to_one_graph(backend):
    """torch.compile(fullgraph=True) traces each wrapper whole (the memo's lookup by object broke the
    graph) and gives its eager output: at two levels and per example, under autograd, under
    inference_mode, and for a one-value level that is not a view (the graph reads no `_base`)."""
    x = _x(torch.float32)
    not_a_view = torch.empty_strided((B,), (0,)).fill_(1.7)
    for make, level in [
        (lambda p: NetDenoiser(p, DDPMDiscrete(), "eps"), 3.0),
        (lambda p: NetDenoiser(p, PATHS["vp"](), "v"), 3.0),
        (lambda p: EDMPrecond(p, 0.5), 3.0),
        (lambda p: DenoiserFromVelocity(NetVelocity(p, PATHS["linear"]()), PATHS["linear"]()), 3.0),
        (lambda p: VelocityFromDenoiser(NetDenoiser(p, PATHS["vp"](), "v"), PATHS["vp"]()), 0.4),
        (lambda p: NetVelocity(p, PATHS["linear"]()), 0.4),
    ]:
        torch._dynamo.reset()  # why: recompiles count per code object, and every NetDenoiser shares one
        wrapper = make(Smooth())
        compiled = torch.compile(wrapper, fullgraph=True, backend=backend)
        with torch.no_grad():
            for lv in (sigma_batch(level, x), sigma_batch(level / 2, x), torch.linspace(0.5, 1, B) * level,
                       not_a_view):
                torch.testing.assert_close(compiled(x, lv), wrapper(x, lv), rtol=1e-6, atol=1e-6)
        with torch.inference_mode():
            lv = sigma_batch(level, x)
            torch.testing.assert_close(compiled(x, lv), wrapper(x, lv), rtol=1e-6, atol=1e-6)
        xg = x.clone().requires_grad_()
        (grad,) = torch.autograd.grad(compiled(xg, sigma_batch(level, x)).sum(), xg)
        xe = x.clone().requires_grad_()
        (expected,) = torch.autograd.grad(wrapper(xe, sigma_batch(level, x)).sum(), xe)
        torch.testing.assert_close(grad, expected, rtol=1e-6, atol=1e-6)


def test_level_memo_is_only_a_cache():
    """A second call at the same level (memoised on the CPU) gives the first call's output, a per-example
    call and a call under autograd compute afresh; results agree to the last bit."""
    path, x = DDPMDiscrete(), _x(torch.float32)
    den = NetDenoiser(Probe(), path, "eps")
    with torch.no_grad():
        first, again = den(x, sigma_batch(3.0, x)), den(x, sigma_batch(3.0, x))
        other = den(x, sigma_batch(5.0, x))
    grad = den(x.requires_grad_(), sigma_batch(3.0, x))
    assert torch.equal(first, again) and not torch.equal(first, other)
    torch.testing.assert_close(grad.detach(), first, rtol=0, atol=0)
    grad.sum().backward()  # no cached tensor was saved for backward


def test_a_level_tensor_is_shared_and_its_memo_follows_its_value():
    """sigma_batch hands out one tensor per (value, B, dtype, device); the memo finds it by the tensor
    itself, and a level tensor changed in place is not served the coefficients of its old value."""
    x = _x(torch.float32)
    assert sigma_batch(3.0, x) is sigma_batch(3.0, x)
    assert sigma_batch(3.0, x) is not sigma_batch(3.0, x.double())
    assert sigma_batch(3.0, x) is not sigma_batch(3.0, x[:2]) and sigma_batch(3.0, x[:2]).shape == (2,)
    path = DDPMDiscrete()
    probe = Probe()
    den = NetDenoiser(probe, path, "eps")
    level = torch.tensor([3.0])
    with torch.no_grad():
        at_3 = den(x, level)
        level.fill_(5.0)  # the same tensor, a new value
        at_5 = den(x, level)
        fresh_5 = NetDenoiser(Probe(), path, "eps")(x, torch.tensor([5.0]))
        level.fill_(3.0)
        again_3 = den(x, level)
    assert not torch.equal(at_3, at_5)
    torch.testing.assert_close(at_5, fresh_5, rtol=0, atol=0)
    torch.testing.assert_close(again_3, at_3, rtol=0, atol=0)
    timestep_5 = path.noise_cond(path.t_from_sigma(torch.tensor([5.0], dtype=torch.float64))).float()
    assert [float(c) for c in probe.seen[1:]] == [float(timestep_5), float(probe.seen[0])]


@pytest.mark.parametrize("sampler", ["heun", "dpmpp_2m", "unipc"])
def test_sampling_under_inference_mode_equals_no_grad(sampler):
    """torch.inference_mode makes the levels inference tensors, which have no version counter: the memo
    finds them by value instead (it raised 'Inference tensors do not track version counter'), and a level
    changed in place inside inference mode gets its new value's coefficients."""
    from diffspace.samplers.grids import karras_sigmas
    from diffspace.samplers.registry import SAMPLERS

    x, sigmas = _x(torch.float32) * 80, karras_sigmas(5, 0.01, 80.0)
    for den in (NetDenoiser(Probe(), DDPMDiscrete(), "eps"), EDMPrecond(Probe())):
        with torch.no_grad():
            expected = SAMPLERS[sampler].fn(den, x, sigmas)
        with torch.inference_mode():
            got = SAMPLERS[sampler].fn(den, x, sigmas)
            level = torch.tensor([3.0])
            at_3 = den(x, level)
            level.fill_(5.0)
            at_5 = den(x, level)
        torch.testing.assert_close(got, expected, rtol=0, atol=0)
        with torch.no_grad():
            torch.testing.assert_close(at_5, den(x, torch.tensor([5.0])), rtol=0, atol=0)
            assert not torch.equal(at_3, at_5)


def test_ddpm_table_points_reach_the_network_as_exact_integers():
    """sigma -> t -> timestep in float64: every table point k gives exactly k.0, from a float64 sigma and
    from the float32 sigma a float32 sampler hands the Denoiser (398.99997 before: t went through float32)."""
    path = DDPMDiscrete()
    k = torch.arange(path.T, dtype=torch.float64)
    sigmas = torch.exp(path.log_sigmas)
    assert torch.equal(path.noise_cond(path.t_from_sigma(sigmas)), k)
    assert torch.equal(path.noise_cond(path.t_from_sigma(sigmas.float().double())), k)
    for dtype in (torch.float32, torch.float64):
        probe = Probe()
        den = NetDenoiser(probe, path, "eps")
        x = _x(dtype)
        with torch.no_grad():
            for n in (0, 1, 399, 500, 998, 999):
                den(x, sigma_batch(float(sigmas[n]), x))
        assert [float(c) for c in probe.seen] == [0.0, 1.0, 399.0, 500.0, 998.0, 999.0]
        assert all(c.dtype == dtype for c in probe.seen)
    mid = path.noise_cond(path.t_from_sigma(torch.sqrt(sigmas[399:400] * sigmas[400:401])))
    assert 399.4 < float(mid) < 399.6  # between table points the timestep stays fractional


def _nets():
    kw = dict(num_classes=3)
    return {
        "mlp": (MLP(3, hidden=16, depth=2, **kw), (B, 3)),
        "unet": (UNet(1, 8, channels=8, channel_mults=(1, 2), num_res_blocks=1, attn_resolutions=(4,),
                      heads=2, dropout=0.0, **kw), (B, 1, 8, 8)),
        "dit": (DiT(1, 8, patch=2, hidden=16, depth=1, heads=2, **kw), (B, 1, 8, 8)),
        "classifier": (ConvClassifier(1, 3, width=8, levels=2, noise_aware=True), (B, 1, 8, 8)),
    }


@pytest.mark.parametrize("name", ["mlp", "unet", "dit", "classifier"])
def test_every_net_broadcasts_a_one_level_condition(name, randomize):
    """net(x, (1,)) = net(x, the same level repeated B times), with and without class labels (UNet and
    DiT with text: tests/t2i/test_t2i_conditioning.py)."""
    torch.manual_seed(0)
    net, shape = _nets()[name]
    net = randomize(net)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    labels = {} if name == "classifier" else {"class_labels": torch.tensor([0, 1, 2, 3, 1])}
    with torch.no_grad():
        for cond in ({}, labels):
            one = net(x, torch.tensor([300.0]), **cond)
            torch.testing.assert_close(one, net(x, torch.full((B,), 300.0), **cond), rtol=1e-5, atol=1e-5)


def test_transformer_broadcasts_a_one_level_condition(randomize):
    torch.manual_seed(0)
    net = randomize(Transformer(TransformerConfig(vocab_size=11, max_len=8, dim=16, depth=1, heads=2,
                                                  noise_cond=True)))
    ids = torch.randint(11, (B, 8), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(net(ids, torch.tensor([300.0])), net(ids, torch.full((B,), 300.0)),
                                   rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("path_name", ["ddpm", "vp", "ve", "edm", "linear"])
@pytest.mark.parametrize("prediction", sorted(PREDICTIONS))
def test_a_wrappers_slope_is_the_pf_odes(path_name, prediction):
    """slope(x, sigma) = (x - D(x, sigma)) / sigma ([EDM] Eq. 4) at a level given as a float, under
    no_grad and under autograd (input gradients too); for an eps network it is the prediction itself
    ([DDIM] Eq. 14), with no arithmetic on it."""
    path, x = PATHS[path_name](), _x()
    den = NetDenoiser(Smooth(), path, prediction)
    for sigma in (path.sigma_min * 1.5, 0.3, 7.0, path.sigma_max / 1.5):
        expected = lambda y: (y - den(y, torch.full((B,), sigma, dtype=y.dtype))) / sigma  # noqa: B023, E731
        with torch.no_grad():
            torch.testing.assert_close(den.slope(x, sigma), expected(x), rtol=1e-9, atol=1e-9 / sigma)
        xg = x.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(den.slope(xg, sigma).pow(2).sum(), xg)
        (grad_expected,) = torch.autograd.grad(expected(xg).pow(2).sum(), xg)
        torch.testing.assert_close(grad, grad_expected, rtol=1e-9, atol=1e-9 / sigma**2)
    if prediction == "eps":
        c_in, _, _, c_noise = den.level(torch.tensor([0.3], dtype=torch.float64), x)
        assert torch.equal(den.slope(x, 0.3), Smooth()(c_in * x, c_noise))
    edm = EDMPrecond(Smooth(), 0.5)
    for sigma in (0.002, 0.3, 80.0):
        expected = (x - edm(x, torch.full((B,), sigma, dtype=x.dtype))) / sigma
        torch.testing.assert_close(edm.slope(x, sigma), expected, rtol=1e-9, atol=1e-9 / sigma)
    x32 = x.float()  # a float32 batch: the coefficients formed in float64 reach it in float32
    assert edm.slope(x32, 0.3).dtype == torch.float32 and den.slope(x32, 0.3).dtype == torch.float32

