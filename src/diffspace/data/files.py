"""User vector data from .npy / .npz / .csv files (rows are examples)."""

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from diffspace.types import UserError


def load_vectors(path: str | Path, key: str | None = None) -> Tensor:
    """Load a float32 tensor (N, D). For .npz, `key` names the array (default: the only/first one)."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"data file not found: {p}")
    try:
        if p.suffix == ".npy":
            arr = np.load(p, allow_pickle=False)
        elif p.suffix == ".npz":
            with np.load(p, allow_pickle=False) as z:
                names = list(z.keys())
                if not names:
                    raise UserError(f"{p}: the .npz archive holds no arrays")
                if key is not None and key not in names:
                    raise UserError(f"{p}: no array {key!r} (has {', '.join(names)})")
                arr = z[key or names[0]]
        elif p.suffix == ".csv":
            arr = np.loadtxt(p, delimiter=",", dtype=np.float64, ndmin=2)
        else:
            raise UserError(f"{p}: unsupported data file type {p.suffix!r} (use .npy, .npz or .csv)")
    except (ValueError, OSError) as e:
        raise UserError(f"{p}: cannot read data ({str(e).splitlines()[0]})") from None
    arr = np.asarray(arr)
    if arr.ndim != 2 or len(arr) == 0 or not np.issubdtype(arr.dtype, np.number):
        raise UserError(f"{p}: expected a non-empty numeric array of shape (N, D), got {arr.shape}")
    if not np.isfinite(arr).all():
        raise UserError(f"{p}: data contains NaN or Inf")
    return torch.from_numpy(arr.astype(np.float32))
