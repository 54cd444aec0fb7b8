"""The text_to_image task: diffusion conditioned on captions, in the latent space of a KL autoencoder
run or on the pixels, the recipe of [LDM] arXiv 2112.10752 at toy scale.

A run names its sources, a contrastive run (the text encoder: [CLIP] arXiv 2103.00020 or [SIGLIP]
arXiv 2303.15343) and optionally an autoencoder run, and copies them, frozen, into its own checkpoint
with the caption tokenizer (families/text_to_image.py), recording which runs and steps they came from:
it samples and evaluates on its own. The [model], [loss] and [sample] sections are the continuous
task's, built by the same functions, so any path x parameterization x objective x sampler works in
latent space as on pixels. Caption dropout (model.p_uncond, [CFG] arXiv 2207.12598 Sec. 3.2) trains
the null caption that classifier-free guidance on text needs.
"""

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from diffspace.config import build, choice
from diffspace.data.captions import drop_captions, tokenizer_from_state
from diffspace.families.autoencoder import latent_scale, posterior
from diffspace.families.text_to_image import TEXT_KEYS, TextToImage
from diffspace.runs import captioned
from diffspace.runs.autoencoder import AUTOENCODER, AutoencoderConfig, build_autoencoder
from diffspace.runs.captioned import CaptionDataConfig
from diffspace.runs.continuous import (
    LossConfig,
    ModelConfig,
    SampleConfig,
    as_denoiser,
    build_module,
    build_path,
    check_design,
    noise_draws,
    objective,
)
from diffspace.runs.contrastive import CONTRASTIVE, ContrastiveConfig, build_encoder, trimmed_tokens
from diffspace.runs.loading import load_as
from diffspace.runs.options import Run, SampleOptions, check_positive
from diffspace.runs.sampling import generate, run_sigmas, sampler_fn
from diffspace.runs.schema import RunConfig
from diffspace.samplers.guidance import ClassifierFreeGuidance, null_caption
from diffspace.train.loop import TrainConfig, TrainSetup
from diffspace.types import UserError

DECODE_BATCH = 256


@dataclass
class SourcesConfig:
    encoder: str = ""  # a contrastive run directory: its text tower conditions the model (required)
    autoencoder: str = ""  # an autoencoder run directory: diffusion in its latent space ("": on the pixels)


@dataclass
class TextImageSampleConfig(SampleConfig):
    n: int = 8  # samples per prompt
    guidance: float = 3.0  # classifier-free guidance scale w on the caption (1: none, 0: unconditional)


@dataclass
class TextImageEvalConfig:
    n: int = 500  # prompts (one sample each) per evaluation set
    n_reference: int = 2000  # real images: FID reference statistics and the attribute reader's training set
    reader_steps: int = 1500  # training steps of the attribute reader trained into the run
    guidance: list[float] = field(default_factory=lambda: [1.0, 2.0, 3.0, 5.0])  # the sweep of `eval`


