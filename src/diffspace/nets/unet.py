"""A small UNet for images after [DDPM] arXiv 2006.11239 App. B and ADM, [CG] arXiv 2105.05233 Sec. 3.

ResBlocks with GroupNorm and the noise embedding injected by scale-shift ([CG] Sec. 3, "adaptive group
normalization"), self-attention at chosen resolutions, dropout, channel multipliers per level, and a class
embedding whose extra index is the null class for classifier-free guidance. With `text_dim` > 0, a
cross-attention block follows each self-attention block and the pooled text embedding joins the noise
embedding (nets/cross_attention.py, [LDM] arXiv 2112.10752 Sec. 3.3). It knows nothing about diffusion:
forward(x (B, C, H, W), noise_cond (B,) or (1,), class_labels (B,) | None, text_emb, text_mask,
text_pooled, noise_cond_2 (B,) | None: a second noise condition for nets built with `second_cond`) ->
(B, C, H, W).
"""

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from diffspace.nets.cross_attention import CrossAttention, TextConditioning, TextContext, condition
from diffspace.nets.embedding import NoiseEmbedding


@dataclass
class UNetConfig:
    channels: int = 64
    channel_mults: list[int] = field(default_factory=lambda: [1, 2])
    num_res_blocks: int = 2
    attn_resolutions: list[int] = field(default_factory=lambda: [4])
    heads: int = 4
    dropout: float = 0.1
    second_cond: bool = False  # a second noise condition (noise_cond_2): the interval of a two-time map


def _norm(ch: int) -> nn.GroupNorm:
    """GroupNorm with the largest group count <= 32 that divides ch."""
    return nn.GroupNorm(max(g for g in range(1, 33) if ch % g == 0), ch)


