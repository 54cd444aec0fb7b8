"""One readable training loop for every task (vectors, images, text).

A task hands the loop a `TrainSetup`:
  model  the nn.Module whose parameters are trained (and averaged into the EMA);
  batch  batch(generator, n) -> a batch of n examples *including all of its randomness* (data,
         noise levels, noise, label dropout), as a dict of tensors with leading dim n, on the device;
  loss   loss(model, batch) -> per-example losses (B,), deterministic given the batch;
  preview (optional) preview(module) -> a picture of samples from the EMA module, (N, C, H, W) in
         [-1, 1], shown in TensorBoard at every checkpoint when train.tensorboard is on;
  schedule (optional) schedule(step) -> {name: value}: step-dependent hyperparameters (e.g. a
         Gumbel-softmax temperature), a function of the step index alone; each value joins the batch
         as a (B,) tensor under its name and is logged;
  bind_ema (optional) bind_ema(ema_module): called once with the Trainer's EMA module (a resume
         loads the checkpoint into that same module), for a loss whose target network is the EMA of
         the weights (consistency distillation's theta^-); the EMA is in every checkpoint, so such a
         run resumes exactly too.
Because all randomness lives in the batch and scheduled values depend only on the step, a run is
exactly reproducible, resumable, and equal across world sizes: every rank draws the same global
batch and keeps its own slice.

Under torchrun (torch.distributed initialised) the model is wrapped in DistributedDataParallel;
rank 0 alone writes logs and checkpoints.
"""

import json
import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from diffspace.config import choice
from diffspace.files import write_text
from diffspace.train.checkpoint import load_checkpoint, load_weights, save_checkpoint, split_prefix
from diffspace.train.distributed import stop_together, world
from diffspace.train.monitor import Interrupts, Progress, TensorBoard
from diffspace.types import TrainingError, UserError

Batch = dict[str, Tensor]


@dataclass
class TrainConfig:
    """The [train] section of every task's config."""

    steps: int = 2000
    batch_size: int = 512
    lr: float = 2e-3
    weight_decay: float = 0.0
    warmup_steps: int = 100
    schedule: str = choice("cosine", "cosine", "constant")
    grad_clip: float = 1.0
    ema_halflife_steps: float = 100.0
    ema_decay: float = 0.0  # > 0: a per-step EMA decay instead of the half-life (e.g. 0.999 as diffusers)
    ema_warmup: bool = False  # decay min(d, (1 + n) / (10 + n)) at update n (diffusers' EMAModel)
    lr_min: float = 0.0  # the cosine schedule decays from lr to lr_min
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # AdamW's (beta1, beta2); GANs: 0.5
    amp: str = choice("none", "none", "bf16")
    log_every: int = 50
    ckpt_every: int = 500
    keep_every: int = 0  # also keep a numbered checkpoint every this many steps (0: only the last)
    minutes: float = 0.0  # wall-clock cap: stop (and checkpoint) after this many minutes; 0 = none
    tensorboard: bool = False  # also write RUN/tensorboard (needs the optional tensorboard package)

    def validate(self, src: str) -> None:
        for key in ("steps", "batch_size", "log_every", "ckpt_every"):
            if getattr(self, key) <= 0:
                raise UserError(f"{src}: train.{key} must be positive, got {getattr(self, key)}")
        for key in ("lr", "ema_halflife_steps"):
            if not getattr(self, key) > 0:
                raise UserError(f"{src}: train.{key} must be positive, got {getattr(self, key)}")
        for key in ("weight_decay", "warmup_steps", "grad_clip", "keep_every", "minutes"):
            if getattr(self, key) < 0:
                raise UserError(f"{src}: train.{key} must be >= 0, got {getattr(self, key)}")
        if not 0 <= self.lr_min <= self.lr:
            raise UserError(f"{src}: train.lr_min must be in [0, train.lr = {self.lr}], got {self.lr_min}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise UserError(f"{src}: train.betas must be two numbers in [0, 1), got {self.betas}")
        if not 0 <= self.ema_decay < 1:
            raise UserError(f"{src}: train.ema_decay must be in [0, 1) (0: use ema_halflife_steps), "
                            f"got {self.ema_decay}")


@dataclass
class TrainSetup:
    model: nn.Module
    batch: Callable[[torch.Generator, int], Batch]
    loss: Callable[[nn.Module, Batch], Tensor]
    preview: Callable[[nn.Module], Tensor] | None = None  # (EMA module) -> images (N, C, H, W) in [-1, 1]
    schedule: Callable[[int], dict[str, float]] | None = None  # (step) -> values joining the batch
    bind_ema: Callable[[nn.Module], None] | None = None  # (the Trainer's EMA module) -> None


def make_ema(model: nn.Module, decay: float, warmup: bool = False) -> AveragedModel:
    """EMA of the weights with per-step `decay` (`ema_decay_of` turns a half-life into one).

    With `warmup` update n uses min(decay, (1 + n) / (10 + n)) (TensorFlow's ExponentialMovingAverage
    with num_updates, the default of diffusers' EMAModel), so the average forgets the initial weights.
    why: a constant decay keeps a share decay^n of the random initial weights (0.7 % after 5000 steps
    at 0.999), and an eps-network's PF-ODE magnifies that error (benchmarks/results/eps_recipe.md)."""
    if not 0 < decay < 1:
        raise UserError(f"EMA decay must be in (0, 1), got {decay}")
    if not warmup:
        return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)

    def update(ema_params, params, n_averaged):
        n = float(n_averaged)
        get_ema_multi_avg_fn(min(decay, (1 + n) / (10 + n)))(ema_params, params, n_averaged)

    return AveragedModel(model, multi_avg_fn=update, use_buffers=True)


