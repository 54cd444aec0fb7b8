"""The only name -> object registries of the continuous task: data sources and networks."""

import dataclasses

import torch
from torch import nn

from diffspace.data.files import load_vectors
from diffspace.data.toy import TOY_SETS, make_toy
from diffspace.eval.image_eval import image_data
from diffspace.nets.dit import DiT
from diffspace.nets.mlp import MLP
from diffspace.nets.unet import UNet
from diffspace.types import UserError


def _toy(name: str):
    def load(cfg) -> dict:
        d = cfg.data
        return {"x_train": make_toy(name, d.n_train, cfg.run.seed, "train"),
                "x_test": make_toy(name, d.n_test, cfg.run.seed, "test")}

    return load


def _file(cfg) -> dict:
    """A user file: a fixed 90/10 train/test split by a seeded permutation."""
    if not cfg.data.file:
        raise UserError("data.name = 'file' needs data.file = PATH (.npy, .npz or .csv)")
    x = load_vectors(cfg.data.file, cfg.data.key or None)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(cfg.run.seed))
    n_test = max(1, len(x) // 10)
    return {"x_train": x[perm[n_test:]], "x_test": x[perm[:n_test]]}


DATA = {name: _toy(name) for name in TOY_SETS} | {"file": _file} | \
    {name: image_data for name in ("digits", "lfw", "folder", "npz")}


def _mlp(cfg, shape: tuple[int, ...]) -> nn.Module:
    if len(shape) != 1:
        raise UserError(f"model.net = 'mlp' needs vector data, got examples of shape {shape}")
    c = cfg.model.mlp
    return MLP(shape[0], c.hidden, c.depth, c.dropout, cfg.model.num_classes)


def _image_shape(name: str, shape: tuple[int, ...]) -> tuple[int, int]:
    if len(shape) != 3 or shape[1] != shape[2]:
        raise UserError(f"model.net = {name!r} needs square images (C, H, W), got examples of shape {shape}")
    return shape[0], shape[1]


def _unet(cfg, shape: tuple[int, ...]) -> nn.Module:
    return UNet(*_image_shape("unet", shape), **dataclasses.asdict(cfg.model.unet),
                num_classes=cfg.model.num_classes)


def _dit(cfg, shape: tuple[int, ...]) -> nn.Module:
    return DiT(*_image_shape("dit", shape), **dataclasses.asdict(cfg.model.dit),
               num_classes=cfg.model.num_classes)


NETS = {"mlp": _mlp, "unet": _unet, "dit": _dit}


def make_net(cfg, shape: tuple[int, ...]) -> nn.Module:
    return NETS[cfg.model.net](cfg, shape)
