"""Run directories: resolve a run or checkpoint, rebuild its model, and draw samples from it.

A run directory holds config.toml, checkpoints/last.safetensors, log.jsonl, metrics.json, and the
pictures written by `train`, `sample` and `eval`.
"""

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from diffspace.cli.config import build
from diffspace.rng import Streams
from diffspace.train.checkpoint import load_checkpoint, load_weights, split_prefix
from diffspace.types import UserError


def checkpoint_of(path: str | Path) -> Path:
    p = Path(path)
    if p.is_dir():
        p = p / "checkpoints" / "last.safetensors"
    if not p.is_file():
        raise UserError(f"no checkpoint at {p} (expected a run directory or a .safetensors file)")
    return p


def run_dir_of(ckpt: Path) -> Path:
    return ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent


@dataclass
class Run:
    cfg: object  # the task's config dataclass
    module: nn.Module  # the trained module with EMA (or raw) weights, eval mode
    dir: Path
    step: int
    meta: dict


def load_run(path: str | Path, device: torch.device | str = "cpu", ema: bool = True) -> Run:
    """Rebuild the trained module of a run (EMA weights by default)."""
    from diffspace.cli.tasks import task_of

    ckpt = checkpoint_of(path)
    tensors, meta = load_checkpoint(ckpt)
    task = task_of(meta["config"], str(ckpt))
    cfg = build(task.config_cls, meta["config"], str(ckpt))
    module = task.build_module(cfg, meta)
    state = split_prefix(tensors, "ema.module.") if ema else split_prefix(tensors, "model.")
    load_weights(module, state, ckpt)
    return Run(cfg, module.to(device).eval(), run_dir_of(ckpt), meta["step"], meta)


@torch.no_grad()
def sample_chunk(denoiser, shape: tuple[int, ...], streams: Streams, sigmas: Tensor, sampler,
                 device: torch.device, **cond) -> Tensor:
    """len(streams) samples of `shape`: sample i's initial noise and every later draw come from stream i."""
    noise = streams.randn((len(streams), *shape), torch.float64)
    x = (noise * sigmas[0]).to(device=device, dtype=torch.float32)
    return sampler(denoiser, x, sigmas.to(device), generator=streams, **cond).cpu()
