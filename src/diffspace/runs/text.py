"""The text task: config schema, how a config becomes a token model (`discrete.kinds`), and the
`diffspace train / sample / eval` hooks for `task = "text"`.

The model kinds and what each is made of are the table `discrete.kinds.KINDS`; this module reads the
config, deals sampling and evaluation batches to torchrun ranks and writes the run's files.
"""

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from diffspace import rng
from diffspace.config import choice
from diffspace.data import text as tx
from diffspace.discrete import evaluate as ev
from diffspace.discrete.kinds import KINDS, TokenModel
from diffspace.discrete.sampling import PLAIN, Decoded, Sampling
from diffspace.discrete.schedules import SCHEDULES
from diffspace.eval.plots import loss_curve
from diffspace.files import write_text
from diffspace.losses.proposals import T_PROPOSALS
from diffspace.nets.transformer import Transformer, TransformerConfig
from diffspace.runs.loading import load_as
from diffspace.runs.options import EvalOptions, Run, SampleOptions, Task
from diffspace.runs.schema import RunConfig
from diffspace.train.distributed import map_chunks
from diffspace.train.loop import TrainConfig, TrainSetup
from diffspace.types import UserError

log = logging.getLogger("diffspace")


@dataclass
class TextDataConfig:
    corpus: str = "pydoc"  # "pydoc" (CPython's help topics), a text file, or a folder of files
    tokenizer: str = choice("byte", "byte", "char", "bpe")
    bpe_vocab: int = 512
    seq_len: int = 128
    pack: bool = True  # chunks may cross document boundaries (documents joined by a blank line)


@dataclass
class TextModelConfig:
    kind: str = choice("mdlm", *KINDS)  # a row of discrete.kinds.KINDS
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
    sampler: str = "auto"  # auto: the kind's default (the first of its samplers in KINDS)
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
        problem = KINDS[m.kind].config_problem(d.seq_len, m.block, self.loss.schedule, m.noise_cond,
                                               self.loss.estimator == "count")
        if problem:
            raise UserError(f"{src}: {problem}")
        try:
            resolve_sampling(self)
        except UserError as e:
            raise UserError(f"{src}: [sample] {e}") from None
        if not 0 < self.loss.t_min < 1:
            raise UserError(f"{src}: loss.t_min must be in (0, 1), got {self.loss.t_min}")


# ---- data, model, training ----------------------------------------------------------------------

def load_text_data(cfg: TextConfig) -> tx.TextSplits:
    d = cfg.data
    return tx.load_splits(d.corpus, d.tokenizer, d.bpe_vocab, d.seq_len, d.pack)


def build_text_model(cfg: TextConfig, n_tokens: int) -> Transformer:
    m = cfg.model
    tc = TransformerConfig(vocab_size=n_tokens + 1, max_len=cfg.data.seq_len, dim=m.dim, depth=m.depth,
                           heads=m.heads, mlp_ratio=m.mlp_ratio, noise_cond=m.noise_cond)
    return Transformer(tc)


def token_model(cfg: TextConfig, n_tokens: int) -> TokenModel:
    """The config's kind with its choices, over n_tokens data tokens (the mask is id n_tokens)."""
    m, loss = cfg.model, cfg.loss
    return TokenModel(KINDS[m.kind], n_tokens, cfg.data.seq_len, m.block, loss.schedule, loss.t_min,
                      m.noise_cond, loss.estimator == "count")


def build_text_setup(cfg: TextConfig, device: torch.device) -> tuple[TrainSetup, tx.TextSplits]:
    data = load_text_data(cfg)
    model = token_model(cfg, data.tok.size)

    def batch(g: torch.Generator, n: int) -> dict[str, Tensor]:
        b = model.draw(tx.random_chunks(data.train, n, cfg.data.seq_len, g), g, cfg.loss.proposal)
        return {k: v.to(device) for k, v in b.items()}

    return TrainSetup(build_text_model(cfg, data.tok.size).to(device), batch, model.loss), data


# ---- sampling and evaluation ---------------------------------------------------------------------

def resolve_sampling(cfg: TextConfig, sampler: str | None = None, steps: int | None = None,
                     block: int | None = None) -> tuple[str, int, int]:
    """The (sampler, steps, block) a text run samples with: each argument left None takes the config's
    [sample] value, then `Kind.resolve` checks them. steps counts network calls per sequence (per block
    for bd3, plus SEDD's final Tweedie step; ar decodes one token per call and does not read it)."""
    s = cfg.sample
    pick = lambda value, default: default if value is None else value
    return KINDS[cfg.model.kind].resolve(pick(sampler, s.sampler), pick(steps, s.steps), pick(block, s.block),
                                         cfg.model.block, cfg.data.seq_len)


