"""The text task: config schema, model/loss/sampler construction, and the `diffspace train / sample /
eval` hooks for `task = "text"`.

Model kinds: ar (causal), mdlm (masked diffusion), llada (masked, linear schedule, 1/t, no time input),
sedd_absorb / sedd_uniform (score entropy), bd3 (block diffusion, block size model.block).
The vocabulary is the tokenizer's plus one mask token (mask_id = n_tokens); AR uses that id as its
start token.
"""

import json
import logging
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch
from torch import Tensor, nn

from diffspace import rng
from diffspace.config import choice
from diffspace.data import text as tx
from diffspace.discrete import evaluate as ev
from diffspace.discrete import sedd
from diffspace.discrete.masked import (
    ar_loss,
    bd3_loss,
    draw_mask_counts,
    draw_noise,
    masked_denoiser,
    mdlm_loss,
)
from diffspace.discrete.sampling import (
    PLAIN,
    Decoded,
    Sampling,
    low_confidence,
    random_confidence,
    sample_ar,
    sample_bd3,
    sample_mdlm,
    sample_remasking,
)
from diffspace.discrete.schedules import SCHEDULES, make_schedule
from diffspace.eval.plots import loss_curve
from diffspace.losses.proposals import T_PROPOSALS
from diffspace.nets.transformer import Transformer, TransformerConfig
from diffspace.runs.loading import load_as
from diffspace.runs.options import EvalOptions, Run, SampleOptions, Task
from diffspace.runs.rundir import write_atomic
from diffspace.runs.schema import RunConfig
from diffspace.train.distributed import map_chunks
from diffspace.train.loop import TrainConfig, TrainSetup
from diffspace.types import UserError

log = logging.getLogger("diffspace")
KINDS = ("mdlm", "llada", "sedd_absorb", "sedd_uniform", "bd3", "ar")
COUNTED = ("mdlm", "bd3")  # the kinds whose NELBO loss.estimator = "count" can estimate
SAMPLERS = {  # sampler names allowed per kind; the first is the default
    "ar": ("ar",), "bd3": ("bd3",), "mdlm": ("ancestral", "remask", "remask_random"),
    "llada": ("remask", "remask_random", "ancestral"), "sedd_absorb": ("tweedie", "euler"),
    "sedd_uniform": ("tweedie", "euler"),
}


@dataclass
class TextDataConfig:
    corpus: str = "pydoc"  # "pydoc" (CPython's help topics), a text file, or a folder of files
    tokenizer: str = choice("byte", "byte", "char", "bpe")
    bpe_vocab: int = 512
    seq_len: int = 128
    pack: bool = True  # chunks may cross document boundaries (documents joined by a blank line)


@dataclass
class TextModelConfig:
    kind: str = choice("mdlm", *KINDS)
    dim: int = 128
    depth: int = 4
    heads: int = 4
    mlp_ratio: float = 4.0
    noise_cond: bool = False  # adaLN conditioning on t (MDLM finds it unnecessary for masking)
    block: int = 4  # bd3 block size L'


@dataclass
class TextLossConfig:
    # how mdlm and bd3 estimate their NELBO: "count" draws how many tokens (per block) are masked, for
    # networks without t input (lower variance, see masked.draw_mask_counts); "time" draws t
    estimator: str = choice("count", "count", "time")
    schedule: str = choice("loglinear", *SCHEDULES)  # alpha_t of "time" and of the samplers
    t_min: float = 1e-3
    # training draws of t (or of the masked fraction): "stratified" ([MDLM]'s antithetic sampling) and
    # "uniform" give the NELBO itself, "logit_normal" a bell-shaped draw that trains faster (a biased
    # objective; evaluation always uses the unbiased stratified draw). llada always draws i.i.d. t.
    proposal: str = choice("stratified", *T_PROPOSALS)


@dataclass
class TextSampleConfig:
    sampler: str = "auto"  # auto: the kind's default (see SAMPLERS)
    steps: int = 128
    n: int = 8
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    block: int = 0  # remask: semi-AR block length (0 = none); bd3: override of model.block
    prompt: str = ""


