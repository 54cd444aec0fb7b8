"""Normalizing flows: NICE, RealNVP and Glow, with the exact log-likelihood by the change of variables.

References: [NICE] arXiv 1410.8516v6, [RNVP] arXiv 1605.08803v3, [GLOW] arXiv 1807.03039v2.

A flow is an invertible map f: x -> z onto a standard normal base, so ([RNVP] Eq. 3)

    log p(x) = log N(f(x); 0, I) + log |det df/dx|          (nats per example).

Every layer has forward(x) -> (y, logdet (B,)) and inverse(y) -> x. `Flow` runs layers in levels and,
between levels, factors half of the channels out to the base ([RNVP] Sec. 3.6, multi-scale; a single
level factors nothing, the vector case). The layers:

  AdditiveCoupling  [NICE] Sec. 3.2   y = x + (1 - b) m(b x)                         log-det 0
  DiagonalScale     [NICE] Sec. 3.3   y = exp(s) x                                   log-det sum s
  AffineCoupling    [RNVP] Eq. 9      y = b x + (1 - b)(x exp(s(b x)) + t(b x))      log-det sum (1 - b) s
  Squeeze           [RNVP] Sec. 3.6   (C, H, W) -> (4C, H/2, W/2)                    log-det 0
  ActNorm           [GLOW] Sec. 3.1   y = exp(log_s) (x + bias) per channel          log-det HW sum log_s
  InvertibleLinear  [GLOW] Sec. 3.2   y = W x over channels (a 1x1 convolution),     log-det HW sum log|s|
                                      W = P L (U + diag(s)) (LU form, [GLOW] Sec. 3.2)

A mask b (1 = passed through and conditioning, 0 = transformed) must hold both values: a coupling on
1-D data has nothing to condition on and is refused with a UserError. Builders `nice`, `realnvp`,
`glow` take a vector shape (D,) or an image shape (C, H, W). Data on a grid is dequantized and the
offset added in diffspace.eval.bits (docs/likelihood.md), never here.
"""

import math

import torch
from torch import Tensor, nn

from diffspace import rng
from diffspace.nets.feedforward import conv_conditioner, feedforward
from diffspace.types import UserError

Shape = tuple[int, ...]


def standard_normal_logp(z: Tensor) -> Tensor:
    """log N(z; 0, I) per example (B,) of z (B, D)."""
    return -0.5 * (z**2).sum(1) - 0.5 * z.shape[1] * math.log(2 * math.pi)


def checkerboard_mask(shape: Shape, parity: int) -> Tensor:
    """Vectors (D,): every other dimension; images (C, H, W): pixels with (i + j) % 2 == parity, the
    same in every channel ([RNVP] Sec. 3.4)."""
    if len(shape) == 1:
        return (torch.arange(shape[0]) % 2 == parity).float()
    _, H, W = shape
    ij = torch.arange(H)[:, None] + torch.arange(W)[None]
    return (ij % 2 == parity).float().expand(shape).clone()


