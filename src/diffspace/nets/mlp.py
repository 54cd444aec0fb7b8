"""MLPs for vector data (toy 2-D sets, user vectors): a residual MLP with a learned noise embedding, and
the plain MLP of small diffusers-style trainings.

Output head (benchmarks/results/eps_recipe.md): a LayerNorm before the last linear layer bounds the
output whatever the input, so a network whose target grows with its input (an eps-, score- or
velocity-network without preconditioning: eps ~ x_t at high noise) cannot follow the tails of the
prior. On the DDPM table the eps-MLP's |eps_hat| stops near 4.1 for |x_T| >= 4.5; the PF-ODE
integrates that shortfall over sigma from 157 down, and the trajectory runs away (too large a
|x| / sigma asks for even more eps): 7 of 10k samples land 10 to 98 away, all from noises with
|x_T| > 4, and the sliced W2 is 1.05 where the same network without the norm reaches 0.029 (the
exact denoiser: 0.029). `out_norm=False` removes it; keep it for x0-prediction and EDM
preconditioning, whose skip connection carries the part that grows.
"""

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from diffspace.nets.embedding import NoiseEmbedding, sinusoidal


@dataclass
class MLPConfig:
    hidden: int = 256
    depth: int = 4
    dropout: float = 0.0
    out_norm: bool = True  # the residual MLP's output LayerNorm (false for eps/score/velocity, see above)
    second_cond: bool = False  # a second noise condition (noise_cond_2): the interval of a two-time map


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
    """forward(x (B, D), noise_cond (B,) or (1,), class_labels (B,) | None, noise_cond_2 (B,) | None)
    -> (B, D).

    `second_cond` adds a second noise condition (nets/embedding.py), required by forward then.
    `out_norm=False` drops the LayerNorm of the output head (see the module docstring); the parameter
    names stay those of out_norm=True minus the norm's, so a checkpoint of the other kind fails to load."""

    def __init__(self, dim: int, hidden: int = 256, depth: int = 4, dropout: float = 0.0,
                 num_classes: int = 0, second_cond: bool = False, out_norm: bool = True):
        super().__init__()
        self.inp = nn.Linear(dim, hidden)
        self.embed = NoiseEmbedding(hidden, num_classes, second_cond=second_cond)
        self.blocks = nn.ModuleList(_Block(hidden, dropout) for _ in range(depth))
        norm = nn.LayerNorm(hidden) if out_norm else nn.Identity()
        self.out = nn.Sequential(norm, nn.SiLU(), nn.Linear(hidden, dim))

    def forward(self, x: Tensor, noise_cond: Tensor, class_labels: Tensor | None = None,
                noise_cond_2: Tensor | None = None) -> Tensor:
        emb = nn.functional.silu(self.embed(noise_cond, class_labels, noise_cond_2))
        h = self.inp(x)
        for block in self.blocks:
            h = block(h, emb)
        return self.out(h)


class PlainMLP(nn.Module):
    """The MLP of small diffusers-style trainings: [x, sinusoidal(noise_cond)] through `depth` hidden
    layers of width `hidden` with SiLU, then a linear output; no normalization, no learned embedding.

    forward(x (B, D), noise_cond (B,) or (1,)) -> (B, D); noise_cond in timestep units (the DDPM
    timestep for a 'ddpm' path), embedded by `freq_dim` sinusoidal features ([DDPM] arXiv 2006.11239)."""

    def __init__(self, dim: int, hidden: int = 128, depth: int = 4, freq_dim: int = 128):
        super().__init__()
        self.freq_dim = freq_dim
        widths = [dim + freq_dim] + [hidden] * depth
        layers: list[nn.Module] = []
        for a, b in zip(widths[:-1], widths[1:], strict=True):
            layers += [nn.Linear(a, b), nn.SiLU()]
        self.net = nn.Sequential(*layers, nn.Linear(widths[-1], dim))

    def forward(self, x: Tensor, noise_cond: Tensor) -> Tensor:
        emb = sinusoidal(noise_cond, self.freq_dim).to(x.dtype).expand(x.shape[0], -1)  # (1,) broadcasts
        return self.net(torch.cat([x, emb], dim=1))
