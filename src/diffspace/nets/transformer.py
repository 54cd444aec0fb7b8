"""A small pre-norm transformer over token ids: RoPE, SDPA attention, optional adaLN noise
conditioning, and a key/value cache.

The attention pattern is an explicit boolean mask tensor (True = may attend; None = every token sees
every token), built by whoever calls (the token models' masks are in `discrete/attention.py`). The
network knows nothing about diffusion: forward(x, noise_cond, ...) maps ids (B, L) to logits (B, L, V).

RoPE: Su et al. 2021, arXiv 2104.09864; adaLN-Zero: [DIT] Sec. 3.2 (arXiv 2212.09748).
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffspace.nets.embedding import NoiseEmbedding


def rope(x: Tensor, pos: Tensor, base: float = 10_000.0) -> Tensor:
    """Rotary position embedding of x (B, H, L, Dh) at integer positions pos (L,)."""
    half = x.shape[-1] // 2
    freqs = base ** (-torch.arange(half, device=x.device, dtype=torch.float32) / half)
    ang = pos.to(torch.float32)[:, None] * freqs[None]  # (L, Dh/2)
    cos, sin = ang.cos().to(x.dtype), ang.sin().to(x.dtype)
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


class KVCache:
    """Per-layer keys and values (B, H, T, Dh) of tokens that are final (AR prefix, finished blocks)."""

    def __init__(self, n_layers: int):
        self.k: list[Tensor | None] = [None] * n_layers
        self.v: list[Tensor | None] = [None] * n_layers

    @property
    def length(self) -> int:
        return 0 if self.k[0] is None else self.k[0].shape[2]

    def extend(self, i: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Keys/values of cache + new; nothing is stored (see `commit`)."""
        if self.k[i] is None:
            return k, v
        return torch.cat([self.k[i], k], dim=2), torch.cat([self.v[i], v], dim=2)

    def commit(self, i: int, k: Tensor, v: Tensor) -> None:
        self.k[i], self.v[i] = k, v

    def select(self, rows: Tensor) -> "KVCache":
        """The cache of the sequences `rows` only, for decoding part of a batch (a copy: committing to
        it leaves this cache as it was)."""
        out = KVCache(len(self.k))
        out.k = [None if k is None else k[rows] for k in self.k]
        out.v = [None if v is None else v[rows] for v in self.v]
        return out


@dataclass
class TransformerConfig:
    vocab_size: int
    max_len: int = 256
    dim: int = 256
    depth: int = 4
    heads: int = 4
    mlp_ratio: float = 4.0
    noise_cond: bool = False  # adaLN-Zero conditioning on the noise level


class Block(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        d, self.heads = cfg.dim, cfg.heads
        self.norm1 = nn.LayerNorm(d, elementwise_affine=not cfg.noise_cond)
        self.norm2 = nn.LayerNorm(d, elementwise_affine=not cfg.noise_cond)
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.proj = nn.Linear(d, d, bias=False)
        hidden = int(cfg.mlp_ratio * d)
        self.mlp = nn.Sequential(nn.Linear(d, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, d))
        self.ada = nn.Linear(d, 6 * d) if cfg.noise_cond else None
        if self.ada is not None:  # why: adaLN-Zero starts each block as the identity [DIT]
            nn.init.zeros_(self.ada.weight)
            nn.init.zeros_(self.ada.bias)

    def attend(self, h: Tensor, pos: Tensor, mask, cache, i: int, commit: bool, n_out: int | None) -> Tensor:
        B, L, D = h.shape
        q, k, v = self.qkv(h).view(B, L, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        q, k = rope(q[:, :, :n_out], pos[:n_out]), rope(k, pos)
        if cache is not None:
            k, v = cache.extend(i, k, v)
            if commit:
                cache.commit(i, k, v)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=None if mask is None else mask[:n_out])
        return self.proj(out.transpose(1, 2).reshape(B, q.shape[2], D))

    def forward(self, x, emb, pos, mask, cache, i, commit, n_out=None):
        """n_out: only the first n_out positions go on (the queries of the others are skipped)."""
        if self.ada is None:
            x = x[:, :n_out] + self.attend(self.norm1(x), pos, mask, cache, i, commit, n_out)
            return x + self.mlp(self.norm2(x))
        sh1, sc1, *rest = self.ada(emb).chunk(6, dim=-1)  # (B, L or 1, D) each
        g1, sh2, sc2, g2 = (c[:, :n_out] for c in rest)
        a = self.attend(self.norm1(x) * (1 + sc1) + sh1, pos, mask, cache, i, commit, n_out)
        x = x[:, :n_out] + g1 * a
        return x + g2 * self.mlp(self.norm2(x) * (1 + sc2) + sh2)


class Transformer(nn.Module):
    """forward(x (B, L) ids, noise_cond (B,) or (B, L) or None, pos, mask, cache, commit) -> (B, L, V).

    `pos` (L,) are RoPE positions (default: after the cache); `mask` (L, T_cache + L) booleans, None for
    full attention; with `cache`, new queries see cached keys, and `commit=True` stores the new keys.
    With `n_out`, only the logits of the first n_out positions are computed (B, n_out, V): the others
    serve as keys and values only (block diffusion's clean copy).
    """

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.cfg = cfg
        self.tok = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.emb = NoiseEmbedding(cfg.dim) if cfg.noise_cond else None
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.dim)
        self.head = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        nn.init.normal_(self.tok.weight, std=0.02)

    def new_cache(self) -> KVCache:
        return KVCache(self.cfg.depth)

    def forward(self, x: Tensor, noise_cond: Tensor | None = None, pos: Tensor | None = None,
                mask: Tensor | None = None, cache: KVCache | None = None, commit: bool = False,
                n_out: int | None = None) -> Tensor:
        B, L = x.shape
        if pos is None:
            start = 0 if cache is None else cache.length
            pos = torch.arange(start, start + L, device=x.device)
        h = self.tok(x)
        emb = None
        if self.emb is not None:
            nc = torch.zeros(B, device=x.device) if noise_cond is None else noise_cond
            if nc.ndim == 1:  # one level per sequence, broadcast over positions
                emb = F.silu(self.emb(nc))[:, None]
            else:  # one level per token (block diffusion)
                emb = F.silu(self.emb(nc.reshape(-1))).view(B, L, -1)
        for i, blk in enumerate(self.blocks):  # the last block computes only the outputs asked for
            h = blk(h, emb, pos, mask, cache, i, commit, n_out if i == len(self.blocks) - 1 else None)
        return self.head(self.norm(h)).float()
