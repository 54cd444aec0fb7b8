"""One-step (Runge-Kutta) solvers of the probability-flow ODE in sigma space ([EDM] Eq. 4, s = 1):

    dx/dsigma = (x - D(x, sigma)) / sigma,

the same Runge-Kutta steps for a VelocityField u(x_t, t) in t, and the adaptive reference solution.
References: [EDM] arXiv 2206.00364v2, [FM] 2210.02747v2.

Pure `*_step` functions plus thin loops. Grid values are read once as Python floats (float64), so
step coefficients are exact float64 scalars whatever the dtype of x. Every loop calls
`callback(step, sigma, x_next, x0_hat)` after each step (x0_hat is None for velocity fields).
"""

from collections.abc import Callable
from functools import partial

import torch
from torch import Tensor, nn

from diffspace.samplers.grids import check_sigmas
from diffspace.types import Denoiser, VelocityField

Callback = Callable[[int, float, Tensor, Tensor | None], None]  # (step, sigma, x, x0_hat)


_LEVELS: dict = {}  # (value, B, dtype, device, inference mode) -> sigma_batch's tensor
_LEVELS_SIZE = 4096


def sigma_batch(sigma: float, x: Tensor) -> Tensor:
    """A grid value (a noise level, or a time for velocity fields) as a (B,) tensor in x's dtype and device.

    why: a stride-0 view of one value, so a wrapper recognises one level for the batch without reading it
    (`diffspace.utils.shared_level`) and computes its coefficients once instead of B times. The same value
    gives the same tensor (kept in a bounded table), so a wrapper's LevelMemo finds it by the tensor itself
    and a step makes no tensor for its level: on the CPU a sampler's host time per network call is a
    handful of such small operations, each paid with cold caches after the network has run (so loops
    that can form their levels before the loop do)."""
    key = (sigma, x.shape[0], x.dtype, x.device, torch.is_inference_mode_enabled())
    level = _LEVELS.get(key)
    if level is None:
        if len(_LEVELS) >= _LEVELS_SIZE:
            _LEVELS.clear()
        level = _LEVELS[key] = x.new_full((1,), sigma).expand(x.shape[0])
    return level


_GLOBAL_HOOKS = tuple(getattr(torch.nn.modules.module, f"_global_{kind}_hooks")
                      for kind in ("forward", "forward_pre", "backward", "backward_pre"))


def slope(denoiser: Denoiser, x: Tensor, sigma: float, cond: dict) -> Tensor:
    """The PF-ODE's slope dx/dsigma = (x - D(x, sigma)) / sigma at one level sigma > 0 ([EDM] Eq. 4, s = 1).

    A Denoiser may compute it itself, as a method `slope(x, sigma: float, **cond)` (`NetDenoiser`,
    `EDMPrecond`): for an eps network it is the prediction itself ([DDIM] Eq. 14), so an Euler step is one
    pass over the batch after the network instead of two. why: on the CPU a sampler's host time per call is
    a handful of passes over the batch, each paid with the caches the network left cold (`sigma_batch`).
    The method is looked up on the denoiser's class (`_class_slope`: not where a subclass overrides the
    forward or __call__ that the method stands for) and called directly, unless calling the module does
    more than its class's forward (hooks, a compiled call, a patched forward): a wrapper that forwards
    attributes to a module (torch.compile's, DDP) or a module with hooks is called as a Denoiser.
    The result may be the network's own output: a step uses it before the next network call (a network
    may reuse its output buffer, as CUDA graphs do)."""
    cls = type(denoiser)
    own = _SLOPES[cls] if cls in _SLOPES else _class_slope(cls)
    if own is not None:
        # why inline (not a helper): it runs before every network call, with the caches the last one left
        # cold, where each Python frame costs microseconds. A module calls just its class's forward when
        # it has no hooks (its own or global; torch registers them into these dicts in place), no
        # compiled call from Module.compile() and no forward set on the instance.
        attrs = denoiser.__dict__ if isinstance(denoiser, nn.Module) else None
        if attrs is None or (attrs.get("_compiled_call_impl") is None and "forward" not in attrs and not (
                attrs["_forward_hooks"] or attrs["_forward_pre_hooks"] or attrs["_backward_hooks"]
                or attrs["_backward_pre_hooks"] or any(_GLOBAL_HOOKS))):
            return own(denoiser, x, sigma, **cond)
    return torch.sub(x, denoiser(x, sigma_batch(sigma, x), **cond)).div_(sigma)


_SLOPES: dict[type, Callable | None] = {}


def _class_slope(cls: type) -> Callable | None:
    """cls.slope where it computes what calling an instance computes, else None (remembered per class):
    the class that defines `slope` must also define the call it stands for (an nn.Module's forward, with
    Module's own __call__; another callable's __call__), so a subclass that overrides forward (to clamp
    x0_hat, say) or __call__ is called as a Denoiser."""
    own = getattr(cls, "slope", None)
    if own is not None:
        owner = next(k for k in cls.__mro__ if "slope" in vars(k))
        call = "forward" if issubclass(cls, nn.Module) else "__call__"
        if (next((k for k in cls.__mro__ if call in vars(k)), None) is not owner
                or issubclass(cls, nn.Module) and cls.__call__ is not nn.Module.__call__):
            own = None
    _SLOPES[cls] = own
    return own


