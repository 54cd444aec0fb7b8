"""A Diffusion Transformer, [DIT] arXiv 2212.09748: patchify, adaLN-Zero blocks, fixed 2-D sin-cos positions.

It knows nothing about diffusion: forward(x (B, C, H, W), noise_cond (B,) or (1,), class_labels (B,) | None,
text_emb, text_mask, text_pooled, noise_cond_2 (B,) | None for nets built with `second_cond`). The
conditioning vector is the shared noise embedding plus the class embedding (index num_classes = null
class), as in [DIT] Sec. 3.2 "adaLN-Zero block". With `text_dim` > 0 each block gains cross-attention to
the text tokens between self-attention and the MLP (as PixArt-alpha, arXiv 2310.00426 Sec. 2.3, does for
DiT), and the pooled text embedding joins the conditioning vector (nets/cross_attention.py).
"""

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from diffspace.nets.cross_attention import CrossAttention, TextConditioning, TextContext, condition
from diffspace.nets.embedding import NoiseEmbedding, sinusoidal


@dataclass
class DiTConfig:
    patch: int = 2
    hidden: int = 128
    depth: int = 4
    heads: int = 4
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    second_cond: bool = False  # a second noise condition (noise_cond_2): the interval of a two-time map


def _modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    return x * (1 + scale[:, None]) + shift[:, None]


def _pos_embed(grid: int, dim: int) -> Tensor:
    """Fixed 2-D sin-cos positions [DIT] Sec. 3.2, half the channels per axis: (grid^2, dim)."""
    ys, xs = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    # sinusoidal() takes positions in "timestep units"; max_period 10^4 as in the Transformer
    return torch.cat([sinusoidal(ys.flatten(), dim // 2), sinusoidal(xs.flatten(), dim // 2)], dim=1)


class DiTBlock(nn.Module):
    def __init__(self, hidden: int, heads: int, mlp_ratio: float, dropout: float, text_dim: int = 0):
        super().__init__()
        self.heads = heads
        self.cross = CrossAttention(hidden, text_dim, heads) if text_dim else None
        self.norm1 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.qkv, self.proj = nn.Linear(hidden, 3 * hidden), nn.Linear(hidden, hidden)
        self.norm2 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        width = int(hidden * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(hidden, width), nn.GELU(approximate="tanh"), nn.Dropout(dropout),
                                 nn.Linear(width, hidden))
        # [DIT] Sec. 3.2: zero-initialized regression of (shift, scale, gate) x 2: blocks start as identity
        self.ada = nn.Linear(hidden, 6 * hidden)
        nn.init.zeros_(self.ada.weight), nn.init.zeros_(self.ada.bias)

    def _attn(self, x: Tensor) -> Tensor:
        B, L, D = x.shape
        q, k, v = self.qkv(x).reshape(B, L, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        return self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, L, D))

    def forward(self, x: Tensor, c: Tensor, ctx: TextContext | None = None) -> Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(c).chunk(6, dim=1)
        x = x + gate1[:, None] * self._attn(_modulate(self.norm1(x), shift1, scale1))
        if self.cross is not None:
            x = self.cross(x, ctx)
        return x + gate2[:, None] * self.mlp(_modulate(self.norm2(x), shift2, scale2))


class DiT(nn.Module):
    """forward(x (B, C, H, W), noise_cond (B,) or (1,), class_labels (B,) | None,
    text_emb (B, L, text_dim) | None, text_mask (B, L) | None, text_pooled (B, text_pooled_dim) | None)
    -> (B, C, H, W), H = W.

    `text_dim` > 0 adds text conditioning (text_pooled_dim defaults to text_dim); no text means the null
    caption. Raises ValueError for text given to a net without it.
    """

    def __init__(self, in_channels: int, resolution: int, patch: int = 2, hidden: int = 128, depth: int = 4,
                 heads: int = 4, mlp_ratio: float = 4.0, dropout: float = 0.0, num_classes: int = 0,
                 text_dim: int = 0, text_pooled_dim: int | None = None, second_cond: bool = False):
        super().__init__()
        if resolution % patch or hidden % heads or hidden % 4:
            raise ValueError(f"need resolution % patch == 0, hidden % heads == 0 and hidden % 4 == 0; got "
                             f"resolution={resolution}, patch={patch}, hidden={hidden}, heads={heads}")
        self.patch, self.channels, self.grid = patch, in_channels, resolution // patch
        self.embed_patches = nn.Conv2d(in_channels, hidden, patch, stride=patch)
        self.register_buffer("pos", _pos_embed(self.grid, hidden), persistent=False)
        self.embed = NoiseEmbedding(hidden, num_classes, second_cond=second_cond)
        self.text = TextConditioning(text_dim, text_pooled_dim or text_dim, hidden) if text_dim else None
        self.blocks = nn.ModuleList(DiTBlock(hidden, heads, mlp_ratio, dropout, text_dim)
                                    for _ in range(depth))
        self.norm = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.ada = nn.Linear(hidden, 2 * hidden)
        self.head = nn.Linear(hidden, patch * patch * in_channels)
        for layer in (self.ada, self.head):  # [DIT] Sec. 3.2: the final layer starts at zero too
            nn.init.zeros_(layer.weight), nn.init.zeros_(layer.bias)

    def forward(self, x: Tensor, noise_cond: Tensor, class_labels: Tensor | None = None,
                text_emb: Tensor | None = None, text_mask: Tensor | None = None,
                text_pooled: Tensor | None = None, noise_cond_2: Tensor | None = None) -> Tensor:
        B = x.shape[0]
        h = self.embed_patches(x).flatten(2).transpose(1, 2) + self.pos.to(x.dtype)  # (B, L, hidden)
        c, ctx = condition(self.embed, self.text, noise_cond, class_labels, text_emb, text_mask, text_pooled,
                           noise_cond_2)
        for block in self.blocks:
            h = block(h, c, ctx)
        shift, scale = self.ada(c).chunk(2, dim=1)
        h = self.head(_modulate(self.norm(h), shift, scale))  # (B, L, p * p * C)
        p, g = self.patch, self.grid
        return h.reshape(B, g, g, p, p, self.channels).permute(0, 5, 1, 3, 2, 4).reshape(B, self.channels,
                                                                                         g * p, g * p)
