"""The name -> object registries of the continuous task: data sources and networks.

Building from a config is the edge where a bad setting becomes a one-line UserError: an error a data
loader or a network constructor raises for its arguments (ValueError, an assertion, a shape error) is
re-raised naming the config key.
"""

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from diffspace.data.files import load_vectors
from diffspace.data.images import load_image_data
from diffspace.data.toy import TOY_SETS, make_toy
from diffspace.nets.dit import DiT
from diffspace.nets.mlp import MLP, PlainMLP
from diffspace.nets.unet import UNet
from diffspace.types import UserError
from diffspace.utils import out_of_memory

IMAGE_DATA = ("digits", "lfw", "folder", "npz")


@contextmanager
def config_errors(what: str) -> Iterator[None]:
    """Re-raise what building `what` from a config raises as one UserError line."""
    try:
        yield
    except UserError:
        raise
    except (ValueError, AssertionError, RuntimeError, OSError, TypeError) as e:
        if out_of_memory(e):  # why: the CLI says it in one line with the size, not as "cannot build"
            raise
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UserError(f"cannot build {what}: {first}") from None


def _toy(name: str):
    def load(cfg) -> dict:
        d = cfg.data
        return {"x_train": make_toy(name, d.n_train, cfg.run.seed, "train"),
                "x_test": make_toy(name, d.n_test, cfg.run.seed, "test")}

    return load


def _file(cfg) -> dict:
    """A user file: a fixed 90/10 train/test split by a seeded permutation."""
    if not cfg.data.file:
        raise UserError("data.name = 'file' needs data.file = PATH (.npy, .npz, .csv, .tsv or .txt)")
    x = load_vectors(cfg.data.file, cfg.data.key or None)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(cfg.run.seed))
    if len(x) < 2:
        raise UserError(f"{cfg.data.file}: {len(x)} row; a train/test split needs at least 2")
    n_test = max(1, len(x) // 10)
    return {"x_train": x[perm[n_test:]], "x_test": x[perm[:n_test]]}


def _images(cfg) -> dict:
    """Image data: train/test tensors and labels, split by run.seed."""
    d = cfg.data
    path = d.file or None
    x, y = load_image_data(d.name, "train", cfg.run.seed, path, d.image_size, d.image_fit)
    xt, yt = load_image_data(d.name, "test", cfg.run.seed, path, d.image_size, d.image_fit)
    return {"x_train": x, "y_train": y, "x_test": xt, "y_test": yt}


DATA = {name: _toy(name) for name in TOY_SETS} | {"file": _file} | {name: _images for name in IMAGE_DATA}


def load(cfg) -> dict:
    with config_errors(f"data.name = {cfg.data.name!r}"):
        return DATA[cfg.data.name](cfg)


def _check_vector_net(cfg, shape: tuple[int, ...], extra: dict) -> None:
    """The checks both MLPs share: vector data, no text conditioning, positive width and depth."""
    name, c = cfg.model.net, cfg.model.mlp
    if extra:
        raise UserError(f"model.net = {name!r} takes no {', '.join(extra)} (use unet or dit)")
    if len(shape) != 1:
        raise UserError(f"model.net = {name!r} needs vector data, got examples of shape {shape}")
    if c.hidden <= 0 or c.depth <= 0:
        raise UserError(f"model.mlp.hidden and model.mlp.depth must be positive, got {c.hidden}, {c.depth}")


def _mlp(cfg, shape: tuple[int, ...], **extra) -> nn.Module:
    _check_vector_net(cfg, shape, extra)
    c = cfg.model.mlp
    return MLP(shape[0], c.hidden, c.depth, c.dropout, cfg.model.num_classes, c.second_cond, c.out_norm)


def _plain_mlp(cfg, shape: tuple[int, ...], **extra) -> nn.Module:
    _check_vector_net(cfg, shape, extra)
    if cfg.model.num_classes:
        raise UserError("model.net = 'plain_mlp' takes no class labels (use 'mlp' with model.num_classes)")
    return PlainMLP(shape[0], cfg.model.mlp.hidden, cfg.model.mlp.depth)


def _image_shape(name: str, shape: tuple[int, ...]) -> tuple[int, int]:
    if len(shape) != 3 or shape[1] != shape[2]:
        raise UserError(f"model.net = {name!r} needs square images (C, H, W), got examples of shape {shape}")
    return shape[0], shape[1]


def _unet(cfg, shape: tuple[int, ...], **extra) -> nn.Module:
    return UNet(*_image_shape("unet", shape), **dataclasses.asdict(cfg.model.unet),
                num_classes=cfg.model.num_classes, **extra)


def _dit(cfg, shape: tuple[int, ...], **extra) -> nn.Module:
    return DiT(*_image_shape("dit", shape), **dataclasses.asdict(cfg.model.dit),
               num_classes=cfg.model.num_classes, **extra)


NETS = {"mlp": _mlp, "plain_mlp": _plain_mlp, "unet": _unet, "dit": _dit}


def make_net(cfg, shape: tuple[int, ...], **extra) -> nn.Module:
    """The [model] network for examples of `shape`; extra keywords (text_dim, text_pooled_dim) go to its
    constructor."""
    with config_errors(f"model.net = {cfg.model.net!r} with [model.{cfg.model.net}] for data of shape "
                       f"{tuple(shape)}"):
        return NETS[cfg.model.net](cfg, shape, **extra)
