"""A small convolutional classifier: the offline feature net for FID/CAS and, with a noise embedding,
the noise-aware classifier for classifier guidance ([CG] arXiv 2105.05233 Sec. 4: a classifier on x_t
conditioned on the noise level, built like the UNet's encoder).

forward(x (B, C, H, W), noise_cond (B,) | None) -> logits (B, K); features(...) -> (B, feat_dim), the
penultimate activations used as FID features.
"""

from torch import Tensor, nn
from torch.nn import functional as F

from diffspace.nets.embedding import NoiseEmbedding
from diffspace.nets.unet import _norm


class _ConvBlock(nn.Module):
    """conv -> GroupNorm -> (scale-shift by the noise embedding) -> SiLU."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int):
        super().__init__()
        self.conv, self.norm = nn.Conv2d(c_in, c_out, 3, padding=1), _norm(c_out)
        self.emb = nn.Linear(emb_dim, 2 * c_out) if emb_dim else None

    def forward(self, x: Tensor, emb: Tensor | None) -> Tensor:
        h = self.norm(self.conv(x))
        if self.emb is not None:
            scale, shift = self.emb(emb)[:, :, None, None].chunk(2, dim=1)
            h = h * (1 + scale) + shift
        return F.silu(h)


class ConvClassifier(nn.Module):
    """Levels of two conv blocks, 2x average pooling between levels, global mean pool, an MLP head.

    `noise_aware` adds the shared noise embedding (then noise_cond is required, in timestep units).
    """

    def __init__(self, in_channels: int, num_classes: int, width: int = 32, levels: int = 3,
                 feat_dim: int = 64, dropout: float = 0.1, noise_aware: bool = False):
        super().__init__()
        emb_dim = 4 * width if noise_aware else 0
        self.embed = NoiseEmbedding(emb_dim, freq_dim=width) if noise_aware else None
        widths = [width * 2**i for i in range(levels)]
        chans = list(zip([in_channels] + widths[:-1], widths, strict=True))
        self.blocks = nn.ModuleList(_ConvBlock(a, b, emb_dim) for a, b in chans)
        self.blocks2 = nn.ModuleList(_ConvBlock(b, b, emb_dim) for _, b in chans)
        self.feat = nn.Linear(widths[-1], feat_dim)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(feat_dim, num_classes))

    def features(self, x: Tensor, noise_cond: Tensor | None = None) -> Tensor:
        emb = None if self.embed is None else F.silu(self.embed(noise_cond))
        h = x
        for i, (b1, b2) in enumerate(zip(self.blocks, self.blocks2, strict=True)):
            if i > 0:
                h = F.avg_pool2d(h, 2, ceil_mode=True)
            h = b2(b1(h, emb), emb)
        return F.silu(self.feat(h.mean(dim=(2, 3))))

    def forward(self, x: Tensor, noise_cond: Tensor | None = None) -> Tensor:
        return self.head(self.features(x, noise_cond))
