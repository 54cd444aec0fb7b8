"""Small helpers shared across roles."""

import re

import torch
from torch import Tensor

from diffspace.types import UserError


def bcast(coef: Tensor, x: Tensor) -> Tensor:
    """Reshape a per-example coefficient (B,) to broadcast against x (B, ...)."""
    return coef.reshape(coef.shape + (1,) * (x.ndim - coef.ndim)).to(x.dtype)


def lincomb(*terms: tuple[float, Tensor]) -> Tensor:
    """sum_j w_j T_j for float weights, in one new tensor: the first term scaled, the others added in place.

    why: a sampler step is such a sum over the whole batch; written with operators, every product and
    partial sum is one more pass over the batch and one more temporary tensor."""
    (w, t), *rest = terms
    out = t * w
    for w, t in rest:
        out.add_(t, alpha=w)
    return out


def shared_level(level: Tensor) -> Tensor:
    """A (1,) view of a (B,) noise level (or time) that is one value for the whole batch, else `level`.

    One value for the batch is recognised by its layout, a stride-0 expanded view such as the samplers'
    `sigma_batch` makes, so no value is read (no device sync). The result broadcasts against (B, ...)
    through `bcast`, and a wrapper computes its per-level coefficients once instead of B times."""
    if level.ndim == 1 and level.shape[0] > 1 and level.stride(0) == 0:
        if torch.compiler.is_compiling():  # why: a traced graph's inputs have no `_base` to read
            return level[:1]
        base = level._base  # why: the (1,) tensor a sampler expanded, without a slicing op per call
        # why: the base of a (1,) reinterpreting view (`.real` of a complex tensor) is another dtype
        return base if base is not None and base.shape == (1,) and base.dtype == level.dtype else level[:1]
    return level


def in_dtype_of(t: Tensor, x: Tensor) -> Tensor:
    """t in x's dtype. why: `Tensor.to` costs a dispatcher round trip even when it returns t itself, a
    visible share of a sampler step's host time on the CPU."""
    return t if t.dtype == x.dtype else t.to(x.dtype)


class LevelMemo:
    """`fn(shared_level(level), x)` remembered for a level that is one value for the batch, outside autograd.

    why: a sampling run calls its Denoiser at the same few noise levels chunk after chunk, and on the CPU
    the dozen small tensor ops that turn one level into coefficients cost more host time than the
    sampler's own arithmetic on the batch. Two keys: the level tensor itself (the samplers' `sigma_batch`
    hands out the same tensor for the same value, and its in-place version counter must not have moved),
    which reads no value and so works on any device with no sync; else (and for an inference tensor, which
    has no version counter), on the CPU, the level's value. Per-example levels, and calls under autograd
    (where no cached tensor may be saved for backward), and calls traced by torch.compile (whose graph
    computes the coefficients itself, and which cannot trace a lookup by object), run `fn` every time.
    `at` is for a level given as a Python float, whose coefficients depend on no tensor: it remembers
    them under autograd too, keyed by the inference mode (an inference tensor cannot be saved for
    backward).
    `fn` must depend on the level, x's dtype and x.ndim only."""

    def __init__(self, size: int = 1024):
        self.size, self.by_value, self.by_object, self.by_float = size, {}, {}, {}

    def at(self, fn, sigma: float, x: Tensor):
        """`fn(level, x)` at a level given as a Python float for the whole batch, the level a float64 (1,)
        tensor on x's device; remembered by (value, x's dtype, ndim and device, inference mode).

        why: a sampler that holds its levels as floats (`samplers.ode.slope`) then pays one dict lookup
        per call, in place of making a level tensor and finding it by identity: host work that runs with
        the caches the network left cold. The coefficients are constants (they depend on no tensor that
        requires grad), so they are remembered under autograd too; under torch.compile they are
        computed in the graph."""
        if torch.compiler.is_compiling():
            return fn(torch.tensor([sigma], dtype=torch.float64, device=x.device), x)
        key = (sigma, x.dtype, x.ndim, x.device, torch.is_inference_mode_enabled())
        out = self.by_float.get(key)
        if out is None:
            if len(self.by_float) >= self.size:
                self.by_float.clear()
            out = self.by_float[key] = fn(torch.tensor([sigma], dtype=torch.float64, device=x.device), x)
        return out

    def __call__(self, fn, level: Tensor, x: Tensor):
        if torch.is_grad_enabled() or torch.compiler.is_compiling():
            return fn(shared_level(level), x)
        mode = (x.dtype, x.ndim, torch.is_inference_mode_enabled())
        tracked = not level.is_inference()  # why: an inference tensor has no version counter to check
        hit = self.by_object.get((id(level), *mode)) if tracked else None
        if hit is not None and hit[0] is level and hit[1] == level._version:
            return hit[2]
        shared = shared_level(level)
        if shared.shape != (1,):
            return fn(shared, x)
        if shared.device.type == "cpu":  # why: reading the value of a device tensor would sync
            key = (float(shared), shared.dtype, *mode)
            out = self.by_value.get(key)
            if out is None:
                out = self.by_value[key] = fn(shared, x)
        else:
            out = fn(shared, x)
        if len(self.by_object) >= self.size or len(self.by_value) >= self.size:
            self.by_object.clear()
            self.by_value.clear()
        if tracked:  # why: the entry holds `level`, so its id cannot be reused by another tensor while stored
            self.by_object[(id(level), *mode)] = (level, level._version, out)
        return out


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


_OOM_SIZE = re.compile(r"(?:tried to allocate (\d+) bytes|Tried to allocate ([\d.]+) ([KMGT]i?B))")


def out_of_memory(e: BaseException) -> str | None:
    """What to print for torch's out-of-memory errors (torch.OutOfMemoryError on CUDA, a RuntimeError of the
    CPU allocator), with the size it asked for where torch says; None for any other error."""
    text = str(e)
    if type(e).__name__ != "OutOfMemoryError" and "DefaultCPUAllocator: can't allocate memory" not in text:
        return None
    size = _OOM_SIZE.search(text)
    if size is None:
        return "out of memory"
    return f"out of memory (it asked for {int(size[1]) / 1e9:.3g} GB more)" if size[1] else \
        f"out of memory (it asked for {size[2]} {size[3]} more)"
