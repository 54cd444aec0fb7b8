"""The records of the runs layer: a `Task` (what a task name means), a loaded `Run`, and the frozen
options of `sample` and `evaluate`.

A field left at None means "the run's own config" ([sample] or [eval] section). Each task states which
fields it honours; any other field given is refused with one line (`check_options`), so no option is
ever silently ignored.
"""

import dataclasses
import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from diffspace.rng import MAX_SEED
from diffspace.types import UserError


@dataclass(frozen=True)
class Task:
    """A task: its config schema and how to build, sample and evaluate its models."""

    name: str
    config_cls: type
    build_setup: Callable  # (cfg, device) -> (TrainSetup, metadata dict stored with checkpoints)
    build_module: Callable  # (cfg, metadata dict) -> nn.Module
    sample: Callable  # (Run, SampleOptions) -> samples (None on torchrun ranks other than 0)
    evaluate: Callable  # (Run, EvalOptions) -> metrics dict ({} on other ranks)
    sample_options: frozenset[str]  # SampleOptions fields the task honours
    eval_options: frozenset[str]  # EvalOptions fields the task honours
    after_train: Callable[[Path], None] | None = None  # (run_dir) -> None: pictures after training
    # (Run) -> (fn, example input x (1, ...), what fn computes): the network `runs.network_info` measures
    network: Callable | None = None


@dataclass
class Run:
    """A trained run: its config, the module with EMA (or raw) weights in eval mode, and where it lives."""

    task: str
    cfg: object  # the task's config dataclass
    module: nn.Module
    dir: Path
    step: int
    meta: dict  # the checkpoint's metadata (config record, step, elapsed, task extras)

    @property
    def device(self) -> torch.device:
        return next(self.module.parameters()).device


@dataclass(frozen=True)
class SampleOptions:
    """Options of `runs.sample`. n, sampler, steps, grid: None = the run's [sample] section."""

    n: int | None = None
    seed: int = 0
    sampler: str | None = None
    steps: int | None = None
    grid: str | None = None  # continuous: a grid name or "optimized" (see `runs.optimize_grid`)
    sampler_options: dict = field(default_factory=dict)  # e.g. {"eta": 0.5} for ddim
    sigma_min: float | None = None  # continuous: narrow the path's noise range (None: the path's own)
    sigma_max: float | None = None
    guidance: float | None = None  # class-conditional runs: classifier-free guidance scale w
    class_labels: tuple[int, ...] | None = None  # class-conditional runs: labels, cycled over n
    classifier: str | None = None  # image runs: noise-aware classifier file for classifier guidance
    classifier_scale: float | None = None  # its guidance scale s (default 1; 0 = none)
    prompts: tuple[str, ...] | None = None  # text: the one text samples continue; text_to_image: captions
    block: int | None = None  # text runs: block size for block / semi-autoregressive decoding
    temperature: float | None = None  # text runs; flow runs: x = f^-1(T z)
    top_k: int | None = None  # text runs
    top_p: float | None = None  # text runs


@dataclass(frozen=True)
class EvalOptions:
    """Options of `runs.evaluate`. None = the run's [eval] / [sample] sections."""

    n: int | None = None
    seed: int = 0
    sampler: str | None = None
    steps: int | None = None
    grid: str | None = None
    sampler_options: dict = field(default_factory=dict)
    sigma_min: float | None = None
    sigma_max: float | None = None
    guidance: float | None = None  # image runs: classifier-free guidance scale w
    featurenet: str | None = None  # image runs: feature-net artifact (default: RUN/featurenet.safetensors)
    nll: bool = False  # also the test split's NLL: PF-ODE (continuous), exact or bound (flow, vae, AR)
    nll_n: int | None = None  # test examples for nll (default: 1000, family runs eval.nll_n)
    ppl_only: bool = False  # text runs: only bits/char on the validation split


def given_fields(options) -> list[str]:
    """Names of the fields set away from their defaults."""
    return [f.name for f in dataclasses.fields(options)
            if getattr(options, f.name) != (f.default if f.default is not dataclasses.MISSING
                                            else f.default_factory())]


# the CLI's flag for an option, where it differs
FLAGS = {"n": "--n", "guidance": "--cfg", "class_labels": "--class", "ppl_only": "--ppl",
         "prompts": "--prompt", "sampler_options": "--eta/--s-churn/--snr/--order/..."}


