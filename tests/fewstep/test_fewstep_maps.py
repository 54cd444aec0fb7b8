"""Flow maps against the exact average velocity of a Gaussian mixture: the MeanFlow identity to solver
tolerance, the library's JVP target reproducing the exact map, r = t reducing to the instantaneous
velocity and to flow matching, the shortcut's two half jumps, and N jumps of the exact map landing on the
exact ODE endpoint. Maths in float64."""

import pytest
import torch
from torchdiffeq import odeint

from diffspace import rng
from diffspace.data.gmm import eight_gaussians_mixture
from diffspace.losses.denoising import flow_matching_loss
from diffspace.losses.maps import (
    draw_meanflow_times,
    draw_shortcut_times,
    meanflow_loss,
    meanflow_target,
    shortcut_loss,
)
from diffspace.nets.dit import DiT
from diffspace.nets.mlp import MLP
from diffspace.nets.unet import UNet
from diffspace.param import DenoiserFromVelocity, VelocityFromDenoiser
from diffspace.param.maps import InstantVelocity, MapDenoiser, NetAverageVelocity
from diffspace.paths import LinearFlow, VPCosine
from diffspace.samplers.fewstep import sample_flow_map, uniform_times
from diffspace.samplers.grids import GRIDS
from diffspace.samplers.registry import SAMPLERS
from diffspace.types import UserError

GMM = eight_gaussians_mixture(radius=2.0, std=0.5)
TOL = 1e-11  # rtol = atol of the adaptive reference solutions
PATHS = [LinearFlow(), VPCosine()]


def exact_flow(velocity, x, t: float, r: float):
    """The PF-ODE solution from time t to time r (dopri5, tolerance TOL)."""
    f = lambda s, y: velocity(y, s.expand(len(y)))
    return odeint(f, x, torch.tensor([t, r], dtype=torch.float64), rtol=TOL, atol=TOL)[-1]


class ExactMap(torch.nn.Module):
    """The exact average velocity u(x_t, r, t) = (x_t - x_r) / (t - r) by adaptive ODE, v at r = t; rows
    that share (t, r) are solved together."""

    def __init__(self, path):
        super().__init__()
        self.v = VelocityFromDenoiser(GMM.denoiser, path)

    def forward(self, x_t, t, r):
        out = torch.empty_like(x_t)
        for tt, rr in torch.stack([t, r], 1).unique(dim=0).tolist():
            rows = ((t == tt) & (r == rr)).nonzero().flatten()
            x = x_t[rows]
            out[rows] = self.v(x, t[rows]) if tt == rr else (x - exact_flow(self.v, x, tt, rr)) / (tt - rr)
        return out


def rk4_map(velocity, n: int = 32):
    """u(x_t, r, t) by n classical RK4 steps with per-example (t, r) tensors: plain tensor maths, so
    torch.func.jvp differentiates it in x_t, t and r."""

    def u(x, t, r):
        h = ((r - t) / n)[:, None]
        y = x
        for i in range(n):
            s = t + (r - t) * (i / n)
            k1 = velocity(y, s)
            k2 = velocity(y + h / 2 * k1, s + (r - t) / (2 * n))
            k3 = velocity(y + h / 2 * k2, s + (r - t) / (2 * n))
            k4 = velocity(y + h * k3, s + (r - t) / n)
            y = y + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        return (x - y) / (t - r)[:, None]

    return u


