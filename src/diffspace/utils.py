"""Small helpers shared across roles."""

import torch
from torch import Tensor

from diffspace.types import UserError


def bcast(coef: Tensor, x: Tensor) -> Tensor:
    """Reshape a per-example coefficient (B,) to broadcast against x (B, ...)."""
    return coef.reshape(coef.shape + (1,) * (x.ndim - coef.ndim)).to(x.dtype)


def resolve_device(name: str) -> torch.device:
    """'auto' picks CUDA when available, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device {name!r} requested but CUDA is not available (use --device cpu or auto)")
    return torch.device(name)


def select_rows(cond: dict, rows: Tensor, batch: int) -> dict:
    """The conditioning of some rows of a batch: tensors with `batch` leading rows are indexed by `rows`,
    anything else (None, a batch-1 tensor that broadcasts) is passed through."""
    return {k: v[rows] if isinstance(v, Tensor) and v.ndim and v.shape[0] == batch else v
            for k, v in cond.items()}