def check_featurenet(featurenet: str | None, run: str) -> None:
    """UserError for a feature net given for `run`, a run of vectors (scored by sliced W2, so the net would
    be ignored)."""
    if featurenet is not None:
        raise UserError(f"--featurenet {featurenet}: feature nets apply to image runs only; {run} is a run "
                        "of vectors (scored by sliced W2)")


INT_OPTIONS = ("n", "nll_n", "steps", "seed", "block", "top_k")  # the integer fields of Sample/EvalOptions


def check_options(options, honoured: frozenset[str], task: str, vectors: bool = False) -> None:
    """UserError naming the first option given that a `task` run cannot honour (featurenet on a run of
    `vectors`, nll_n without nll), or a value out of its range (counts > 0, seed in 0..MAX_SEED,
    temperature >= 0, top_p in (0, 1]; 0 never stands for a default)."""
    for name in given_fields(options):
        if name not in honoured:
            flag = FLAGS.get(name, "--" + name.replace("_", "-"))
            raise UserError(f"{task} runs cannot use the option {name!r} ({flag})")
    if vectors:
        check_featurenet(getattr(options, "featurenet", None), f"this {task} run")
    if getattr(options, "nll_n", None) is not None and not options.nll:
        raise UserError(f"--nll-n {options.nll_n} needs --nll (it sets how many test examples the NLL uses)")
    for name in INT_OPTIONS:  # why: n=2.5 or n="10" from Python was a TypeError deep in sampling
        v = getattr(options, name, None)
        if v is not None and (isinstance(v, bool) or not isinstance(v, numbers.Integral)):
            flag = FLAGS.get(name, "--" + name.replace("_", "-"))
            raise UserError(f"{name} ({flag}) must be an integer, got {v!r}")
    check_positive(**{k: getattr(options, k, None) for k in ("n", "nll_n", "block")})
    check_steps(getattr(options, "steps", None))
    for name, ok, want in (("seed", lambda v: 0 <= v <= MAX_SEED, f"in 0..{MAX_SEED}"),
                           ("top_p", lambda v: 0 < v <= 1, "in (0, 1]"),
                           ("top_k", lambda v: v >= 0, ">= 0 (0: all tokens)"),
                           ("temperature", lambda v: 0 <= v < math.inf, "finite and >= 0 (0: greedy)")):
        v, flag = getattr(options, name, None), FLAGS.get(name, "--" + name.replace("_", "-"))
        if v is not None and not ok(v):
            raise UserError(f"{name} ({flag}) must be {want}, got {v}")


MAX_STEPS = 10_000  # why: past this a grid is no more accurate than the adaptive solver, and a typo
# (--steps 1000000000) would allocate gigabytes for the grid and the solver's state before failing


def check_steps(steps: int | None, what: str = "steps (--steps)") -> None:
    """UserError unless steps is None or 1 <= steps <= MAX_STEPS."""
    if steps is not None and not 0 < steps <= MAX_STEPS:
        raise UserError(f"{what} must be in 1..{MAX_STEPS}, got {steps}")


def check_finite_samples(x: torch.Tensor, source: str = "the model") -> None:
    """UserError when samples x (n, ...) hold NaN or inf, counting the samples affected. why: a
    checkpoint saved just before training diverged can hold finite weights whose samples overflow;
    nothing non-finite is written, scored or trained on."""
    bad = int((~torch.isfinite(x.reshape(len(x), -1))).any(1).sum()) if x.numel() else 0
    if bad:
        raise UserError(f"{source} produced non-finite samples ({bad} of {len(x)}), so nothing was written; "
                        "a checkpoint saved just before training diverged can do this")


def check_sample_count(**values) -> None:
    """UserError naming the option (and its CLI flag) of the first count below 2. why: a standard error,
    MMD's U-statistic and FID's covariance each need two samples (one gives NaN)."""
    for name, v in values.items():
        if v is not None and not v >= 2:
            flag = FLAGS.get(name, "--" + name.replace("_", "-"))
            raise UserError(f"{name} ({flag}) must be at least 2 to score samples, got {v}")


def check_positive(**values) -> None:
    """UserError naming the option (and its CLI flag) of the first value <= 0."""
    for name, v in values.items():
        if v is not None and not v > 0:  # why: `not v > 0` also refuses NaN
            flag = FLAGS.get(name, "--" + name.replace("_", "-"))
            raise UserError(f"{name} ({flag}) must be positive, got {v}")
