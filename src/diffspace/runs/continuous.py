"""The continuous task: vectors and images, any path x parameterization x loss x sampler.

Config sections: [run] [data] [model] [loss] [train] [sample] [eval]. `build_*` functions turn a
validated config into objects; with registries.py they are the only places where names become objects.
"""

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from diffspace.config import choice
from diffspace.data.checks import check_count
from diffspace.data.files import standardize_stats
from diffspace.data.images import FITS
from diffspace.losses import SIGMA_PROPOSALS, T_PROPOSALS, WEIGHTINGS, denoising_loss, flow_matching_loss
from diffspace.losses.proposals import table_t
from diffspace.nets.dit import DiTConfig
from diffspace.nets.mlp import MLPConfig
from diffspace.nets.unet import UNetConfig
from diffspace.param import PREDICTIONS, DenoiserFromVelocity, EDMPrecond, NetDenoiser, NetVelocity
from diffspace.param.maps import ConsistencyPrecond, MapDenoiser, NetAverageVelocity
from diffspace.paths import PATHS, DDPMDiscrete, GaussianPath
from diffspace.paths.ddpm import ddpm_from_scheduler_config
from diffspace.runs import registries
from diffspace.runs.fewstep_config import FEWSTEP_OBJECTIVES, FewStepConfig, check_fewstep
from diffspace.runs.registries import DATA, IMAGE_DATA, NETS, make_net
from diffspace.runs.schema import RunConfig
from diffspace.samplers.grids import GRIDS
from diffspace.samplers.registry import SAMPLERS
from diffspace.train.loop import TrainConfig, TrainSetup
from diffspace.types import UserError

TABLE_GRIDS = ("leading", "trailing", "linspace")  # spacings of a DDPM table's integer timesteps
# the few-step samplers of a map run and the model.parameterization they need (samplers/fewstep.py)
MAP_SAMPLERS = {"flow_map": "average_velocity", "consistency": "consistency"}


@dataclass
class DataConfig:
    name: str = "checkerboard"  # a toy set, "file" (with `file`), or image data (digits, lfw, folder, npz)
    file: str = ""  # .npy / .npz / .csv / .tsv / .txt for name = "file"; the folder or .npz for folder / npz
    key: str = ""  # array name inside a .npz
    standardize: bool = True  # name = "file": train on (x - mean) / std per column; undone when sampling
    n_train: int = 100_000  # toy sets: points generated for training
    n_test: int = 10_000  # toy sets: held-out points (evaluation baseline)
    image_size: int = 0  # lfw: 24 or 32 (0: 24); folder: square side (0: the images' own if all share one)
    image_fit: str = choice("crop", *FITS)  # folder: "crop" = shorter side to image_size, centre cut;
    # "resize" = stretch to image_size x image_size

    def validate(self, src: str) -> None:
        # why here: a 0 or negative count failed deep in make_toy, with a message naming no config key
        for key, value in (("data.n_train", self.n_train), ("data.n_test", self.n_test)):
            check_count(value, src, key)


@dataclass
class ModelConfig:
    net: str = "mlp"
    path: str = "edm"
    # path "ddpm" / "ddpm_zsnr": take the table from this diffusers scheduler_config.json (the float32
    # table diffusers builds from it, paths/ddpm.py) instead of the default linear betas
    scheduler_config: str = ""
    # how the network's output is read: "edm" = [EDM] preconditioning (the network predicts x0 through
    # c_skip, c_out, c_in, c_noise; the path then sets only the sampling range), or a raw prediction on
    # the path: x0, eps, v, score, velocity; few-step (docs/fewstep.md): "average_velocity" (a two-time
    # map u(x_t, r, t), [MEANFLOW]) or "consistency" ([CM]'s f(x, sigma) with f(x, sigma_min) = x)
    parameterization: str = choice("edm", "edm", *PREDICTIONS, "average_velocity", "consistency")
    sigma_data: float = 0.5  # [EDM] preconditioning's data scale
    num_classes: int = 0  # > 0: class-conditional, with a null class for guidance
    p_uncond: float = 0.1  # label dropout probability during training (conditional models)
    mlp: MLPConfig = field(default_factory=MLPConfig)
    unet: UNetConfig = field(default_factory=UNetConfig)
    dit: DiTConfig = field(default_factory=DiTConfig)


