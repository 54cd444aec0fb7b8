"""Deterministic samplers against the exact Gaussian-mixture denoiser: measured convergence orders,
the DDIM = Euler = DPM-Solver++(1) identity, honest NFE counts, velocity-field RK solvers."""

import numpy as np
import pytest
import torch
from torchdiffeq import odeint

from diffspace.data.gmm import eight_gaussians_mixture
from diffspace.param import VelocityFromDenoiser
from diffspace.paths import LinearFlow
from diffspace.samplers.grids import karras_sigmas, logsnr_sigmas
from diffspace.samplers.multistep import History, dpmpp_2m_step, push
from diffspace.samplers.ode import (
    CountingDenoiser,
    euler_step,
    heun_step,
    sample_adaptive,
    sample_velocity_midpoint,
    sample_velocity_rk4,
)
from diffspace.samplers.registry import SAMPLERS, describe_samplers
from diffspace.samplers.sde import ddim_step

SIGMA_MIN, SIGMA_MAX = 0.002, 80.0
# why std 0.5: with the 8 gaussians of std 0.1 the solution has sharp features and the
# asymptotic regime starts beyond 256 steps (Heun 1.84-1.98, DPM++3M 2.5-2.9 at n = 32..256); at std
# 0.5 every method is asymptotic from n = 32 (measured at n = 64..256: Euler 1.01, Heun 2.05, 2M 2.05,
# 3M 3.1, UniPC 3.07, DEIS 2.9, RK4 4.05 on Karras grids), so the fitted order tests the method, not the data.
GMM = eight_gaussians_mixture(radius=2.0, std=0.5)


