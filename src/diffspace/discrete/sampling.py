"""Samplers for token models: categorical draws with float64 Gumbel noise, MDLM ancestral sampling with
the no-change cache, LLaDA remasking (low-confidence or random, semi-autoregressive blocks), block
diffusion decoding and autoregressive decoding over a `Context` (a key/value cache or none).

The samplers call denoisers (`DiscreteDenoiser`, `diffspace.types`), never a network: `denoise(x_t, t)`,
or `denoise(x_t, t, rows)` for one with per-sequence state, which the no-change cache calls on the
sequences `rows` of the batch only; AR and block decoding read after a prefix of final tokens through
the `Context` protocol (`discrete/attention.py`).

Every draw goes through `diffspace.rng` with the generator the caller passes: one `torch.Generator`
for the batch, or `rng.Streams` (one per sequence), with which sequence i depends only on its own
stream and not on the batch around it (its size, its order, the ranks). Every sampler draws the same
noise per sequence whatever the caches skip, so the caches never change the tokens.

[GUMBEL64] arXiv 2409.02908v3 Sec. 4: Gumbel noise drawn in float32 truncates the tail and acts as a
lowered temperature; drawing it in float64 removes that. [MDLM] arXiv 2406.07524v2, [LLADA]
arXiv 2502.09992v3, [BD3] arXiv 2503.09573v2.
"""

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

from diffspace import rng
from diffspace.discrete.attention import Context
from diffspace.discrete.masked import subs
from diffspace.discrete.processes import Absorbing
from diffspace.rng import gumbel_argmax
from diffspace.types import UserError


class Sampling(NamedTuple):
    """How logits become a draw: temperature, then top-k (0 = off), then top-p (1 = off)."""

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0


PLAIN = Sampling()  # draw from the model's own distribution


def filter_logits(logits: Tensor, how: Sampling) -> Tensor:
    """Temperature, top-k and nucleus (top-p) filtering of logits (..., V) in float64."""
    logits = logits.double() / max(how.temperature, 1e-8)
    if how.top_k > 0:
        kth = logits.topk(min(how.top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, -torch.inf)
    if how.top_p < 1.0:
        srt, idx = logits.sort(dim=-1, descending=True)
        before = srt.softmax(-1).cumsum(-1).roll(1, dims=-1)
        before[..., 0] = 0.0  # mass of the more probable tokens: the token that crosses top_p is kept
        drop = before >= how.top_p
        logits = logits.masked_fill(drop.scatter(-1, idx, drop), -torch.inf)
    return logits


def sample_categorical(logits: Tensor, g: rng.Generator, how: Sampling = PLAIN) -> Tensor:
    return gumbel_argmax(filter_logits(logits, how), g)


def ancestral_logprobs(logp0: Tensor, x_t: Tensor, alpha_t: Tensor, alpha_s: Tensor, mask_id: int) -> Tensor:
    """[MDLM] Eq. 7 reverse step t -> s < t for a masked token: x0 ~ p with probability
    (alpha_s - alpha_t) / (1 - alpha_t), else stay masked; unmasked tokens are kept (SUBS).

    Finite at both ends of a schedule: alpha_t = 0 (t = 1) divides by 1, and alpha_s = 1 (s = 0) gives
    log 0 = -inf for staying masked; alpha_t = 1 is t = 0, where no step s < t starts."""
    a_t, a_s = alpha_t.double().view(-1, 1, 1), alpha_s.double().view(-1, 1, 1)
    logp = logp0.double() + torch.log((a_s - a_t) / (1 - a_t))
    stay = torch.log((1 - a_s) / (1 - a_t)).expand_as(logp[..., :1])
    logp = torch.cat([logp[..., :mask_id], stay, logp[..., mask_id + 1:]], dim=-1)
    keep = torch.full_like(logp, -torch.inf).scatter_(-1, x_t[..., None], 0.0)
    return torch.where((x_t == mask_id)[..., None], logp, keep)


class Decoded(NamedTuple):
    tokens: Tensor  # (B, L)
    nfe: float  # network evaluations per sequence, averaged over the batch (caches make it smaller)


def sample_mdlm(denoise: Callable, x: Tensor, process: Absorbing, steps: int, g: rng.Generator,
                how: Sampling = PLAIN, cache: bool = True) -> Decoded:
    """[MDLM] ancestral sampling from t = 1 to 0 over `steps` uniform steps; masked entries of x are
    generated, others kept (a prompt). denoise(x_t, t, rows) returns log p(x0 | x_t) for the sequences
    `rows` (indices into x; a denoiser with per-sequence state, such as a Context, selects them).

    With `cache`, a sequence in which no token changed since its last prediction reuses that prediction
    instead of going through the network again ([MDLM] Sec. 4.2, applied per sequence, so one changed
    sequence does not cost the whole batch a call); exact when the denoiser ignores t. The Gumbel noise
    is drawn for the whole batch every step, so the tokens do not depend on the cache."""
    ts = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64, device=x.device)
    logp, stale, evals = None, torch.ones(len(x), dtype=torch.bool, device=x.device), 0
    for i in range(steps):
        t, s = ts[i].expand(len(x)), ts[i + 1].expand(len(x))
        rows = stale.nonzero()[:, 0] if cache else torch.arange(len(x), device=x.device)
        if len(rows):
            fresh = filter_logits(denoise(x[rows], t[rows], rows), how).log_softmax(-1)
            if len(rows) == len(x):
                logp = fresh
            else:  # why: in place, the cached predictions of the other sequences are not copied
                logp.index_copy_(0, rows, fresh)
            evals += len(rows)
        logp_s = ancestral_logprobs(logp, x, process.alpha(t), process.alpha(s), process.mask_id)
        x_new = gumbel_argmax(logp_s, g)
        stale, x = (x_new != x).any(dim=1), x_new
    return Decoded(x, evals / len(x))