def ema_decay_of(halflife_steps: float) -> float:
    """The per-step decay of an EMA with this half-life in optimizer steps ([EDM] Sec. 5 states its
    EMA as a half-life in images)."""
    return 0.5 ** (1.0 / halflife_steps)


def lr_lambda(cfg: TrainConfig) -> Callable[[int], float]:
    """Linear warmup, then cosine decay from cfg.lr to cfg.lr_min, or constant (a factor on cfg.lr)."""
    floor = cfg.lr_min / cfg.lr

    def f(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if cfg.schedule == "constant":
            return 1.0
        progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return f


def _slice(batch: Batch, lo: int, hi: int) -> Batch:
    return {k: v[lo:hi] for k, v in batch.items()}


def check_batch_split(batch_size: int, world_size: int, accumulate: int) -> None:
    """UserError unless `accumulate` >= 1 and the global batch splits evenly into world_size x accumulate
    micro-batches (a bad train.batch_size or --accumulate is bad input, not a failed run)."""
    if not isinstance(accumulate, int) or isinstance(accumulate, bool) or accumulate < 1:
        raise UserError(f"--accumulate must be an integer >= 1, got {accumulate!r}")
    if batch_size % (world_size * accumulate):
        raise UserError(f"train.batch_size={batch_size} is not divisible by world size {world_size} x "
                        f"--accumulate {accumulate}; choose a train.batch_size that is a multiple of "
                        f"{world_size * accumulate}, or another --accumulate")


class Trainer:
    """State of one run: model, EMA, optimizer, LR schedule, data generator, step.

    UserError (`check_batch_split`) if train.batch_size does not split into world size x `accumulate`."""

    def __init__(self, setup: TrainSetup, cfg: TrainConfig, run_dir: Path, record: dict, seed: int,
                 accumulate: int = 1, extra: dict | None = None):
        self.setup, self.cfg, self.run_dir, self.record = setup, cfg, Path(run_dir), record
        self.extra = extra or {}
        self.rank, self.world_size = world()
        check_batch_split(cfg.batch_size, self.world_size, accumulate)
        self.accumulate = accumulate
        self.model = setup.model
        decay = cfg.ema_decay or ema_decay_of(cfg.ema_halflife_steps)
        self.ema = make_ema(self.model, decay, cfg.ema_warmup)
        if setup.bind_ema is not None:  # restore() loads into this same module in place
            setup.bind_ema(self.ema.module)
        fused = next(self.model.parameters()).is_cuda
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, betas=tuple(cfg.betas),
                                     weight_decay=cfg.weight_decay, fused=fused or None)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lr_lambda(cfg))
        self.gen = torch.Generator().manual_seed(seed)
        self.step, self.elapsed = 0, 0.0
        self.saved_step: int | None = None  # the step of the checkpoint at ckpt_path (save or restore)
        self.ddp = self.model
        if self.world_size > 1:
            self.ddp = nn.parallel.DistributedDataParallel(self.model)

    # ---- checkpoints -------------------------------------------------------------------------
    @property
    def ckpt_path(self) -> Path:
        return self.run_dir / "checkpoints" / "last.safetensors"

    def state(self) -> tuple[dict[str, Tensor], dict]:
        tensors = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        tensors |= {f"ema.{k}": v for k, v in self.ema.state_dict().items()}
        opt = self.opt.state_dict()
        for i, s in opt["state"].items():
            tensors |= {f"optim.{i}.{k}": torch.as_tensor(v) for k, v in s.items()}
        tensors["rng.torch"] = torch.get_rng_state()
        tensors["rng.data"] = self.gen.get_state()
        meta = {"step": self.step, "elapsed": self.elapsed, "config": self.record,
                "optim_groups": opt["param_groups"], "sched": self.sched.state_dict(), **self.extra}
        return tensors, meta

    def save(self) -> None:
        self.saved_step = self.step  # on every rank: rank 0 writes the one file they share
        if self.rank != 0:
            return
        tensors, meta = self.state()
        save_checkpoint(self.ckpt_path, tensors, meta)
        if self.cfg.keep_every and self.step % self.cfg.keep_every == 0:
            save_checkpoint(self.ckpt_path.with_name(f"step_{self.step:08d}.safetensors"), tensors, meta)

    def restore(self, path: Path) -> None:
        tensors, meta = load_checkpoint(path)
        load_weights(self.model, split_prefix(tensors, "model."), path)
        load_weights(self.ema, split_prefix(tensors, "ema."), path)
        state: dict[int, dict[str, Any]] = {}
        for k, v in split_prefix(tensors, "optim.").items():
            i, name = k.split(".", 1)
            state.setdefault(int(i), {})[name] = v
        self.opt.load_state_dict({"state": state, "param_groups": meta["optim_groups"]})
        self.sched.load_state_dict(meta["sched"])
        torch.set_rng_state(tensors["rng.torch"])
        self.gen.set_state(tensors["rng.data"])
        self.step, self.elapsed = meta["step"], meta["elapsed"]
        self.saved_step = self.step

    # ---- one step ----------------------------------------------------------------------------
    def scheduled(self) -> dict[str, float]:
        """The step-dependent values of the next step (TrainSetup.schedule), {} without a schedule."""
        return self.setup.schedule(self.step) if self.setup.schedule else {}

    def train_step(self) -> tuple[float, float]:
        cfg = self.cfg
        batch = self.setup.batch(self.gen, cfg.batch_size)  # the global batch, same on every rank
        device = next(iter(batch.values())).device
        for name, value in self.scheduled().items():
            batch[name] = torch.full((cfg.batch_size,), value, dtype=torch.get_default_dtype(), device=device)
        per_rank = cfg.batch_size // self.world_size
        local = _slice(batch, self.rank * per_rank, (self.rank + 1) * per_rank)
        micro = per_rank // self.accumulate
        amp = (torch.autocast("cuda", dtype=torch.bfloat16) if cfg.amp == "bf16" and
               next(self.model.parameters()).is_cuda else nullcontext())
        total = torch.zeros(())
        self.opt.zero_grad(set_to_none=True)
        for j in range(self.accumulate):
            last = j == self.accumulate - 1
            sync = nullcontext() if last or self.world_size == 1 else self.ddp.no_sync()
            with sync, amp:
                loss = self.setup.loss(self.ddp, _slice(local, j * micro, (j + 1) * micro)).mean()
                (loss / self.accumulate).backward()
            total += loss.detach().float().cpu() / self.accumulate
        if self.world_size > 1:  # report the global mean loss
            dist.all_reduce(total := total.to(next(self.model.parameters()).device))
            total = total.cpu() / self.world_size
        if not torch.isfinite(total):
            kept = (f"the last good checkpoint (step {self.saved_step}) is kept at {self.ckpt_path}"
                    if self.saved_step is not None else
                    "no checkpoint was saved before it, so there is nothing to resume")
            raise TrainingError(f"loss became {float(total)} at step {self.step + 1} "
                                f"(lr={self.sched.get_last_lr()[0]:.3g}); {kept}")
        grad_norm = nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip or math.inf)
        self.opt.step()
        self.sched.step()
        self.ema.update_parameters(self.model)
        self.step += 1
        return float(total), float(grad_norm)


