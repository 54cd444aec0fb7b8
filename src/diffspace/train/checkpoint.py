"""Checkpoints: one safetensors file holding every tensor (weights, EMA, optimizer moments, RNG
states) with the JSON metadata (config, step, optimizer hyper-parameters, scheduler) in its header.

Writes are atomic (temp file, fsync, rename), so a crash never leaves a half-written checkpoint and
never replaces the last good one. No pickled code is ever stored.
"""

import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from diffspace.files import atomic_write
from diffspace.types import UserError

FORMAT = "diffspace-ckpt-1"
WEIGHTS_FORMAT = "diffspace-weights-1"  # one module's weights and metadata, no training state (an export)


def save_checkpoint(path: Path, tensors: dict[str, torch.Tensor], meta: dict, fmt: str = FORMAT) -> None:
    """Write tensors and meta to `path` atomically (files.atomic_write). OSError if it cannot be written
    (safetensors' own write errors, a full disk, are raised as OSError too)."""
    flat = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    with atomic_write(path) as tmp:
        try:
            save_file(flat, str(tmp), metadata={"diffspace": json.dumps({**meta, "format": fmt})})
        except SafetensorError as e:  # why: "Error while serializing: I/O error: No space left on device"
            raise OSError(f"cannot write {path}: {e}") from None


def load_checkpoint(path: Path, formats: tuple[str, ...] = (FORMAT,)) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, metadata) of a file in one of `formats`; UserError for a missing, corrupt or other file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
        tensors = load_file(str(path))
        meta = json.loads(header["diffspace"])
    except (SafetensorError, OSError, KeyError, ValueError, json.JSONDecodeError):
        raise UserError(f"{path}: not a readable diffspace checkpoint (corrupt or another format)") from None
    if meta.get("format") not in formats:
        raise UserError(f"{path}: unsupported checkpoint format {meta.get('format')!r}")
    return tensors, meta


def split_prefix(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}


def load_weights(module: torch.nn.Module, state: dict[str, torch.Tensor], source: Path) -> None:
    """load_state_dict with a one-line error when the checkpoint belongs to another model."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = [k for k in own if k in state and own[k].shape != state[k].shape]
    if missing or unexpected or wrong:
        what = (
            f"missing {missing[:3]}"
            if missing
            else f"unexpected {unexpected[:3]}"
            if unexpected
            else f"shape mismatch at {wrong[0]}: {tuple(state[wrong[0]].shape)} "
            f"vs {tuple(own[wrong[0]].shape)}"
        )
        raise UserError(f"{source}: checkpoint does not fit this model ({what})")
    module.load_state_dict(state)
