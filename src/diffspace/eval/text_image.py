"""Scores of text-image models over embeddings and attributes (pure functions; the runs layer computes
the embeddings):

- zero-shot attribute reading ([CLIP] arXiv 2103.00020 Sec. 3.1.2): each image gets the attributes of
  its nearest prompt among every caption of the data set's attribute grid;
- retrieval recall@1 of matching pairs, both ways;
- CLIP score ([CLIPSCORE] arXiv 2104.08718 Eq. 1): w * max(cos(image, caption), 0) per pair, with
  w = 100, the scale at which text-to-image work reports it (torchmetrics' CLIPScore), not the paper's
  2.5;
- attribute accuracy: predicted attributes against the wanted ones, per attribute, on average, and
  all at once.
"""

import torch
from torch import Tensor
from torch.nn import functional as F

from diffspace.families.contrastive import nearest, recall_at_1

CLIP_SCORE_WEIGHT = 100.0  # torchmetrics' CLIPScore; [CLIPSCORE] Eq. 1 uses w = 2.5


def attribute_accuracy(pred: Tensor, target: Tensor, names: tuple[str, ...]) -> dict[str, float]:
    """pred, target (N, A) long -> acc_<name> per attribute, acc_mean (over attributes) and acc_all (the
    fraction with every attribute right)."""
    right = pred == target
    out = {f"acc_{name}": right[:, k].double().mean().item() for k, name in enumerate(names)}
    out["acc_mean"] = right.double().mean().item()
    out["acc_all"] = right.all(dim=1).double().mean().item()
    return out


def zero_shot_attributes(img: Tensor, prompt_emb: Tensor, prompt_attrs: Tensor, attrs: Tensor,
                         names: tuple[str, ...]) -> dict[str, float]:
    """Attribute accuracy of reading each image (N, E) as its nearest prompt (M, E), whose attributes are
    prompt_attrs (M, A), against the images' own attrs (N, A)."""
    return attribute_accuracy(prompt_attrs[nearest(img, prompt_emb)], attrs, names)


def retrieval(img: Tensor, txt: Tensor) -> dict[str, float]:
    """Recall@1 of B matching pairs (B, E), image -> text and text -> image."""
    i2t, t2i = recall_at_1(img, txt)
    return {"recall@1_image_to_text": i2t, "recall@1_text_to_image": t2i, "n_pairs": len(img)}


def clip_score(img: Tensor, txt: Tensor) -> Tensor:
    """Per-pair CLIP score (N,) of image and caption embeddings (N, E) (normalized here)."""
    cos = (F.normalize(img.double(), dim=-1) * F.normalize(txt.double(), dim=-1)).sum(dim=-1)
    return CLIP_SCORE_WEIGHT * cos.clamp(min=0)  # [CLIPSCORE] Eq. 1


def first_caption_pairs(captions: list[tuple[str, ...]]) -> Tensor:
    """Indices of the first image of each distinct first caption: pairs whose partner is defined (with a
    caption repeated, retrieval could not say which image is its partner)."""
    first = {c[0]: i for i, c in reversed(list(enumerate(captions)))}
    return torch.tensor(sorted(first.values()), dtype=torch.long)