LOG_FIELDS = ("step", "loss", "grad_norm", "lr")  # in every row the loop writes, numbers (step an int)


def read_log(log: Path) -> list[dict]:
    """The rows of a run's log.jsonl ([] where there is none): one JSON object a line with at least
    LOG_FIELDS. The loop appends each row with a single write, so a crash leaves at most a partial last
    line: a last line that is not JSON is that remnant and is dropped. Any other line that is not a row
    makes the log corrupt: UserError naming the file and the line."""
    log = Path(log)
    if not log.is_file():
        return []
    try:
        text = log.read_text(errors="replace")
    except OSError as e:
        raise UserError(f"{log}: {e.strerror}") from None
    lines = [(i, line) for i, line in enumerate(text.splitlines(), 1) if line.strip()]
    rows = []
    for i, line in lines:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if i == lines[-1][0]:  # why: what a crash during the append leaves; the next row starts afresh
                break
            row = None
        if not (isinstance(row, dict) and type(row.get("step")) is int
                and all(type(row.get(k)) in (int, float) for k in LOG_FIELDS[1:])):
            raise UserError(f"{log} is corrupt: line {i} is not a JSON object with numbers "
                            f"{', '.join(LOG_FIELDS)}")
        rows.append(row)
    return rows


def train(setup: TrainSetup, cfg: TrainConfig, run_dir: Path, record: dict, seed: int = 0,
          resume: bool = False, accumulate: int = 1, progress: bool = True,
          stop_after: int | None = None, extra: dict | None = None,
          on_start: Callable[[Trainer], None] | None = None) -> Trainer:
    """Train until cfg.steps (or cfg.minutes, or `stop_after` steps in this call); return the Trainer.

    `record` is the resolved config stored in every checkpoint, `extra` more JSON metadata (e.g. the
    data shape needed to rebuild the model). UserError, before any file is written, if cfg.batch_size
    does not split into world size x `accumulate` (`check_batch_split`). With `resume`, continue from
    run_dir/checkpoints/last.safetensors exactly where it stopped, its log.jsonl cut back to the
    checkpoint's step (`read_log`; UserError for a corrupt log, before any file changes).
    `on_start(trainer)` runs after the checkpoint is restored and before the first step (a caller writes
    its files only then, once the checkpoint is known to fit). Ctrl-C finishes the current step, saves a
    checkpoint and raises KeyboardInterrupt (train/monitor.py); `progress` shows a bar or periodic log
    lines.
    """
    tr = Trainer(setup, cfg, run_dir, record, seed, accumulate, extra)
    log = tr.run_dir / "log.jsonl"
    main = tr.rank == 0
    kept = None  # resuming: the log rows up to the checkpoint (a crash leaves rows after it)
    if resume:
        tr.restore(tr.ckpt_path)
        if main and log.is_file():
            try:  # why: before on_start changes any file, so a refused resume leaves the run as it was
                kept = [row for row in read_log(log) if row["step"] <= tr.step]
            except UserError as e:
                raise UserError(f"{e}; mend it, or move {log.name} aside, to resume") from None
    if on_start is not None:
        on_start(tr)
    if main:
        tr.run_dir.mkdir(parents=True, exist_ok=True)
        if kept is not None:
            write_text(log, "".join(json.dumps(row) + "\n" for row in kept))
    bar = Progress(cfg.steps, tr.step, cfg.minutes, progress and main)
    board = TensorBoard(tr.run_dir, setup.preview) if cfg.tensorboard and main else None
    t0, last_t, last_step = time.perf_counter(), time.perf_counter(), tr.step
    start_elapsed, run_steps = tr.elapsed, 0
    interrupts = Interrupts(tr.world_size == 1)
    try:
        with interrupts:
            while tr.step < cfg.steps:
                scheduled = tr.scheduled()
                loss, gnorm = tr.train_step()
                run_steps += 1
                tr.elapsed = start_elapsed + time.perf_counter() - t0
                out_of_time = cfg.minutes > 0 and tr.elapsed >= 60 * cfg.minutes
                if cfg.minutes > 0 and tr.world_size > 1:  # why: each rank's clock differs; all stop together
                    out_of_time = stop_together(out_of_time, next(tr.model.parameters()).device)
                stop = out_of_time or interrupts.asked or (stop_after is not None and run_steps >= stop_after)
                row = None
                if tr.step % cfg.log_every == 0 or tr.step == cfg.steps or stop:
                    now = time.perf_counter()
                    row = {"step": tr.step, "loss": loss, "grad_norm": gnorm, "lr": tr.sched.get_last_lr()[0],
                           "it_s": (tr.step - last_step) / max(now - last_t, 1e-9), "elapsed_s": tr.elapsed,
                           **scheduled}
                    last_t, last_step = now, tr.step
                    if main:
                        with open(log, "a") as f:  # why: one write per row; a crash tears the last line only
                            f.write(json.dumps(row) + "\n")
                    if board is not None:
                        board.scalars(tr.step, row)
                bar.update(tr.step, tr.elapsed, loss, row and row["it_s"])
                if tr.step % cfg.ckpt_every == 0 or tr.step == cfg.steps or stop:
                    tr.save()
                    if board is not None:
                        board.snapshot(tr.step, tr.model, tr.ema.module)
                if stop:
                    break
    finally:  # why: event files and the bar are closed whatever stops the loop
        bar.close()
        if board is not None:
            board.close()
    if interrupts.asked:
        raise KeyboardInterrupt(f"interrupted at step {tr.step}; checkpoint saved")
    return tr