def _zero(module: nn.Module) -> nn.Module:
    """Zero-initialized last layers make every residual branch start as the identity ([CG] App. A)."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, emb_dim: int, dropout: float):
        super().__init__()
        self.norm1, self.conv1 = _norm(c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * c_out)
        self.norm2, self.drop = _norm(c_out), nn.Dropout(dropout)
        self.conv2 = _zero(nn.Conv2d(c_out, c_out, 3, padding=1))
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(emb)[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift  # [CG] Sec. 3: AdaGN(h, y) = y_s GroupNorm(h) + y_b
        h = self.conv2(self.drop(F.silu(h)))
        return self.skip(x) + h


class Attention(nn.Module):
    """Multi-head self-attention over the H*W positions, through PyTorch's fused SDPA."""

    def __init__(self, ch: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm, self.qkv = _norm(ch), nn.Conv2d(ch, 3 * ch, 1)
        self.proj = _zero(nn.Conv2d(ch, ch, 1))

    def forward(self, x: Tensor) -> Tensor:
        B, C, H, W = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(B, 3, self.heads, C // self.heads, H * W).transpose(-1, -2) \
            .unbind(1)  # each (B, heads, HW, C / heads)
        h = F.scaled_dot_product_attention(q, k, v).transpose(-1, -2).reshape(B, C, H, W)
        return x + self.proj(h)


class _Level(nn.Module):
    """ResBlocks at one resolution, each followed by attention then cross-attention to text when enabled."""

    def __init__(self, chans: list[tuple[int, int]], emb_dim: int, dropout: float, attn: bool, heads: int,
                 text_dim: int = 0):
        super().__init__()
        self.res = nn.ModuleList(ResBlock(a, b, emb_dim, dropout) for a, b in chans)
        self.attn = nn.ModuleList(Attention(b, heads) if attn else nn.Identity() for _, b in chans)
        self.cross = nn.ModuleList(CrossAttention(b, text_dim, heads) for _, b in chans) \
            if attn and text_dim else None

    def block(self, j: int, h: Tensor, emb: Tensor, ctx: TextContext | None) -> Tensor:
        h = self.attn[j](self.res[j](h, emb))
        return h if self.cross is None else self.cross[j](h, ctx)


class UNet(nn.Module):
    """forward(x (B, C, H, W), noise_cond (B,) or (1,), class_labels (B,) | None,
    text_emb (B, L, text_dim) | None, text_mask (B, L) | None, text_pooled (B, text_pooled_dim) | None)
    -> (B, C, H, W).

    `resolution` is the input side, divisible by 2^(len(channel_mults) - 1); attention runs at the
    resolutions listed in `attn_resolutions`. `num_classes` > 0 adds a class embedding (index
    num_classes = null class; class_labels=None means the null class). `text_dim` > 0 adds
    cross-attention at the attention resolutions and a pooled-text embedding (text_pooled_dim, default
    text_dim); no text means the null caption. Raises ValueError for text given to a net without it.
    """

    def __init__(self, in_channels: int, resolution: int, channels: int = 64,
                 channel_mults: tuple[int, ...] | list[int] = (1, 2), num_res_blocks: int = 2,
                 attn_resolutions: tuple[int, ...] | list[int] = (4,), heads: int = 4, dropout: float = 0.1,
                 num_classes: int = 0, text_dim: int = 0, text_pooled_dim: int | None = None,
                 second_cond: bool = False):
        super().__init__()
        if resolution % 2 ** (len(channel_mults) - 1):
            raise ValueError(f"resolution {resolution} is not divisible by 2^{len(channel_mults) - 1}")
        emb_dim = 4 * channels
        self.embed = NoiseEmbedding(emb_dim, num_classes, freq_dim=channels, second_cond=second_cond)
        self.text = TextConditioning(text_dim, text_pooled_dim or text_dim, emb_dim) if text_dim else None
        self.inp = nn.Conv2d(in_channels, channels, 3, padding=1)
        widths = [channels * m for m in channel_mults]
        res = [resolution // 2**i for i in range(len(widths))]
        self.down, self.downsample, skips, c = nn.ModuleList(), nn.ModuleList(), [channels], channels
        for i, w in enumerate(widths):
            chans = [(c if j == 0 else w, w) for j in range(num_res_blocks)]
            self.down.append(_Level(chans, emb_dim, dropout, res[i] in attn_resolutions, heads, text_dim))
            skips += [w] * num_res_blocks
            c = w
            last = i == len(widths) - 1
            self.downsample.append(nn.Identity() if last else nn.Conv2d(w, w, 3, stride=2, padding=1))
            skips += [] if last else [w]
        self.mid = _Level([(c, c), (c, c)], emb_dim, dropout, True, heads, text_dim)
        self.up, self.upsample = nn.ModuleList(), nn.ModuleList()
        for i, w in reversed(list(enumerate(widths))):
            chans = []
            for _ in range(num_res_blocks + 1):  # one extra block eats the downsampler's skip
                chans.append((c + skips.pop(), w))
                c = w
            self.up.append(_Level(chans, emb_dim, dropout, res[i] in attn_resolutions, heads, text_dim))
            self.upsample.append(nn.Identity() if i == 0 else nn.Conv2d(w, w, 3, padding=1))
        self.out = nn.Sequential(_norm(c), nn.SiLU(), _zero(nn.Conv2d(c, in_channels, 3, padding=1)))

    def forward(self, x: Tensor, noise_cond: Tensor, class_labels: Tensor | None = None,
                text_emb: Tensor | None = None, text_mask: Tensor | None = None,
                text_pooled: Tensor | None = None, noise_cond_2: Tensor | None = None) -> Tensor:
        emb, ctx = condition(self.embed, self.text, noise_cond, class_labels, text_emb, text_mask,
                             text_pooled, noise_cond_2)
        h = self.inp(x)
        skips = [h]
        for level, down in zip(self.down, self.downsample, strict=True):
            for j in range(len(level.res)):
                h = level.block(j, h, emb, ctx)
                skips.append(h)
            if not isinstance(down, nn.Identity):
                h = down(h)
                skips.append(h)
        for j in range(len(self.mid.res)):
            h = self.mid.block(j, h, emb, ctx)
        for level, up in zip(self.up, self.upsample, strict=True):
            for j in range(len(level.res)):
                h = level.block(j, torch.cat([h, skips.pop()], dim=1), emb, ctx)
            if not isinstance(up, nn.Identity):
                h = up(F.interpolate(h, scale_factor=2, mode="nearest"))
        return self.out(h)
