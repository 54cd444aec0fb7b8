"""The model kinds of token data as one table: each kind's forward process, loss, samplers and draws of
t. Adding a kind is adding a row to KINDS; a new way to generate is a `Sampler` in a kind's row.

Kinds: ar (causal, exact NLL), mdlm (masked diffusion, [MDLM] arXiv 2406.07524v2), llada (the masked
NELBO with the linear schedule, i.i.d. t and no time input, [LLADA] arXiv 2502.09992v3), sedd_absorb /
sedd_uniform (score entropy, [SEDD] arXiv 2310.16834v3), bd3 (block diffusion with blocks of L' tokens,
[BD3] arXiv 2503.09573v2). The vocabulary is the data's n_tokens plus one mask token, mask_id =
n_tokens, which AR uses as its start token.

A `TokenModel` is one configured model: a kind and the choices it leaves open (schedule, estimator,
block, time input). It builds the training batches with all their randomness, the loss, the NELBO
draws of an evaluation, and generates.
"""

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

import torch
from torch import Tensor, nn

from diffspace import rng
from diffspace.discrete.attention import context, time_input
from diffspace.discrete.masked import (
    ar_loss,
    bd3_loss,
    draw_mask_counts,
    draw_noise,
    masked_denoiser,
    mdlm_loss,
)
from diffspace.discrete.processes import Absorbing, Process, Uniform
from diffspace.discrete.sampling import (
    Decoded,
    Sampling,
    low_confidence,
    random_confidence,
    sample_ar,
    sample_bd3,
    sample_mdlm,
    sample_remasking,
)
from diffspace.discrete.schedules import make_schedule
from diffspace.discrete.sedd import (
    absorb_euler,
    absorb_tweedie,
    sample_sedd,
    sedd_absorb_loss,
    sedd_uniform_loss,
    uniform_euler,
    uniform_tweedie,
)
from diffspace.types import UserError


@dataclass(frozen=True)
class Sampler:
    """A way to generate: generate(model, net, x, n_prompt, g, steps, block, how, kv_cache) -> Decoded,
    x (B, L) holding the prompt's n_prompt tokens then masks."""

    generate: Callable
    reads_steps: bool = True  # False: one network call per token, whatever `steps` says
    block: Callable | None = None  # (block, model block, seq_len) -> the block length used; None: reads none


@dataclass(frozen=True)
class Kind:
    """One row of KINDS: what a model kind is made of."""

    name: str
    process: type | None  # Absorbing or Uniform; None: autoregressive (no forward process)
    loss: Callable  # (model, net, batch) -> (B,) nats per token
    samplers: dict[str, Sampler]  # the first is the default
    counts: bool = False  # the NELBO has the t-free mask-count form (loss.estimator = "count")
    reads_t: bool = True  # a network with a time input is shown t (llada: never)
    schedule: str | None = None  # the schedule the kind is defined with (llada: "linear"); None: any
    proposal: str | None = None  # the draw of t the kind is defined with (llada: "uniform", i.i.d.)
    t_per_block: bool = False  # one t per block of model.block tokens (bd3)
    prompts: bool = True  # False: sampling changes every token (uniform process), so no prompt

    @property
    def autoregressive(self) -> bool:
        """Exact NLL by the chain rule: no Monte Carlo over t, and a scorer of generative perplexity."""
        return self.process is None

    def config_problem(self, seq_len: int, block: int, schedule: str, noise_cond: bool,
                       count: bool) -> str | None:
        """What in a text config (data.seq_len, model.block, loss.schedule, model.noise_cond, whether
        loss.estimator = "count") contradicts this kind; None if nothing does."""
        if self.t_per_block and seq_len % block:
            return f"data.seq_len={seq_len} must be a multiple of model.block={block}"
        problem = None if self.process is None else self.process.schedule_problem(make_schedule(schedule))
        if self.schedule is not None and schedule != self.schedule:
            problem = f"model.kind = {self.name!r} is defined with {self.schedule!r}"
        if problem:
            return f"loss.schedule = {schedule!r} does not fit: {problem}"
        if count and noise_cond and self.counts:
            return ("loss.estimator = 'count' needs a network without t input; with model.noise_cond = true "
                    "use loss.estimator = 'time'")
        return None

    def resolve(self, sampler: str, steps: int, block: int, model_block: int,
                seq_len: int) -> tuple[str, int, int]:
        """(sampler, steps, block) checked against this kind: sampler "auto" is the first of `samplers`;
        a block length (0 = none, or for bd3 model.block) only for samplers that read one. Raises
        UserError for a sampler of another kind, steps < 1, or a block length the sampler cannot use."""
        sampler = next(iter(self.samplers)) if sampler == "auto" else sampler
        if sampler not in self.samplers:
            raise UserError(f"sampler {sampler!r} does not fit model kind {self.name!r} "
                            f"(use {', '.join(self.samplers)})")
        s = self.samplers[sampler]
        if steps < 1 and s.reads_steps:
            raise UserError(f"steps must be positive, got {steps}")
        if block < 0 or (block and s.block is None):
            raise UserError(f"block={block} does not apply to sampler {sampler!r} (a block length >= 0 is "
                            f"read by {', '.join(BLOCK_SAMPLERS)})")
        return sampler, steps, block if s.block is None else s.block(block, model_block, seq_len)