def points(path, n=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    x0 = GMM.sample(n, g)
    eps = torch.randn(n, 2, dtype=torch.float64, generator=g)
    return x0, eps


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.name)
@pytest.mark.parametrize("t,r", [(0.9, 0.1), (0.6, 0.3), (0.35, 0.02)])
def test_exact_average_velocity_satisfies_meanflow_identity(path, t, r):
    """u = v - (t - r) du/dt with du/dt the derivative along the trajectory, by central differences of
    the exact u (adaptive ODE) along the tangent (v, 1) in (x_t, t): [MEANFLOW] Eq. 6 and 8."""
    v = VelocityFromDenoiser(GMM.denoiser, path)
    x0, eps = points(path)
    c = path.coeffs(torch.tensor(t, dtype=torch.float64))
    x_t = c.alpha_t * x0 + c.sigma_t * eps
    u = lambda x, tt: (x - exact_flow(v, x, tt, r)) / (tt - r)
    vt = v(x_t, torch.full((len(x_t),), t, dtype=torch.float64))
    h = 1e-4
    du_dt = (u(x_t + h * vt, t + h) - u(x_t - h * vt, t - h)) / (2 * h)
    residual = u(x_t, t) - (vt - (t - r) * du_dt)
    # central differences: O(h^2) = 1e-8 relative, ODE tolerance / h = 1e-7; u itself is O(1)
    assert residual.abs().max() < 1e-6 * vt.abs().max(), float(residual.abs().max())


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.name)
def test_meanflow_target_of_exact_map_is_exact_map(path):
    """The library's JVP target v - (t - r)(v d_x u + d_t u), fed the exact map and the marginal v, returns
    the exact average velocity (adaptive ODE): the tangent (v, 1, 0) is in the right slots."""
    v = VelocityFromDenoiser(GMM.denoiser, path)
    x0, eps = points(path, n=6, seed=1)
    t = torch.tensor([0.9, 0.9, 0.7, 0.7, 0.5, 0.5], dtype=torch.float64)
    r = torch.tensor([0.02, 0.4, 0.1, 0.6, 0.05, 0.45], dtype=torch.float64)
    alpha, sigma = path.alpha_t(t)[:, None], path.sigma_t(t)[:, None]
    x_t = alpha * x0 + sigma * eps
    u_map, u_tgt = meanflow_target(rk4_map(v), x_t, t, r, v(x_t, t))
    u_exact = ExactMap(path)(x_t, t, r)
    scale = u_exact.abs().max()
    # 32 RK4 steps: u within 4e-8, its derivative within 2e-7 of the adaptive solution (measured)
    assert (u_map - u_exact).abs().max() < 1e-7 * scale
    assert (u_tgt - u_exact).abs().max() < 1e-6 * scale, float((u_tgt - u_exact).abs().max())
    # the wrong tangent (d/dr instead of d/dt) misses by far: the test can fail
    _, wrong = meanflow_target(lambda x, a, b: rk4_map(v, 8)(x, b, a), x_t, r, t, v(x_t, t))
    assert (wrong - u_exact).abs().max() > 1e-2 * scale


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.name)
def test_exact_map_tends_to_instantaneous_velocity_at_first_order(path):
    """u(x_t, t - h, t) = v(x_t, t) - (h / 2) dv/dt + O(h^2): the error halves with h ([MEANFLOW] Sec. 3,
    lim_{r->t} u = v)."""
    v = VelocityFromDenoiser(GMM.denoiser, path)
    x0, eps = points(path)
    t = 0.6
    c = path.coeffs(torch.tensor(t, dtype=torch.float64))
    x_t = c.alpha_t * x0 + c.sigma_t * eps
    vt = v(x_t, torch.full((len(x_t),), t, dtype=torch.float64))
    errs = [float(((x_t - exact_flow(v, x_t, t, t - h)) / h - vt).norm()) for h in (1e-2, 5e-3, 2.5e-3)]
    assert 1.9 < errs[0] / errs[1] < 2.1 and 1.9 < errs[1] / errs[2] < 2.1, errs


def map_net(seed=0):
    """A randomized float32 MLP map (the nets embed noise conditions in float32)."""
    torch.manual_seed(seed)
    net = MLP(2, hidden=32, depth=2, second_cond=True)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return NetAverageVelocity(net)


