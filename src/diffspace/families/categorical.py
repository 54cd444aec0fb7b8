"""Categorical distributions over the levels of a data grid: the pieces shared by the autoregressive
models and the categorical VAE decoder. Draws are Gumbel-max with float64 noise (`diffspace.rng`).
"""

from torch import Tensor
from torch.nn import functional as F

from diffspace import rng
from diffspace.data.quantized import Grid


def grid_log_prob(logits: Tensor, x: Tensor, grid: Grid) -> Tensor:
    """log P(x) in nats per example (B,): logits (B, *S, L) over the L = grid.levels values, x (B, *S)
    grid values; the factors of all positions are summed."""
    logp = F.log_softmax(logits, dim=-1).gather(-1, grid.index(x)[..., None])[..., 0]
    return logp.flatten(1).sum(1)


def grid_sample(logits: Tensor, grid: Grid, generator: rng.Generator | None) -> Tensor:
    """Grid values (B, *S) drawn from logits (B, *S, L) with float64 Gumbel-max."""
    return grid.value(rng.gumbel_argmax(logits, generator), logits.dtype)
