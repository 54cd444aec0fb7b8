"""The two towers of a contrastive text-image encoder ([CLIP] arXiv 2103.00020 Sec. 2.4, at toy scale).

ImageTower: levels of two conv blocks (the conv classifier's blocks) with 2x average pooling between
levels, then the map average-pooled to a grid x grid map and flattened, so where things are survives
(a global mean would forget it), then a linear map to the embedding. An optional colour-blind stem
applies one shared 3x3 conv to every colour plane and keeps the maximum over planes: features of
form that respond alike to an object of any colour, beside the ordinary colour input (an inductive
bias for shape features that transfer to colours a shape was never seen in).

TextTower: token embeddings and the pre-norm transformer blocks of nets/transformer.py (RoPE,
bidirectional attention) with a key padding mask, so padded positions change nothing; token features
(B, L, dim) after a final LayerNorm (what cross-attention reads) and a pooled embedding: the mean of
the real tokens' features through a linear map.

Neither normalizes its embedding; the contrastive model does.
"""

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from diffspace.nets.classifier import _ConvBlock
from diffspace.nets.transformer import Block, TransformerConfig


class ImageTower(nn.Module):
    """forward(x (B, C, H, W)) -> (B, embed_dim); H, W >= grid * 2^(levels - 1); `plane_stem` > 0 adds
    that many colour-blind stem channels (see the module docstring)."""

    def __init__(self, in_channels: int, embed_dim: int, width: int = 32, levels: int = 3, grid: int = 4,
                 plane_stem: int = 0):
        super().__init__()
        self.plane = nn.Conv2d(1, plane_stem, 3, padding=1) if plane_stem else None
        widths = [width * 2**i for i in range(levels)]
        chans = list(zip([in_channels + plane_stem] + widths[:-1], widths, strict=True))
        self.blocks = nn.ModuleList(nn.ModuleList([_ConvBlock(a, b, 0), _ConvBlock(b, b, 0)])
                                    for a, b in chans)
        self.grid = grid
        self.proj = nn.Linear(widths[-1] * grid * grid, embed_dim)

    def form(self, x: Tensor) -> Tensor:
        """The colour-blind stem (B, plane_stem, H, W): one conv on every colour plane, max over planes,
        so permuting the colour planes of an image leaves it unchanged."""
        B, C, H, W = x.shape
        return self.plane(x.reshape(B * C, 1, H, W)).view(B, C, -1, H, W).amax(dim=1)

    def forward(self, x: Tensor) -> Tensor:
        h = x if self.plane is None else torch.cat([x, self.form(x)], dim=1)
        for i, (b1, b2) in enumerate(self.blocks):
            if i > 0:
                h = F.avg_pool2d(h, 2, ceil_mode=True)
            h = b2(b1(h, None), None)
        return self.proj(F.adaptive_avg_pool2d(h, self.grid).flatten(1))


class TextTower(nn.Module):
    """forward(ids (B, L), mask (B, L) bool, True = real token) -> tokens (B, L, dim), pooled (B, embed_dim).

    Every row needs at least one real token (tokenize_captions guarantees it). Outputs at padded
    positions are defined but meaningless; nothing at a real position depends on padded ids.
    """

    def __init__(self, vocab_size: int, context_len: int, embed_dim: int, dim: int = 64, depth: int = 2,
                 heads: int = 4, mlp_ratio: float = 4.0):
        super().__init__()
        cfg = TransformerConfig(vocab_size, context_len, dim, depth, heads, mlp_ratio)
        self.dim, self.context_len = dim, context_len
        self.tok = nn.Embedding(vocab_size, dim)
        nn.init.normal_(self.tok.weight, std=0.02)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.proj = nn.Linear(dim, embed_dim)

    def forward(self, ids: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        B, L = ids.shape
        pos = torch.arange(L, device=ids.device)
        keys = mask[:, None, None, :]  # (B, 1, 1, L): every query sees the real keys only
        h = self.tok(ids)
        for i, blk in enumerate(self.blocks):
            h = blk(h, None, pos, keys, None, i, False)
        tokens = self.norm(h)
        w = mask.to(tokens.dtype)[:, :, None]
        pooled = (tokens * w).sum(dim=1) / w.sum(dim=1)  # mean over the real tokens
        return tokens, self.proj(pooled)