def euler_step(denoiser: Denoiser, x: Tensor, sigma: float, sigma_next: float, *, want_x0: bool = True,
               **cond):
    """One Euler step of the PF-ODE, x + (sigma_next - sigma) d with d the slope at (x, sigma) ([EDM]
    Alg. 1 lines 4-5); returns (x_next, x0_hat), x0_hat = x - sigma d (None unless `want_x0`: a pass over
    the batch that samplers make only for a callback). The step into sigma = 0 is x0_hat itself, returned
    exactly (not rounded through the slope)."""
    if sigma_next == 0:
        x0 = denoiser(x, sigma_batch(sigma, x), **cond)
        return x0, x0
    d = slope(denoiser, x, sigma, cond)
    return torch.add(x, d, alpha=sigma_next - sigma), torch.add(x, d, alpha=-sigma) if want_x0 else None


def heun_step(denoiser: Denoiser, x: Tensor, sigma: float, sigma_next: float, *, want_x0: bool = True,
              **cond):
    """[EDM] Alg. 1: Euler step, then the 2nd-order correction unless sigma_next = 0 (1 NFE there).

    x_next = x + (h / 2) (d + d') with h = sigma_next - sigma, d the slope at (x, sigma) and d' at the
    Euler point x + h d. why: x + (h / 2) d is formed before the second network call, while x and d are
    in cache, so one pass over the batch follows that call. x0_hat = x - sigma d (None unless `want_x0`)
    is formed before that call too: d may be the network's output buffer (`slope`)."""
    if sigma_next == 0:
        return euler_step(denoiser, x, sigma, sigma_next, **cond)
    d = slope(denoiser, x, sigma, cond)
    h = sigma_next - sigma
    x0 = torch.add(x, d, alpha=-sigma) if want_x0 else None
    x_euler = torch.add(x, d, alpha=h)
    half = torch.add(x, d, alpha=h / 2)
    return half.add_(slope(denoiser, x_euler, sigma_next, cond), alpha=h / 2), x0


def midpoint_from(f, x: Tensor, s: float, s_next: float, k1: Tensor) -> Tensor:
    """Explicit midpoint rule for dx/ds = f(x, s) given k1 = f(x, s)."""
    h = s_next - s
    return torch.add(x, f(torch.add(x, k1, alpha=h / 2), s + h / 2), alpha=h)


def rk4_from(f, x: Tensor, s: float, s_next: float, k1: Tensor) -> Tensor:
    """Classical 4th-order Runge-Kutta for dx/ds = f(x, s) given k1 = f(x, s). The sum
    x + h (k1 + 2 k2 + 2 k3 + k4) / 6 is accumulated stage by stage, so no stage's value is used after the
    next call of f (which may reuse its output buffer)."""
    h = s_next - s
    acc = torch.add(x, k1, alpha=h / 6)
    k = f(torch.add(x, k1, alpha=h / 2), s + h / 2)  # k2
    acc.add_(k, alpha=h / 3)
    k = f(torch.add(x, k, alpha=h / 2), s + h / 2)  # k3
    acc.add_(k, alpha=h / 3)
    return acc.add_(f(torch.add(x, k, alpha=h), s_next), alpha=h / 6)  # k4


def midpoint_step(denoiser: Denoiser, x: Tensor, sigma: float, sigma_next: float, *, want_x0: bool = True,
                  **cond):
    """Midpoint rule in sigma: 2 NFE per step (the midpoint sigma / 2 of a last step is still > 0)."""
    return _staged(midpoint_from, denoiser, x, sigma, sigma_next, want_x0, cond)


def rk4_step(denoiser: Denoiser, x: Tensor, sigma: float, sigma_next: float, *, want_x0: bool = True,
             **cond):
    """RK4 in sigma: 4 NFE per step; a last step to sigma = 0 (where the slope is undefined) is Euler."""
    if sigma_next == 0:
        return euler_step(denoiser, x, sigma, sigma_next, **cond)
    return _staged(rk4_from, denoiser, x, sigma, sigma_next, want_x0, cond)


def _staged(rule, denoiser: Denoiser, x: Tensor, sigma: float, sigma_next: float, want_x0: bool, cond: dict):
    """A Runge-Kutta rule's step on the slope; x0_hat = x - sigma k1 (None unless `want_x0`), formed
    before the rule's further calls."""
    f = lambda y, s: slope(denoiser, y, s, cond)
    k1 = f(x, sigma)
    x0 = torch.add(x, k1, alpha=-sigma) if want_x0 else None
    return rule(f, x, sigma, sigma_next, k1), x0


def run_steps(step, denoiser, x: Tensor, sigmas: Tensor, callback: Callback | None, cond: dict) -> Tensor:
    """The thin loop shared by one-step samplers: step(denoiser, x, sigma, sigma_next, **cond)."""
    grid = check_sigmas(sigmas).tolist()
    for i in range(len(grid) - 1):
        x, x0 = step(denoiser, x, grid[i], grid[i + 1], **cond)
        if callback is not None:
            callback(i, grid[i], x, x0)
    return x


