"""The convolutional encoder and decoder of a KL-regularized autoencoder ([LDM] arXiv 2112.10752 Sec. 3
and App. G, at toy scale; the training objective is in families/autoencoder.py).

Encoder: a 3x3 conv, then per level `blocks` residual blocks (GroupNorm, SiLU, 3x3 conv, twice), with a
stride-2 conv between levels, and a last GroupNorm-SiLU-conv to the mean and log-variance of a
diagonal Gaussian over latents (B, z, H / f, W / f), f = 2^(len(widths) - 1). The decoder mirrors it
with nearest-neighbour 2x upsampling followed by a conv. With widths (32, 64, 64) and z = 4, a 32x32
RGB image becomes a 4x8x8 latent (f = 4: 3072 numbers to 256).
"""

from torch import Tensor, nn
from torch.nn import functional as F

from diffspace.nets.unet import _norm


class _Res(nn.Module):
    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.body = nn.Sequential(_norm(c_in), nn.SiLU(), nn.Conv2d(c_in, c_out, 3, padding=1),
                                  _norm(c_out), nn.SiLU(), nn.Conv2d(c_out, c_out, 3, padding=1))
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.skip(x) + self.body(x)


class _Up(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class KLAutoencoder(nn.Module):
    """encode(x (B, C, H, W)) -> mean, logvar (B, z, H / f, W / f); decode(z) -> (B, C, H, W);
    forward(x, eps) -> (decode(mean + exp(logvar / 2) eps), mean, logvar), eps standard normal like mean.

    H and W must be divisible by f = 2^(len(widths) - 1) (ValueError otherwise, at encode).
    """

    def __init__(self, in_channels: int, latent_channels: int = 4,
                 widths: tuple[int, ...] | list[int] = (32, 64, 64), blocks: int = 1):
        super().__init__()
        self.latent_channels, self.factor = latent_channels, 2 ** (len(widths) - 1)
        enc: list[nn.Module] = [nn.Conv2d(in_channels, widths[0], 3, padding=1)]
        for i, w in enumerate(widths):
            enc += [_Res(widths[max(i - 1, 0)] if j == 0 else w, w) for j in range(blocks)]
            if i < len(widths) - 1:
                enc.append(nn.Conv2d(w, w, 3, stride=2, padding=1))
        enc += [_norm(widths[-1]), nn.SiLU(), nn.Conv2d(widths[-1], 2 * latent_channels, 3, padding=1)]
        self.encoder = nn.Sequential(*enc)
        rev = list(reversed(widths))
        dec: list[nn.Module] = [nn.Conv2d(latent_channels, rev[0], 3, padding=1)]
        for i, w in enumerate(rev):
            dec += [_Res(rev[max(i - 1, 0)] if j == 0 else w, w) for j in range(blocks)]
            if i < len(rev) - 1:
                dec.append(_Up(w))
        dec += [_norm(rev[-1]), nn.SiLU(), nn.Conv2d(rev[-1], in_channels, 3, padding=1)]
        self.decoder = nn.Sequential(*dec)

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if x.shape[-1] % self.factor or x.shape[-2] % self.factor:
            raise ValueError(f"image side {tuple(x.shape[-2:])} is not divisible by the autoencoder's "
                             f"downsampling factor {self.factor}")
        mean, logvar = self.encoder(x).chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)  # why: keeps exp(logvar) finite and positive in float32

    def decode(self, z: Tensor) -> Tensor:
        return self.decoder(z)

    def forward(self, x: Tensor, eps: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        mean, logvar = self.encode(x)
        return self.decode(mean + (0.5 * logvar).exp() * eps), mean, logvar
