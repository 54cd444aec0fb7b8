"""SEDD: score entropy for the absorbing and uniform processes, and its Euler and Tweedie tau-leaping
samplers ([SEDD] arXiv 2310.16834v3).

The network's raw output r (B, L, V) gives log-ratios: absorbing, log s_y = r_y + log(alpha/(1-alpha))
(the scaling of [SEDD] App. C.2, so that exp(r) estimates p(x0 = y | x_t)); uniform, log s_y = r_y with
s_y ~ p_t(x with this token set to y) / p_t(x). Losses are nats per token, shape (B,).

At a schedule's ends: the absorbing process works down to alpha_1 = 0 (the linear and cosine
schedules), every formula taken as its limit there. The uniform process needs alpha_t > 0: at
alpha_t = 0 its ratios are all 1 whatever the data (they carry nothing for the Tweedie step to
invert) and its rate sigma(t) = -alpha'_t / alpha_t is infinite, so the score entropy diverges;
its steps refuse alpha_t = 0 and the text config asks for the loglinear schedule.

A step takes the raw output at x_t, the times t > s (B,) and the process, and returns log-probabilities
of x_s; the uniform process's steps read only the scores of its n_tokens data tokens.
"""

from collections.abc import Callable

import torch
from torch import Tensor, nn

from diffspace import rng
from diffspace.discrete.attention import time_input
from diffspace.discrete.processes import Absorbing, Process, Uniform
from diffspace.discrete.sampling import Decoded, ancestral_logprobs
from diffspace.rng import gumbel_argmax
from diffspace.types import UserError


def absorb_score_entropy(raw: Tensor, x0: Tensor, x_t: Tensor, weight: Tensor, mask_id: int) -> Tensor:
    """[SEDD] Eq. 9 (DWDSE) for the absorbing process. At a masked token the only nonzero ratio is
    r = alpha/(1-alpha) at y = x0 and the rate is sigma(t) = -alpha'/alpha; with log s = raw + log r the
    log r terms cancel and the loss is -alpha'/(1-alpha) * (sum_y exp(raw_y) - raw_x0 - 1)."""
    raw = raw.clone()
    raw[..., mask_id] = -torch.inf  # why: no transition into the mask state in reverse
    term = raw.exp().sum(-1) - raw.gather(-1, x0[..., None])[..., 0] - 1
    # why: a clean token adds nothing, also at t = 0 where the weight is infinite (not inf * 0 = nan)
    return torch.where(x_t == mask_id, weight.reshape(len(x0), -1) * term, 0.0).mean(dim=1)


def sedd_absorb_loss(net: nn.Module, x0: Tensor, t: Tensor, u: Tensor, process: Absorbing,
                     time_cond: bool = True) -> Tensor:
    """Score entropy of the absorbing process at times t (B,) with mask uniforms u (B, L)."""
    t = t.reshape(len(x0))
    x_t = process.corrupt(x0, t, u)
    raw = net(x_t, time_input(t, time_cond))
    return absorb_score_entropy(raw, x0, x_t, process.weight(t), process.mask_id)


def uniform_score_entropy(raw: Tensor, x0: Tensor, x_t: Tensor, t: Tensor, process: Uniform) -> Tensor:
    """[SEDD] Eq. 9 for Q = 11^T / V - I: weight sigma(t)/V over y != x_t, target ratios
    q(y | x0) / q(x_t | x0) with q(. | x0) = alpha onehot(x0) + (1 - alpha) / V."""
    V = raw.shape[-1]
    alpha = process.alpha(t).view(-1, 1, 1).to(raw.dtype)
    q = (1 - alpha) / V + alpha * torch.nn.functional.one_hot(x0, V).to(raw.dtype)  # (B, L, V)
    ratio = q / q.gather(-1, x_t[..., None])
    k = torch.xlogy(ratio, ratio) - ratio  # K(a) = a (log a - 1) makes each term >= 0; K(0) = 0 at t = 0
    terms = raw.exp() - ratio * raw + k
    terms = terms.scatter(-1, x_t[..., None], 0.0)  # why: y = x_t is not a transition
    rate = process.weight(t).view(-1, 1).to(raw.dtype) / V
    return (rate * terms.sum(-1)).mean(dim=1)


def sedd_uniform_loss(net: nn.Module, x0: Tensor, t: Tensor, u: Tensor, y: Tensor, process: Uniform,
                      time_cond: bool = True) -> Tensor:
    """Score entropy of the uniform process at times t (B,); uniforms u and replacement tokens y (B, L)."""
    t = t.reshape(len(x0))
    x_t = process.corrupt(x0, t, u, y)
    raw = net(x_t, time_input(t, time_cond))[..., :process.n_tokens]
    return uniform_score_entropy(raw, x0, x_t, t, process)


def absorb_tweedie(raw: Tensor, x_t: Tensor, t: Tensor, s: Tensor, process: Absorbing) -> Tensor:
    """[SEDD] Thm. 4.2 for the absorbing process: exactly the MDLM ancestral step with p0 = exp(raw)
    renormalized."""
    raw = raw.clone()
    raw[..., process.mask_id] = -torch.inf
    return ancestral_logprobs(raw.log_softmax(-1), x_t, process.alpha(t), process.alpha(s), process.mask_id)