def test_map_network_at_r_equal_t_is_its_velocity_and_meanflow_is_flow_matching():
    """A map network's output at r = t is what its VelocityField (and through the hub, its Denoiser)
    gives, and with r = t the MeanFlow loss is exactly flow matching on that velocity ([MEANFLOW] Alg. 1)."""
    m, path = map_net(), LinearFlow()
    x0, eps = (a.float() for a in points(path, n=32))
    t = torch.rand(32, generator=torch.Generator().manual_seed(2)) * 0.98 + 0.01
    x_t = (1 - t[:, None]) * x0 + t[:, None] * eps
    v = InstantVelocity(m)
    assert torch.equal(v(x_t, t), m(x_t, t, t))
    assert torch.equal(v(x_t, t), m.net(x_t, t, noise_cond_2=torch.zeros_like(t)))
    # the Denoiser of the instantaneous velocity reads it back through the (x0, eps) hub
    back = VelocityFromDenoiser(DenoiserFromVelocity(v, path), path)(x_t, t)
    torch.testing.assert_close(back, v(x_t, t), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(meanflow_loss(m, x0, eps, t, t, path),
                               flow_matching_loss(v, x0, t, path, eps=eps), rtol=1e-6, atol=0)


def test_meanflow_loss_gradient_flows_to_the_network_only_through_u():
    """sg on the target: the gradient equals that of ||u - c||^2 with c the detached target."""
    m, path = map_net(1), LinearFlow()
    x0, eps = (a.float() for a in points(path, n=16))
    t, r = torch.full((16,), 0.8), torch.full((16,), 0.2)
    loss = meanflow_loss(m, x0, eps, t, r, path).mean()
    grads = torch.autograd.grad(loss, list(m.parameters()))
    x_t = 0.2 * x0 + 0.8 * eps
    _, tgt = meanflow_target(m, x_t, t, r, eps - x0)
    ref = ((m(x_t, t, r) - tgt) ** 2).mean()
    for a, b in zip(grads, torch.autograd.grad(ref, list(m.parameters())), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.name)
def test_shortcut_self_consistency_target_of_exact_map_is_exact(path):
    """Two half jumps of the exact map give the exact jump ([SHORTCUT] Sec. 3): the shortcut loss of the
    exact map is zero to solver tolerance on its jump rows, and its r = t rows are flow matching."""
    exact = ExactMap(path)
    x0, eps = points(path, n=8, seed=3)
    # jumps of every size up to the whole interval (the linear path's velocity is singular at t = 0, 1)
    t = torch.tensor([0.99, 0.99, 0.75, 0.75, 0.5, 0.5, 0.3, 0.3], dtype=torch.float64)
    r = torch.tensor([0.01, 0.49, 0.5, 0.25, 0.25, 0.25, 0.01, 0.2], dtype=torch.float64)
    loss = shortcut_loss(exact, x0, eps, t, r, path)
    assert loss.max() < 1e-16, loss
    same = shortcut_loss(exact, x0, eps, t, t, path)
    torch.testing.assert_close(same, flow_matching_loss(InstantVelocity(exact), x0, t, path, eps=eps))
    assert same.min() > 0  # the conditional velocity is not the marginal one


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.name)
@pytest.mark.parametrize("n", [1, 2, 4, 8])
def test_n_jumps_of_exact_map_reach_exact_ode_endpoint(path, n):
    exact = ExactMap(path)
    t_hi, t_lo = (0.999, 0.001) if path.name == "linear" else (1.0, 0.0)
    x = rng.randn((16, 2), torch.Generator().manual_seed(4), torch.float64) * path.sigma_t(
        torch.tensor(t_hi, dtype=torch.float64))
    ref = exact_flow(exact.v, x, t_hi, t_lo)
    out = sample_flow_map(exact, x, uniform_times(n, t_hi, t_lo))
    assert (out - ref).abs().max() < 1e-8 * ref.abs().max(), float((out - ref).abs().max())


def test_bad_jump_grids_raise_user_error():
    for n in (0, -1, 1.5, True):
        with pytest.raises(UserError, match="number of jumps"):
            uniform_times(n)
    with pytest.raises(UserError, match="0 <= t_lo < t_hi <= 1"):
        uniform_times(2, 0.5, 0.7)
    m, x = map_net(), torch.zeros(3, 2)
    for ts in (torch.tensor([1.0]), torch.tensor([0.5, 0.7]), torch.tensor([1.5, 0.0]),
               torch.tensor([1.0, float("nan")])):
        with pytest.raises(UserError, match="jump grid"):
            sample_flow_map(m, x, ts)
    with pytest.raises(UserError, match="power of two"):
        draw_shortcut_times(8, torch.Generator(), max_steps=100)


def test_time_draws():
    g = torch.Generator().manual_seed(5)
    t, r = draw_meanflow_times(20_000, g, ratio=0.25)
    assert t.dtype == torch.float64 and (r <= t).all() and (t < 1).all() and (r > 0).all()
    frac = float((r < t).double().mean())
    assert abs(frac - 0.25) < 4 * (0.25 * 0.75 / 20_000) ** 0.5
    # per-example streams: a row's draw does not depend on the batch around it
    a = draw_meanflow_times(6, rng.Streams(7, 6))
    b = draw_meanflow_times(3, rng.Streams(7, 3, offset=3))
    assert torch.equal(a[0][3:], b[0]) and torch.equal(a[1][3:], b[1])
    t, r = draw_shortcut_times(4000, g, max_steps=16, fraction=0.25)
    jump = t[:1000] - r[:1000]
    assert (r[1000:] == t[1000:]).all() and (r >= 0).all() and (t <= 1).all()
    assert set(jump.tolist()) == {2 * 2.0**k / 16 for k in range(4)}
    assert torch.equal(torch.remainder(t[:1000], jump / 2), torch.zeros(1000, dtype=torch.float64))


NETS = [lambda: MLP(2, 32, 2, second_cond=True),
        lambda: UNet(1, 8, channels=16, channel_mults=(1, 2), num_res_blocks=1, second_cond=True),
        lambda: DiT(1, 8, patch=2, hidden=32, depth=2, heads=4, second_cond=True)]


