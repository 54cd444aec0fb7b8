"""The KL-regularized autoencoder of latent diffusion ([LDM] arXiv 2112.10752 Sec. 3, App. G) and what
latent diffusion needs from it: the objective, the latent scale factor, and reconstruction PSNR.

Objective per image (a [VAE] arXiv 1312.6114 bound with a small weight on the KL term, [LDM] Sec. 3):

    L = ||x - D(z)||^2 + beta KL(q(z | x) || N(0, I)),   z = mu + sigma eps,

with q(z | x) = N(mu, diag sigma^2) from the encoder and the KL in closed form ([VAE] App. B),
KL = 1/2 sum_k (mu_k^2 + sigma_k^2 - 1 - log sigma_k^2), both sums over all pixels or latents.
[LDM] uses beta = 1e-6 with an L1 + perceptual + patch-GAN reconstruction term; we have no perceptual
network, and the squared error is what PSNR measures. With so small a KL weight the latents are not
unit-scale, so diffusion runs on z * scale with scale = 1 / std(latents) over the data ([LDM] Sec. 4.3.2).
"""

import torch
from torch import Tensor

from diffspace.nets.autoencoder import KLAutoencoder

KL_WEIGHT = 1e-6  # [LDM] Sec. 3 "a slight KL-penalty": the weight of its released KL autoencoders


def kl_divergence(mean: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mean, diag exp(logvar)) || N(0, I)) per example: (B, ...) -> (B,), in nats ([VAE] App. B)."""
    kl = 0.5 * (mean.square() + logvar.exp() - 1 - logvar)  # [VAE] App. B, Gaussian case
    return kl.flatten(1).sum(dim=1)


def autoencoder_loss(ae: KLAutoencoder, x0: Tensor, kl_weight: float, eps: Tensor) -> Tensor:
    """Per-example objective of the module docstring, (B,); x0 (B, C, H, W) in [-1, 1], eps standard normal
    noise shaped like the latents (B, z, H / f, W / f): z = mean + sigma eps ([VAE] Sec. 2.4)."""
    x_hat, mean, logvar = ae(x0, eps)
    rec = (x_hat - x0).square().flatten(1).sum(dim=1)
    return rec + kl_weight * kl_divergence(mean, logvar)


@torch.no_grad()
def posterior(ae: KLAutoencoder, x: Tensor, batch: int = 256) -> tuple[Tensor, Tensor]:
    """Mean and log-variance (N, z, H / f, W / f) of q(z | x) for images x (N, C, H, W), in batches on the
    autoencoder's device, returned on x's."""
    device = next(ae.parameters()).device
    parts = [ae.encode(x[i:i + batch].to(device)) for i in range(0, len(x), batch)]
    return torch.cat([m for m, _ in parts]).to(x.device), torch.cat([v for _, v in parts]).to(x.device)


def latent_scale(mean: Tensor) -> float:
    """1 / std of posterior means (N, ...) over the data: the factor that gives the latents diffusion sees
    unit variance ([LDM] Sec. 4.3.2, which estimates it on a batch of data)."""
    return 1.0 / mean.double().std().item()


def psnr(x: Tensor, x_hat: Tensor) -> Tensor:
    """Peak signal-to-noise ratio per image in dB, (B,), of images (B, C, H, W) in [-1, 1] (peak-to-peak
    2, so the same as on [0, 1]); x_hat is clamped to [-1, 1] first."""
    mse = (x_hat.clamp(-1, 1) - x).double().square().flatten(1).mean(dim=1)
    return 10 * torch.log10(4.0 / mse)
