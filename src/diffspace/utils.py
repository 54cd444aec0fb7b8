"""Small helpers shared across roles."""

import torch
from torch import Tensor


def bcast(coef: Tensor, x: Tensor) -> Tensor:
    """Reshape a per-example coefficient (B,) to broadcast against x (B, ...)."""
    return coef.reshape(coef.shape + (1,) * (x.ndim - coef.ndim)).to(x.dtype)


def resolve_device(name: str) -> torch.device:
    """'auto' picks CUDA when available, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        from diffspace.types import UserError

        raise UserError(f"device {name!r} requested but CUDA is not available (use --device cpu or auto)")
    return torch.device(name)
