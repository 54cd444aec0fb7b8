"""The autoencoder task: the KL-regularized autoencoder of latent diffusion ([LDM] arXiv 2112.10752
Sec. 3) on the images of a captioned source, evaluated by reconstruction PSNR on its evaluation sets,
the KL of its posterior and the latent scale factor a latent-diffusion run would use.
"""

import json
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from diffspace.config import choice
from diffspace.eval.pictures import save_grid
from diffspace.families.autoencoder import (
    KL_WEIGHT,
    autoencoder_loss,
    kl_divergence,
    latent_scale,
    posterior,
    psnr,
)
from diffspace.files import write_text
from diffspace.nets.autoencoder import KLAutoencoder
from diffspace.runs import captioned
from diffspace.runs.captioned import CaptionDataConfig, CaptionEvalConfig
from diffspace.runs.continuous_task import after_train
from diffspace.runs.options import EvalOptions, Run, SampleOptions, Task, check_positive
from diffspace.runs.registries import config_errors
from diffspace.runs.schema import RunConfig
from diffspace.train.loop import TrainConfig, TrainSetup
from diffspace.types import UserError

EVAL_BATCH = 256
SCALE_IMAGES = 2000  # training images the reported latent scale is estimated on


@dataclass
class AutoencoderModelConfig:
    latent_channels: int = 4
    widths: list[int] = field(default_factory=lambda: [16, 32, 64])  # per level; f = 2^(levels - 1)
    blocks: int = 1  # residual blocks per level
    kl_weight: float = KL_WEIGHT



@dataclass
class AutoencoderConfig:
    task: str = choice("autoencoder", "autoencoder")
    run: RunConfig = field(default_factory=RunConfig)
    data: CaptionDataConfig = field(default_factory=CaptionDataConfig)
    model: AutoencoderModelConfig = field(default_factory=AutoencoderModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: CaptionEvalConfig = field(default_factory=CaptionEvalConfig)

    def validate(self, src: str) -> None:
        m = self.model
        if m.latent_channels <= 0 or m.blocks <= 0 or not m.widths or min(m.widths) <= 0:
            raise UserError(f"{src}: model.latent_channels, model.blocks and every model.widths entry must "
                            f"be positive, got {m.latent_channels}, {m.blocks}, {m.widths}")
        if m.kl_weight < 0 or self.eval.n <= 0:
            raise UserError(f"{src}: model.kl_weight must be >= 0 and eval.n positive, got {m.kl_weight}, "
                            f"{self.eval.n}")


def build_autoencoder(m: AutoencoderModelConfig, channels: int) -> KLAutoencoder:
    return KLAutoencoder(channels, m.latent_channels, tuple(m.widths), m.blocks)


def build_setup(cfg: AutoencoderConfig, device: torch.device) -> tuple[TrainSetup, dict]:
    x = captioned.load_train(cfg.data, cfg.run.seed).x
    ae = build_autoencoder(cfg.model, x.shape[1]).to(device)
    with config_errors(f"[model] widths = {cfg.model.widths} for images of shape {tuple(x.shape[1:])}"):
        latent = tuple(ae.encode(x[:1].to(device))[0].shape[1:])

    def batch(g: torch.Generator, n: int) -> dict[str, Tensor]:
        idx = torch.randint(len(x), (n,), generator=g)
        return {"x0": x[idx].to(device), "eps": torch.randn((n, *latent), generator=g).to(device)}

    def loss(model: nn.Module, b: dict[str, Tensor]) -> Tensor:
        return autoencoder_loss(model, b["x0"], cfg.model.kl_weight, b["eps"])

    return TrainSetup(ae, batch, loss), {"image_shape": list(x.shape[1:]), "latent_shape": list(latent)}


def module_from_meta(cfg: AutoencoderConfig, meta: dict) -> nn.Module:
    return build_autoencoder(cfg.model, meta["image_shape"][0])


@torch.no_grad()
def reconstruct(ae: KLAutoencoder, x: Tensor) -> tuple[Tensor, Tensor]:
    """Reconstructions D(mean) (N, C, H, W) and KL (N,) of images x."""
    mean, logvar = posterior(ae, x, EVAL_BATCH)
    device = next(ae.parameters()).device
    rec = [ae.decode(mean[i:i + EVAL_BATCH].to(device)).cpu() for i in range(0, len(x), EVAL_BATCH)]
    return torch.cat(rec), kl_divergence(mean, logvar)


def autoencoder_evaluate(run: Run, opts: EvalOptions) -> dict:
    """PSNR (dB) of D(mean E(x)) on each evaluation set, the KL per image (nats) and the latent scale over
    training images; RUN/samples.png shows originals (top rows) over their reconstructions."""
    n = opts.n or run.cfg.eval.n
    check_positive(n=n)
    metrics = {"step": run.step, "n": n, "latent_shape": run.meta["latent_shape"]}
    for name, data in captioned.eval_sets(run.cfg.data, run.cfg.run.seed, n).items():
        rec, kl = reconstruct(run.module, data.x)
        metrics |= {f"{name}_psnr_db": psnr(data.x, rec).mean().item(), f"{name}_kl_nats": kl.mean().item()}
        if name == "seen":
            show = min(len(data), 10)
            pairs = torch.cat([data.x[:show], rec[:show].clamp(-1, 1)])
            save_grid(pairs, run.dir / "samples.png", ncols=show)
    train = captioned.load_train(run.cfg.data, run.cfg.run.seed).x[:SCALE_IMAGES]
    metrics["latent_scale"] = latent_scale(posterior(run.module, train)[0])
    write_text(run.dir / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    return metrics


def autoencoder_sample(run: Run, opts: SampleOptions):
    raise UserError(f"{run.dir} is an autoencoder run: it draws no samples; a text_to_image run in its "
                    "latent space does (`diffspace eval` shows its reconstructions)")


AUTOENCODER = Task("autoencoder", AutoencoderConfig, build_setup, module_from_meta, autoencoder_sample,
                   autoencoder_evaluate, sample_options=frozenset(), eval_options=frozenset({"n"}),
                   after_train=after_train)
