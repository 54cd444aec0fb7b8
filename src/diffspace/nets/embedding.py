"""Noise-level and class embeddings shared by every network."""

import math

import torch
from torch import Tensor, nn


def sinusoidal(noise_cond: Tensor, dim: int, max_period: float = 10_000.0) -> Tensor:
    """[DDPM] / Transformer positional embedding of a (B,) noise condition in timestep units -> (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=noise_cond.device) / half)
    args = noise_cond.float()[:, None] * freqs[None]
    return torch.cat([args.cos(), args.sin()], dim=1)


class NoiseEmbedding(nn.Module):
    """Sinusoidal features of the noise condition followed by a 2-layer MLP, plus an optional class
    embedding; class index `num_classes` is the null class used for classifier-free guidance [CFG]."""

    def __init__(self, dim: int, num_classes: int = 0, freq_dim: int = 128):
        super().__init__()
        self.freq_dim, self.num_classes = freq_dim, num_classes
        self.mlp = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.classes = nn.Embedding(num_classes + 1, dim) if num_classes > 0 else None

    def forward(self, noise_cond: Tensor, class_labels: Tensor | None = None) -> Tensor:
        emb = self.mlp(sinusoidal(noise_cond, self.freq_dim))
        if self.classes is not None:
            if class_labels is None:  # unconditional call: the null class
                class_labels = torch.full_like(noise_cond, self.num_classes, dtype=torch.long)
            emb = emb + self.classes(class_labels)
        return emb