def absorb_euler(raw: Tensor, x_t: Tensor, t: Tensor, s: Tensor, process: Absorbing) -> Tensor:
    """[SEDD] Eq. 17 Euler (tau-leaping) step: jump M -> y with probability
    (sigma_bar_t - sigma_bar_s) s_y, s_y = exp(raw_y) alpha_t / (1 - alpha_t); clipped, renormalized.

    At alpha_t = 0 (t = 1 of the linear and cosine schedules) sigma_bar_t is infinite and s_y is 0;
    their product alpha_t log(alpha_s / alpha_t) / (1 - alpha_t) tends to 0 (x log x -> 0), so the
    Euler step from there, which takes the rate at its start, leaves every mask in place."""
    a_t, a_s = process.alpha(t).double().view(-1, 1, 1), process.alpha(s).double().view(-1, 1, 1)
    # why: xlogy gives alpha_t log(alpha_s / alpha_t) its limit 0 at alpha_t = 0, not 0 * inf = nan
    jump = (torch.xlogy(a_t, a_s) - torch.xlogy(a_t, a_t)) / (1 - a_t)  # [SEDD] Eq. 17
    p = jump * raw.double().exp()
    p[..., process.mask_id] = 0.0
    return _stay_rest(p, x_t, process.mask_id)


def uniform_euler(raw: Tensor, x_t: Tensor, t: Tensor, s: Tensor, process: Uniform) -> Tensor:
    """Euler step for the uniform process: jump x -> y with probability (sigma_bar_t - sigma_bar_s)/V s_y.
    Raises UserError at alpha_t = 0 (see the module docstring)."""
    alpha_t, alpha_s = process.alpha(t), process.alpha(s)
    _require_signal(alpha_t)
    raw = raw[..., :process.n_tokens]
    V = raw.shape[-1]
    p = torch.log(alpha_s / alpha_t).double().view(-1, 1, 1) / V * raw.double().exp()
    return _stay_rest(p.scatter(-1, x_t[..., None], 0.0), x_t, None)


def uniform_tweedie(raw: Tensor, x_t: Tensor, t: Tensor, s: Tensor, process: Uniform) -> Tensor:
    """[SEDD] Thm. 4.2 with exp(sQ) = e^-s I + (1 - e^-s) 11^T / V: p(x_s = y | x_t) is proportional to
    [exp(-dQ) s]_y exp(dQ)(x_t, y), d = sigma_bar_t - sigma_bar_s, beta = e^-d = alpha_t / alpha_s.
    Raises UserError at alpha_t = 0 (see the module docstring)."""
    alpha_t, alpha_s = process.alpha(t), process.alpha(s)
    _require_signal(alpha_t)
    raw = raw[..., :process.n_tokens]
    V = raw.shape[-1]
    beta = (alpha_t / alpha_s).double().view(-1, 1, 1)
    s_y = raw.double().exp().scatter(-1, x_t[..., None], 1.0)  # s_x = 1: the ratio of x to itself
    back = s_y / beta + (1 - 1 / beta) * s_y.sum(-1, keepdim=True) / V
    fwd = (1 - beta) / V + beta * torch.nn.functional.one_hot(x_t, V).double()
    return (back.clamp_min(0) * fwd).clamp_min(1e-300).log()


def _require_signal(alpha_t: Tensor) -> None:
    if bool((alpha_t <= 0).any()):
        raise UserError("the uniform process needs alpha_t > 0 at every step (a schedule such as "
                        "'loglinear'); at alpha_t = 0 its scores carry no information")


def _stay_rest(p: Tensor, x_t: Tensor, mask_id: int | None) -> Tensor:
    """Put the leftover probability 1 - sum(p) on staying at x_t (clipped at 0); tokens that cannot
    move (unmasked, absorbing case) stay. Returns log-probabilities."""
    p = p.scatter(-1, x_t[..., None], (1 - p.sum(-1, keepdim=True)).clamp_min(0))
    logp = (p / p.sum(-1, keepdim=True)).clamp_min(1e-300).log()
    if mask_id is None:
        return logp
    keep = torch.full_like(logp, -torch.inf).scatter_(-1, x_t[..., None], 0.0)
    return torch.where((x_t == mask_id)[..., None], logp, keep)


T_END = 1e-3  # why: sigma_bar(t) -> 0 makes the Euler rates vanish; the final Tweedie step covers [0, T_END]


@torch.no_grad()
def sample_sedd(denoise: Callable, x: Tensor, process: Process, steps: int, step: Callable,
                g: rng.Generator, final: Callable) -> Decoded:
    """Reverse sampling over `steps` uniform steps from t = 1 to T_END with `step` (an Euler or Tweedie
    step above), then one Tweedie step to t = 0 (`final`) as [SEDD] App. C.3's final denoising: steps + 1
    network calls. denoise(x_t, t) gives the raw outputs (B, L, V) at x_t; x holds the prior draw (all
    masks, or uniform tokens)."""
    ts = torch.linspace(1.0, T_END, steps + 1, dtype=torch.float64, device=x.device)
    ts = torch.cat([ts, ts.new_zeros(1)])
    for i in range(steps + 1):
        t, s = ts[i].expand(len(x)), ts[i + 1].expand(len(x))
        fn = step if i < steps else final
        x = gumbel_argmax(fn(denoise(x, t), x, t, s, process), g)
    return Decoded(x, steps + 1)
