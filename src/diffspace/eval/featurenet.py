"""Classifiers for evaluation and guidance, saved as artifacts (safetensors weights, JSON beside them).

* The feature net: a small classifier trained on a data set's train split. Its penultimate
  activations are the features of the offline FID/KID/precision-recall ([FID] arXiv 1706.08500);
  its predictions give the classification accuracy of class-conditional samples (CAS).
* The noise-aware classifier: the same network with a noise embedding, trained on EDM-space
  x = x0 + sigma eps over the sampler's whole sigma range, for classifier guidance ([CG] arXiv 2105.05233).
"""

import json
import logging
import math
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from diffspace.data.images import load_image_data
from diffspace.files import atomic_write, check_new_files
from diffspace.nets.classifier import ConvClassifier
from diffspace.samplers.guidance import EDMClassifier
from diffspace.train.checkpoint import load_checkpoint, load_weights, save_checkpoint
from diffspace.types import UserError

log = logging.getLogger("diffspace")
FEATURENET_MIN_ACCURACY = 0.9  # below this test accuracy, metrics on the feature net's features are marked


def _random_shift(x: Tensor, g: torch.Generator, pixels: int = 1) -> Tensor:
    """Translate each image by up to `pixels` in x and y (edge padding), a cheap augmentation."""
    B, _, H, W = x.shape
    pad = F.pad(x, (pixels,) * 4, mode="replicate")
    dy, dx = (torch.randint(0, 2 * pixels + 1, (B,), generator=g) for _ in range(2))
    rows = (dy[:, None] + torch.arange(H))[:, None, :, None].expand(B, x.shape[1], H, W + 2 * pixels)
    cols = (dx[:, None] + torch.arange(W))[:, None, None, :].expand(B, x.shape[1], H, W)
    return pad.gather(2, rows.to(x.device)).gather(3, cols.to(x.device))


