"""A residual MLP for vector data (toy 2-D sets, user vectors)."""

from dataclasses import dataclass

from torch import Tensor, nn

from diffspace.nets.embedding import NoiseEmbedding


@dataclass
class MLPConfig:
    hidden: int = 256
    depth: int = 4
    dropout: float = 0.0


class _Block(nn.Module):
    def __init__(self, hidden: int, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(hidden)
        self.emb = nn.Linear(hidden, 2 * hidden)  # scale-shift from the noise embedding
        self.ff = nn.Sequential(nn.SiLU(), nn.Dropout(dropout), nn.Linear(hidden, hidden))

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:
        scale, shift = self.emb(emb).chunk(2, dim=1)
        return h + self.ff(self.norm(h) * (1 + scale) + shift)


class MLP(nn.Module):
    """forward(x (B, D), noise_cond (B,), class_labels (B,) | None, noise_cond_2 (B,) | None) -> (B, D).

    `second_cond` adds a second noise condition (nets/embedding.py), required by forward then."""

    def __init__(self, dim: int, hidden: int = 256, depth: int = 4, dropout: float = 0.0,
                 num_classes: int = 0, second_cond: bool = False):
        super().__init__()
        self.inp = nn.Linear(dim, hidden)
        self.embed = NoiseEmbedding(hidden, num_classes, second_cond=second_cond)
        self.blocks = nn.ModuleList(_Block(hidden, dropout) for _ in range(depth))
        self.out = nn.Sequential(nn.LayerNorm(hidden), nn.SiLU(), nn.Linear(hidden, dim))

    def forward(self, x: Tensor, noise_cond: Tensor, class_labels: Tensor | None = None,
                noise_cond_2: Tensor | None = None) -> Tensor:
        emb = nn.functional.silu(self.embed(noise_cond, class_labels, noise_cond_2))
        h = self.inp(x)
        for block in self.blocks:
            h = block(h, emb)
        return self.out(h)
