"""User vector data from .npy / .npz / .csv (.tsv, .txt) files (rows are examples), and the per-column
standardisation a run trains on.

Text tables: the delimiter is detected among , ; tab | and whitespace (csv.Sniffer on the first lines;
one column needs none), and a first row that is not all numbers is a header, skipped with a note.
"""

import csv
import logging
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from diffspace.types import UserError

log = logging.getLogger("diffspace")
TABLE_SUFFIXES = (".csv", ".tsv", ".txt")
DELIMITERS = ",;\t| "


def load_vectors(path: str | Path, key: str | None = None) -> Tensor:
    """Load a float32 tensor (N, D). For .npz, `key` names the array; it may be left out when the archive
    holds one. UserError for a missing path, a folder, an unreadable or unsupported file, or an archive of
    several arrays without a key."""
    p = Path(path)
    if p.is_dir():
        raise UserError(f"data file {p} is a folder; give a .npy, .npz, .csv, .tsv or .txt file (image "
                        "folders are data.name = 'folder')")
    if not p.is_file():
        raise UserError(f"data file not found: {p}")
    if p.suffix == ".npy":
        with p.open("rb") as f:  # why: np.load reads a file without the .npy header as a pickle
            if f.read(len(np.lib.format.MAGIC_PREFIX)) != np.lib.format.MAGIC_PREFIX:
                raise UserError(f"{p}: not a valid .npy array file (no .npy header; numpy.save writes one)")
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
                if key is None and len(names) > 1:  # why: taking the first trained on it without a word
                    raise UserError(f"{p}: the archive holds {len(names)} arrays ({', '.join(names)}); "
                                    "name one with data.key")
                arr = z[key or names[0]]
        elif p.suffix in TABLE_SUFFIXES:
            arr = _read_table(p)
        else:
            raise UserError(f"{p}: unsupported data file type {p.suffix!r} (use .npy, .npz, .csv, .tsv or "
                            ".txt)")
    except UserError:
        raise
    except (ValueError, OSError) as e:  # why: UserError is a ValueError; its messages stand as they are
        raise UserError(f"{p}: cannot read data ({str(e).splitlines()[0]})") from None
    arr = np.asarray(arr)
    if arr.ndim != 2 or len(arr) == 0 or not np.issubdtype(arr.dtype, np.number):
        raise UserError(f"{p}: expected a non-empty numeric array of shape (N, D), got {arr.shape}")
    if np.iscomplexobj(arr):
        raise UserError(f"{p}: complex arrays are not supported (dtype {arr.dtype}); give real values")
    if not np.isfinite(arr).all():
        raise UserError(f"{p}: data contains NaN or Inf")
    x = arr.astype(np.float32)
    if not np.isfinite(x).all():
        raise UserError(f"{p}: values beyond float32's range (|x| > 3.4e38)")
    return torch.from_numpy(x)


def _numbers(fields: list[str]) -> bool:
    try:
        [float(v) for v in fields]
    except ValueError:
        return False
    return True


def _read_table(p: Path) -> np.ndarray:
    """A delimited text table (N, D) in float64, its delimiter and header detected (module docstring)."""
    lines = [line for line in p.read_text(encoding="utf-8-sig").splitlines() if line.strip()]
    if not lines:
        raise UserError(f"{p}: the file holds no rows")
    try:  # why: sniffed on rows after the first, which may be a header of another shape
        delimiter = csv.Sniffer().sniff("\n".join(lines[1:21] or lines), delimiters=DELIMITERS).delimiter
    except csv.Error:  # one column: no delimiter to find
        delimiter = ","
    split = (lambda line: line.split()) if delimiter == " " else (lambda line: line.split(delimiter))
    start = 0 if _numbers(split(lines[0])) else 1
    if start:
        log.info("%s: first row %r is a header; skipped", p, lines[0][:60])
    if start == len(lines):
        raise UserError(f"{p}: only a header row, no data")
    return np.loadtxt(lines[start:], delimiter=None if delimiter == " " else delimiter, dtype=np.float64,
                      ndmin=2)


def standardize_stats(x: Tensor) -> tuple[Tensor, Tensor]:
    """Per-column mean (D,) and standard deviation (D,) of x (N, D), float64; a constant column gets
    std 1 (why: dividing by 0 would make it NaN, and it carries nothing to learn)."""
    x = x.double()
    std = x.std(0) if len(x) > 1 else torch.ones(x.shape[1], dtype=torch.float64)
    return x.mean(0), torch.where(std > 0, std, torch.ones_like(std))
