"""Autoregressive models of discrete data: MADE for vectors and a gated PixelCNN for one-channel images,
with the exact log-likelihood by the chain rule and ancestral sampling.

References: [MADE] arXiv 1502.03509v2, [PIXELCNN] arXiv 1606.05328v2.

    log p(x) = sum_i log p(x_i | x_<i)          ([PIXELCNN] Eq. 1; nats per example)

over the positions in a fixed order (MADE: the dimensions in order; PixelCNN: the pixels in raster
order). Each factor is a categorical over the L levels of the data's `Grid` (binary data: L = 2), so
the number is -log P(x) of the discrete data, directly comparable with the other families
(docs/likelihood.md). Masks make the logits of position i depend on positions < i only: one network
pass gives every factor, and sampling takes one pass per position.

forward(x (B, *S) grid values) -> log p(x) (B,); logits(x) -> (B, *S, L).
"""

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from diffspace import rng
from diffspace.data.quantized import Grid, check_grid
from diffspace.families.categorical import grid_log_prob, grid_sample
from diffspace.types import UserError


def _normalize(x: Tensor, grid: Grid) -> Tensor:
    """Grid values to [-1, 1] (the networks' input scale)."""
    return (2 * x - (grid.low + grid.high)) / (grid.high - grid.low)


class MaskedLinear(nn.Linear):
    """A linear layer whose weight (out, in) is multiplied by a fixed 0/1 mask."""

    def __init__(self, mask: Tensor):
        super().__init__(mask.shape[1], mask.shape[0])
        self.register_buffer("mask", mask.float())

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight * self.mask, self.bias)


class MADE(nn.Module):
    """[MADE] Sec. 4 over data of `shape` (vectors (D,), or images read in raster order): hidden unit k
    of every layer gets a degree m(k) in 1..D-1 (here k mod (D-1) + 1, every degree equally often); a
    weight from a unit of degree a (input d has degree d) to a hidden unit of degree m is kept when
    m >= a, to the logits of dimension d when d > m."""

    def __init__(self, shape: tuple[int, ...], grid: Grid, hidden: int = 256, depth: int = 2):
        super().__init__()
        self.shape, self.grid = tuple(shape), check_grid(grid)
        dim = math.prod(self.shape)
        d_in = torch.arange(1, dim + 1)
        m = torch.arange(hidden) % max(dim - 1, 1) + 1
        layers: list[nn.Module] = []
        prev = d_in
        for _ in range(depth):
            layers += [MaskedLinear(m[:, None] >= prev[None]), nn.ReLU()]
            prev = m
        d_out = d_in.repeat_interleave(grid.levels)  # L logits per dimension, in dimension order
        self.net = nn.Sequential(*layers, MaskedLinear(d_out[:, None] > prev[None]))

    def logits(self, x: Tensor) -> Tensor:
        return self.net(_normalize(x, self.grid).flatten(1)).view(x.shape[0], *self.shape, self.grid.levels)

    def forward(self, x: Tensor) -> Tensor:
        return grid_log_prob(self.logits(x), x, self.grid)


def _gate(a: Tensor) -> Tensor:
    """[PIXELCNN] Eq. 2: tanh(W_f * x) . sigmoid(W_g * x), the two halves of the channels."""
    f, g = a.chunk(2, dim=1)
    return torch.tanh(f) * torch.sigmoid(g)


class _GatedLayer(nn.Module):
    """One layer of [PIXELCNN] Sec. 2.2 (Fig. 2). The vertical stack sees the rows up to its own
    (a (k//2 + 1) x k kernel), shifted down one row before it feeds the horizontal stack, which sees
    the pixels to its left in its row (1 x (k//2 + 1)); in the first layer the horizontal input is
    shifted right by one so that a pixel never sees itself. Later layers are residual."""

    def __init__(self, c_in: int, c: int, k: int, first: bool):
        super().__init__()
        self.k, self.first = k, first
        self.v = nn.Conv2d(c_in, 2 * c, (k // 2 + 1, k))
        self.h = nn.Conv2d(c_in, 2 * c, (1, k // 2 + 1))
        self.v_to_h = nn.Conv2d(2 * c, 2 * c, 1)
        self.h_out = nn.Conv2d(c, c, 1)

    def forward(self, v: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        H, W, r = v.shape[2], v.shape[3], self.k // 2
        v_pre = self.v(F.pad(v, (r, r, r, 0)))  # output row i: input rows i - r .. i
        below = F.pad(v_pre, (0, 0, 1, 0))[:, :, :H]  # row i gets rows < i only
        shift = 1 if self.first else 0
        h_pre = self.h(F.pad(h, (r + shift, 0, 0, 0)))[..., :W] + self.v_to_h(below)
        out = self.h_out(_gate(h_pre))
        return _gate(v_pre), out if self.first else h + out


class PixelCNN(nn.Module):
    """A gated PixelCNN ([PIXELCNN] Sec. 2) over one-channel images of shape (1, H, W): `layers` gated
    layers of `channels` channels and an odd kernel size, then ReLU, 1x1, ReLU, 1x1 to L logits."""

    def __init__(self, shape: tuple[int, int, int], grid: Grid, channels: int = 32, layers: int = 5,
                 kernel: int = 3):
        super().__init__()
        if len(shape) != 3 or shape[0] != 1:
            raise UserError(f"PixelCNN models one-channel images (1, H, W), got shape {tuple(shape)}")
        if kernel < 3 or kernel % 2 == 0:
            raise UserError(f"PixelCNN kernel must be odd and >= 3, got {kernel}")
        self.shape, self.grid = tuple(shape), check_grid(grid)
        self.layers = nn.ModuleList(_GatedLayer(1 if i == 0 else channels, channels, kernel, i == 0)
                                    for i in range(layers))
        self.head = nn.Sequential(nn.ReLU(), nn.Conv2d(channels, channels, 1), nn.ReLU(),
                                  nn.Conv2d(channels, grid.levels, 1))

    def logits(self, x: Tensor) -> Tensor:
        v = h = _normalize(x, self.grid)
        for layer in self.layers:
            v, h = layer(v, h)
        return self.head(h).permute(0, 2, 3, 1)[:, None]  # (B, 1, H, W, L)

    def forward(self, x: Tensor) -> Tensor:
        return grid_log_prob(self.logits(x), x, self.grid)


def ar_loss(model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
    """The training loop's loss: -log p(x) per example (B,) in nats."""
    return -model(batch["x"])


@torch.no_grad()
def sample_autoregressive(model: MADE | PixelCNN, n: int, generator: rng.Generator | None) -> Tensor:
    """n draws (n, *shape) of grid values, one network pass per position in the model's order; with
    rng.Streams, draw i depends only on stream i."""
    p = next(model.parameters())
    x = torch.full((n, *model.shape), model.grid.low, dtype=p.dtype, device=p.device)
    for i in range(math.prod(model.shape)):  # position i is read only by positions after it
        logits = model.logits(x).reshape(n, -1, model.grid.levels)[:, i]
        x.view(n, -1)[:, i] = grid_sample(logits, model.grid, generator)
    return x
