"""The attribute reader of text-to-image evaluation: the project's conv classifier trained on real
captioned images to read each attribute (shape, colour, size, place of the shapes; digit, thickness,
slant of the digits), one softmax group per attribute over one shared output layer.

Its predictions on generated images, compared with what the prompt asked for, give the attribute
accuracy; its penultimate activations are the data set's feature net for FID ([FID] arXiv 1706.08500),
as eval/featurenet.py's are for labelled image sets. Saved as an artifact (safetensors + JSON) with
the attribute names and sizes.
"""

from pathlib import Path

import torch
from torch import Tensor
from torch.nn import functional as F

from diffspace.eval.featurenet import _fit, _random_shift, _save, load_classifier
from diffspace.nets.classifier import ConvClassifier
from diffspace.train.checkpoint import load_checkpoint
from diffspace.types import UserError

KIND = "attribute_reader"


def _split_logits(logits: Tensor, sizes: list[int]) -> tuple[Tensor, ...]:
    return logits.split(sizes, dim=1)


def read_attributes(net: ConvClassifier, sizes: list[int], x: Tensor, batch: int = 1000) -> Tensor:
    """Predicted attributes (N, A) of images x (N, C, H, W): the argmax of each group."""
    net.eval()
    with torch.no_grad():
        parts = [torch.stack([g.argmax(1) for g in _split_logits(net(x[i:i + batch]), sizes)], dim=1)
                 for i in range(0, len(x), batch)]
    return torch.cat(parts)


Groups = tuple[tuple[str, int], ...]  # (attribute name, number of values) per attribute column


def train_attribute_reader(x: Tensor, attrs: Tensor, groups: Groups, out_path: str | Path, steps: int = 1500,
                           batch_size: int = 128, lr: float = 2e-3, seed: int = 0, width: int = 32,
                           x_test: Tensor | None = None, attrs_test: Tensor | None = None) -> dict:
    """Train on images x (N, C, H, W) with attributes attrs (N, A), groups = ((name, number of values),)
    per column; the loss is the sum of the groups' cross-entropies. Saves the reader and returns its
    metadata (with per-attribute test accuracy when a test set is given)."""
    if attrs.shape[1] != len(groups) or (attrs < 0).any():
        raise UserError(f"an attribute reader needs {len(groups)} known attributes per image")
    sizes = [k for _, k in groups]
    torch.manual_seed(seed)
    arch = {"in_channels": x.shape[1], "num_classes": sum(sizes), "width": width, "levels": 3,
            "feat_dim": 64, "noise_aware": False}
    net, g = ConvClassifier(**arch), torch.Generator().manual_seed(seed)

    def loss(step: int) -> Tensor:
        idx = torch.randint(len(x), (batch_size,), generator=g)
        groups_logits = _split_logits(net(_random_shift(x[idx], g)), sizes)
        return sum(F.cross_entropy(lg, attrs[idx, k]) for k, lg in enumerate(groups_logits))

    net.train()
    _fit(loss, net.parameters(), steps, lr, "attribute reader")
    info = {"kind": KIND, "groups": [list(gr) for gr in groups], "shape": list(x.shape[1:]), "seed": seed,
            "steps": steps}
    if x_test is not None:
        right = read_attributes(net, sizes, x_test) == attrs_test
        info |= {f"test_accuracy_{name}": right[:, k].double().mean().item() for k, (name, _) in
                 enumerate(groups)}
    return _save(net, arch, info, out_path)


def load_attribute_reader(path: str | Path, groups: Groups,
                          shape: tuple[int, ...]) -> tuple[ConvClassifier, dict]:
    """The reader at `path`; UserError unless it reads these attribute groups on images of `shape`."""
    kind = load_checkpoint(Path(path))[1].get("kind")
    if kind != KIND:
        raise UserError(f"{path}: holds a {kind!r}, not an attribute reader (`diffspace eval` of a "
                        "text_to_image run trains one into the run)")
    net, meta = load_classifier(path, KIND)
    if [tuple(gr) for gr in meta["groups"]] != list(groups) or tuple(meta["shape"]) != tuple(shape):
        raise UserError(f"{path}: an attribute reader of {meta['groups']} on images {meta['shape']}; this "
                        f"run needs {[list(gr) for gr in groups]} on images {list(shape)}")
    return net, meta
