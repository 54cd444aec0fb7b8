"""How the token models drive a transformer: the time it is shown, the attention masks of each model
kind, and the one protocol of cached decoding (`Context`).

A network from `nets/` knows nothing of diffusion: it maps ids (B, L) and an optional noise condition to
logits, attending as a boolean mask says (True = may attend), and it can keep the keys and values of
tokens it has seen (`Transformer.new_cache`). The masks of the model kinds are built here: causal (AR),
block-causal (block diffusion decoding without a cache) and the training mask of block diffusion over
a noisy and a clean copy side by side ([BD3] Sec. 3.2, arXiv 2503.09573v2).

Decoding left to right (AR, and BD3's blocks, [BD3] Alg. 2) reads new tokens after a prefix of final
ones. A `Context` holds that prefix for every sequence of a batch: `KVContext` as the network's keys
and values (each token is run once), `TokenContext` as the tokens themselves, run again at every call
(the reference that the cache must equal). Samplers speak only to the protocol.
"""

from typing import Protocol

import torch
from torch import Tensor, nn

T_SCALE = 1000.0  # a network sees noise_cond = 1000 t ("timestep units")


def time_input(t: Tensor, time_cond: bool) -> Tensor | None:
    """What a network with a time input is shown at times t: T_SCALE t in float32 (None without one)."""
    return (T_SCALE * t).float() if time_cond else None


def causal_mask(n: int, device=None) -> Tensor:
    """(n, n): token i attends to j <= i."""
    return torch.ones(n, n, dtype=torch.bool, device=device).tril()


def block_causal_mask(n: int, block: int, device=None) -> Tensor:
    """(n, n): token i attends to j when j's block is not after i's block (full attention inside a block);
    block = 1 is causal."""
    b = torch.arange(n, device=device) // block
    return b[:, None] >= b[None, :]


def bd3_train_mask(n: int, block: int, device=None) -> Tensor:
    """[BD3] Sec. 3.2 vectorized training over [x_t, x0] (length 2n): a noisy block attends to itself
    and to the clean blocks before it; a clean block attends block-causally to clean blocks."""
    b = torch.arange(n, device=device) // block
    same = b[:, None] == b[None, :]
    before = b[:, None] > b[None, :]
    top = torch.cat([same, before], dim=1)  # noisy queries: [noisy keys | clean keys]
    bottom = torch.cat([torch.zeros_like(same), same | before], dim=1)  # clean queries
    return torch.cat([top, bottom], dim=0)


class Context(Protocol):
    """Final tokens (a prefix of every sequence of a batch of B) that the tokens being decoded attend to,
    with the network that reads them. New tokens attend to the whole prefix and block-causally to each
    other (blocks of `block` tokens: 1 for AR, L' for block diffusion).

    `evals` counts the sequences the network has run so far (a call on b sequences adds b), so
    evals / B is the number of network calls per sequence, caches included."""

    evals: int

    def __call__(self, x: Tensor, t: Tensor | None = None, rows: Tensor | None = None) -> Tensor:
        """Logits (b, n, V) of tokens x (b, n) placed after the prefix of the sequences `rows` (b,) of the
        batch (None: all B), at times t (b,) (None: clean tokens). The prefix is unchanged."""
        ...

    def extend(self, x: Tensor, read: bool = False) -> Tensor | None:
        """Appends x (B, n) to every sequence's prefix. With `read`, returns the logits (B, n, V) that
        __call__(x) gave before, from the same network call; without, returns None and runs the network
        only if the prefix is kept as keys and values."""
        ...


class KVContext:
    """The prefix as the network's keys and values: each final token goes through the network once."""

    def __init__(self, net: nn.Module, block: int, time_cond: bool = False):
        self.net, self.block, self.time_cond = net, block, time_cond
        self.cache, self.evals = net.new_cache(), 0

    def _mask(self, n: int, device) -> Tensor | None:
        """(n, T + n): the prefix's T keys and the new ones block-causally; None where all may attend."""
        if n <= self.block:
            return None
        ones = torch.ones(n, self.cache.length, dtype=torch.bool, device=device)
        return torch.cat([ones, block_causal_mask(n, self.block, device)], dim=1)

    def __call__(self, x, t=None, rows=None):
        cache = self.cache
        if rows is not None and cache.length and len(rows) < cache.k[0].shape[0]:
            cache = cache.select(rows)  # why: a copy only when part of the batch is decoded
        self.evals += len(x)
        nc = None if t is None else time_input(t, self.time_cond)
        return self.net(x, nc, mask=self._mask(x.shape[1], x.device), cache=cache)

    def extend(self, x, read=False):
        self.evals += len(x)
        logits = self.net(x, mask=self._mask(x.shape[1], x.device), cache=self.cache, commit=True)
        return logits if read else None


class TokenContext:
    """The prefix as tokens: every call runs the network over [prefix, x] with the block-causal mask."""

    def __init__(self, net: nn.Module, block: int, time_cond: bool = False):
        self.net, self.block, self.time_cond = net, block, time_cond
        self.prefix, self.evals = None, 0

    def __call__(self, x, t=None, rows=None):
        prefix = self.prefix if self.prefix is not None else x[:, :0]
        prefix = prefix if rows is None else prefix[rows]
        b, n = len(x), prefix.shape[1]
        self.evals += b
        nc = None if t is None else time_input(t, self.time_cond)
        if nc is not None:  # one level per token: the prefix is clean (t = 0)
            nc = torch.cat([torch.zeros(b, n, device=x.device), nc[:, None].expand(b, x.shape[1])], dim=1)
        seq = torch.cat([prefix, x], dim=1)
        return self.net(seq, nc, mask=block_causal_mask(seq.shape[1], self.block, x.device))[:, n:]

    def extend(self, x, read=False):
        logits = self(x) if read else None
        self.prefix = x if self.prefix is None else torch.cat([self.prefix, x], dim=1)
        return logits


def context(net: nn.Module, block: int, time_cond: bool = False, kv_cache: bool = True) -> Context:
    """A KVContext, or with kv_cache=False a TokenContext (the same tokens, more computation)."""
    return (KVContext if kv_cache else TokenContext)(net, block, time_cond)