@dataclass
class LossConfig:
    objective: str = choice("denoising", "denoising", "flow", *FEWSTEP_OBJECTIVES)  # few-step: see [fewstep]
    weighting: str = choice("edm", *WEIGHTINGS)
    min_snr_gamma: float = 5.0
    # sigma or t draws: lognormal ([EDM]), t-space proposals, or "table" (a DDPM table's integer timesteps)
    proposal: str = choice("lognormal", *SIGMA_PROPOSALS, *T_PROPOSALS, "table")
    p_mean: float = -1.2  # lognormal proposal
    p_std: float = 1.2


@dataclass
class SampleConfig:
    sampler: str = "heun"
    steps: int = 18
    grid: str = "karras"  # a name in samplers.grids.GRIDS, or "optimized" (`diffspace optimize-grid`)
    n: int = 10_000


@dataclass
class EvalConfig:
    n: int = 10_000
    featurenet_steps: int = 1500  # images: training steps of the feature net trained into the run


def sampler_fits(sampler: str, m: ModelConfig) -> bool:
    """False if `sampler` is a few-step sampler (MAP_SAMPLERS) and the model is not the map it needs."""
    return MAP_SAMPLERS.get(sampler, m.parameterization) == m.parameterization


def check_sampler_fits(sampler: str, m: ModelConfig, what: str) -> None:
    """UserError unless `sampler_fits`."""
    if not sampler_fits(sampler, m):
        need = MAP_SAMPLERS[sampler]
        raise UserError(f"{what}: sampler {sampler!r} needs a run with model.parameterization = {need!r}, "
                        f"this one has {m.parameterization!r}")


def check_design(src: str, m: ModelConfig, lo: LossConfig, s: SampleConfig) -> None:
    """The checks of a Gaussian-path model's [model], [loss] and [sample] sections, shared by every task
    that trains one (continuous, text_to_image): names, a grid that fits the path, flow = velocity."""
    for key, value, names in (("model.path", m.path, PATHS), ("model.net", m.net, NETS),
                              ("sample.sampler", s.sampler, SAMPLERS),
                              ("sample.grid", s.grid, [*GRIDS, "optimized"])):
        if value not in names:
            raise UserError(f"{src}: {key} = {value!r} is not one of {', '.join(names)}")
    if m.scheduler_config and ddpm_from_scheduler_config(m.scheduler_config).name != m.path:
        table = ddpm_from_scheduler_config(m.scheduler_config).name
        raise UserError(f"{src}: model.scheduler_config {m.scheduler_config} describes a {table!r} table; "
                        f"set model.path = {table!r}")
    if s.grid in TABLE_GRIDS and not issubclass(PATHS[m.path], DDPMDiscrete):
        raise UserError(f"{src}: sample.grid = {s.grid!r} spaces the timesteps of a DDPM table; "
                        f"model.path = {m.path!r} has none (use karras, logsnr or uniform_t)")
    if lo.proposal == "table" and not issubclass(PATHS[m.path], DDPMDiscrete):
        raise UserError(f"{src}: loss.proposal = 'table' draws a DDPM table's timesteps; model.path = "
                        f"{m.path!r} has none")
    check_sampler_fits(s.sampler, m, src)
    if lo.objective == "flow" and m.parameterization != "velocity":
        raise UserError(f"{src}: loss.objective = 'flow' trains a velocity: set "
                        "model.parameterization = 'velocity'")
    for key, value in [("sample.steps", s.steps), ("sample.n", s.n), ("model.sigma_data", m.sigma_data),
                       ("loss.p_std", lo.p_std)]:
        if value <= 0:
            raise UserError(f"{src}: {key} must be positive, got {value}")
    if not 0 <= m.p_uncond < 1:
        raise UserError(f"{src}: model.p_uncond must be in [0, 1), got {m.p_uncond}")


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
    fewstep: FewStepConfig = field(default_factory=FewStepConfig)

    def validate(self, src: str) -> None:
        if self.data.name not in DATA:
            raise UserError(f"{src}: data.name = {self.data.name!r} is not one of {', '.join(DATA)}")
        check_design(src, self.model, self.loss, self.sample)
        check_fewstep(src, self.model, self.loss, self.sample, self.fewstep)
        for key, value in [("eval.n", self.eval.n), ("eval.featurenet_steps", self.eval.featurenet_steps)]:
            if value <= 0:
                raise UserError(f"{src}: {key} must be positive, got {value}")
        if self.model.num_classes < 0:
            raise UserError(f"{src}: model.num_classes must be >= 0, got {self.model.num_classes}")

    @property
    def images(self) -> bool:
        return self.data.name in IMAGE_DATA


