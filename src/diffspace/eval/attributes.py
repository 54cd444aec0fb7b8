"""The attribute reader of text-to-image evaluation: the project's conv classifiers trained on real
captioned images to read each attribute (shape, colour, size, place of the shapes; digit, thickness,
slant of the digits), one softmax group per attribute.

Held-out shape-colour pairs are read as well as seen ones only if colour cannot stand in for shape: a
classifier of the RGB image trained on seen pairs read 0.14 of the shapes of real held-out pairs
right. So the groups named `blind` (the shapes' shape) are read by a second classifier whose input is
colour-blind, the foreground mask: each pixel's distance from the data's known background colour over
the image's largest one. The other groups are read from the image itself.

Generated images have softer edges than the crisp real ones the reader learns from, and a mask reader
trained on crisp images alone read 0.50 of the shapes of 3x3-box-blurred real images right (32 px). So
training blurs each image by a random Gaussian of standard deviation up to 3/64 of its width (1.5 px at
32 px); the reader then reads every attribute of real images, crisp, 3x3-box-blurred or Gaussian-
blurred (sigma 1 px), seen or held-out, right (32 px, 800 steps: >= 0.997 each).

Its predictions on generated images, compared with what the prompt asked for, give the attribute
accuracy; the penultimate activations of its classifiers, side by side, are the data set's feature
net for FID ([FID] arXiv 1706.08500), as eval/featurenet.py's are for labelled image sets. Saved as
an artifact (safetensors + JSON) with the attribute names and sizes.
"""

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from diffspace import rng
from diffspace.eval.featurenet import _check_start, _fit, _random_shift, _save
from diffspace.nets.classifier import ConvClassifier
from diffspace.train.checkpoint import load_checkpoint, load_weights
from diffspace.types import UserError

KIND = "attribute_reader"
Groups = tuple[tuple[str, int], ...]  # (attribute name, number of values) per attribute column


def foreground(x: Tensor, background: Tensor) -> Tensor:
    """The colour-blind foreground mask (N, 1, H, W) of images x (N, C, H, W): each pixel's distance from
    the background colour (C,) over the image's largest distance, so a pixel that an object of any one
    colour covers by a fraction a reads a."""
    dist = (x - background.to(x)[:, None, None]).norm(dim=1, keepdim=True)
    # why: the floor keeps an image of background alone finite (its mask is then its faint noise)
    return dist / dist.amax(dim=(2, 3), keepdim=True).clamp_min(1e-3)


def random_blur(x: Tensor, generator: rng.Generator, max_sigma: float) -> Tensor:
    """Each image of x (B, C, H, W) blurred by a Gaussian (5 x 5, separable, edge padding) of its own
    standard deviation, uniform in [0, max_sigma) pixels: the reader's augmentation against soft edges."""
    B, C, H, W = x.shape
    # why: the floor keeps a near-zero sigma finite (its kernel is then the identity)
    sigma = rng.rand((B,), generator, x.dtype, x.device).mul(max_sigma).clamp_min(1e-3)
    r = torch.arange(-2, 3, dtype=x.dtype, device=x.device)
    k = torch.softmax(-r**2 / (2 * sigma[:, None] ** 2), dim=1).repeat_interleave(C, 0)  # (B C, 5)
    y = F.pad(x.reshape(1, B * C, H, W), (2, 2, 2, 2), mode="replicate")
    y = F.conv2d(F.conv2d(y, k.view(B * C, 1, 1, 5), groups=B * C), k.view(B * C, 1, 5, 1), groups=B * C)
    return y.reshape(B, C, H, W)


class AttributeReader(nn.Module):
    """forward(x (B, C, H, W)) -> logits (B, sum of the group sizes), group after group in `groups` order:
    those named in `blind` from a ConvClassifier of foreground(x, background), the others from one of x.
    features(x) -> (B, 64 or 128): the image classifier's features, then the blind one's."""

    def __init__(self, groups: Sequence[Sequence], in_channels: int, blind: Sequence[str] = (),
                 background: Sequence[float] | None = None, width: int = 32):
        super().__init__()
        self.sizes, self.is_blind = [int(k) for _, k in groups], [name in blind for name, _ in groups]
        if any(self.is_blind) and background is None:
            raise UserError("an attribute reader that reads groups colour-blind needs the background colour")
        arch = {"width": width, "levels": 3, "feat_dim": 64, "noise_aware": False}
        self.image = ConvClassifier(in_channels, sum(self._sizes(False)), **arch)
        self.blind = ConvClassifier(1, sum(self._sizes(True)), **arch) if any(self.is_blind) else None
        self.background = torch.tensor(background or [], dtype=torch.float64)

    def _sizes(self, blind: bool) -> list[int]:
        return [k for k, b in zip(self.sizes, self.is_blind, strict=True) if b == blind]

    def features(self, x: Tensor) -> Tensor:
        f = self.image.features(x)
        if self.blind is None:
            return f
        return torch.cat([f, self.blind.features(foreground(x, self.background))], dim=1)

    def forward(self, x: Tensor) -> Tensor:
        image = iter(self.image(x).split(self._sizes(False), dim=1))
        blind = iter(() if self.blind is None else
                     self.blind(foreground(x, self.background)).split(self._sizes(True), dim=1))
        return torch.cat([next(blind) if b else next(image) for b in self.is_blind], dim=1)