@pytest.mark.parametrize("make", NETS, ids=["mlp", "unet", "dit"])
def test_nets_take_a_second_noise_condition_and_a_jvp(make, randomize):
    net = randomize(make())
    shape = (3, 2) if isinstance(net, MLP) else (3, 1, 8, 8)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    nc = torch.tensor([100.0, 500.0, 900.0])
    a, b = net(x, nc, noise_cond_2=torch.zeros(3)), net(x, nc, noise_cond_2=torch.full((3,), 300.0))
    assert (a - b).abs().max() > 1e-3
    with pytest.raises(ValueError, match="noise_cond_2 missing"):
        net(x, nc)
    plain = type(net)(*((2, 32, 2) if isinstance(net, MLP) else (1, 8)))
    with pytest.raises(ValueError, match="noise_cond_2 given"):
        plain(x, nc, noise_cond_2=nc)
    # the MeanFlow target differentiates every net forward in (x, t, r), attention included
    m = NetAverageVelocity(net)
    t, r = torch.tensor([0.9, 0.5, 0.3]), torch.tensor([0.1, 0.5, 0.0])
    u, tgt = meanflow_target(m, x, t, r, torch.randn_like(x))
    assert torch.isfinite(tgt).all()
    torch.testing.assert_close(u, m(x, t, r), rtol=1e-4, atol=1e-5)  # math vs fused attention kernel


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.name)
@pytest.mark.parametrize("n", [1, 3])
def test_registry_flow_map_jumps_in_sigma_are_the_jumps_in_t(path, n):
    """The registry's `flow_map` sampler on a MapDenoiser, on the uniform_t_jumps grid, is exactly
    sample_flow_map on the same times (EDM space x = x_t / alpha_t, the last jump to t = 0), and the exact
    map lands on the exact ODE endpoint; a MapDenoiser called as a Denoiser is its r = t velocity's."""
    exact = ExactMap(path)
    lo, hi = (path.sigma_min, path.sigma_max) if path.name == "linear" else (0.01, 50.0)
    sigmas = GRIDS["uniform_t_jumps"](n, lo, hi, path=path)
    ts = torch.where(sigmas > 0, path.t_from_sigma(sigmas.clamp(min=1e-300)), 0.0)
    x = rng.randn((16, 2), torch.Generator().manual_seed(6), torch.float64) * sigmas[0]
    den = MapDenoiser(exact, path)
    out = SAMPLERS["flow_map"].fn(den, x, sigmas)
    x_t, alpha_0 = x * path.alpha_t(ts[:1]), path.alpha_t(ts[-1:])  # alpha_0 = 1 - 2e-6 on the cosine path
    torch.testing.assert_close(out * alpha_0, sample_flow_map(exact, x_t, ts), rtol=1e-12, atol=1e-12)
    ref = exact_flow(exact.v, x_t, float(ts[0]), 0.0 if path.name != "linear" else 1e-9) / alpha_0
    assert (out - ref).abs().max() < 1e-7 * ref.abs().max(), float((out - ref).abs().max())
    sigma = torch.full((16,), 2.0, dtype=torch.float64)
    torch.testing.assert_close(den(x, sigma), DenoiserFromVelocity(InstantVelocity(exact), path)(x, sigma))


def test_flow_map_sampler_on_a_plain_denoiser_is_euler_and_calls_back_with_the_chord():
    sigmas = GRIDS["karras_jumps"](4, 0.002, 80.0)
    x = rng.randn((8, 2), torch.Generator().manual_seed(7), torch.float64) * 80.0
    seen = []
    out = SAMPLERS["flow_map"].fn(GMM.denoiser, x, sigmas, callback=lambda i, s, y, x0: seen.append(x0))
    assert torch.equal(out, SAMPLERS["euler"].fn(GMM.denoiser, x, sigmas))
    # Euler's chord extended to sigma = 0 is the denoiser's x0_hat at the step's start
    torch.testing.assert_close(seen[0], GMM.denoiser(x, torch.full((8,), 80.0, dtype=torch.float64)))


@pytest.mark.parametrize("name,base", [("karras_jumps", "karras"), ("uniform_t_jumps", "uniform_t")])
def test_jump_grids_skip_sigma_min_and_halve_exactly(name, base):
    """n levels = the first n of the base grid's n + 1 (no step to sigma_min; one level then 0 for n = 1),
    and every other level of the 2n-step grid is the n-step grid (progressive distillation's halving)."""
    path = PATHS[1]
    lo, hi = 0.01, 50.0
    for n in (1, 2, 5):
        grid = GRIDS[name](n, lo, hi, path=path)
        assert len(grid) == n + 1 and grid[-1] == 0 and grid[-2] > lo
        torch.testing.assert_close(grid[:-1], GRIDS[base](n + 1, lo, hi, path=path)[:-2], rtol=0, atol=0)
        torch.testing.assert_close(GRIDS[name](2 * n, lo, hi, path=path)[::2], grid, rtol=1e-12, atol=0)
    assert GRIDS[name](1, lo, hi, path=path).tolist() == [hi, 0.0]