@dataclass(frozen=True)
class TokenModel:
    """A kind with the choices it leaves open; its network sees ids 0 .. n_tokens (the mask)."""

    kind: Kind
    n_tokens: int
    seq_len: int
    block: int = 4  # bd3's L'
    schedule: str = "loglinear"
    t_min: float = 1e-3
    noise_cond: bool = False  # the network has a time input
    count: bool = True  # loss.estimator = "count" where the kind counts

    @property
    def mask_id(self) -> int:
        return self.n_tokens

    @property
    def time_cond(self) -> bool:
        """Whether the network is shown t."""
        return self.noise_cond and self.kind.reads_t

    @property
    def counted(self) -> bool:
        return self.kind.counts and self.count

    @cached_property
    def process(self) -> Process:
        """The forward process that sampling reverses."""
        return self.kind.process(make_schedule(self.kind.schedule or self.schedule), self.n_tokens)

    @cached_property
    def loss_process(self) -> Process:
        """The process of the loss: the mask-count form is stated with the linear schedule (masked.py)."""
        return self.kind.process(make_schedule("linear"), self.n_tokens) if self.counted else self.process

    def loss(self, net: nn.Module, batch: dict[str, Tensor]) -> Tensor:
        """(B,) nats per token, deterministic given the batch (see `draw`)."""
        return self.kind.loss(self, net, batch)

    def draw(self, x0: Tensor, g: torch.Generator, proposal: str = "stratified") -> dict[str, Tensor]:
        """A batch for chunks x0 (n, L) with all the randomness of its loss: t drawn by `proposal` (or as
        the kind is defined), mask uniforms u, the uniform process's replacement tokens y."""
        if self.kind.autoregressive:
            return {"x0": x0}
        (n, L), proposal = x0.shape, self.kind.proposal or proposal
        per_seq = L // self.block if self.kind.t_per_block else 1
        if self.counted:
            return {"x0": x0, **draw_mask_counts(n, L, g, L // per_seq, proposal)}
        noise = draw_noise(n, L, g, self.t_min, proposal, per_seq)
        return {"x0": x0, **noise, **self.loss_process.draw(n, L, g)}

    @torch.no_grad()
    def nelbo(self, net: nn.Module, x0: Tensor, g: torch.Generator, n_mc: int) -> Tensor:
        """NELBO values (nats/token) of chunks x0 (n, L), n_mc Monte Carlo draws each (n_mc * n,); for an
        autoregressive kind the exact NLL of each chunk (n,)."""
        dev = next(net.parameters()).device
        draws = [self.draw(x0, g) for _ in range(1 if self.kind.autoregressive else n_mc)]
        return torch.cat([self.loss(net, {k: v.to(dev) for k, v in b.items()}).cpu() for b in draws])

    @torch.no_grad()
    def generate(self, net: nn.Module, n: int, g: rng.Generator, sampler: str, steps: int, block: int,
                 prompt: Tensor, how: Sampling, kv_cache: bool = True) -> Decoded:
        """n sequences of seq_len tokens continuing `prompt` (P,), with a sampler of `resolve`'s answer."""
        if len(prompt) and not self.kind.prompts:
            raise UserError(f"prompts are not supported for model.kind = {self.kind.name!r}")
        x = torch.full((n, self.seq_len), self.mask_id, dtype=torch.long)
        x[:, :len(prompt)] = prompt
        x = x.to(next(net.parameters()).device)
        return self.kind.samplers[sampler].generate(self, net, x, len(prompt), g, steps, block, how, kv_cache)


# ---- the losses and samplers of the rows ----------------------------------------------------------

def _ar_loss(m: TokenModel, net, b):
    return ar_loss(net, b["x0"], m.mask_id)


def _mdlm_loss(m: TokenModel, net, b):
    return mdlm_loss(net, b["x0"], b["t"], b["u"], m.loss_process, m.time_cond)


def _bd3_loss(m: TokenModel, net, b):
    return bd3_loss(net, b["x0"], b["t"], b["u"], m.loss_process, m.block, m.time_cond)


def _absorb_loss(m: TokenModel, net, b):
    return sedd_absorb_loss(net, b["x0"], b["t"], b["u"], m.loss_process, m.time_cond)


def _uniform_loss(m: TokenModel, net, b):
    return sedd_uniform_loss(net, b["x0"], b["t"], b["u"], b["y"], m.loss_process, m.time_cond)


def _ar(m: TokenModel, net, x, n_prompt, g, steps, block, how, kv_cache):
    return sample_ar(context(net, 1, kv_cache=kv_cache), x[:, :n_prompt], m.seq_len, m.mask_id, g, how)


def _ancestral(m: TokenModel, net, x, n_prompt, g, steps, block, how, kv_cache):
    den = masked_denoiser(net, m.mask_id, m.time_cond)
    cache = kv_cache and not m.time_cond  # why: with t-conditioning a reused prediction would be stale
    return sample_mdlm(lambda x_t, t, rows: den(x_t, t), x, m.process, steps, g, how, cache)


def _remasking(confidence: Callable) -> Callable:
    def generate(m: TokenModel, net, x, n_prompt, g, steps, block, how, kv_cache):
        den = masked_denoiser(net, m.mask_id, m.time_cond)
        return sample_remasking(den, x, steps, m.mask_id, g, how, block, confidence)
    return generate


def _bd3(m: TokenModel, net, x, n_prompt, g, steps, block, how, kv_cache):
    ctx = context(net, block, m.time_cond, kv_cache)
    # why: with t-conditioning a reused prediction would be stale
    return sample_bd3(ctx, x, block, steps, m.process, g, how, cache=not m.time_cond)


def _sedd(step: Callable, final: Callable) -> Callable:
    def generate(m: TokenModel, net, x, n_prompt, g, steps, block, how, kv_cache):
        def denoise(x_t: Tensor, t: Tensor) -> Tensor:  # the raw outputs: SEDD's log-ratios
            return net(x_t, time_input(t, m.time_cond))
        return sample_sedd(denoise, m.process.prior(x, g), m.process, steps, step, g, final)
    return generate


def _blocks(block: int, model_block: int, seq_len: int) -> int:
    block = block or model_block
    if seq_len % block:
        raise UserError(f"block={block} must divide data.seq_len={seq_len} for bd3")
    return block


def _span(block: int, model_block: int, seq_len: int) -> int:
    return block  # remasking: 0 decodes the whole span at once


MASKED = {"ancestral": Sampler(_ancestral), "remask": Sampler(_remasking(low_confidence), block=_span),
          "remask_random": Sampler(_remasking(random_confidence), block=_span)}

KINDS: dict[str, Kind] = {k.name: k for k in (
    Kind("mdlm", Absorbing, _mdlm_loss, MASKED, counts=True),
    Kind("llada", Absorbing, _mdlm_loss, {k: MASKED[k] for k in ("remask", "remask_random", "ancestral")},
         reads_t=False, schedule="linear", proposal="uniform"),
    Kind("sedd_absorb", Absorbing, _absorb_loss, {"tweedie": Sampler(_sedd(absorb_tweedie, absorb_tweedie)),
                                                   "euler": Sampler(_sedd(absorb_euler, absorb_tweedie))}),
    Kind("sedd_uniform", Uniform, _uniform_loss, {"tweedie": Sampler(_sedd(uniform_tweedie, uniform_tweedie)),
                                                   "euler": Sampler(_sedd(uniform_euler, uniform_tweedie))},
         prompts=False),
    Kind("bd3", Absorbing, _bd3_loss, {"bd3": Sampler(_bd3, block=_blocks)}, counts=True, t_per_block=True),
    Kind("ar", None, _ar_loss, {"ar": Sampler(_ar, reads_steps=False)}),
)}
BLOCK_SAMPLERS = tuple(dict.fromkeys(name for k in KINDS.values() for name, s in k.samplers.items()
                                     if s.block))  # the samplers that read a block length
