"""The continuous task: vectors (and, through the data and net registries, images).

Config sections: [run] [data] [model] [loss] [train] [sample] [eval]. `build_*` functions turn a
validated config into objects; this file and registries.py are the only places where names become
objects.
"""

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from diffspace.cli.config import RunConfig, TrainConfig, choice
from diffspace.cli.registries import DATA, NETS, make_net
from diffspace.losses import SIGMA_PROPOSALS, T_PROPOSALS, WEIGHTINGS, denoising_loss, flow_matching_loss
from diffspace.nets.dit import DiTConfig
from diffspace.nets.mlp import MLPConfig
from diffspace.nets.unet import UNetConfig
from diffspace.param import PREDICTIONS, DenoiserFromVelocity, EDMPrecond, NetDenoiser, NetVelocity
from diffspace.paths import PATHS, GaussianPath
from diffspace.train.loop import TrainSetup
from diffspace.types import UserError


@dataclass
class DataConfig:
    name: str = "checkerboard"  # a toy set, or "file" (with `file`)
    file: str = ""  # .npy / .npz / .csv for name = "file"
    key: str = ""  # array name inside a .npz
    n_train: int = 100_000  # toy sets: points generated for training
    n_test: int = 10_000  # toy sets: held-out points (evaluation baseline)
    image_size: int = 24  # lfw: resize 25x25 to 24 or 32 (images: digits, lfw, folder, npz with `file`)


@dataclass
class ModelConfig:
    net: str = "mlp"
    path: str = "edm"
    prediction: str = choice("x0", *PREDICTIONS)
    precond: str = choice("edm", "edm", "none")  # "edm": [EDM] preconditioning (path then sets only sampling)
    sigma_data: float = 0.5
    num_classes: int = 0  # > 0: class-conditional, with a null class for guidance
    p_uncond: float = 0.1  # label dropout probability during training (conditional models)
    mlp: MLPConfig = field(default_factory=MLPConfig)
    unet: UNetConfig = field(default_factory=UNetConfig)
    dit: DiTConfig = field(default_factory=DiTConfig)


@dataclass
class LossConfig:
    objective: str = choice("denoising", "denoising", "flow")
    weighting: str = choice("edm", *WEIGHTINGS)
    min_snr_gamma: float = 5.0
    proposal: str = choice("lognormal", *SIGMA_PROPOSALS, *T_PROPOSALS)
    p_mean: float = -1.2  # lognormal proposal
    p_std: float = 1.2


@dataclass
class SampleConfig:
    sampler: str = "heun"
    steps: int = 18
    grid: str = "karras"
    n: int = 10_000


@dataclass
class EvalConfig:
    n: int = 10_000


@dataclass
class ContinuousConfig:
    task: str = choice("continuous", "continuous")
    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def validate(self, src: str) -> None:
        m, lo = self.model, self.loss
        if m.path not in PATHS:
            raise UserError(f"{src}: model.path = {m.path!r} is not one of {', '.join(PATHS)}")
        if m.net not in NETS:
            raise UserError(f"{src}: model.net = {m.net!r} is not one of {', '.join(NETS)}")
        if self.data.name not in DATA:
            raise UserError(f"{src}: data.name = {self.data.name!r} is not one of {', '.join(DATA)}")
        if lo.objective == "flow" and (m.precond != "none" or m.prediction != "velocity"):
            raise UserError(f"{src}: loss.objective = 'flow' needs model.precond = 'none' and "
                            "model.prediction = 'velocity'")
        for key, value in [("train.steps", self.train.steps), ("train.batch_size", self.train.batch_size),
                           ("sample.steps", self.sample.steps), ("sample.n", self.sample.n),
                           ("eval.n", self.eval.n)]:
            if value <= 0:
                raise UserError(f"{src}: {key} must be positive, got {value}")
        if not 0 <= m.p_uncond < 1:
            raise UserError(f"{src}: model.p_uncond must be in [0, 1), got {m.p_uncond}")


# ---- building objects from a config ---------------------------------------------------------

def build_path(cfg: ContinuousConfig) -> GaussianPath:
    return PATHS[cfg.model.path]()


def build_module(cfg: ContinuousConfig, shape: tuple[int, ...]) -> nn.Module:
    """The trained module: a Denoiser, or for flow matching a VelocityField."""
    m = cfg.model
    net = make_net(cfg, shape)
    path = build_path(cfg)
    if cfg.loss.objective == "flow":
        return NetVelocity(net, path)
    if m.precond == "edm":
        return EDMPrecond(net, m.sigma_data)
    return NetDenoiser(net, path, m.prediction)


def as_denoiser(cfg: ContinuousConfig, module: nn.Module):
    """The sigma-space Denoiser of a trained module (for sampling and evaluation)."""
    if cfg.loss.objective == "flow":
        return DenoiserFromVelocity(module, build_path(cfg))
    return module


def _draw_sigma_t(cfg: ContinuousConfig, path: GaussianPath, n: int,
                  g: torch.Generator) -> tuple[Tensor, Tensor]:
    lo = cfg.loss
    if lo.proposal in SIGMA_PROPOSALS:
        sigma = SIGMA_PROPOSALS[lo.proposal](n, g, lo.p_mean, lo.p_std)
        return sigma, path.t_from_sigma(sigma)
    t = T_PROPOSALS[lo.proposal](n, g, path.t_min, path.t_max)
    return path.sigma(t), t


def build_setup(cfg: ContinuousConfig, device: torch.device) -> tuple[TrainSetup, dict]:
    """The TrainSetup and the data (dict with x_train, x_test, y_train, y_test) for a config."""
    data = DATA[cfg.data.name](cfg)
    x_train = data["x_train"].to(device)
    y_train = data.get("y_train")
    y_train = None if y_train is None else y_train.to(device)
    module = build_module(cfg, tuple(x_train.shape[1:])).to(device)
    path, m, lo = build_path(cfg), cfg.model, cfg.loss
    conditional = m.num_classes > 0

    def batch(g: torch.Generator, n: int) -> dict[str, Tensor]:
        idx = torch.randint(len(x_train), (n,), generator=g).to(device)
        sigma, t = _draw_sigma_t(cfg, path, n, g)
        out = {"x0": x_train[idx], "sigma": sigma.to(device), "t": t.to(device),
               "eps": torch.randn((n, *x_train.shape[1:]), generator=g).to(device)}
        if conditional:
            drop = torch.rand(n, generator=g).to(device) < m.p_uncond  # [CFG] label dropout
            out["class_labels"] = torch.where(drop, m.num_classes, y_train[idx])
        return out

    def loss(model: nn.Module, b: dict[str, Tensor]) -> Tensor:
        cond = {"class_labels": b["class_labels"]} if conditional else {}
        if lo.objective == "flow":
            return flow_matching_loss(model, b["x0"], b["t"], path, eps=b["eps"], **cond)
        weight = _weight(cfg, b["sigma"])
        return denoising_loss(model, b["x0"], b["sigma"], weight, eps=b["eps"], **cond)

    return TrainSetup(module, batch, loss), data


def _weight(cfg: ContinuousConfig, sigma: Tensor) -> Tensor:
    name = cfg.loss.weighting
    if name == "edm":
        return WEIGHTINGS[name](sigma, cfg.model.sigma_data)
    if name == "min_snr":
        return WEIGHTINGS[name](sigma, cfg.loss.min_snr_gamma)
    return WEIGHTINGS[name](sigma)


