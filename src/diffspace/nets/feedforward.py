"""Plain networks without a noise input, the building blocks of the non-diffusion families: coupling
conditioners of flows, VAE encoders and decoders, GAN generators and discriminators.

`zero_last` zero-initializes the output layer so that a residual or coupling branch starts as the
identity ([GLOW] arXiv 1807.03039v2 Sec. 3.3, "Zero initialization").
"""

from collections.abc import Callable

from torch import nn


def _maybe_zero(layer: nn.Module, zero: bool) -> nn.Module:
    if zero:
        nn.init.zeros_(layer.weight)
        nn.init.zeros_(layer.bias)
    return layer


def feedforward(d_in: int, d_out: int, hidden: int = 256, depth: int = 2, zero_last: bool = False,
                act: Callable[[], nn.Module] = nn.SiLU) -> nn.Sequential:
    """(B, d_in) -> (B, d_out): `depth` hidden layers of width `hidden`, each followed by act()."""
    dims = [d_in] + [hidden] * depth
    layers: list[nn.Module] = []
    for a, b in zip(dims[:-1], dims[1:], strict=True):
        layers += [nn.Linear(a, b), act()]
    return nn.Sequential(*layers, _maybe_zero(nn.Linear(dims[-1], d_out), zero_last))


def conv_conditioner(c_in: int, c_out: int, hidden: int = 64, zero_last: bool = True) -> nn.Sequential:
    """(B, c_in, H, W) -> (B, c_out, H, W): 3x3 conv, ReLU, 1x1 conv, ReLU, 3x3 conv, the coupling
    network NN() of [GLOW] Sec. 5 (first and last convolutions 3x3, the middle one 1x1)."""
    return nn.Sequential(nn.Conv2d(c_in, hidden, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(hidden, hidden, 1), nn.ReLU(),
                         _maybe_zero(nn.Conv2d(hidden, c_out, 3, padding=1), zero_last))