@dataclass
class TextEvalConfig:
    max_chunks: int = 128  # validation chunks (0 = all)
    n_mc: int = 4  # Monte Carlo draws per chunk for the NELBO
    n_samples: int = 32  # samples for generative perplexity and entropy
    ar_run: str = ""  # run directory of an AR model for generative perplexity ("" = itself if AR)


@dataclass
class TextConfig:
    task: str = choice("text", "text")
    run: RunConfig = field(default_factory=RunConfig)
    data: TextDataConfig = field(default_factory=TextDataConfig)
    model: TextModelConfig = field(default_factory=TextModelConfig)
    loss: TextLossConfig = field(default_factory=TextLossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: TextSampleConfig = field(default_factory=TextSampleConfig)
    eval: TextEvalConfig = field(default_factory=TextEvalConfig)

    def validate(self, src: str) -> None:
        m, d = self.model, self.data
        for key, v in [("data.seq_len", d.seq_len), ("model.dim", m.dim), ("model.depth", m.depth),
                       ("model.heads", m.heads), ("model.block", m.block),
                       ("sample.steps", self.sample.steps), ("sample.n", self.sample.n),
                       ("eval.n_mc", self.eval.n_mc)]:
            if v <= 0:
                raise UserError(f"{src}: {key} must be positive, got {v}")
        if m.dim % (2 * m.heads):
            raise UserError(f"{src}: model.dim={m.dim} must be a multiple of 2 * model.heads={2 * m.heads}")
        if m.kind == "bd3" and d.seq_len % m.block:
            raise UserError(f"{src}: data.seq_len={d.seq_len} must be a multiple of model.block={m.block}")
        if m.kind == "llada" and self.loss.schedule != "linear":
            raise UserError(f"{src}: model.kind = 'llada' uses loss.schedule = 'linear', "
                            f"got {self.loss.schedule!r}")
        if m.kind == "sedd_uniform" and not make_schedule(self.loss.schedule).alpha(torch.tensor(1.0)) > 0:
            # why: at alpha = 0 the uniform process's rate is infinite and its scores say nothing (sedd.py)
            raise UserError(f"{src}: model.kind = 'sedd_uniform' needs a schedule with alpha_1 > 0 "
                            f"(loss.schedule = 'loglinear'), got {self.loss.schedule!r}")
        try:
            resolve_sampling(self)
        except UserError as e:
            raise UserError(f"{src}: [sample] {e}") from None
        if self.loss.estimator == "count" and m.noise_cond and m.kind in COUNTED:
            raise UserError(f"{src}: loss.estimator = 'count' needs a network without t input; with "
                            "model.noise_cond = true use loss.estimator = 'time'")
        if not 0 < self.loss.t_min < 1:
            raise UserError(f"{src}: loss.t_min must be in (0, 1), got {self.loss.t_min}")


# ---- data and model ------------------------------------------------------------------------------

@dataclass
class TextData:
    tok: object
    train: tx.TokenStream
    val: tx.TokenStream
    test: tx.TokenStream


def load_text_data(cfg: TextConfig) -> TextData:
    d = cfg.data
    splits = tx.split_corpus(tx.load_corpus(d.corpus))
    tok = tx.make_tokenizer(d.tokenizer, splits["train"], d.bpe_vocab)
    streams = {k: tx.tokenize_split(tok, v, d.seq_len, d.pack) for k, v in splits.items()}
    return TextData(tok, streams["train"], streams["val"], streams["test"])


def build_text_model(cfg: TextConfig, n_tokens: int) -> Transformer:
    m = cfg.model
    tc = TransformerConfig(vocab_size=n_tokens + 1, max_len=cfg.data.seq_len, dim=m.dim, depth=m.depth,
                           heads=m.heads, mlp_ratio=m.mlp_ratio, noise_cond=m.noise_cond)
    return Transformer(tc)


def _time_cond(cfg: TextConfig) -> bool:
    return cfg.model.noise_cond and cfg.model.kind != "llada"


def _counted(cfg: TextConfig) -> bool:
    return cfg.model.kind in COUNTED and cfg.loss.estimator == "count"


def text_loss(cfg: TextConfig, n_tokens: int):
    """loss(model, batch) -> (B,) nats per token, deterministic given the batch."""
    kind, mask_id, tc = cfg.model.kind, n_tokens, _time_cond(cfg)
    sch = make_schedule("linear" if kind == "llada" or _counted(cfg) else cfg.loss.schedule)
    if kind == "ar":
        return lambda net, b: ar_loss(net, b["x0"], mask_id)
    if kind == "bd3":
        return lambda net, b: bd3_loss(net, b["x0"], b["t"], b["u"], sch, mask_id, cfg.model.block, tc)
    if kind == "sedd_absorb":
        return lambda net, b: sedd.sedd_absorb_loss(net, b["x0"], b["t"], b["u"], sch, mask_id, tc)
    if kind == "sedd_uniform":
        return lambda net, b: sedd.sedd_uniform_loss(net, b["x0"], b["t"], b["u"], b["y"], sch, n_tokens, tc)
    return lambda net, b: mdlm_loss(net, b["x0"], b["t"], b["u"], sch, mask_id, tc)


def draw_batch(cfg: TextConfig, stream: tx.TokenStream, n_tokens: int, g: torch.Generator, n: int,
               x0: Tensor | None = None, train: bool = False) -> dict[str, Tensor]:
    """A batch with all of its randomness: chunks x0 (drawn unless given), t, mask uniforms u, and
    for the uniform process the replacement tokens y. Only a training batch uses loss.proposal."""
    L, kind = cfg.data.seq_len, cfg.model.kind
    x0 = tx.random_chunks(stream, n, L, g) if x0 is None else x0
    if kind == "ar":
        return {"x0": x0}
    per_seq = L // cfg.model.block if kind == "bd3" else 1
    proposal = "uniform" if kind == "llada" else cfg.loss.proposal if train else "stratified"
    if _counted(cfg):
        return {"x0": x0, **draw_mask_counts(n, L, g, L // per_seq, proposal)}
    b = {"x0": x0, **draw_noise(n, L, g, cfg.loss.t_min, proposal, per_seq)}
    if kind == "sedd_uniform":
        b["y"] = torch.randint(n_tokens, (n, L), generator=g)
    return b


def build_text_setup(cfg: TextConfig, device: torch.device) -> tuple[TrainSetup, TextData]:
    data = load_text_data(cfg)
    model = build_text_model(cfg, data.tok.size).to(device)

    def batch(g: torch.Generator, n: int) -> dict[str, Tensor]:
        b = draw_batch(cfg, data.train, data.tok.size, g, n, train=True)
        return {k: v.to(device) for k, v in b.items()}

    return TrainSetup(model, batch, text_loss(cfg, data.tok.size)), data


# ---- sampling and evaluation ---------------------------------------------------------------------

def encode_prompt(tok, prompt: str, seq_len: int) -> Tensor:
    ids = tok.encode(prompt) if prompt else []
    if len(ids) >= seq_len:
        raise UserError(f"prompt of {len(ids)} tokens leaves no room in the context of {seq_len} tokens")
    return torch.tensor(ids, dtype=torch.long)


def _sedd_steps(kind: str, sampler: str, mask_id: int):
    """(step, final) functions of sample_sedd for a process and sampler name."""
    if kind == "sedd_uniform":
        return (sedd.uniform_euler if sampler == "euler" else sedd.uniform_tweedie), sedd.uniform_tweedie
    bind = lambda f: partial(_with_mask, f, mask_id)
    return bind(sedd.absorb_euler if sampler == "euler" else sedd.absorb_tweedie), bind(sedd.absorb_tweedie)


def _with_mask(f, mask_id, raw, x, a_t, a_s):
    return f(raw, x, a_t, a_s, mask_id)


BLOCK_SAMPLERS = ("remask", "remask_random", "bd3")  # the samplers that read a block length


def resolve_sampling(cfg: TextConfig, sampler: str | None = None, steps: int | None = None,
                     block: int | None = None) -> tuple[str, int, int]:
    """The (sampler, steps, block) a text run samples with. Each argument left None takes the config's
    [sample] value; sampler "auto" is the kind's default (SAMPLERS); bd3's block 0 is model.block.
    steps counts network calls per sequence (per block for bd3, plus SEDD's final Tweedie step; ar
    decodes one token per call and does not read it). Raises UserError for a sampler that does not fit
    the kind, steps < 1, or a block length the sampler cannot use."""
    s, kind = cfg.sample, cfg.model.kind
    sampler = s.sampler if sampler is None else sampler
    sampler = SAMPLERS[kind][0] if sampler == "auto" else sampler
    if sampler not in SAMPLERS[kind]:
        raise UserError(f"sampler {sampler!r} does not fit model kind {kind!r} "
                        f"(use {', '.join(SAMPLERS[kind])})")
    steps = s.steps if steps is None else steps
    if steps < 1 and kind != "ar":
        raise UserError(f"steps must be positive, got {steps}")
    block = s.block if block is None else block
    if block < 0 or (block and sampler not in BLOCK_SAMPLERS):
        raise UserError(f"block={block} does not apply to sampler {sampler!r} (a block length >= 0 is "
                        f"read by {', '.join(BLOCK_SAMPLERS)})")
    if sampler == "bd3":
        block = block or cfg.model.block
        if cfg.data.seq_len % block:
            raise UserError(f"block={block} must divide data.seq_len={cfg.data.seq_len} for bd3")
    return sampler, steps, block


@torch.no_grad()
def generate_tokens(net: nn.Module, cfg: TextConfig, n_tokens: int, n: int, g: rng.Generator,
                    sampler: str | None = None, steps: int | None = None, prompt: Tensor | None = None,
                    block: int | None = None, how: Sampling = PLAIN, kv_cache: bool = True) -> Decoded:
    """n sequences of data.seq_len tokens (a Decoded with the network calls per sequence). g is one
    torch.Generator for the batch, or rng.Streams with one stream per sequence, which makes sequence i
    independent of the others. sampler, steps, block: see resolve_sampling."""
    kind, L, mask_id, tc = cfg.model.kind, cfg.data.seq_len, n_tokens, _time_cond(cfg)
    sampler, steps, block = resolve_sampling(cfg, sampler, steps, block)
    dev = next(net.parameters()).device
    prompt = torch.zeros(0, dtype=torch.long) if prompt is None else prompt
    x = torch.full((n, L), mask_id, dtype=torch.long)
    x[:, :len(prompt)] = prompt
    x = x.to(dev)
    sch = make_schedule("linear" if kind == "llada" else cfg.loss.schedule)
    if kind == "ar":
        return sample_ar(net, x[:, :len(prompt)], L, mask_id, g, how, kv_cache)
    if kind == "bd3":
        return sample_bd3(net, x, block, steps, sch, mask_id, g, how, kv_cache, tc)
    if kind.startswith("sedd"):
        if kind == "sedd_uniform":
            if len(prompt):
                raise UserError("prompts are not supported for model.kind = 'sedd_uniform'")
            x = rng.randint(n_tokens, (n, L), g, dev)  # the uniform prior
        step, final = _sedd_steps(kind, sampler, mask_id)
        keep = n_tokens if kind == "sedd_uniform" else None  # why: the absorbing scores include the mask
        return sedd.sample_sedd(net, x, sch, steps, step, g, final, tc, keep)
    den = masked_denoiser(net, mask_id, tc)
    if sampler == "ancestral":  # why: with t-conditioning a reused prediction would be stale
        return sample_mdlm(lambda x_t, t, rows: den(x_t, t), x, sch, steps, mask_id, g, how,
                           cache=kv_cache and not tc)
    conf = low_confidence if sampler == "remask" else random_confidence
    return sample_remasking(den, x, steps, mask_id, g, how, block, conf)


SAMPLE_CHUNK = 16  # sequences per sampling batch (memory only: sequence i depends on (seed, i) alone)
EVAL_CHUNK = 64  # validation chunks per NELBO batch, whose masks depend only on (seed, batch index)


def sample_tokens(net: nn.Module, cfg: TextConfig, n_tokens: int, n: int, seed: int = 0,
                  sampler: str | None = None, steps: int | None = None, prompt: Tensor | None = None,
                  block: int | None = None, how: Sampling = PLAIN) -> Tensor | None:
    """n sequences (n, L) on the CPU. Sequence i draws from its own random stream (rng.Streams under
    seed, index i), so it is the same for any n, batching or number of ranks. Under torchrun the batches
    are dealt to the ranks: rank 0 gets all n (the same as one process), the other ranks None."""
    if n < 1:
        raise UserError(f"the number of samples must be positive, got {n}")

    def chunk(lo, hi, _chunk_seed):
        g = rng.Streams(seed, hi - lo, offset=lo)
        out = generate_tokens(net, cfg, n_tokens, hi - lo, g, sampler, steps, prompt, block, how)
        return out.tokens.cpu()

    parts = map_chunks(chunk, n, seed, SAMPLE_CHUNK)
    return None if parts is None else torch.cat(parts)


def sample_text(net: nn.Module, cfg: TextConfig, tok, n: int | None = None, seed: int = 0,
                sampler: str | None = None, steps: int | None = None, prompt: str | None = None,
                block: int | None = None, how: Sampling | None = None) -> list[str] | None:
    """n decoded samples (None on torchrun ranks other than 0); arguments left None take the config's
    [sample] values."""
    s = cfg.sample
    how = how or Sampling(s.temperature, s.top_k, s.top_p)
    ids = encode_prompt(tok, s.prompt if prompt is None else prompt, cfg.data.seq_len)
    out = sample_tokens(net, cfg, tok.size, s.n if n is None else n, seed, sampler, steps, ids, block, how)
    return None if out is None else [tok.decode(row) for row in out.tolist()]


def nelbo_values(net: nn.Module, cfg: TextConfig, n_tokens: int, chunks: Tensor, n_mc: int,
                 seed: int = 0) -> Tensor | None:
    """Per-(chunk, draw) NELBO (nats/token) for diffusion kinds, exact NLL per chunk for AR. Under
    torchrun the batches of chunks are dealt to the ranks; rank 0 gets all values, the others None."""
    dev = next(net.parameters()).device
    loss = text_loss(cfg, n_tokens)

    @torch.no_grad()
    def batch(lo, hi, s_):
        x0 = chunks[lo:hi]
        if cfg.model.kind == "ar":
            return ev.ar_nll(net, x0, n_tokens)
        g = torch.Generator().manual_seed(s_)
        draws = [draw_batch(cfg, None, n_tokens, g, len(x0), x0=x0) for _ in range(n_mc)]
        return torch.cat([loss(net, {k: v.to(dev) for k, v in b.items()}).cpu() for b in draws])

    parts = map_chunks(batch, len(chunks), seed, EVAL_CHUNK)
    return None if parts is None else torch.cat(parts)


def eval_text(net: nn.Module, cfg: TextConfig, data: TextData, ar_net: nn.Module | None = None,
              seed: int = 0, sampler: str | None = None, steps: int | None = None, ppl_only: bool = False,
              n_samples: int | None = None) -> dict | None:
    """Validation bits/char (exact or bound, with standard error); unless ppl_only, also the generative
    perplexity under ar_net and the n-gram entropies of n_samples samples (None: eval.n_samples) next
    to the data's. Under torchrun the work is shared and rank 0 gets the metrics, the other ranks None."""
    e, L, V = cfg.eval, cfg.data.seq_len, data.tok.size
    n = e.n_samples if n_samples is None else n_samples
    chunks = tx.eval_chunks(data.val, L, e.max_chunks)
    vals = nelbo_values(net, cfg, V, chunks, e.n_mc, seed)
    samples = None if ppl_only else sample_tokens(net, cfg, V, n, seed + 1, sampler, steps)
    if vals is None:  # a torchrun rank other than 0: it only helped
        return None
    out = {"kind": cfg.model.kind, "val_chunks": len(chunks),
           **ev.bits_report(vals, data.val.chars_per_token, cfg.model.kind == "ar")}
    if ppl_only:
        return out
    out |= {f"sample_{k}": v for k, v in ev.entropy_report(samples).items()}
    out |= {f"data_{k}": v for k, v in ev.entropy_report(chunks[:n]).items()}
    if ar_net is not None:
        out["gen_ppl"] = ev.gen_perplexity(ar_net, samples, V)
        out["data_gen_ppl"] = ev.gen_perplexity(ar_net, chunks[:n], V)
    return out


# ---- the text task's record: train / sample / evaluate ---------------------------------------------

def setup_for_run(cfg: TextConfig, device: torch.device):
    setup, data = build_text_setup(cfg, device)
    return setup, {"n_tokens": data.tok.size}


def module_from_meta(cfg: TextConfig, meta: dict) -> nn.Module:
    return build_text_model(cfg, meta["n_tokens"])


def after_train(run_dir: Path) -> None:
    loss_curve(run_dir / "log.jsonl", run_dir / "loss.png")


def text_sample(run: Run, opts: SampleOptions) -> list[str] | None:
    """opts.n decoded samples (None on torchrun ranks other than 0); None fields take the run's [sample]."""
    s = run.cfg.sample
    if run.cfg.model.kind == "ar" and opts.steps is not None:
        raise UserError("steps (--steps) do not apply to model.kind = 'ar', which decodes one token per call")
    pick = lambda value, default: default if value is None else value
    how = Sampling(pick(opts.temperature, s.temperature), pick(opts.top_k, s.top_k),
                   pick(opts.top_p, s.top_p))
    return sample_text(run.module, run.cfg, load_text_data(run.cfg).tok, opts.n, opts.seed, opts.sampler,
                       opts.steps, opts.prompt, opts.block, how)


def text_evaluate(run: Run, opts: EvalOptions) -> dict:
    """Bits/char (and perplexity) on the validation split; unless opts.ppl_only also the samples' gen-ppl
    (under eval.ar_run, or the model itself if AR) and entropies. Rank 0 writes RUN/metrics.json."""
    cfg = run.cfg
    if opts.ppl_only and (opts.n, opts.sampler, opts.steps) != (None, None, None):
        raise UserError("--n, --sampler and --steps do not apply with --ppl, which draws no samples")
    ar_net = run.module if cfg.model.kind == "ar" else None
    if ar_net is None and cfg.eval.ar_run and not opts.ppl_only:
        if (Path(cfg.eval.ar_run) / "checkpoints" / "last.safetensors").is_file():
            ar_net = load_as(TEXT, cfg.eval.ar_run, run.device).module
        else:
            log.warning("no AR run at %s; generative perplexity is left out", cfg.eval.ar_run)
    metrics = eval_text(run.module, cfg, load_text_data(cfg), ar_net, opts.seed, opts.sampler, opts.steps,
                        opts.ppl_only, opts.n)
    if metrics is None:  # a torchrun rank other than 0: it only helped
        return {}
    metrics = {"step": run.step, "seed": opts.seed, **metrics}
    write_atomic(run.dir / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    return metrics


TEXT = Task("text", TextConfig, setup_for_run, module_from_meta, text_sample, text_evaluate,
            sample_options=frozenset({"n", "seed", "sampler", "steps", "prompt", "block", "temperature",
                                      "top_k", "top_p"}),
            eval_options=frozenset({"n", "seed", "sampler", "steps", "ppl_only"}),
            after_train=after_train)