def _fit(loss_fn, params, steps: int, lr: float, what: str) -> None:
    """AdamW with a cosine-decayed learning rate; loss_fn(step) -> scalar loss. Logs `what`'s progress
    ten times (training a scorer can take minutes)."""
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    every = max(1, steps // 10)
    for step in range(steps):
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(step)
        loss.backward()
        opt.step()
        sched.step()
        if (step + 1) % every == 0 or step + 1 == steps:
            log.info("%s: step %d/%d, loss %.3f", what, step + 1, steps, float(loss.detach()))


def _data(data_name: str, seed: int, path: str | None, size: int, fit: str):
    x, y = load_image_data(data_name, "train", seed, path, size, fit)
    xt, yt = load_image_data(data_name, "test", seed, path, size, fit)
    if y is None:
        raise UserError(f"data {data_name!r} has no labels: a classifier needs class subfolders or 'y'")
    return x, y, xt, yt


@torch.no_grad()
def predict(net: nn.Module, x: Tensor, batch: int = 1000) -> Tensor:
    """Class predictions (N,) of a clean-image classifier."""
    net.eval()
    return torch.cat([net(x[i:i + batch]).argmax(1) for i in range(0, len(x), batch)])


@torch.no_grad()
def features(net: ConvClassifier, x: Tensor, batch: int = 1000) -> Tensor:
    """Penultimate activations (N, feat_dim) of the feature net, float64 for the statistics."""
    net.eval()
    return torch.cat([net.features(x[i:i + batch]) for i in range(0, len(x), batch)]).double()


def _outputs(out_path: str | Path) -> tuple[Path, Path]:
    """The artifact `out_path` and the .json beside it; UserError unless both are new files and the artifact
    a .safetensors name (diffspace never replaces a user's file)."""
    out = Path(out_path)
    if out.suffix != ".safetensors":
        raise UserError(f"--out {out}: a classifier is saved as a .safetensors file (with a .json beside it)")
    beside = out.with_suffix(".json")
    check_new_files(out_path, beside)  # why out_path: a Path drops a trailing '/'
    return out, beside


def _check_start(out_path: str | Path, steps: int) -> None:
    """UserError before any work: an output `_outputs` refuses, or fewer than 1 step (0 divided the
    learning-rate schedule by zero)."""
    _outputs(out_path)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise UserError(f"steps (--steps) must be a positive integer, got {steps!r}")


def _save(net: nn.Module, arch: dict, info: dict, out_path: str | Path) -> dict:
    """Save the weights and the metadata `{"arch": arch, **info}` to `out_path` (a new .safetensors file) and
    the .json beside it, each atomically; returns the metadata. Neither file is left if either write fails."""
    out, beside = _outputs(out_path)  # again: training took minutes, and either may have appeared since
    meta = {"arch": arch, **info}
    save_checkpoint(out, net.state_dict(), meta)
    try:
        with atomic_write(beside) as tmp:
            tmp.write_text(json.dumps(meta, indent=2) + "\n")
    except BaseException:
        out.unlink()
        raise
    return meta


def load_classifier(path: str | Path, kind: str) -> tuple[ConvClassifier, dict]:
    """Rebuild a saved classifier; `kind` is "featurenet" or "noisy_classifier"."""
    tensors, meta = load_checkpoint(Path(path))
    if meta.get("kind") != kind:
        raise UserError(f"{path}: holds a {meta.get('kind')!r}, expected a {kind!r} (train one with "
                        f"`diffspace train-{'featurenet' if kind == 'featurenet' else 'classifier'}`)")
    net = ConvClassifier(**meta["arch"])
    load_weights(net, tensors, Path(path))
    return net.eval(), meta


def train_featurenet(data_name: str, out_path: str | Path, steps: int = 1500, batch_size: int = 128,
                     lr: float = 2e-3, seed: int = 0, path: str | None = None, size: int = 0,
                     width: int = 32, fit: str = "crop") -> dict:
    """Train the feature net on the train split; returns (and saves) its metadata with test accuracy.
    size, fit: the image data's (data.images.load_image_data). UserError, before any training, unless
    out_path is a new .safetensors file with no .json beside it."""
    _check_start(out_path, steps)
    x, y, xt, yt = _data(data_name, seed, path, size, fit)
    torch.manual_seed(seed)
    arch = {"in_channels": x.shape[1], "num_classes": int(y.max()) + 1, "width": width,
            "levels": 3, "feat_dim": 64, "noise_aware": False}
    net, g = ConvClassifier(**arch), torch.Generator().manual_seed(seed)

    def loss(step: int) -> Tensor:
        idx = torch.randint(len(x), (batch_size,), generator=g)
        return F.cross_entropy(net(_random_shift(x[idx], g)), y[idx])

    net.train()
    _fit(loss, net.parameters(), steps, lr, f"training the feature net on {data_name}")
    acc = float((predict(net, xt) == yt).double().mean())
    info = {"kind": "featurenet", "data": data_name, "shape": list(x.shape[1:]), "seed": seed,
            "steps": steps, "test_accuracy": acc}
    return _save(net, arch, info, out_path)


def train_classifier(data_name: str, out_path: str | Path, steps: int = 3000, batch_size: int = 128,
                     lr: float = 2e-3, seed: int = 0, path: str | None = None, size: int = 0,
                     width: int = 32, sigma_min: float = 0.002, sigma_max: float = 80.0,
                     sigma_data: float = 0.5, fit: str = "crop") -> dict:
    """Train a noise-aware classifier on x0 + sigma eps, ln sigma uniform on [ln sigma_min, ln sigma_max];
    out_path as in train_featurenet."""
    _check_start(out_path, steps)
    x, y, xt, yt = _data(data_name, seed, path, size, fit)
    torch.manual_seed(seed)
    arch = {"in_channels": x.shape[1], "num_classes": int(y.max()) + 1, "width": width,
            "levels": 3, "feat_dim": 64, "noise_aware": True}
    clf, g = EDMClassifier(ConvClassifier(**arch), sigma_data), torch.Generator().manual_seed(seed)
    log_lo, log_hi = math.log(sigma_min), math.log(sigma_max)

    def noisy(x0: Tensor) -> tuple[Tensor, Tensor]:
        sigma = torch.exp(log_lo + (log_hi - log_lo) * torch.rand(len(x0), generator=g))
        return x0 + sigma[:, None, None, None] * torch.randn(x0.shape, generator=g), sigma

    def loss(step: int) -> Tensor:
        idx = torch.randint(len(x), (batch_size,), generator=g)
        return F.cross_entropy(clf(*noisy(_random_shift(x[idx], g))), y[idx])

    clf.train()
    _fit(loss, clf.parameters(), steps, lr, f"training the noise-aware classifier on {data_name}")
    clf.eval()
    with torch.no_grad():  # accuracy at a low and a moderate noise level, for the record
        accs = {f"test_accuracy_sigma_{s}": float((clf(xt + s * torch.randn(xt.shape, generator=g),
                                                       torch.full((len(xt),), s)).argmax(1) == yt)
                                                   .double().mean()) for s in (0.05, 0.5)}
    info = {"kind": "noisy_classifier", "data": data_name, "shape": list(x.shape[1:]), "seed": seed,
            "steps": steps, "sigma_data": sigma_data, **accs}
    return _save(clf.net, arch, info, out_path)


def load_noisy_classifier(path: str | Path) -> EDMClassifier:
    net, meta = load_classifier(path, "noisy_classifier")
    return EDMClassifier(net, meta["sigma_data"]).eval()
