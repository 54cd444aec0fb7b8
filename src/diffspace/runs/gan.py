"""The GAN task: one module holding generator and discriminator (families/gan.py), trained by the one
training loop (a per-example loss whose gradient is each player's own; Adam's beta1 = 0.5 through
train.betas), sampled from the EMA generator and evaluated by sample metrics only: a GAN defines no
likelihood, and `eval --nll` says so. On 8 gaussians the metrics include mode coverage.
"""

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from diffspace.config import choice
from diffspace.families.gan import conv_gan, gan_loss, hinge, mlp_gan, nonsaturating
from diffspace.runs import families
from diffspace.runs.continuous_task import after_train
from diffspace.runs.families import FamilyDataConfig, FamilyEvalConfig, FamilySampleConfig
from diffspace.runs.options import EvalOptions, Run, SampleOptions, Task
from diffspace.runs.schema import RunConfig
from diffspace.train.loop import TrainConfig, TrainSetup
from diffspace.types import UserError

OBJECTIVES = {"nonsaturating": nonsaturating, "hinge": hinge}


@dataclass
class GANModelConfig:
    objective: str = choice("nonsaturating", *OBJECTIVES)
    r1_gamma: float = 0.03  # R1 penalty weight on real data ([R1] Eq. 9); 0 = none
    latent_dim: int = 8
    hidden: int = 64  # MLP width (the generator; the discriminator too on vectors)
    depth: int = 3
    width: int = 32  # images: channels of the convolutional discriminator's first level


@dataclass
class GANConfig:
    task: str = choice("gan", "gan")
    run: RunConfig = field(default_factory=RunConfig)
    data: FamilyDataConfig = field(default_factory=FamilyDataConfig)
    model: GANModelConfig = field(default_factory=GANModelConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(betas=[0.5, 0.999]))
    sample: FamilySampleConfig = field(default_factory=FamilySampleConfig)
    eval: FamilyEvalConfig = field(default_factory=FamilyEvalConfig)

    def validate(self, src: str) -> None:
        families.check_family(src, self.data, self.eval, self.sample.n)
        m = self.model
        for key in ("latent_dim", "hidden", "depth", "width"):
            if getattr(m, key) <= 0:
                raise UserError(f"{src}: model.{key} must be positive, got {getattr(m, key)}")
        if m.r1_gamma < 0:
            raise UserError(f"{src}: model.r1_gamma must be >= 0, got {m.r1_gamma}")


def build_gan(m: GANModelConfig, shape: tuple[int, ...]) -> nn.Module:
    objective = OBJECTIVES[m.objective]
    if len(shape) == 3:
        return conv_gan(shape, m.latent_dim, m.hidden, m.depth, m.width, objective, m.r1_gamma)
    return mlp_gan(shape[0], m.latent_dim, m.hidden, m.depth, objective, m.r1_gamma)


def build_setup(cfg: GANConfig, device: torch.device) -> tuple[TrainSetup, dict]:
    data, meta = families.load(cfg)
    gan = build_gan(cfg.model, tuple(data["x_train"].shape[1:])).to(device)
    draw = lambda g, x: gan.noise(len(x), g)
    return TrainSetup(gan, families.batches(data["x_train"], device, draw), gan_loss), meta


def module_from_meta(cfg: GANConfig, meta: dict) -> nn.Module:
    return build_gan(cfg.model, tuple(meta["data_shape"]))


def _draw(run: Run):
    return lambda n, streams: run.module.sample(n, streams)


def gan_sample(run: Run, opts: SampleOptions) -> Tensor | None:
    return families.sample(run, opts.n or run.cfg.sample.n, opts.seed, _draw(run))


def gan_evaluate(run: Run, opts: EvalOptions) -> dict:
    return families.evaluate(run, opts, _draw(run), None)


def network(run: Run) -> tuple:
    """The generator on one latent (what sampling runs)."""
    z = torch.randn(1, run.cfg.model.latent_dim, device=run.device)
    return run.module.generator, z, "the generator z -> x"


GAN = Task("gan", GANConfig, build_setup, module_from_meta, gan_sample, gan_evaluate,
           sample_options=frozenset({"n", "seed"}),
           eval_options=frozenset({"n", "seed", "featurenet", "nll", "nll_n"}),
           after_train=after_train, network=network)