def read_attributes(net: nn.Module, sizes: list[int], x: Tensor, batch: int = 1000) -> Tensor:
    """Predicted attributes (N, A) of images x (N, C, H, W): the argmax of each group."""
    net.eval()
    with torch.no_grad():
        parts = [torch.stack([g.argmax(1) for g in net(x[i:i + batch]).split(sizes, dim=1)], dim=1)
                 for i in range(0, len(x), batch)]
    return torch.cat(parts)


def train_attribute_reader(x: Tensor, attrs: Tensor, groups: Groups, out_path: str | Path, steps: int = 1500,
                           batch_size: int = 128, lr: float = 2e-3, seed: int = 0, width: int = 32,
                           x_test: Tensor | None = None, attrs_test: Tensor | None = None,
                           blind: tuple[str, ...] = (), background: tuple[float, ...] | None = None) -> dict:
    """Train on images x (N, C, H, W) with attributes attrs (N, A), groups = ((name, number of values),)
    per column, the groups named in `blind` read from the foreground mask against `background` (C,),
    each batch shifted by up to a pixel and blurred (random_blur, sigma up to 3/64 of the width); the loss
    is the sum of the groups' cross-entropies. Saves the reader and returns its metadata (with
    per-attribute test accuracy when a test set is given). UserError for unknown attributes, steps < 1
    or an output `featurenet._outputs` refuses, before any training."""
    _check_start(out_path, steps)
    if attrs.shape[1] != len(groups) or (attrs < 0).any():
        raise UserError(f"an attribute reader needs {len(groups)} known attributes per image")
    torch.manual_seed(seed)
    arch = {"in_channels": x.shape[1], "blind": list(blind),
            "background": None if background is None else list(background), "width": width}
    net, g = AttributeReader(groups, **arch), torch.Generator().manual_seed(seed)

    def loss(step: int) -> Tensor:
        idx = torch.randint(len(x), (batch_size,), generator=g)
        x_aug = random_blur(_random_shift(x[idx], g), g, 1.5 * x.shape[-1] / 32)
        groups_logits = net(x_aug).split(net.sizes, dim=1)
        return sum(F.cross_entropy(lg, attrs[idx, k]) for k, lg in enumerate(groups_logits))

    net.train()
    _fit(loss, net.parameters(), steps, lr, "attribute reader")
    info = {"kind": KIND, "groups": [list(gr) for gr in groups], "shape": list(x.shape[1:]), "seed": seed,
            "steps": steps, "max_blur": 3 / 64}
    if x_test is not None:
        right = read_attributes(net, net.sizes, x_test) == attrs_test
        info |= {f"test_accuracy_{name}": right[:, k].double().mean().item() for k, (name, _) in
                 enumerate(groups)}
    return _save(net, arch, info, out_path)


def load_attribute_reader(path: str | Path, groups: Groups, shape: tuple[int, ...],
                          blind: tuple[str, ...] = ()) -> tuple[AttributeReader, dict]:
    """The reader at `path`; UserError unless it reads these attribute groups, those in `blind` from the
    foreground mask, on images of `shape`."""
    tensors, meta = load_checkpoint(Path(path))
    if meta.get("kind") != KIND:
        raise UserError(f"{path}: holds a {meta.get('kind')!r}, not an attribute reader (`diffspace eval` of "
                        "a text_to_image run trains one into the run)")
    if "blind" not in meta["arch"] or "max_blur" not in meta:
        raise UserError(f"{path}: an attribute reader of an older version, which reads shape from colour or "
                        "misreads soft edges (delete it: `diffspace eval` trains one into the run)")
    have = (meta["groups"], meta["arch"]["blind"], meta["shape"])
    if have != ([list(gr) for gr in groups], list(blind), list(shape)):
        raise UserError(f"{path}: an attribute reader of {have[0]} ({', '.join(have[1]) or 'none'} read "
                        f"colour-blind) on images {have[2]}; this run needs {[list(gr) for gr in groups]} "
                        f"({', '.join(blind) or 'none'} colour-blind) on images {list(shape)} (delete it: "
                        "`diffspace eval` trains one into the run)")
    net = AttributeReader(meta["groups"], **meta["arch"])
    load_weights(net, tensors, Path(path))
    return net.eval(), meta
