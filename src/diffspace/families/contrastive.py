"""Contrastive text-image encoders: CLIP ([CLIP] arXiv 2103.00020) and SigLIP ([SIGLIP] arXiv 2303.15343).

An image tower and a text tower map a batch of B matching pairs to unit vectors img_i, txt_j in a
shared space; s_ij = img_i . txt_j.

- CLIP ([CLIP] Fig. 3, Sec. 2.5): logits l_ij = e^t s_ij with a learned temperature t (initialized
  to log(1 / 0.07), e^t clipped at 100); the loss is the mean of the two cross-entropies that pick the
  matching text for each image (rows) and the matching image for each text (columns): symmetric InfoNCE.
- SigLIP ([SIGLIP] Sec. 3.2 Eq. 1, Alg. 1): every pair (i, j) is a binary problem with label z_ij = +1
  if i = j else -1, loss = -(1/B) sum_ij log sigmoid(z_ij (e^t' s_ij + b)), with learned t' (initialized
  to log 10) and bias b (initialized to -10, so that the B^2 - B negatives do not dominate at the start).

Zero-shot classification picks, for each image, the prompt whose embedding is nearest; retrieval
recall@1 is the fraction of held-out pairs whose partner is the nearest among all candidates.
"""

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from diffspace.nets.towers import ImageTower, TextTower

CLIP_INIT = (math.log(1 / 0.07), None)  # [CLIP] Sec. 2.5: temperature initialized to 0.07, no bias
SIGLIP_INIT = (math.log(10.0), -10.0)  # [SIGLIP] Sec. 3.2: t' = log 10, b = -10
MAX_SCALE = 100.0  # [CLIP] Sec. 2.5: logits are never scaled by more than 100


class ContrastiveEncoder(nn.Module):
    """Two towers, a learned log-temperature `logit_scale` and, for SigLIP, a learned `logit_bias`.

    `init` is (log scale, bias or None): CLIP_INIT or SIGLIP_INIT. Embeddings are L2-normalized.
    """

    def __init__(self, image_tower: ImageTower, text_tower: TextTower, init: tuple[float, float | None]):
        super().__init__()
        self.image_tower, self.text_tower = image_tower, text_tower
        self.logit_scale = nn.Parameter(torch.tensor(float(init[0])))
        self.logit_bias = None if init[1] is None else nn.Parameter(torch.tensor(float(init[1])))

    def embed_images(self, x: Tensor) -> Tensor:
        """x (B, C, H, W) in [-1, 1] -> unit vectors (B, E)."""
        return F.normalize(self.image_tower(x), dim=-1)

    def encode_text(self, ids: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """ids, mask (B, L) -> token features (B, L, D) and unit pooled embeddings (B, E): what a
        text-conditioned network reads (text_emb, text_pooled)."""
        tokens, pooled = self.text_tower(ids, mask)
        return tokens, F.normalize(pooled, dim=-1)

    def embed_texts(self, ids: Tensor, mask: Tensor) -> Tensor:
        """ids, mask (B, L) -> unit vectors (B, E)."""
        return self.encode_text(ids, mask)[1]

    def forward(self, x: Tensor, ids: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """Unit embeddings (B, E) of B images and B captions (what the losses below compare)."""
        return self.embed_images(x), self.embed_texts(ids, mask)


def clip_loss(img: Tensor, txt: Tensor, logit_scale: Tensor) -> Tensor:
    """Symmetric InfoNCE of unit embeddings img, txt (B, E), row i matching row i ([CLIP] Fig. 3), as
    per-example terms (B,) whose mean is the loss: term i averages the cross-entropy that picks text i
    for image i and the one that picks image i for text i."""
    # why: [CLIP] Sec. 2.5 clips the scale at 100 to keep training stable
    logits = logit_scale.exp().clamp(max=MAX_SCALE) * img @ txt.T  # (B, B): rows images, columns texts
    labels = torch.arange(len(img), device=img.device)
    rows = F.cross_entropy(logits, labels, reduction="none")
    return (rows + F.cross_entropy(logits.T, labels, reduction="none")) / 2  # [CLIP] Fig. 3


def siglip_loss(img: Tensor, txt: Tensor, logit_scale: Tensor, logit_bias: Tensor) -> Tensor:
    """Pairwise sigmoid loss of unit embeddings img, txt (B, E) ([SIGLIP] Eq. 1) as per-example terms (B,)
    whose mean is the loss: term i sums the B binary losses of image i against every text."""
    logits = logit_scale.exp() * img @ txt.T + logit_bias  # (B, B)
    z = 2 * torch.eye(len(img), device=img.device, dtype=logits.dtype) - 1  # +1 on the diagonal, -1 off it
    return -F.logsigmoid(z * logits).sum(dim=1)  # [SIGLIP] Eq. 1, Alg. 1: the mean over i is the sum / B


def nearest(queries: Tensor, keys: Tensor) -> Tensor:
    """Index (Q,) of the key (K, E) of largest dot product with each query (Q, E): zero-shot classes."""
    return (queries @ keys.T).argmax(dim=1)


def recall_at_1(img: Tensor, txt: Tensor) -> tuple[float, float]:
    """(image -> text, text -> image) recall@1 of B matching pairs (B, E): the fraction whose partner is
    the nearest of the B candidates."""
    right = torch.arange(len(img), device=img.device)
    return ((nearest(img, txt) == right).float().mean().item(),
            (nearest(txt, img) == right).float().mean().item())