def generate_tokens(net: nn.Module, cfg: TextConfig, n_tokens: int, n: int, g: rng.Generator,
                    sampler: str | None = None, steps: int | None = None, prompt: Tensor | None = None,
                    block: int | None = None, how: Sampling = PLAIN, kv_cache: bool = True) -> Decoded:
    """n sequences of data.seq_len tokens (a Decoded with the network calls per sequence). g is one
    torch.Generator for the batch, or rng.Streams with one stream per sequence, which makes sequence i
    independent of the others. sampler, steps, block: see resolve_sampling."""
    sampler, steps, block = resolve_sampling(cfg, sampler, steps, block)
    prompt = torch.zeros(0, dtype=torch.long) if prompt is None else prompt
    return token_model(cfg, n_tokens).generate(net, n, g, sampler, steps, block, prompt, how, kv_cache)


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
    ids = tx.encode_prompt(tok, s.prompt if prompt is None else prompt, cfg.data.seq_len)
    out = sample_tokens(net, cfg, tok.size, s.n if n is None else n, seed, sampler, steps, ids, block, how)
    return None if out is None else [tok.decode(row) for row in out.tolist()]


def nelbo_values(net: nn.Module, cfg: TextConfig, n_tokens: int, chunks: Tensor, n_mc: int,
                 seed: int = 0) -> Tensor | None:
    """Per-(chunk, draw) NELBO (nats/token) for diffusion kinds, exact NLL per chunk for AR. Under
    torchrun the batches of chunks are dealt to the ranks; rank 0 gets all values, the others None."""
    model = token_model(cfg, n_tokens)
    batch = lambda lo, hi, s_: model.nelbo(net, chunks[lo:hi], torch.Generator().manual_seed(s_), n_mc)
    parts = map_chunks(batch, len(chunks), seed, EVAL_CHUNK)
    return None if parts is None else torch.cat(parts)


def eval_text(net: nn.Module, cfg: TextConfig, data: tx.TextSplits, ar_net: nn.Module | None = None,
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
           **ev.bits_report(vals, data.val.chars_per_token, KINDS[cfg.model.kind].autoregressive)}
    return out if ppl_only else out | ev.sample_report(samples, chunks[:n], ar_net, V)


# ---- the text task's record: train / sample / evaluate ---------------------------------------------

def setup_for_run(cfg: TextConfig, device: torch.device):
    setup, data = build_text_setup(cfg, device)
    return setup, {"n_tokens": data.tok.size}


def module_from_meta(cfg: TextConfig, meta: dict) -> nn.Module:
    return build_text_model(cfg, meta["n_tokens"])


def after_train(run_dir: Path) -> None:
    loss_curve(run_dir / "log.jsonl", run_dir / "loss.png")


def _one_prompt(prompts: tuple[str, ...] | None) -> str | None:
    """The one prompt text samples continue (None: the run's [sample] prompt)."""
    if prompts is not None and len(prompts) != 1:
        raise UserError(f"text runs continue one prompt (--prompt once), got {len(prompts)}")
    return None if prompts is None else prompts[0]


def text_sample(run: Run, opts: SampleOptions) -> list[str] | None:
    """opts.n decoded samples (None on torchrun ranks other than 0); None fields take the run's [sample]."""
    s, kind = run.cfg.sample, KINDS[run.cfg.model.kind]
    sampler = resolve_sampling(run.cfg, opts.sampler, opts.steps, opts.block)[0]
    if opts.steps is not None and not kind.samplers[sampler].reads_steps:
        raise UserError(f"steps (--steps) do not apply to sampler {sampler!r}, which decodes one token "
                        "per call")
    pick = lambda value, default: default if value is None else value
    how = Sampling(pick(opts.temperature, s.temperature), pick(opts.top_k, s.top_k),
                   pick(opts.top_p, s.top_p))
    return sample_text(run.module, run.cfg, load_text_data(run.cfg).tok, opts.n, opts.seed, opts.sampler,
                       opts.steps, _one_prompt(opts.prompts), opts.block, how)


def text_evaluate(run: Run, opts: EvalOptions) -> dict:
    """Bits/char (and perplexity) on the validation split; unless opts.ppl_only also the samples' gen-ppl
    (under eval.ar_run, or the model itself if AR) and entropies. Rank 0 writes RUN/metrics.json."""
    cfg = run.cfg
    if opts.ppl_only and (opts.n, opts.sampler, opts.steps) != (None, None, None):
        raise UserError("--n, --sampler and --steps do not apply with --ppl, which draws no samples")
    ar_net = run.module if KINDS[cfg.model.kind].autoregressive else None
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
    write_text(run.dir / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    return metrics


TEXT = Task("text", TextConfig, setup_for_run, module_from_meta, text_sample, text_evaluate,
            sample_options=frozenset({"n", "seed", "sampler", "steps", "prompts", "block", "temperature",
                                      "top_k", "top_p"}),
            eval_options=frozenset({"n", "seed", "sampler", "steps", "ppl_only"}),
            after_train=after_train)
