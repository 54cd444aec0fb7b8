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
    embedding; class index `num_classes` is the null class used for classifier-free guidance [CFG].

    With `second_cond`, a second condition `noise_cond_2` (same units, e.g. the interval t - r of a
    two-time flow map, [MEANFLOW] arXiv 2505.13447v1 Sec. 4.3 "Conditioning on (r, t)") is embedded
    the same way by its own MLP and added. Raises ValueError when it is missing, or given to an
    embedding without it."""

    def __init__(self, dim: int, num_classes: int = 0, freq_dim: int = 128, second_cond: bool = False):
        super().__init__()
        self.freq_dim, self.num_classes = freq_dim, num_classes
        self.mlp = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.classes = nn.Embedding(num_classes + 1, dim) if num_classes > 0 else None
        self.mlp_2 = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim)) \
            if second_cond else None

    def forward(self, noise_cond: Tensor, class_labels: Tensor | None = None,
                noise_cond_2: Tensor | None = None) -> Tensor:
        if (self.mlp_2 is None) != (noise_cond_2 is None):
            raise ValueError(f"second_cond={self.mlp_2 is not None} but noise_cond_2 "
                             f"{'missing' if noise_cond_2 is None else 'given'}: a second noise condition "
                             "goes exactly to networks built with second_cond=True")
        emb = self.mlp(sinusoidal(noise_cond, self.freq_dim))
        if self.mlp_2 is not None:
            emb = emb + self.mlp_2(sinusoidal(noise_cond_2, self.freq_dim))
        if self.classes is not None:
            if class_labels is None:  # unconditional call: the null class
                class_labels = torch.full_like(noise_cond, self.num_classes, dtype=torch.long)
            emb = emb + self.classes(class_labels)
        return emb