def slope_steps(step, denoiser, x: Tensor, sigmas: Tensor, callback: Callback | None, cond: dict) -> Tensor:
    """`run_steps` for a step on the slope (`euler_step`, `heun_step`, ...), which forms x0_hat only for
    a callback (`want_x0`)."""
    return run_steps(partial(step, want_x0=callback is not None), denoiser, x, sigmas, callback, cond)


def sample_euler(denoiser: Denoiser, x: Tensor, sigmas: Tensor, *, generator=None,
                 callback: Callback | None = None, **cond) -> Tensor:
    """x: noise already scaled by sigmas[0]. One NFE per step."""
    return slope_steps(euler_step, denoiser, x, sigmas, callback, cond)


def sample_heun(denoiser: Denoiser, x: Tensor, sigmas: Tensor, *, generator=None,
                callback: Callback | None = None, **cond) -> Tensor:
    """Two NFE per step, one on a final step to sigma = 0."""
    return slope_steps(heun_step, denoiser, x, sigmas, callback, cond)


def sample_midpoint(denoiser: Denoiser, x: Tensor, sigmas: Tensor, *, generator=None,
                    callback: Callback | None = None, **cond) -> Tensor:
    return slope_steps(midpoint_step, denoiser, x, sigmas, callback, cond)


def sample_rk4(denoiser: Denoiser, x: Tensor, sigmas: Tensor, *, generator=None,
               callback: Callback | None = None, **cond) -> Tensor:
    return slope_steps(rk4_step, denoiser, x, sigmas, callback, cond)


def _velocity_loop(rule, velocity: VelocityField, x_t: Tensor, ts: Tensor, callback, cond) -> Tensor:
    f = lambda y, t: velocity(y, sigma_batch(t, y), **cond)
    grid = ts.tolist()
    for i in range(len(grid) - 1):
        x_t = rule(f, x_t, grid[i], grid[i + 1], f(x_t, grid[i]))
        if callback is not None:
            callback(i, grid[i], x_t, None)
    return x_t


def sample_velocity_midpoint(velocity: VelocityField, x_t: Tensor, ts: Tensor, *,
                             callback: Callback | None = None, **cond) -> Tensor:
    """Integrate dx_t/dt = u(x_t, t) along the time grid ts (e.g. 1 -> 0) with the midpoint rule."""
    return _velocity_loop(midpoint_from, velocity, x_t, ts, callback, cond)


def sample_velocity_rk4(velocity: VelocityField, x_t: Tensor, ts: Tensor, *,
                        callback: Callback | None = None, **cond) -> Tensor:
    """Integrate dx_t/dt = u(x_t, t) along the time grid ts with classical RK4 (4 NFE per step)."""
    return _velocity_loop(rk4_from, velocity, x_t, ts, callback, cond)


def sample_adaptive(denoiser: Denoiser, x: Tensor, sigma_max: float, sigma_min: float,
                    rtol: float = 1e-5, atol: float = 1e-5, method: str = "dopri5",
                    denoise_last: bool = True, **cond) -> Tensor:
    """The reference PF-ODE solution with torchdiffeq's adaptive solver, from sigma_max to sigma_min.

    Integrates in s = log sigma (dx/ds = x - D(x, sigma)), which is smooth over the whole range.
    With `denoise_last` the result is D(x, sigma_min), the Euler step to sigma = 0.
    """
    from torchdiffeq import odeint

    def f(s, y):
        return y - denoiser(y, torch.exp(s).to(y).expand(y.shape[0]), **cond)

    s_span = torch.tensor([sigma_max, sigma_min], dtype=torch.float64).log().to(x.device)
    y = odeint(f, x, s_span, rtol=rtol, atol=atol, method=method)[-1]
    if denoise_last:
        y = denoiser(y, torch.full((y.shape[0],), sigma_min, dtype=y.dtype, device=y.device), **cond)
    return y


def sample_rk45(denoiser: Denoiser, x: Tensor, sigmas: Tensor, *, rtol: float = 1e-5, atol: float = 1e-5,
                generator=None, callback: Callback | None = None, **cond) -> Tensor:
    """Adaptive Dormand-Prince from sigmas[0] to the last nonzero sigma (only the ends of the grid are
    used); if the grid ends in 0 the result is denoised there. NFE set by rtol/atol."""
    nonzero = check_sigmas(sigmas)[sigmas > 0]
    x = sample_adaptive(denoiser, x, float(nonzero[0]), float(nonzero[-1]), rtol, atol,
                        denoise_last=bool(sigmas[-1] == 0), **cond)
    if callback is not None:
        callback(0, float(nonzero[0]), x, None)
    return x


class CountingDenoiser:
    """Wraps a Denoiser and counts network evaluations (one per call, whatever the batch)."""

    def __init__(self, denoiser: Denoiser):
        self.denoiser, self.nfe = denoiser, 0

    def __call__(self, x, sigma, **cond):
        self.nfe += 1
        return self.denoiser(x, sigma, **cond)
