"""Per-example random streams: draw i depends only on (seed, stream, global index i).

A sampler that draws its noise for a whole batch from one `torch.Generator` makes sample i depend on
the batch it sits in (its size, its order, the chunk size, the number of torchrun ranks). `Streams`
holds one generator per example instead, seeded from `numpy.random.SeedSequence([seed, stream, i])`
(the per-sample seeds of [EDM]'s generate.py, arXiv 2206.00364v2, re-derived here): every method
returns a tensor whose row i was drawn from example i's own generator, so a sample is the same for
any `--n`, batch layout or world size. Draws happen on the CPU (reproducible across devices) and are
moved to the requested device.

Every stochastic function in diffspace takes `generator: torch.Generator | Streams`; `randn_like`,
`rand_like` and `randint_like` below serve both (one generator for the batch, or one per row).

Gumbel noise is drawn in float64 ([GUMBEL64] arXiv 2409.02908v3 Sec. 4: float32 uniforms truncate the
Gumbel tail, a hidden lowering of the temperature); `gumbel_argmax` is the Gumbel-max draw from a
categorical ([GS] arXiv 1611.01144v5 Eq. 1), the one used by text sampling and the likelihood families.
"""

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

MAX_SEED = 2**63 - 1  # why: torch.manual_seed takes a signed 64-bit integer; SeedSequence no negative one


def example_seed(seed: int, index: int, stream: int = 0) -> int:
    """A 63-bit seed for example `index` of stream `stream` under `seed` (independent streams)."""
    state = np.random.SeedSequence([seed, stream, index]).generate_state(1, dtype=np.uint64)
    return int(state[0] >> np.uint64(1))


class Streams:
    """One torch.Generator per example (rows of a batch).

    Build with `Streams(seed, n, offset, stream)`: rows are examples offset .. offset + n - 1.
    `select(rows)` gives the streams of some rows (they advance together with this object's).
    """

    def __init__(self, seed: int, n: int, offset: int = 0, stream: int = 0,
                 generators: Sequence[torch.Generator] | None = None):
        if generators is None:
            generators = [torch.Generator().manual_seed(example_seed(seed, offset + i, stream))
                          for i in range(n)]
        self.generators = list(generators)

    def __len__(self) -> int:
        return len(self.generators)

    def select(self, rows: Tensor | Sequence[int]) -> "Streams":
        idx = rows.tolist() if isinstance(rows, Tensor) else list(rows)
        return Streams(0, 0, generators=[self.generators[i] for i in idx])

    def _stack(self, draw, shape: tuple[int, ...], device) -> Tensor:
        if shape[0] != len(self):
            raise ValueError(f"a batch of {shape[0]} rows drawn from {len(self)} streams")
        return torch.stack([draw(g, shape[1:]) for g in self.generators]).to(device)

    def randn(self, shape: tuple[int, ...], dtype=torch.float32, device=None) -> Tensor:
        """Standard normal (B, ...) with row i from stream i."""
        return self._stack(lambda g, s: torch.randn(s, generator=g, dtype=dtype), shape, device)

    def rand(self, shape: tuple[int, ...], dtype=torch.float32, device=None) -> Tensor:
        """Uniform [0, 1) (B, ...) with row i from stream i."""
        return self._stack(lambda g, s: torch.rand(s, generator=g, dtype=dtype), shape, device)

    def randint(self, high: int, shape: tuple[int, ...], device=None) -> Tensor:
        """Integers in [0, high) (B, ...) with row i from stream i."""
        return self._stack(lambda g, s: torch.randint(high, s, generator=g), shape, device)


Generator = torch.Generator | Streams


def randn(shape: tuple[int, ...], generator: Generator | None, dtype=torch.float32, device=None) -> Tensor:
    """Standard normal noise of `shape` from one generator, or per row from Streams."""
    if isinstance(generator, Streams):
        return generator.randn(tuple(shape), dtype, device)
    return torch.randn(shape, generator=generator, dtype=dtype).to(device)


def rand(shape: tuple[int, ...], generator: Generator | None, dtype=torch.float32, device=None) -> Tensor:
    """Uniform [0, 1) of `shape` from one generator, or per row from Streams."""
    if isinstance(generator, Streams):
        return generator.rand(tuple(shape), dtype, device)
    return torch.rand(shape, generator=generator, dtype=dtype).to(device)


def randint(high: int, shape: tuple[int, ...], generator: Generator | None, device=None) -> Tensor:
    """Integers in [0, high) of `shape` from one generator, or per row from Streams."""
    if isinstance(generator, Streams):
        return generator.randint(high, tuple(shape), device)
    return torch.randint(high, shape, generator=generator).to(device)


def randn_like(x: Tensor, generator: Generator | None) -> Tensor:
    return randn(tuple(x.shape), generator, x.dtype, x.device)


def select(generator: Generator | None, rows: Tensor) -> Generator | None:
    """The streams of some rows (Streams), or the shared generator itself."""
    return generator.select(rows) if isinstance(generator, Streams) else generator


def gumbel(shape: tuple[int, ...], generator: Generator | None, device=None) -> Tensor:
    """Standard Gumbel noise -log(-log u), u ~ U(0, 1), float64; row i from stream i with Streams."""
    u = rand(tuple(shape), generator, torch.float64, device)
    # why: u = 0 or 1 would give an infinite draw; clamp to the open interval of representable values
    u = u.clamp(torch.finfo(torch.float64).tiny, 1.0 - torch.finfo(torch.float64).eps)
    return -torch.log(-torch.log(u))


def gumbel_argmax(logits: Tensor, generator: Generator | None) -> Tensor:
    """A categorical draw (long, logits.shape[:-1]) from logits (B, ..., V): argmax(logits + g) added in
    float64 ([GS] Eq. 1); row b takes its noise from stream b when `generator` is Streams."""
    return (logits.double() + gumbel(tuple(logits.shape), generator, logits.device)).argmax(-1)
