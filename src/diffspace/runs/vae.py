"""The VAE task: Gaussian latents (reparameterization) or categorical latents relaxed by Gumbel-softmax
with an annealed temperature (families/vae.py), trained on the ELBO and evaluated by the importance-
weighted bound -L_k (a bound: `nll_kind` "bound").

The decoder is a Gaussian density for vector data and a categorical over the grid's levels for digits,
so the bound is on the same quantity as the other families' (runs/families.py). The Gumbel-softmax
temperature follows [GS] arXiv 1611.01144v5 Sec. 4, tau = max(tau_min, tau0 exp(-rate t)) updated every
`anneal_every` steps, handed to the loss through the loop's step schedule (train/loop.py), so a resumed
run anneals exactly as an uninterrupted one.
"""

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from diffspace.config import choice
from diffspace.families.vae import (
    GaussianObservation,
    GridObservation,
    annealed_temperature,
    gaussian_vae,
    gumbel_softmax_vae,
    vae_bound,
    vae_loss,
)
from diffspace.rng import Streams
from diffspace.runs import families
from diffspace.runs.continuous_task import after_train
from diffspace.runs.families import FamilyDataConfig, FamilyEvalConfig, FamilySampleConfig, data_grid
from diffspace.runs.options import EvalOptions, Run, SampleOptions, Task
from diffspace.runs.schema import RunConfig
from diffspace.train.loop import TrainConfig, TrainSetup
from diffspace.types import UserError

BOUND_ELEMENTS = 20_000  # examples x importance samples per decoder call in evaluation


@dataclass
class VAEModelConfig:
    latent: str = choice("gaussian", "gaussian", "categorical")
    latent_dim: int = 8  # gaussian latents
    n_latents: int = 16  # categorical latents, each of n_classes values
    n_classes: int = 8
    straight_through: bool = False  # categorical: one-hot samples forward, relaxed gradient ([GS] Sec. 2.2)
    tau0: float = 1.0  # categorical: the annealed Gumbel-softmax temperature ([GS] Sec. 4)
    tau_min: float = 0.5
    anneal_rate: float = 1e-4
    anneal_every: int = 500
    hidden: int = 256
    depth: int = 2


@dataclass
class VAEEvalConfig(FamilyEvalConfig):
    iwae_k: int = 256  # importance samples of the reported bound -L_k ([IWAE])


@dataclass
class VAEConfig:
    task: str = choice("vae", "vae")
    run: RunConfig = field(default_factory=RunConfig)
    data: FamilyDataConfig = field(default_factory=FamilyDataConfig)
    model: VAEModelConfig = field(default_factory=VAEModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: FamilySampleConfig = field(default_factory=FamilySampleConfig)
    eval: VAEEvalConfig = field(default_factory=VAEEvalConfig)

    def validate(self, src: str) -> None:
        families.check_family(src, self.data, self.eval, self.sample.n)
        m = self.model
        for key in ("latent_dim", "n_latents", "n_classes", "hidden", "depth", "anneal_every"):
            if getattr(m, key) <= 0:
                raise UserError(f"{src}: model.{key} must be positive, got {getattr(m, key)}")
        if not 0 < m.tau_min <= m.tau0 or m.anneal_rate < 0 or self.eval.iwae_k <= 0:
            raise UserError(f"{src}: need 0 < model.tau_min <= model.tau0, model.anneal_rate >= 0 and "
                            f"eval.iwae_k > 0, got {m.tau_min}, {m.tau0}, {m.anneal_rate}, "
                            f"{self.eval.iwae_k}")


def build_vae(cfg: VAEConfig, shape: tuple[int, ...]) -> nn.Module:
    m, grid = cfg.model, data_grid(cfg.data)
    obs = GaussianObservation(shape) if grid is None else GridObservation(shape, grid)
    if m.latent == "gaussian":
        return gaussian_vae(shape, obs, m.latent_dim, m.hidden, m.depth)
    return gumbel_softmax_vae(shape, obs, m.n_latents, m.n_classes, m.hidden, m.depth, m.straight_through)


def temperature(m: VAEModelConfig, step: int) -> float:
    return annealed_temperature(step, m.tau0, m.anneal_rate, m.tau_min, m.anneal_every)


def build_setup(cfg: VAEConfig, device: torch.device) -> tuple[TrainSetup, dict]:
    data, meta = families.load(cfg)
    vae = build_vae(cfg, tuple(data["x_train"].shape[1:])).to(device)

    def draw(g: torch.Generator, x: Tensor) -> dict[str, Tensor]:
        return {k: v[:, 0] for k, v in vae.noise(len(x), 1, g).items()}  # one draw of z per example

    schedule = None if cfg.model.latent == "gaussian" else lambda step: {"tau": temperature(cfg.model, step)}
    return TrainSetup(vae, families.batches(data["x_train"], device, draw), vae_loss, schedule=schedule), meta


def module_from_meta(cfg: VAEConfig, meta: dict) -> nn.Module:
    return build_vae(cfg, tuple(meta["data_shape"]))


def _draw(run: Run):
    return lambda n, streams: run.module.sample(n, streams)


def vae_sample(run: Run, opts: SampleOptions) -> Tensor | None:
    return families.sample(run, opts.n or run.cfg.sample.n, opts.seed, _draw(run))


def _nll(run: Run, x: Tensor, seed: int) -> dict:
    k = run.cfg.eval.iwae_k

    def nll(xb: Tensor, i: int) -> Tensor:
        return -vae_bound(run.module, xb, k, Streams(seed, len(xb), i)).value

    out = families.likelihood(run, x, nll, "bound", chunk=max(1, BOUND_ELEMENTS // k))
    return {**out, "nll_iwae_k": k}


def vae_evaluate(run: Run, opts: EvalOptions) -> dict:
    return families.evaluate(run, opts, _draw(run), _nll)


def network(run: Run) -> tuple:
    """The ELBO on one example: encoder, one latent draw, decoder."""
    vae, shape = run.module, run.meta["data_shape"]
    x = torch.randn(1, *shape, device=run.device)
    noise = {k: v[:, 0] for k, v in vae.noise(1, 1, torch.Generator()).items()}
    extra = {} if run.cfg.model.latent == "gaussian" else {"tau": temperature(run.cfg.model, run.step)}
    return (lambda v: vae(v, **noise, **extra)), x, "encoder and decoder (one ELBO term)"


VAE = Task("vae", VAEConfig, build_setup, module_from_meta, vae_sample, vae_evaluate,
           sample_options=frozenset({"n", "seed"}),
           eval_options=frozenset({"n", "seed", "featurenet", "nll", "nll_n"}),
           after_train=after_train, network=network)
