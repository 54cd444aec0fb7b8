"""Text conditioning of image networks: cross-attention to text tokens and the pooled text embedding.

[LDM] arXiv 2112.10752 Sec. 3.3: intermediate image features (queries) attend to the text encoder's
token features (keys and values), Attention(Q, K, V) = softmax(Q K^T / sqrt(d)) V; as in Stable
Diffusion the pooled text embedding is also added to the noise embedding.

The text arrives as three tensors: `text_emb` (B, L, D_text) token features, `text_mask` (B, L) bool
(True on real tokens; padding is a masked key, so it has exactly zero weight) and `text_pooled`
(B, D_pooled). A row with no real token is the *null caption* of classifier-free guidance ([CFG]
arXiv 2207.12598): its pooled vector is replaced by a learned null vector. A learned null token is
always present as one more key, so attention is never over an empty set (a masked-out row would give
NaN) and the null caption attends to it alone. No text at all (text_emb None) means the null caption
for every row, with batch size 1 that broadcasts.
"""

from typing import NamedTuple

import torch
from torch import Tensor, nn
from torch.nn import functional as F


class TextContext(NamedTuple):
    tokens: Tensor  # (B or 1, 1 + L, D_text): the null token, then the text tokens
    mask: Tensor  # (B or 1, 1 + L) bool, True = may be attended to


class TextConditioning(nn.Module):
    """forward(text_emb, text_mask, text_pooled) -> (TextContext, pooled embedding (B or 1, emb_dim))."""

    def __init__(self, text_dim: int, pooled_dim: int, emb_dim: int):
        super().__init__()
        self.null_token = nn.Parameter(0.02 * torch.randn(text_dim))
        self.null_pooled = nn.Parameter(torch.zeros(pooled_dim))
        self.pooled = nn.Linear(pooled_dim, emb_dim)

    def forward(self, text_emb: Tensor | None, text_mask: Tensor | None,
                text_pooled: Tensor | None) -> tuple[TextContext, Tensor]:
        if text_emb is None:
            if text_mask is not None or text_pooled is not None:
                raise ValueError("text_mask and text_pooled need text_emb")
            ctx = TextContext(self.null_token[None, None], torch.ones(1, 1, dtype=torch.bool,
                                                                      device=self.null_token.device))
            return ctx, self.pooled(self.null_pooled[None])
        if text_mask is None or text_pooled is None:
            raise ValueError("text_emb needs text_mask and text_pooled")
        B = text_emb.shape[0]
        tokens = torch.cat([self.null_token.to(text_emb.dtype).expand(B, 1, -1), text_emb], dim=1)
        mask = torch.cat([text_mask.new_ones(B, 1), text_mask], dim=1)
        null = ~text_mask.any(dim=1, keepdim=True)  # (B, 1): the null caption
        pooled = torch.where(null, self.null_pooled.to(text_pooled.dtype), text_pooled)
        return TextContext(tokens, mask), self.pooled(pooled)


def condition(embed: nn.Module, text: TextConditioning | None, noise_cond: Tensor,
              class_labels: Tensor | None, text_emb: Tensor | None, text_mask: Tensor | None,
              text_pooled: Tensor | None,
              noise_cond_2: Tensor | None = None) -> tuple[Tensor, TextContext | None]:
    """silu(noise [+ second noise] + class [+ pooled text] embedding) (B or 1, D) and the text context
    (None without text conditioning) of an image net; ValueError for text given to a net without it."""
    emb, ctx = embed(noise_cond, class_labels, noise_cond_2), None
    if text is not None:
        ctx, pooled = text(text_emb, text_mask, text_pooled)
        emb = emb + pooled
    elif text_emb is not None:
        raise ValueError("text given to a network without text conditioning (text_dim=0)")
    return F.silu(emb), ctx


class CrossAttention(nn.Module):
    """x + proj(Attention(norm(x) W_q, ctx W_k, ctx W_v)) over the text context ([LDM] Sec. 3.3).

    forward(x (B, N, D) or (B, D, H, W), ctx) -> same shape; ctx may have batch 1 (it broadcasts).
    The output projection starts at zero, so a new block is the identity.
    """

    def __init__(self, dim: int, text_dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm = nn.LayerNorm(dim)
        self.q, self.kv = nn.Linear(dim, dim), nn.Linear(text_dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        nn.init.zeros_(self.proj.weight), nn.init.zeros_(self.proj.bias)

    def forward(self, x: Tensor, ctx: TextContext) -> Tensor:
        image = x.ndim == 4
        h = x.flatten(2).transpose(1, 2) if image else x  # (B, N, D)
        B, N, D = h.shape
        Bc, L = ctx.mask.shape
        q = self.q(self.norm(h)).view(B, N, self.heads, D // self.heads).transpose(1, 2)
        kv = self.kv(ctx.tokens.to(h.dtype)).view(Bc, L, 2, self.heads, D // self.heads)
        k, v = kv.permute(2, 0, 3, 1, 4).expand(-1, B, -1, -1, -1)  # each (B, heads, L, D / heads)
        keys = ctx.mask[:, None, None, :].expand(B, 1, 1, L)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=keys)
        out = self.proj(out.transpose(1, 2).reshape(B, N, D))
        return x + (out.transpose(1, 2).reshape(x.shape) if image else out)
