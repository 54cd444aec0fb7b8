"""Generative adversarial networks trained by the project's one training loop.

References: [GAN] arXiv 1406.2661v1, [R1] arXiv 1801.04406v4; the hinge loss of Lim & Ye, Geometric GAN,
arXiv 1705.02894v2 (in the form of Miyato et al., arXiv 1802.05957).

With D(x) a logit and fakes G(z), z ~ N(0, I):

  non-saturating ([GAN] Sec. 3):  L_D = softplus(-D(x)) + softplus(D(G(z))),  L_G = softplus(-D(G(z)))
  hinge:                          L_D = relu(1 - D(x)) + relu(1 + D(G(z))),    L_G = -D(G(z))
  R1 penalty ([R1] Eq. 9):        L_D += gamma / 2 ||grad_x D(x)||^2 on real x

How one loop trains two players. train/loop.py runs one AdamW over model.parameters() on a loss
(B,) that must be a deterministic function of the batch. `GAN.forward(x, z)` returns

    L_D(x, sg(G(z))) + R1(x) + L_G(G(z); sg(theta_D))

where sg stops gradients: the fakes enter D's term detached, and G's term evaluates D through
torch.func.functional_call with detached parameters. So d loss / d theta_D is the gradient of L_D alone
and d loss / d theta_G that of L_G alone: one optimizer step is simultaneous gradient descent of each
player on its own objective, the dynamics [R1] analyses (Sec. 2), and with R1 it converges locally for
small learning rates ([R1] Sec. 4). Alternating updates or different learning rates per player (TTUR)
would need the loop to know two parameter groups; not needed here (tests/families/test_gan.py trains
8 gaussians to full mode coverage). The same AdamW also means the same weight decay, gradient clipping
on the joint norm, and an EMA of both players (sample from the EMA generator). One step costs one G
forward and three D forwards (real with a double backward for R1, detached fakes, frozen D on fakes).
Keep D free of dropout: its three calls would draw different masks outside the batch's randomness.
"""

from collections.abc import Callable
from functools import partial

import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch.nn import functional as F

from diffspace import rng
from diffspace.nets.classifier import ConvClassifier
from diffspace.nets.feedforward import feedforward

Objective = Callable[[Tensor, Tensor, Tensor], tuple[Tensor, Tensor]]


def nonsaturating(d_real: Tensor, d_fake: Tensor, d_fake_frozen: Tensor) -> tuple[Tensor, Tensor]:
    """(L_D, L_G) per example from D's logits on real data, on detached fakes, and (frozen D) on fakes."""
    return F.softplus(-d_real) + F.softplus(d_fake), F.softplus(-d_fake_frozen)  # [GAN] Eq. 1, Sec. 3


def hinge(d_real: Tensor, d_fake: Tensor, d_fake_frozen: Tensor) -> tuple[Tensor, Tensor]:
    return F.relu(1 - d_real) + F.relu(1 + d_fake), -d_fake_frozen


class GAN(nn.Module):
    """generator: z (B, latent_dim) -> x (B, *S); discriminator: x -> logits (B,) or (B, 1).

    forward(x, z) -> the per-example training loss of the module docstring, (B,);
    sample(n, generator) -> (n, *S). `r1_gamma` = 0 turns the penalty off.
    """

    def __init__(self, generator: nn.Module, discriminator: nn.Module, latent_dim: int,
                 objective: Objective = nonsaturating, r1_gamma: float = 0.1):
        super().__init__()
        self.generator, self.discriminator = generator, discriminator
        self.latent_dim, self.objective, self.r1_gamma = latent_dim, objective, r1_gamma

    def _frozen_d(self, x: Tensor) -> Tensor:
        state = {k: v.detach() for k, v in (*self.discriminator.named_parameters(),
                                            *self.discriminator.named_buffers())}
        return functional_call(self.discriminator, state, (x,)).reshape(len(x))

    def forward(self, x: Tensor, z: Tensor) -> Tensor:
        fake = self.generator(z)
        x = x.detach().requires_grad_(self.r1_gamma > 0)
        d_real = self.discriminator(x).reshape(len(x))
        d_loss, g_loss = self.objective(d_real, self.discriminator(fake.detach()).reshape(len(x)),
                                        self._frozen_d(fake))
        if self.r1_gamma > 0:
            (grad,) = torch.autograd.grad(d_real.sum(), x, create_graph=True)
            d_loss = d_loss + 0.5 * self.r1_gamma * grad.flatten(1).square().sum(1)  # [R1] Eq. 9
        return d_loss + g_loss

    def noise(self, n: int, generator: rng.Generator | None) -> dict[str, Tensor]:
        p = next(self.parameters())
        return {"z": rng.randn((n, self.latent_dim), generator, p.dtype, p.device)}

    @torch.no_grad()
    def sample(self, n: int, generator: rng.Generator | None) -> Tensor:
        return self.generator(self.noise(n, generator)["z"])


def gan_loss(model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
    """The training loop's loss: batch holds real x (B, *S) and latents z (B, latent_dim)."""
    return model(batch["x"], batch["z"])


def mlp_gan(dim: int, latent_dim: int = 8, hidden: int = 64, depth: int = 3,
            objective: Objective = nonsaturating, r1_gamma: float = 0.03) -> GAN:
    """Generator and discriminator as MLPs with LeakyReLU(0.2) for vector data (B, dim).

    why LeakyReLU: with SiLU the same nets stalled for thousands of steps with the fakes spread along
    the ring of 8 gaussians (about 37 % within 3 sigma); piecewise-linear units carve the modes fast.
    """
    act = partial(nn.LeakyReLU, 0.2)
    generator = feedforward(latent_dim, dim, hidden, depth, act=act)
    return GAN(generator, feedforward(dim, 1, hidden, depth, act=act), latent_dim, objective, r1_gamma)


def conv_gan(shape: tuple[int, int, int], latent_dim: int = 32, hidden: int = 256, depth: int = 2,
             width: int = 32, objective: Objective = nonsaturating, r1_gamma: float = 1.0) -> GAN:
    """For images (C, H, W) in [-1, 1]: an MLP generator ending in tanh, and the project's convolutional
    classifier with one logit and no dropout as the discriminator."""
    C, H, W = shape
    act = partial(nn.LeakyReLU, 0.2)
    generator = nn.Sequential(feedforward(latent_dim, C * H * W, hidden, depth, act=act),
                              nn.Unflatten(1, tuple(shape)), nn.Tanh())
    return GAN(generator, ConvClassifier(C, 1, width=width, dropout=0.0), latent_dim, objective, r1_gamma)
