"""Rebuilding a run from its checkpoint, given its task (`runs.api.load_run` finds the task itself), and
the weights-only export.

A weights file (`export_weights`) holds one set of the module's weights under the module's own keys (its
`state_dict()`: e.g. `net.inp.weight`), and in its safetensors header the run's metadata (config, step,
data shape, which set: "ema" or "model") without the optimizer, scheduler or random states. `load_run`
reads it like a checkpoint, so `diffspace sample model.safetensors` works; it cannot be resumed.
"""

from pathlib import Path

import torch

from diffspace.config import build
from diffspace.files import check_new_files
from diffspace.runs import rundir
from diffspace.runs.options import Run, Task
from diffspace.train.checkpoint import (
    FORMAT,
    WEIGHTS_FORMAT,
    load_checkpoint,
    load_weights,
    save_checkpoint,
    split_prefix,
)
from diffspace.types import UserError
from diffspace.utils import resolve_device


def read_run(path: str | Path) -> tuple[Path, dict, dict]:
    """(checkpoint file, tensors, metadata) of a run directory or checkpoint file."""
    ckpt = rundir.checkpoint_of(path)
    tensors, meta = load_checkpoint(ckpt, (FORMAT, WEIGHTS_FORMAT))
    return ckpt, tensors, meta


def build_run(task: Task, ckpt: Path, tensors: dict, meta: dict, device: str | torch.device = "cpu",
              ema: bool = True) -> Run:
    """A Run of `task` from a read checkpoint: EMA weights by default, eval mode, on `device` (a weights
    file: the one set it holds, whatever `ema` says). meta["weights"] says which set: "ema" or "model"."""
    cfg = build(task.config_cls, meta["config"], str(ckpt))
    module = task.build_module(cfg, meta)
    if meta["format"] == WEIGHTS_FORMAT:
        state = tensors
    else:
        state = split_prefix(tensors, "ema.module.") if ema else split_prefix(tensors, "model.")
        meta = {**meta, "weights": "ema" if ema else "model"}
    load_weights(module, state, ckpt)
    dev = resolve_device(device) if isinstance(device, str) else device
    return Run(task.name, cfg, module.to(dev).eval(), rundir.run_dir_of(ckpt), meta["step"], meta)


def load_as(task: Task, path: str | Path, device: str | torch.device = "cpu", ema: bool = True) -> Run:
    """The run at `path` as a `task` run (UserError if it is another task's)."""
    ckpt, tensors, meta = read_run(path)
    name = meta["config"].get("task", "continuous")
    if name != task.name:
        raise UserError(f"{ckpt}: a {name} run, expected a {task.name} run")
    return build_run(task, ckpt, tensors, meta, device, ema)


TRAINING_STATE = ("format", "optim_groups", "sched")  # checkpoint metadata a weights file leaves out


def export_weights(run: Run, out: str | Path) -> Path:
    """Write the run's module weights (the set it was loaded with, meta["weights"]) and its metadata to the
    safetensors file `out`, atomically; returns it. UserError if `out` exists or is no .safetensors name."""
    out_given, out = out, Path(out)  # why: the name as given, for check_new_files to see a trailing '/'
    if run.task == "diffusers":
        raise UserError(f"{run.dir} is a diffusers model; its folder already holds its weights")
    if out.suffix != ".safetensors":
        raise UserError(f"--out {out}: a weights file is a .safetensors file")
    check_new_files(out_given)
    meta = {k: v for k, v in run.meta.items() if k not in TRAINING_STATE}
    save_checkpoint(out, run.module.state_dict(), meta, fmt=WEIGHTS_FORMAT)
    return out