# ---- building objects from a config ---------------------------------------------------------

def build_path(cfg: ContinuousConfig) -> GaussianPath:
    if cfg.model.scheduler_config:
        return ddpm_from_scheduler_config(cfg.model.scheduler_config)
    return PATHS[cfg.model.path]()


def build_module(cfg: ContinuousConfig, shape: tuple[int, ...], **net_kwargs) -> nn.Module:
    """The trained module for examples of `shape`: a Denoiser, or for flow matching a VelocityField.
    net_kwargs go to the network's constructor (text_dim, text_pooled_dim for text conditioning)."""
    m = cfg.model
    net = make_net(cfg, shape, **net_kwargs)
    path = build_path(cfg)
    if cfg.loss.objective == "flow":
        return NetVelocity(net, path)
    if m.parameterization == "average_velocity":
        return NetAverageVelocity(net)
    if m.parameterization == "consistency":
        return ConsistencyPrecond(net, m.sigma_data, path.sigma_min)
    if m.parameterization == "edm":
        return EDMPrecond(net, m.sigma_data)
    return NetDenoiser(net, path, m.parameterization)


def as_denoiser(cfg: ContinuousConfig, module: nn.Module):
    """The sigma-space Denoiser of a trained module (for sampling and evaluation)."""
    if cfg.loss.objective == "flow":
        return DenoiserFromVelocity(module, build_path(cfg))
    if cfg.model.parameterization == "average_velocity":
        return MapDenoiser(module, build_path(cfg))
    return module


def _draw_sigma_t(cfg: ContinuousConfig, path: GaussianPath, n: int,
                  g: torch.Generator) -> tuple[Tensor, Tensor]:
    lo = cfg.loss
    if lo.proposal in SIGMA_PROPOSALS:
        sigma = SIGMA_PROPOSALS[lo.proposal](n, g, lo.p_mean, lo.p_std)
        return sigma, path.t_from_sigma(sigma)
    if lo.proposal == "table":
        t = table_t(n, g, path)
    else:
        t = T_PROPOSALS[lo.proposal](n, g, path.t_min, path.t_max)
    return path.sigma(t), t


def _weight(cfg: ContinuousConfig, sigma: Tensor) -> Tensor:
    name = cfg.loss.weighting
    if name == "edm":
        return WEIGHTINGS[name](sigma, cfg.model.sigma_data)
    if name == "min_snr":
        return WEIGHTINGS[name](sigma, cfg.loss.min_snr_gamma)
    return WEIGHTINGS[name](sigma)


def noise_draws(cfg: ContinuousConfig, path: GaussianPath, n: int, shape: tuple[int, ...], g: torch.Generator,
                device: torch.device) -> dict[str, Tensor]:
    """The draws of a training batch besides its data: sigma and t (n,) by the [loss] proposal and
    eps (n, *shape)."""
    sigma, t = _draw_sigma_t(cfg, path, n, g)
    eps = torch.randn((n, *shape), generator=g)
    return {"sigma": sigma.to(device), "t": t.to(device), "eps": eps.to(device)}


