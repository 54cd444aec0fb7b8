"""A text-to-image model as one module: a text-conditioned denoiser with the frozen parts it samples
with, the latent-diffusion recipe of [LDM] arXiv 2112.10752 (Sec. 3, 3.3, 4.3.2):

- the text encoder of a contrastive model ([CLIP] arXiv 2103.00020 / [SIGLIP] arXiv 2303.15343):
  its token features and pooled embedding condition the network through cross-attention;
- optionally a KL autoencoder: diffusion then runs on z = scale * mean(E(x)) + noise of the
  posterior, with scale = 1 / std of the latents over the data, and images are D(z / scale);
  without one, diffusion runs on the pixels (scale 1, the identity).

forward(x, level, **cond) is the trained denoiser's own call (a sigma-space Denoiser, or for flow
matching a VelocityField), so the module trains, averages (EMA), checkpoints and samples like any
other; the frozen parts never get a gradient and stay in eval mode.
"""

import torch
from torch import Tensor, nn

from diffspace.families.contrastive import ContrastiveEncoder
from diffspace.nets.autoencoder import KLAutoencoder

TEXT_KEYS = ("text_emb", "text_mask", "text_pooled")  # the condition a text-conditioned net reads


class TextToImage(nn.Module):
    """denoiser (trained) + encoder (frozen) + autoencoder (frozen, or None for pixel space)."""

    def __init__(self, denoiser: nn.Module, encoder: ContrastiveEncoder, autoencoder: KLAutoencoder | None,
                 latent_scale: float = 1.0):
        super().__init__()
        self.denoiser, self.encoder, self.autoencoder = denoiser, encoder.requires_grad_(False), autoencoder
        if autoencoder is not None:
            autoencoder.requires_grad_(False)
        self.register_buffer("latent_scale", torch.tensor(float(latent_scale)))

    def train(self, mode: bool = True) -> "TextToImage":
        super().train(mode)
        self.encoder.eval()
        if self.autoencoder is not None:
            self.autoencoder.eval()
        return self

    def forward(self, x: Tensor, level: Tensor, **cond) -> Tensor:
        return self.denoiser(x, level, **cond)

    @torch.no_grad()
    def text_condition(self, ids: Tensor, mask: Tensor) -> dict[str, Tensor]:
        """Token ids and padding mask (B, L), each row with at least one real token -> the condition
        {text_emb (B, L, D), text_mask (B, L), text_pooled (B, E)}. The null caption of guidance and
        caption dropout is this condition with an all-False mask (its features are then unread)."""
        tokens, pooled = self.encoder.encode_text(ids, mask)
        return {"text_emb": tokens, "text_mask": mask, "text_pooled": pooled}

    @torch.no_grad()
    def decode(self, z: Tensor) -> Tensor:
        """Images (B, C, H, W) of diffusion samples z: D(z / scale), or z itself in pixel space."""
        return z if self.autoencoder is None else self.autoencoder.decode(z / self.latent_scale)
