"""Rebuilding a run from its checkpoint, given its task (`runs.api.load_run` finds the task itself)."""

from pathlib import Path

import torch

from diffspace.config import build
from diffspace.runs import rundir
from diffspace.runs.options import Run, Task
from diffspace.train.checkpoint import load_checkpoint, load_weights, split_prefix
from diffspace.types import UserError
from diffspace.utils import resolve_device


def read_run(path: str | Path) -> tuple[Path, dict, dict]:
    """(checkpoint file, tensors, metadata) of a run directory or checkpoint file."""
    ckpt = rundir.checkpoint_of(path)
    tensors, meta = load_checkpoint(ckpt)
    return ckpt, tensors, meta


def build_run(task: Task, ckpt: Path, tensors: dict, meta: dict, device: str | torch.device = "cpu",
              ema: bool = True) -> Run:
    """A Run of `task` from a read checkpoint: EMA weights by default, eval mode, on `device`."""
    cfg = build(task.config_cls, meta["config"], str(ckpt))
    module = task.build_module(cfg, meta)
    state = split_prefix(tensors, "ema.module.") if ema else split_prefix(tensors, "model.")
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