@pytest.fixture(scope="module")
def problem():
    x = torch.randn(32, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * SIGMA_MAX
    ref = sample_adaptive(GMM.denoiser, x, SIGMA_MAX, SIGMA_MIN, rtol=1e-10, atol=1e-10, denoise_last=False)
    return x, ref


def measured_order(fn, x, ref, grid, ns, **opts) -> float:
    """Least-squares slope of -log(RMSE) against log(n) on grids that stop at SIGMA_MIN (no final 0)."""
    outs = [fn(GMM.denoiser, x, grid(n, SIGMA_MIN, SIGMA_MAX)[:-1], **opts) for n in ns]
    errs = [float((y - ref).pow(2).mean().sqrt()) for y in outs]
    return -np.polyfit(np.log(ns), np.log(errs), 1)[0]


# (name, declared order, step counts where the order is asymptotic; DEIS's extrapolation in sigma
# needs finer steps before its third order shows)
ORDERS = [("euler", 1, (32, 64, 128)), ("heun", 2, (32, 64, 128)), ("midpoint", 2, (32, 64, 128)),
          ("rk4", 4, (16, 32, 64)), ("dpmpp_2m", 2, (32, 64, 128)), ("dpmpp_3m", 3, (32, 64, 128)),
          ("unipc", 3, (32, 64, 128)), ("deis", 3, (128, 256, 512))]


@pytest.mark.parametrize("name,declared,ns", ORDERS)
def test_measured_order_at_least_declared(problem, name, declared, ns):
    spec = SAMPLERS[name]
    assert spec.order == declared
    for grid in (karras_sigmas, logsnr_sigmas):
        order = measured_order(spec.fn, *problem, grid, ns)
        assert order >= declared - 0.15, (name, grid.__name__, order)


def test_ddim_equals_euler_equals_dpmpp1_step_for_step():
    x = GMM.sample(256, torch.Generator().manual_seed(0)) + 3.0 * torch.randn(256, 2, dtype=torch.float64)
    sigmas = karras_sigmas(12, SIGMA_MIN, SIGMA_MAX).tolist()
    xe = xd = xp = x
    for s, s_next in zip(sigmas[:-1], sigmas[1:], strict=True):
        xe = euler_step(GMM.denoiser, xe, s, s_next)[0]
        xd = ddim_step(GMM.denoiser, xd, s, s_next, eta=0.0)[0]
        # DPM-Solver++ first order: a history of one point
        x0 = GMM.denoiser(xp, torch.full((256,), s, dtype=torch.float64))
        xp = dpmpp_2m_step(xp, s_next, push(History(), s, x0, 2))
        scale = xe.abs().max()
        assert (xe - xd).abs().max() <= 1e-10 * scale
        assert (xe - xp).abs().max() <= 1e-10 * scale


@pytest.mark.parametrize("sigma, sigma_next", [(80.0, 20.0), (3.0, 1.0), (0.6, 0.002), (1.0, 0.0)])
def test_heun_step_is_edm_algorithm_1(sigma, sigma_next):
    """The step as [EDM] Alg. 1 writes it (lines 4-8), in float64 to round-off and in float32 to its own
    precision, across a step of ratio 1/3 and the last steps of a grid (a large -h / sigma_next)."""
    x = torch.randn(64, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * (1 + sigma)
    level = lambda s: torch.full((64,), s, dtype=torch.float64)  # noqa: E731
    d = (x - GMM.denoiser(x, level(sigma))) / sigma
    expected = x + (sigma_next - sigma) * d
    if sigma_next > 0:
        d2 = (expected - GMM.denoiser(expected, level(sigma_next))) / sigma_next
        expected = x + (sigma_next - sigma) * (d + d2) / 2
    assert torch.allclose(heun_step(GMM.denoiser, x, sigma, sigma_next)[0], expected, rtol=0, atol=1e-12)
    denoiser32 = lambda y, s: GMM.denoiser(y.double(), s.double()).float()  # noqa: E731
    got32 = heun_step(denoiser32, x.float(), sigma, sigma_next)[0]
    assert (got32.double() - expected).abs().max() <= 1e-5 * (1 + expected.abs().max())


@pytest.mark.parametrize("name", [n for n in SAMPLERS if SAMPLERS[n].nfe is not None])
@pytest.mark.parametrize("n", [1, 2, 7])
def test_nfe_rule_counts_network_calls(name, n):
    spec, counter = SAMPLERS[name], CountingDenoiser(GMM.denoiser)
    x = torch.randn(8, 2, dtype=torch.float64) * SIGMA_MAX
    g = torch.Generator().manual_seed(0)
    out = spec.fn(counter, x, karras_sigmas(n, SIGMA_MIN, SIGMA_MAX), generator=g)
    assert counter.nfe == spec.nfe(n)
    assert out.shape == x.shape and torch.isfinite(out).all()


def test_callback_sees_every_step_with_x0_hat():
    seen = []
    x = torch.randn(4, 2, dtype=torch.float64) * SIGMA_MAX
    sigmas = logsnr_sigmas(5, SIGMA_MIN, SIGMA_MAX)
    SAMPLERS["unipc"].fn(GMM.denoiser, x, sigmas, callback=lambda i, s, y, x0: seen.append((i, s, x0.shape)))
    assert [(i, s) for i, s, _ in seen] == list(enumerate(sigmas[:-1].tolist()))
    assert all(shape == x.shape for *_, shape in seen)


def test_velocity_midpoint_and_rk4_orders():
    """The same RK rules on a VelocityField: the linear-flow velocity of the mixture, t from 1 to 0.05
    (t = 0 is x0 itself; stopping before keeps the field smooth), against the adaptive reference."""
    path = LinearFlow()
    u = VelocityFromDenoiser(GMM.denoiser, path)
    x1 = torch.randn(64, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    t_end = 0.05
    span = torch.tensor([path.t_max, t_end], dtype=torch.float64)
    ref = odeint(lambda t, y: u(y, t.expand(len(y))), x1, span, rtol=1e-10, atol=1e-10)[-1]
    for fn, order, ns in ((sample_velocity_midpoint, 2, (32, 64, 128)),
                          (sample_velocity_rk4, 4, (16, 32, 64))):
        errs = [float((fn(u, x1, torch.linspace(path.t_max, t_end, n + 1, dtype=torch.float64)) - ref)
                      .pow(2).mean().sqrt()) for n in ns]
        assert -np.polyfit(np.log(ns), np.log(errs), 1)[0] >= order - 0.15, (fn.__name__, errs)


def test_describe_samplers_lists_every_sampler():
    text = describe_samplers()
    for name, spec in SAMPLERS.items():
        line = next(row for row in text.splitlines() if row.split()[0] == name)
        assert str(spec.order) in line
    assert "2n-1" in next(r for r in text.splitlines() if r.startswith("heun"))


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_every_sampler_has_the_uniform_signature_and_passes_cond(name):
    """fn(denoiser, x, sigmas, *, generator=None, callback=None, **cond): cond reaches every call."""
    seen = []

    def denoiser(x, sigma, class_labels):
        seen.append(class_labels)
        assert sigma.shape == (x.shape[0],) and sigma.dtype == x.dtype
        return GMM.denoiser(x, sigma)

    labels = torch.arange(4)
    x = torch.randn(4, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * SIGMA_MAX
    out = SAMPLERS[name].fn(denoiser, x, karras_sigmas(3, SIGMA_MIN, SIGMA_MAX),
                            generator=torch.Generator().manual_seed(1), callback=None, class_labels=labels)
    assert out.shape == x.shape and seen and all(c is labels for c in seen)


class _Forwarding:
    """A wrapper that forwards attribute reads to the module it wraps (as torch.compile's and DDP's do)
    and counts its own calls."""

    def __init__(self, module):
        self.module, self.calls = module, 0

    def __call__(self, x, sigma, **cond):
        self.calls += 1
        return self.module(x, sigma, **cond)

    def __getattr__(self, name):
        return getattr(self.module, name)


@pytest.mark.parametrize("name", ["euler", "heun", "ddim", "midpoint", "rk4"])
def test_one_step_samplers_use_a_denoisers_slope_and_still_report_x0_hat(name):
    """An eps NetDenoiser's slope (its prediction) and the generic (x - D) / sigma give the same samples;
    the callback's x0_hat is D at the step's start either way; a wrapper that only forwards attributes
    is called as a Denoiser (its own forward runs)."""
    from diffspace.param import NetDenoiser
    from diffspace.paths import DDPMDiscrete

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.mlp = torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2))

        def forward(self, x, c):
            return self.mlp(x) * (1 + c[:, None] / 1000)

    torch.manual_seed(0)
    den = NetDenoiser(Net().double(), DDPMDiscrete(), "eps")
    plain = lambda x, s: den(x, s)  # noqa: E731  a Denoiser without slope
    sigmas = karras_sigmas(6, 0.01, 20.0)
    x = torch.randn(64, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 20.0
    seen = {"own": [], "plain": []}
    record = lambda key: lambda i, s, y, x0: seen[key].append((s, y, x0))  # noqa: E731
    fn = SAMPLERS[name].fn
    own = fn(den, x, sigmas, callback=record("own"))
    torch.testing.assert_close(own, fn(plain, x, sigmas, callback=record("plain")), rtol=1e-12, atol=1e-12)
    start = x
    for (s, y, x0), (_, _, x0_plain) in zip(seen["own"], seen["plain"], strict=True):
        at_start = den(start, torch.full((64,), s, dtype=torch.float64))
        torch.testing.assert_close(x0, at_start, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(x0, x0_plain, rtol=1e-12, atol=1e-12)
        start = y
    wrapped = _Forwarding(den)
    torch.testing.assert_close(fn(wrapped, x, sigmas), own, rtol=1e-12, atol=1e-12)
    assert wrapped.calls == SAMPLERS[name].nfe(len(sigmas) - 1)


@pytest.mark.parametrize("name, passes", [("euler", lambda n: 2 * n), ("ddim", lambda n: 2 * n),
                                          ("heun", lambda n: 5 * (n - 1) + 2)])
def test_passes_over_the_batch_per_step_with_an_eps_network(name, passes):
    """The host work of a step with an eps NetDenoiser, counted as tensor ops on the batch outside the
    network: per call, the input scaling and one update (the step adds the prediction, the slope, to x);
    Heun adds its half step before the second call. why pinned: on the CPU these passes, paid with caches
    the network left cold, are the sampler's time per call (benchmarks/samplers.py)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from diffspace.param import NetDenoiser
    from diffspace.paths import DDPMDiscrete

    batch = 64

    class Count(TorchDispatchMode):
        inside, ops = False, []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            shapes = [a.shape for a in args if isinstance(a, torch.Tensor)]
            if not self.inside and any(s[:1] == (batch,) for s in shapes):
                self.ops.append(func)
            return func(*args, **(kwargs or {}))

    class Net(torch.nn.Module):
        def forward(self, x, c):
            Count.inside = True
            out = torch.tanh(x) * (1 + c[:, None] / 1000)
            Count.inside = False
            return out

    den = NetDenoiser(Net(), DDPMDiscrete(), "eps")
    sigmas = karras_sigmas(7, 0.01, 20.0)
    x = torch.randn(batch, 2, generator=torch.Generator().manual_seed(0)) * 20.0
    with torch.no_grad():
        SAMPLERS[name].fn(den, x, sigmas)  # the levels' coefficients are computed once, here
        with Count():
            SAMPLERS[name].fn(den, x, sigmas)
    assert len(Count.ops) == passes(len(sigmas) - 1), Count.ops


class _OneBuffer(torch.nn.Module):
    """An eps network that writes every output into one buffer, as a CUDA-graph replay does."""

    def __init__(self, reuse: bool, dim: int = 2):
        super().__init__()
        self.reuse, self.out = reuse, None
        self.lin = torch.nn.Linear(dim, dim).double()

    def forward(self, x, c):
        y = torch.tanh(self.lin(x)) * (1 + c[:, None] / 1000)
        if not self.reuse:
            return y
        if self.out is None or self.out.shape != y.shape:
            self.out = torch.empty_like(y)
        return self.out.copy_(y)


@pytest.mark.parametrize("name", ["euler", "heun", "midpoint", "rk4", "schedule", "pas"])
def test_a_network_that_reuses_its_output_buffer_samples_the_same(name):
    """The slope may be the network's own output (`ode.slope`): no step uses it after the next call, so
    a network that overwrites its output each call gives the same samples and callback x0_hat as one
    that returns fresh tensors. In 8 dimensions, so PAS's k = 3 basis depends on the whole history."""
    from diffspace.param import NetDenoiser
    from diffspace.paths import DDPMDiscrete
    from diffspace.samplers.optimize_grid import sample_schedule
    from diffspace.samplers.pas import learn_pas, sample_euler_pas

    torch.manual_seed(0)
    fresh, reused = _OneBuffer(False, 8), _OneBuffer(True, 8)
    reused.load_state_dict(fresh.state_dict())
    sigmas = karras_sigmas(5, 0.01, 20.0)
    x = torch.randn(32, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 20.0
    outs = []
    for net in (fresh, reused):
        den, seen = NetDenoiser(net, DDPMDiscrete(), "eps"), []
        record = lambda i, s, y, x0: seen.append(x0.clone())  # noqa: B023, E731
        if name == "schedule":
            out = sample_schedule(den, x, sigmas, orders=(2, 1, 2, 2, 1), callback=record)
        elif name == "pas":
            pas = learn_pas(den, x, sigmas, k=3, tol=0.0)
            assert pas.coords  # some steps are corrected, so the history's directions matter
            out = sample_euler_pas(den, x, sigmas, pas=pas, callback=record)
            seen.append(torch.tensor([c for i in sorted(pas.coords) for c in pas.coords[i]]))
        else:
            out = SAMPLERS[name].fn(den, x, sigmas, callback=record)
        outs.append((out, torch.cat([s.flatten() for s in seen])))
    torch.testing.assert_close(outs[1][0], outs[0][0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(outs[1][1], outs[0][1], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["euler", "ddim", "heun", "rk4"])
def test_the_step_into_zero_is_x0_hat_exactly(name):
    """One step from sigma = 80 into 0 returns D(x, 80) bit for bit in float32 (not x - 80 (x - D) / 80,
    which rounds at the scale of |x|), for a plain callable, EDMPrecond and NetDenoiser's x0 and v."""
    from diffspace.param import EDMPrecond, NetDenoiser
    from diffspace.paths import PATHS

    class Net(torch.nn.Module):
        def forward(self, x, c):
            return torch.tanh(x) * (1 + c[:, None] / 1000)

    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(0)) * 80.0
    sigmas = torch.tensor([80.0, 0.0], dtype=torch.float64)
    plain = lambda y, s: torch.tanh(y / 80.0) * 0.7  # noqa: E731
    for den in (plain, EDMPrecond(Net(), 0.5), NetDenoiser(Net(), PATHS["ve"](), "x0"),
                NetDenoiser(Net(), PATHS["vp"](), "v")):
        expected = den(x, torch.full((64,), 80.0))
        assert torch.equal(SAMPLERS[name].fn(den, x, sigmas), expected)


def test_a_denoiser_with_hooks_or_compiled_is_called_through_its_module():
    """A slope method would skip a module's hooks, a forward set on the instance and Module.compile()'s
    compiled call: with any, the samplers call the module, so every network evaluation passes through."""
    from diffspace.param import NetDenoiser
    from diffspace.paths import DDPMDiscrete

    den = NetDenoiser(_OneBuffer(False), DDPMDiscrete(), "eps")
    x = torch.randn(16, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 20.0
    sigmas = karras_sigmas(4, 0.01, 20.0)
    plain = SAMPLERS["heun"].fn(den, x, sigmas)
    calls = []
    handle = den.register_forward_pre_hook(lambda module, args: calls.append(1))
    torch.testing.assert_close(SAMPLERS["heun"].fn(den, x, sigmas), plain, rtol=1e-12, atol=1e-12)
    assert len(calls) == SAMPLERS["heun"].nfe(4)
    handle.remove()
    global_calls = []
    handle = torch.nn.modules.module.register_module_forward_pre_hook(
        lambda module, args: global_calls.append(1) if module is den else None)
    torch.testing.assert_close(SAMPLERS["heun"].fn(den, x, sigmas), plain, rtol=1e-12, atol=1e-12)
    handle.remove()
    assert len(global_calls) == SAMPLERS["heun"].nfe(4)  # a global hook sees the denoiser's calls
    patched_calls = []
    den.forward = lambda *a, **k: patched_calls.append(1) or type(den).forward(den, *a, **k)
    torch.testing.assert_close(SAMPLERS["heun"].fn(den, x, sigmas), plain, rtol=1e-12, atol=1e-12)
    assert len(patched_calls) == SAMPLERS["heun"].nfe(4)  # a forward set on the instance runs
    del den.forward
    den.compile(backend="eager")
    compiled_calls = []
    inner = den._compiled_call_impl
    den._compiled_call_impl = lambda *a, **k: compiled_calls.append(1) or inner(*a, **k)
    torch.testing.assert_close(SAMPLERS["euler"].fn(den, x, sigmas), SAMPLERS["euler"].fn(
        NetDenoiser(den.net, DDPMDiscrete(), "eps"), x, sigmas), rtol=1e-12, atol=1e-12)
    assert len(compiled_calls) == SAMPLERS["euler"].nfe(4)


@pytest.mark.parametrize("name", ["euler", "heun", "midpoint", "rk4", "edm_sde", "ddim"])
def test_a_callbacks_x0_hat_is_d_at_the_steps_start_to_float32_rounding(name):
    """x0_hat = x - sigma d is formed while d is the step's first slope, so on a fine float32 grid it is
    D(x_i, sigma_i) up to a few roundings at the scale of |x_i| (a form rebuilt from a later stage
    point would scale that rounding by sigma / h, up to 100x here)."""
    from diffspace.param import EDMPrecond

    class Net(torch.nn.Module):
        def forward(self, x, c):
            return torch.tanh(x) * (1 + c[:, None] / 1000)

    den = EDMPrecond(Net(), 0.5)
    x = torch.randn(256, 2, generator=torch.Generator().manual_seed(0)) * 80.0
    seen, starts = [], [x]
    options = {"s_churn": 0.0} if name == "edm_sde" else {}
    SAMPLERS[name].fn(den, x, karras_sigmas(200, 0.002, 80.0), callback=lambda i, s, y, x0: (
        seen.append((s, x0)), starts.append(y)), **options)
    worst = max(((x0 - den(start, torch.full((256,), s))).abs().max() / start.abs().max()).item()
                for (s, x0), start in zip(seen, starts, strict=False))
    assert worst <= 4 * torch.finfo(torch.float32).eps, worst


def test_a_subclass_that_overrides_the_call_is_called():
    """A slope method stands for its class's forward: a subclass that overrides forward (here clamping
    x0_hat) or __call__ samples as the plain callable of the same object, for every sampler on the slope."""
    from diffspace.param import EDMPrecond

    class Net(torch.nn.Module):
        def forward(self, x, c):
            return torch.tanh(x) * (1 + c[:, None] / 1000)

    class Clamped(EDMPrecond):
        def forward(self, x, sigma, **cond):
            return super().forward(x, sigma, **cond).clamp(-0.5, 0.5)

    class CalledClamped(EDMPrecond):
        def __call__(self, x, sigma, **cond):
            return super().__call__(x, sigma, **cond).clamp(-0.5, 0.5)

    x = torch.randn(32, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 80.0
    sigmas = karras_sigmas(5, 0.01, 80.0)
    for den in (Clamped(Net(), 0.5).double(), CalledClamped(Net(), 0.5).double()):
        for name in ("euler", "heun", "rk4"):
            plain = SAMPLERS[name].fn(lambda y, s: den(y, s), x, sigmas)  # noqa: B023
            torch.testing.assert_close(SAMPLERS[name].fn(den, x, sigmas), plain, rtol=1e-12, atol=1e-12)