def low_confidence(logp: Tensor, x0_hat: Tensor, g: rng.Generator) -> Tensor:
    """[LLADA] Alg. 5: confidence = predicted probability of the drawn token."""
    return logp.gather(-1, x0_hat[..., None])[..., 0].exp()


def random_confidence(logp: Tensor, x0_hat: Tensor, g: rng.Generator) -> Tensor:
    """[LLADA] Alg. 4 random remasking: which tokens are kept is independent of their values."""
    return rng.rand(tuple(x0_hat.shape), g, torch.float64, x0_hat.device)


def sample_remasking(denoise: Callable, x: Tensor, steps: int, mask_id: int, g: rng.Generator,
                     how: Sampling = PLAIN, block: int = 0,
                     confidence: Callable = low_confidence) -> Decoded:
    """[LLADA] Sec. 2.4 reverse process with remasking: each step predicts every masked token and keeps
    the most confident ones (an even share of what is left), remasking the rest. With `block` > 0 the
    masked span is decoded left to right in blocks of that size (semi-autoregressive, Alg. 5).

    Exactly `steps` network calls: the blocks share them as evenly as they divide (the first
    steps % n_blocks blocks take one more; [LLADA]'s code asks for a multiple of the block count
    instead). Raises UserError when steps < the number of blocks, which each need a step."""
    masked0 = x == mask_id
    first = int(masked0.float().argmax(dim=1).min())  # earliest generated position
    span = x.shape[1] - first
    block = block if block > 0 else span
    n_blocks = -(-span // block)
    if steps < n_blocks:
        raise UserError(f"steps={steps} cannot decode {n_blocks} blocks of {block} tokens: "
                        f"semi-autoregressive remasking needs at least one step per block")
    for b in range(n_blocks):
        zone = torch.zeros_like(masked0)
        zone[:, first + b * block: first + (b + 1) * block] = True
        n_steps = steps // n_blocks + (b < steps % n_blocks)
        for k in range(n_steps):
            todo = (x == mask_id) & zone
            t = (x == mask_id).double().mean(dim=1)  # fraction still masked, as a linear-schedule t
            logp = filter_logits(denoise(x, t), how).log_softmax(-1)
            x0_hat = gumbel_argmax(logp, g)
            conf = confidence(logp, x0_hat, g).masked_fill(~todo, -torch.inf)
            n_keep = -(-todo.sum(dim=1) // (n_steps - k))  # ceil: the last step keeps all
            rank = conf.argsort(dim=1, descending=True).argsort(dim=1)
            x = torch.where(todo & (rank < n_keep[:, None]), x0_hat, x)
    return Decoded(x, steps)


@torch.no_grad()
def sample_ar(context: Context, prompt: Tensor, length: int, start_id: int, g: rng.Generator,
              how: Sampling = PLAIN) -> Decoded:
    """Autoregressive decoding to `length` tokens after the start token and the prompt (B, P): one
    network call per token after the prompt, each appending its input to the context (block 1)."""
    x = torch.cat([torch.full((len(prompt), 1), start_id, dtype=torch.long, device=prompt.device), prompt], 1)
    step_in = x
    while x.shape[1] < length + 1:
        logits = context.extend(step_in, read=True)[:, -1]
        step_in = sample_categorical(logits, g, how)[:, None]
        x = torch.cat([x, step_in], dim=1)
    return Decoded(x[:, 1:], context.evals / len(x))


@torch.no_grad()
def sample_bd3(context: Context, x: Tensor, block: int, steps: int, process: Absorbing, g: rng.Generator,
               how: Sampling = PLAIN, cache: bool = True) -> Decoded:
    """[BD3] Alg. 2: blocks left to right; inside a block, MDLM ancestral steps conditioned on the clean
    blocks before it (the context, whose blocks are `block` long); a finished block joins the context.
    Masked entries of x (B, L) are generated; L must be a multiple of `block`. Network calls: `steps`
    per block with masks in it (fewer with the no-change cache `cache`, exact only for a network that
    does not read t), plus what the context spends on keeping the finished blocks but the last."""
    L = x.shape[1]

    def denoise(xb: Tensor, t: Tensor, rows: Tensor) -> Tensor:
        return subs(context(xb, t, rows), xb, process.mask_id)

    for start in range(0, L, block):
        xb = x[:, start:start + block]
        if (xb == process.mask_id).any():
            xb = sample_mdlm(denoise, xb, process, steps, g, how, cache).tokens
        x = torch.cat([x[:, :start], xb, x[:, start + block:]], dim=1)
        if start + block < L:
            context.extend(xb)
    return Decoded(x, context.evals / len(x))