@dataclass
class TextToImageConfig:
    task: str = choice("text_to_image", "text_to_image")
    run: RunConfig = field(default_factory=RunConfig)
    data: CaptionDataConfig = field(default_factory=CaptionDataConfig)
    sources: SourcesConfig = field(default_factory=SourcesConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: TextImageSampleConfig = field(default_factory=TextImageSampleConfig)
    eval: TextImageEvalConfig = field(default_factory=TextImageEvalConfig)

    def validate(self, src: str) -> None:
        check_design(src, self.model, self.loss, self.sample)
        if not self.sources.encoder:
            raise UserError(f"{src}: sources.encoder must name a contrastive run (its text tower conditions "
                            "the model)")
        if self.model.num_classes or self.model.net == "mlp":
            raise UserError(f"{src}: a text_to_image model is a unet or dit conditioned on captions, with "
                            f"model.num_classes = 0; got net {self.model.net!r}, num_classes "
                            f"{self.model.num_classes}")
        e = self.eval
        if min(e.n, e.n_reference, e.reader_steps) <= 0 or not e.guidance:
            raise UserError(f"{src}: eval.n, eval.n_reference and eval.reader_steps must be positive and "
                            "eval.guidance a non-empty list")


def _text_dims(enc: ContrastiveConfig) -> dict[str, int]:
    return {"text_dim": enc.model.text_dim, "text_pooled_dim": enc.model.embed_dim}


def _source(run: Run) -> dict:
    return {"dir": str(run.dir), "step": run.step, "config": run.meta["config"]}


def _check_images(shape: list[int], source: Run, what: str) -> None:
    if list(source.meta["image_shape"]) != shape:
        raise UserError(f"sources.{what} = {source.dir} was trained on images {source.meta['image_shape']}, "
                        f"the data here are {shape}")


def build_setup(cfg: TextToImageConfig, device: torch.device) -> tuple[TrainSetup, dict]:
    enc = load_as(CONTRASTIVE, cfg.sources.encoder, device)
    ae = load_as(AUTOENCODER, cfg.sources.autoencoder, device) if cfg.sources.autoencoder else None
    data = captioned.load_train(cfg.data, cfg.run.seed)
    image_shape = list(data.x.shape[1:])
    for what, source in (("encoder", enc), ("autoencoder", ae)):
        if source is not None:
            _check_images(image_shape, source, what)
    tok, context_len = tokenizer_from_state(enc.meta["tokenizer"])
    scale, x0_mean, x0_std = 1.0, data.x, None
    if ae is not None:  # [LDM] Sec. 4.3.2: diffusion on scale * z, scale = 1 / std of the latents
        mean, logvar = posterior(ae.module, data.x)
        scale = latent_scale(mean)
        x0_mean, x0_std = scale * mean, scale * (0.5 * logvar).exp()
    shape = tuple(x0_mean.shape[1:])
    denoiser = build_module(cfg, shape, **_text_dims(enc.cfg))
    module = TextToImage(denoiser, enc.module, None if ae is None else ae.module, scale).to(device)
    path = build_path(cfg)
    path_loss = objective(cfg, path)

    def batch(g: torch.Generator, n: int) -> dict[str, Tensor]:
        idx = torch.randint(len(data), (n,), generator=g)
        ids, mask = trimmed_tokens(tok, data.pick(idx, g), context_len)
        cond = module.text_condition(ids.to(device), mask.to(device))  # encoded before the dropout
        cond["text_mask"] = drop_captions(cond["text_mask"], cfg.model.p_uncond, g)  # [CFG] caption dropout
        x0 = x0_mean[idx]
        if x0_std is not None:  # a draw from the posterior q(z | x), as [LDM] trains on
            x0 = x0 + x0_std[idx] * torch.randn(x0.shape, generator=g)
        return {"x0": x0.to(device), **noise_draws(cfg, path, n, shape, g, device), **cond}

    def loss(model: nn.Module, b: dict[str, Tensor]) -> Tensor:
        return path_loss(model, b, {k: b[k] for k in TEXT_KEYS})

    meta = {"data_shape": list(shape), "image_shape": image_shape, "latent_scale": scale,
            "tokenizer": enc.meta["tokenizer"],
            "sources": {"encoder": _source(enc), "autoencoder": None if ae is None else _source(ae)}}
    return TrainSetup(module, batch, loss), meta


def module_from_meta(cfg: TextToImageConfig, meta: dict) -> nn.Module:
    """The run's module rebuilt from its metadata alone (the sources' configs are stored there)."""
    channels = meta["image_shape"][0]
    enc_cfg = build(ContrastiveConfig, meta["sources"]["encoder"]["config"], "the stored encoder config")
    tok, context_len = tokenizer_from_state(meta["tokenizer"])
    encoder = build_encoder(enc_cfg.model, channels, tok.size, context_len)
    ae = None
    if meta["sources"]["autoencoder"] is not None:
        stored = meta["sources"]["autoencoder"]["config"]
        ae_cfg = build(AutoencoderConfig, stored, "the stored autoencoder config")
        ae = build_autoencoder(ae_cfg.model, channels)
    denoiser = build_module(cfg, tuple(meta["data_shape"]), **_text_dims(enc_cfg))
    return TextToImage(denoiser, encoder, ae, meta["latent_scale"])


# ---- sampling ----------------------------------------------------------------------------------

def prompt_condition(run: Run, prompts: list[str]) -> dict[str, Tensor]:
    """The text condition (on the CPU) of each prompt, through the run's tokenizer and frozen encoder.
    UserError for an empty prompt, one longer than the text context or with characters it cannot read."""
    for i, p in enumerate(prompts, start=1):
        if not p.strip():
            raise UserError(f"prompt {i} (--prompt) is empty: a prompt needs a non-blank character")
    tok, context_len = tokenizer_from_state(run.meta["tokenizer"])
    ids, mask = trimmed_tokens(tok, prompts, context_len)
    cond = run.module.text_condition(ids.to(run.device), mask.to(run.device))
    return {k: v.cpu() for k, v in cond.items()}


def sampling_plan(run: Run, sampler: str | None, steps: int | None, grid: str | None, options: dict,
                  sigma_min: float | None, sigma_max: float | None) -> tuple[dict, object, Tensor]:
    """(protocol record, sampler function, float64 noise grid) of the options, None = the run's [sample]."""
    sc = run.cfg.sample
    sampler, steps, grid = sampler or sc.sampler, steps or sc.steps, grid or sc.grid
    sigmas = run_sigmas(run, grid, steps, sampler, sigma_min, sigma_max)
    protocol = {"sampler": sampler, "steps": steps, "grid": grid, "sampler_options": dict(options)}
    return protocol, sampler_fn(sampler, options), sigmas


def draw_images(run: Run, cond: dict[str, Tensor] | None, n: int, guidance: float, fn, sigmas: Tensor,
                seed: int) -> Tensor | None:
    """n images (n, C, H, W) in [-1, 1] on the CPU: sample i from noise stream (seed, i) with condition
    row i (None: the null caption), guided with scale w on the caption, decoded from the latent space.
    None on torchrun ranks other than 0 (they help draw)."""
    den = as_denoiser(run.cfg, run.module)
    if cond is not None and guidance != 1.0:
        den = ClassifierFreeGuidance(den, guidance, null_caption)
    z = generate(den, tuple(run.meta["data_shape"]), n, sigmas, fn, seed, run.device, cond)
    if z is None:
        return None
    x = [run.module.decode(z[i:i + DECODE_BATCH].to(run.device)).cpu() for i in range(0, n, DECODE_BATCH)]
    return torch.cat(x).clamp(-1, 1)


def text_to_image_sample(run: Run, opts: SampleOptions) -> Tensor | None:
    """opts.n images per prompt, prompt after prompt ((P n, C, H, W)); without prompts, opts.n samples of
    the null caption (unconditional). None on torchrun ranks other than 0."""
    sc = run.cfg.sample
    n, prompts = opts.n or sc.n, list(opts.prompts or ())
    check_positive(n=n)
    if not prompts and opts.guidance is not None:
        raise UserError("guidance (--cfg) needs a prompt (--prompt); without one the samples are "
                        "unconditional")
    cond = None
    if prompts:
        cond = {k: v.repeat_interleave(n, dim=0) for k, v in prompt_condition(run, prompts).items()}
    _, fn, sigmas = sampling_plan(run, opts.sampler, opts.steps, opts.grid, opts.sampler_options,
                                  opts.sigma_min, opts.sigma_max)
    w = sc.guidance if opts.guidance is None else opts.guidance
    return draw_images(run, cond, n * max(len(prompts), 1), w, fn, sigmas, opts.seed)