def channel_mask(shape: Shape, parity: int) -> Tensor:
    """The first half of the channels (of the dimensions, for vectors) when parity is 0, else the rest."""
    first = (torch.arange(shape[0]) < shape[0] // 2).float()
    first = first.view(-1, *([1] * (len(shape) - 1))).expand(shape).clone()
    return first if parity == 0 else 1 - first


class _Coupling(nn.Module):
    """A mask b and a conditioner net fed b * x (B, *S) -> (B, k C, ...) for k outputs per entry."""

    def __init__(self, mask: Tensor, net: nn.Module):
        super().__init__()
        if mask.min() == mask.max():
            raise UserError(f"a coupling layer on data of shape {tuple(mask.shape)} has nothing to split "
                            f"(its mask is all {int(mask.max())}); couplings need at least 2 dimensions or "
                            "channels")
        self.register_buffer("mask", mask.float())
        self.net = net


class AdditiveCoupling(_Coupling):
    """[NICE] Sec. 3.2 (additive coupling law): y = x + (1 - b) m(b x); volume preserving."""

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        b = self.mask
        return x + (1 - b) * self.net(b * x), x.new_zeros(x.shape[0])

    def inverse(self, y: Tensor) -> Tensor:
        b = self.mask
        return y - (1 - b) * self.net(b * y)


class AffineCoupling(_Coupling):
    """[RNVP] Eq. 9 with s = scale * tanh(raw): the conditioner outputs (raw, t) stacked on dim 1."""

    def __init__(self, mask: Tensor, net: nn.Module):
        super().__init__(mask, net)
        self.scale = nn.Parameter(torch.ones(mask.shape))

    def _s_t(self, x: Tensor) -> tuple[Tensor, Tensor]:
        b = self.mask
        raw, t = self.net(b * x).chunk(2, dim=1)
        # why: a bounded log-scale keeps exp(s) finite while the conditioner is still wild early in
        # training; the learned per-entry `scale` lets it grow where the data needs it
        return (1 - b) * self.scale * torch.tanh(raw), (1 - b) * t

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        s, t = self._s_t(x)
        return x * torch.exp(s) + t, s.flatten(1).sum(1)  # [RNVP] Eq. 9; log-det [RNVP] Sec. 3.3

    def inverse(self, y: Tensor) -> Tensor:
        s, t = self._s_t(y)  # b * y = b * x: the conditioner sees the same input both ways
        return (y - t) * torch.exp(-s)


class DiagonalScale(nn.Module):
    """[NICE] Sec. 3.3 ("allowing rescaling"): y = exp(s) * x elementwise, the top layer of NICE."""

    def __init__(self, shape: Shape):
        super().__init__()
        self.log_scale = nn.Parameter(torch.zeros(shape))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return x * torch.exp(self.log_scale), self.log_scale.sum().expand(x.shape[0])

    def inverse(self, y: Tensor) -> Tensor:
        return y * torch.exp(-self.log_scale)


def _per_channel(p: Tensor, x: Tensor) -> Tensor:
    return p.view(1, -1, *([1] * (x.ndim - 2)))


class ActNorm(nn.Module):
    """[GLOW] Sec. 3.1: y = exp(log_s) (x + bias) per channel (dim 1), initialized on the first batch
    it sees so that y has zero mean and unit variance per channel. `Flow.initialize(x)` runs that
    first batch explicitly (the same global batch on every rank of a distributed run)."""

    def __init__(self, channels: int):
        super().__init__()
        self.log_scale = nn.Parameter(torch.zeros(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        # why float, not bool: the training loop's EMA averages buffers too (a lerp of 1 and 1 stays 1)
        self.register_buffer("initialized", torch.tensor(0.0))

    @torch.no_grad()
    def _init(self, x: Tensor) -> None:
        dims = [0, *range(2, x.ndim)]
        if x.numel() // x.shape[1] < 2:
            raise UserError(f"ActNorm's data-dependent init needs more than one value per channel, got a "
                            f"batch of shape {tuple(x.shape)}")
        self.bias.copy_(-x.mean(dims))
        # why: + 1e-6 keeps a constant channel (e.g. an always-off pixel) from an infinite scale
        self.log_scale.copy_(-torch.log(x.std(dims, correction=0) + 1e-6))
        self.initialized.fill_(1.0)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if not self.initialized:
            self._init(x)
        y = (x + _per_channel(self.bias, x)) * _per_channel(self.log_scale.exp(), x)
        return y, (self.log_scale.sum() * x[0, 0].numel()).expand(x.shape[0])

    def inverse(self, y: Tensor) -> Tensor:
        return y * _per_channel((-self.log_scale).exp(), y) - _per_channel(self.bias, y)


class InvertibleLinear(nn.Module):
    """[GLOW] Sec. 3.2: an invertible 1x1 convolution (on vectors, an invertible linear map) in LU form
    W = P L (U + diag(sign * exp(log_s))), P fixed, L unit lower triangular, U strictly
    upper triangular; initialized from a random rotation (log|det W| = 0)."""

    def __init__(self, channels: int):
        super().__init__()
        w = torch.linalg.qr(torch.randn(channels, channels, dtype=torch.float64))[0]
        P, L, U = torch.linalg.lu(w)
        dtype = torch.get_default_dtype()
        self.register_buffer("perm", P.to(dtype))
        self.register_buffer("sign", U.diagonal().sign().to(dtype))
        self.lower = nn.Parameter(L.to(dtype))
        self.upper = nn.Parameter(U.to(dtype))
        self.log_s = nn.Parameter(U.diagonal().abs().log().to(dtype))

    def weight(self) -> Tensor:
        eye = torch.eye(len(self.sign), dtype=self.lower.dtype, device=self.lower.device)
        upper = self.upper.triu(1) + torch.diag(self.sign * self.log_s.exp())
        return self.perm @ (self.lower.tril(-1) + eye) @ upper  # [GLOW] Sec. 3.2, LU decomposition

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        y = torch.einsum("ij,bj...->bi...", self.weight(), x)
        return y, (self.log_s.sum() * x[0, 0].numel()).expand(x.shape[0])  # [GLOW] Table 1

    def inverse(self, y: Tensor) -> Tensor:
        y_last = y.movedim(1, -1)[..., None]  # (B, ..., C, 1)
        return torch.linalg.solve(self.weight(), y_last)[..., 0].movedim(-1, 1)


def squeezed_shape(shape: Shape) -> Shape:
    if len(shape) != 3 or shape[1] % 2 or shape[2] % 2:
        raise UserError(f"squeeze needs an image shape (C, H, W) with even H and W, got {shape}")
    C, H, W = shape
    return (4 * C, H // 2, W // 2)


class Squeeze(nn.Module):
    """[RNVP] Sec. 3.6: each 2x2 block of pixels becomes 4 channels, (B, C, H, W) -> (B, 4C, H/2, W/2)."""

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        B, C, H, W = x.shape
        y = x.reshape(B, C, H // 2, 2, W // 2, 2).permute(0, 1, 3, 5, 2, 4)
        return y.reshape(B, 4 * C, H // 2, W // 2), x.new_zeros(B)

    def inverse(self, y: Tensor) -> Tensor:
        B, C4, h, w = y.shape
        x = y.reshape(B, C4 // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3)
        return x.reshape(B, C4 // 4, 2 * h, 2 * w)


def factored_shape(shape: Shape) -> tuple[Shape, Shape]:
    """(factored-out part, kept part) when half the channels leave for the base ([RNVP] Sec. 3.6)."""
    if shape[0] < 2:
        raise UserError(f"cannot factor out half of the channels of shape {shape}: it has fewer than 2")
    out = shape[0] // 2
    return (out, *shape[1:]), (shape[0] - out, *shape[1:])


class Flow(nn.Module):
    """Levels of flow layers on data of `shape`; after every level but the last, the first half of the
    channels is factored out to the base ([RNVP] Sec. 3.6).

    forward(x (B, *shape)) -> (z (B, D), logdet (B,)); inverse(z (B, D)) -> x; log_prob(x) -> (B,)
    nats; sample(n, generator, temperature) -> (n, *shape). Raises UserError for a shape the levels
    cannot take (an odd side before a squeeze, fewer than 2 channels to factor).
    """

    def __init__(self, levels: list[list[nn.Module]], shape: Shape):
        super().__init__()
        self.levels = nn.ModuleList(nn.ModuleList(level) for level in levels)
        self.shape = tuple(shape)
        self.factored: list[Shape] = []  # shapes of the parts factored out after each level
        s = self.shape
        for i, level in enumerate(levels):
            for layer in level:
                s = squeezed_shape(s) if isinstance(layer, Squeeze) else s
            if i < len(levels) - 1:
                out, s = factored_shape(s)
                self.factored.append(out)
        self.final = s  # the shape leaving the last level

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        zs, logdet, h = [], x.new_zeros(x.shape[0]), x
        for i, level in enumerate(self.levels):
            for layer in level:
                h, ld = layer(h)
                logdet = logdet + ld
            if i < len(self.levels) - 1:
                out = self.factored[i][0]
                zs.append(h[:, :out].flatten(1))
                h = h[:, out:]
        return torch.cat([*zs, h.flatten(1)], dim=1), logdet

    def inverse(self, z: Tensor) -> Tensor:
        sizes = [math.prod(s) for s in (*self.factored, self.final)]
        parts = z.split(sizes, dim=1)
        h = parts[-1].reshape(-1, *self.final)
        for i in reversed(range(len(self.levels))):
            if i < len(self.levels) - 1:
                h = torch.cat([parts[i].reshape(-1, *self.factored[i]), h], dim=1)
            for layer in reversed(self.levels[i]):
                h = layer.inverse(h)
        return h

    def log_prob(self, x: Tensor) -> Tensor:
        z, logdet = self(x)
        return standard_normal_logp(z) + logdet  # [RNVP] Eq. 3

    @torch.no_grad()
    def initialize(self, x: Tensor) -> None:
        """Run ActNorm's data-dependent initialization on the batch x (a no-op once initialized)."""
        self(x)

    @torch.no_grad()
    def sample(self, n: int, generator: rng.Generator | None, temperature: float = 1.0) -> Tensor:
        """x = f^{-1}(T z), z ~ N(0, I): T < 1 is [GLOW]'s reduced-temperature sampling (its Sec. 5)."""
        p = next(self.parameters())
        z = rng.randn((n, math.prod(self.shape)), generator, dtype=p.dtype, device=p.device)
        return self.inverse(temperature * z)


def flow_loss(model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
    """The training loop's loss: -log p(x) per example (B,) in nats, through model.forward (so it
    also runs under DistributedDataParallel)."""
    z, logdet = model(batch["x"])
    return -(standard_normal_logp(z) + logdet)


def _check_shape(shape: Shape) -> Shape:
    shape = tuple(int(s) for s in shape)
    if len(shape) not in (1, 3) or math.prod(shape) < 2:
        raise UserError(f"a coupling flow needs data of shape (D,) with D >= 2 or (C, H, W), got {shape}")
    return shape


def _mlp_conditioner(shape: Shape, k: int, hidden: int, depth: int) -> nn.Module:
    """b * x (B, *shape) -> k outputs per entry stacked on dim 1, through a ReLU MLP on the flattened
    input, zero-initialized so that the coupling starts as the identity.

    why ReLU (as the papers' conditioners): on the checkerboard the same RealNVP (16 couplings, 128 x 2)
    reached 0.039 nats above the entropy with ReLU and 0.155 with SiLU in 7000 steps; piecewise-linear
    scales and shifts carve the cells' sharp edges."""
    D = math.prod(shape)
    return nn.Sequential(nn.Flatten(), feedforward(D, k * D, hidden, depth, zero_last=True, act=nn.ReLU),
                         nn.Unflatten(1, (k * shape[0], *shape[1:])))


def _conditioner(shape: Shape, k: int, hidden: int, depth: int) -> nn.Module:
    """A conv net for images (zero-initialized last layer), the MLP conditioner for vectors."""
    if len(shape) == 3 and shape[1] > 1:
        return conv_conditioner(shape[0], k * shape[0], hidden)
    return _mlp_conditioner(shape, k, hidden, depth)


def nice(shape: Shape, couplings: int = 4, hidden: int = 256, depth: int = 3) -> Flow:
    """[NICE] Sec. 5: additive couplings with alternating checkerboard masks and MLP conditioners on
    the flattened input, then a diagonal scaling."""
    shape = _check_shape(shape)
    layers = [AdditiveCoupling(checkerboard_mask(shape, i % 2), _mlp_conditioner(shape, 1, hidden, depth))
              for i in range(couplings)]
    return Flow([[*layers, DiagonalScale(shape)]], shape)


def realnvp(shape: Shape, couplings: int = 8, hidden: int = 256, depth: int = 2, levels: int = 2) -> Flow:
    """[RNVP] Sec. 3.6 / 4.1. Vectors: `couplings` affine couplings with alternating checkerboard masks.
    Images: each level but the last runs 3 checkerboard couplings, a squeeze and 3 channel couplings,
    then factors out half of the channels; the last level runs 4 checkerboard couplings."""
    shape = _check_shape(shape)
    affine = lambda s, mask: AffineCoupling(mask, _conditioner(s, 2, hidden, depth))
    if len(shape) == 1:
        return Flow([[affine(shape, checkerboard_mask(shape, i % 2)) for i in range(couplings)]], shape)
    out, s = [], shape
    for _ in range(levels - 1):
        level: list[nn.Module] = [affine(s, checkerboard_mask(s, i % 2)) for i in range(3)]
        s = squeezed_shape(s)
        level += [Squeeze(), *(affine(s, channel_mask(s, i % 2)) for i in range(3))]
        out.append(level)
        s = factored_shape(s)[1]
    out.append([affine(s, checkerboard_mask(s, i % 2)) for i in range(4)])
    return Flow(out, shape)


def glow(shape: Shape, steps: int = 8, hidden: int = 256, depth: int = 2, levels: int = 2) -> Flow:
    """[GLOW] Sec. 3 / Fig. 2. A step of flow is ActNorm, an invertible 1x1 convolution and an affine
    coupling of the second half of the channels on the first. Vectors: `steps` steps. Images: each of
    `levels` levels squeezes, runs `steps` steps and (but the last) factors out half of the channels."""
    shape = _check_shape(shape)

    def step(s: Shape) -> list[nn.Module]:
        return [ActNorm(s[0]), InvertibleLinear(s[0]),
                AffineCoupling(channel_mask(s, 0), _conditioner(s, 2, hidden, depth))]

    if len(shape) == 1:
        return Flow([[layer for _ in range(steps) for layer in step(shape)]], shape)
    out, s = [], shape
    for i in range(levels):
        s = squeezed_shape(s)
        out.append([Squeeze(), *(layer for _ in range(steps) for layer in step(s))])
        s = factored_shape(s)[1] if i < levels - 1 else s
    return Flow(out, shape)