def objective(cfg: ContinuousConfig, path: GaussianPath) -> Callable[[nn.Module, dict, dict], Tensor]:
    """loss(model, batch, cond) -> per-example losses (B,) of the [loss] objective on a batch with x0 and
    the `noise_draws`; cond is passed to the model (class labels, text features)."""
    def loss(model: nn.Module, b: dict[str, Tensor], cond: dict[str, Tensor]) -> Tensor:
        if cfg.loss.objective == "flow":
            return flow_matching_loss(model, b["x0"], b["t"], path, eps=b["eps"], **cond)
        return denoising_loss(model, b["x0"], b["sigma"], _weight(cfg, b["sigma"]), eps=b["eps"], **cond)

    return loss


def load_data(cfg: ContinuousConfig) -> dict:
    """The run's data: x_train, x_test (and y_train, y_test for labelled images)."""
    data = registries.load(cfg)
    y = data.get("y_train")
    if cfg.model.num_classes > 0 and (y is None or int(y.max()) >= cfg.model.num_classes):
        have = "no labels" if y is None else f"labels up to {int(y.max())}"
        raise UserError(f"model.num_classes = {cfg.model.num_classes} but data {cfg.data.name!r} has {have}")
    return data


def scaling(cfg: ContinuousConfig, x_train: Tensor) -> dict:
    """Checkpoint metadata of the data's standardisation: {"data_mean", "data_std"} (lists of D floats)
    for a vector file with data.standardize, else {}."""
    if cfg.data.name != "file" or not cfg.data.standardize:
        return {}
    mean, std = standardize_stats(x_train)
    return {"data_mean": mean.tolist(), "data_std": std.tolist()}


def to_model_units(meta: dict, x: Tensor) -> Tensor:
    """Data (N, D) in the units the model was trained in (standardised when the run's metadata says so)."""
    if "data_mean" not in meta:
        return x
    mean, std = (torch.tensor(meta[k], dtype=torch.float64) for k in ("data_mean", "data_std"))
    return ((x.double() - mean) / std).to(x.dtype)


def to_data_units(meta: dict, x: Tensor) -> Tensor:
    """Samples (N, D) of the model back in the data's units (the inverse of `to_model_units`)."""
    if "data_mean" not in meta:
        return x
    mean, std = (torch.tensor(meta[k], dtype=torch.float64) for k in ("data_mean", "data_std"))
    return (x.double() * std + mean).to(x.dtype)


def build_setup(cfg: ContinuousConfig, device: torch.device) -> tuple[TrainSetup, dict]:
    """The TrainSetup for a config and the metadata a checkpoint needs to rebuild the module (and to
    undo the data's standardisation, see `scaling`)."""
    data = load_data(cfg)
    scale = scaling(cfg, data["x_train"])
    x_train = to_model_units(scale, data["x_train"]).to(device)
    y_train = data.get("y_train")
    y_train = None if y_train is None else y_train.to(device)
    module = build_module(cfg, tuple(x_train.shape[1:])).to(device)
    path, m = build_path(cfg), cfg.model
    conditional = m.num_classes > 0
    path_loss = objective(cfg, path)

    def batch(g: torch.Generator, n: int) -> dict[str, Tensor]:
        idx = torch.randint(len(x_train), (n,), generator=g).to(device)
        out = {"x0": x_train[idx], **noise_draws(cfg, path, n, tuple(x_train.shape[1:]), g, device)}
        if conditional:
            drop = torch.rand(n, generator=g).to(device) < m.p_uncond  # [CFG] label dropout
            out["class_labels"] = torch.where(drop, m.num_classes, y_train[idx])
        return out

    def loss(model: nn.Module, b: dict[str, Tensor]) -> Tensor:
        return path_loss(model, b, {"class_labels": b["class_labels"]} if conditional else {})

    return TrainSetup(module, batch, loss), {"data_shape": list(x_train.shape[1:]), **scale}


def module_from_meta(cfg: ContinuousConfig, meta: dict) -> nn.Module:
    return build_module(cfg, tuple(meta["data_shape"]))
