"""Categorical distributions over the levels of a data grid, and Gumbel noise in float64: the pieces
shared by the autoregressive models, the categorical VAE decoder and the Gumbel-softmax latents.

Gumbel-max ([GS] arXiv 1611.01144v5 Eq. 1): argmax_i(log pi_i + g_i) with g_i = -log(-log u_i),
u ~ U(0, 1), is a draw from Categorical(pi). The uniforms and the noise are float64
([GUMBEL64] arXiv 2409.02908v3 Sec. 4: float32 noise truncates the Gumbel tail, a hidden lowering of
the temperature).
"""

import torch
from torch import Tensor
from torch.nn import functional as F

from diffspace import rng
from diffspace.data.quantized import Grid


def gumbel_noise(shape: tuple[int, ...], generator: rng.Generator | None, device=None) -> Tensor:
    """Standard Gumbel noise of `shape`, float64; row i from stream i when `generator` is Streams."""
    u = rng.rand(shape, generator, dtype=torch.float64, device=device)
    # why: u = 0 or 1 would give an infinite draw; clamp to the open interval of representable values
    u = u.clamp(torch.finfo(torch.float64).tiny, 1.0 - torch.finfo(torch.float64).eps)
    return -torch.log(-torch.log(u))


def gumbel_argmax(logits: Tensor, gumbel: Tensor) -> Tensor:
    """[GS] Eq. 1: the index (long, logits.shape[:-1]) of a categorical draw, added in float64."""
    return (logits.double() + gumbel).argmax(-1)


def grid_log_prob(logits: Tensor, x: Tensor, grid: Grid) -> Tensor:
    """log P(x) in nats per example (B,): logits (B, *S, L) over the L = grid.levels values, x (B, *S)
    grid values; the factors of all positions are summed."""
    logp = F.log_softmax(logits, dim=-1).gather(-1, grid.index(x)[..., None])[..., 0]
    return logp.flatten(1).sum(1)


def grid_sample(logits: Tensor, grid: Grid, generator: rng.Generator | None) -> Tensor:
    """Grid values (B, *S) drawn from logits (B, *S, L) with float64 Gumbel-max."""
    k = gumbel_argmax(logits, gumbel_noise(tuple(logits.shape), generator, logits.device))
    return grid.value(k, logits.dtype)
