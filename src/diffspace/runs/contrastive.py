"""The contrastive task: a text-image encoder trained with the CLIP loss ([CLIP] arXiv 2103.00020) or
the SigLIP loss ([SIGLIP] arXiv 2303.15343) on captioned images, evaluated by zero-shot attribute
reading and retrieval recall@1 on the evaluation sets of runs/captioned.py.

The caption tokenizer (kind, alphabet, context length) is stored with the run, so the encoder reads
prompts without its data; text_to_image runs copy it with the encoder.
"""

import json
import logging
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from diffspace.config import choice
from diffspace.data.captions import (
    CAPTION_TOKENIZERS,
    CaptionedImages,
    caption_tokenizer,
    tokenize_captions,
    tokenizer_from_state,
    tokenizer_state,
)
from diffspace.eval.text_image import first_caption_pairs, retrieval, zero_shot_attributes
from diffspace.families.contrastive import CLIP_INIT, SIGLIP_INIT, ContrastiveEncoder, clip_loss, siglip_loss
from diffspace.files import write_text
from diffspace.nets.towers import ImageTower, TextTower
from diffspace.runs import captioned
from diffspace.runs.captioned import CaptionDataConfig, CaptionEvalConfig
from diffspace.runs.continuous_task import after_train
from diffspace.runs.options import EvalOptions, Run, SampleOptions, Task, check_positive
from diffspace.runs.schema import RunConfig
from diffspace.train.loop import TrainConfig, TrainSetup
from diffspace.types import UserError

log = logging.getLogger("diffspace")
EMBED_BATCH = 500  # images or captions per encoder call in evaluation


@dataclass
class ContrastiveModelConfig:
    loss: str = choice("clip", "clip", "siglip")
    tokenizer: str = choice("char", *CAPTION_TOKENIZERS)
    embed_dim: int = 64
    width: int = 16  # image tower: channels of its first level
    levels: int = 3
    grid: int = 4  # image tower: the feature map is pooled to grid x grid before the projection
    plane_stem: int = 16  # image tower: colour-blind stem channels (0: none; nets/towers.py)
    text_dim: int = 64
    text_depth: int = 2
    text_heads: int = 4



@dataclass
class ContrastiveConfig:
    task: str = choice("contrastive", "contrastive")
    run: RunConfig = field(default_factory=RunConfig)
    data: CaptionDataConfig = field(default_factory=CaptionDataConfig)
    model: ContrastiveModelConfig = field(default_factory=ContrastiveModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: CaptionEvalConfig = field(default_factory=CaptionEvalConfig)

    def validate(self, src: str) -> None:
        m = self.model
        for key in ("embed_dim", "width", "levels", "grid", "text_dim", "text_depth", "text_heads"):
            if getattr(m, key) <= 0:
                raise UserError(f"{src}: model.{key} must be positive, got {getattr(m, key)}")
        if m.text_dim % (2 * m.text_heads):
            raise UserError(f"{src}: model.text_dim = {m.text_dim} must be a multiple of "
                            f"2 * model.text_heads = {2 * m.text_heads}")
        if self.eval.n <= 0:
            raise UserError(f"{src}: eval.n must be positive, got {self.eval.n}")


def build_encoder(m: ContrastiveModelConfig, channels: int, vocab_size: int,
                  context_len: int) -> ContrastiveEncoder:
    image = ImageTower(channels, m.embed_dim, m.width, m.levels, m.grid, m.plane_stem)
    text = TextTower(vocab_size, context_len, m.embed_dim, m.text_dim, m.text_depth, m.text_heads)
    return ContrastiveEncoder(image, text, CLIP_INIT if m.loss == "clip" else SIGLIP_INIT)


def trimmed_tokens(tok, texts: list[str], context_len: int) -> tuple[Tensor, Tensor]:
    """tokenize_captions cut after the longest caption: trailing padding changes nothing and costs time."""
    ids, mask = tokenize_captions(tok, texts, context_len)
    longest = int(mask.sum(dim=1).max())
    return ids[:, :longest], mask[:, :longest]


def _pair_loss(kind: str, encoder: ContrastiveEncoder):
    if kind == "clip":
        return lambda img, txt: clip_loss(img, txt, encoder.logit_scale)
    return lambda img, txt: siglip_loss(img, txt, encoder.logit_scale, encoder.logit_bias)


def build_setup(cfg: ContrastiveConfig, device: torch.device) -> tuple[TrainSetup, dict]:
    data = captioned.load_train(cfg.data, cfg.run.seed)
    tok, context_len = caption_tokenizer(cfg.model.tokenizer, data)
    encoder = build_encoder(cfg.model, data.x.shape[1], tok.size, context_len).to(device)
    pair_loss = _pair_loss(cfg.model.loss, encoder)

    def batch(g: torch.Generator, n: int) -> dict[str, Tensor]:
        idx = torch.randint(len(data), (n,), generator=g)
        ids, mask = trimmed_tokens(tok, data.pick(idx, g), context_len)
        return {"x": data.x[idx].to(device), "ids": ids.to(device), "mask": mask.to(device)}

    def loss(model: nn.Module, b: dict[str, Tensor]) -> Tensor:
        return pair_loss(*model(b["x"], b["ids"], b["mask"]))

    meta = {"image_shape": list(data.x.shape[1:]), "tokenizer": tokenizer_state(tok, context_len)}
    return TrainSetup(encoder, batch, loss), meta


def module_from_meta(cfg: ContrastiveConfig, meta: dict) -> nn.Module:
    tok, context_len = tokenizer_from_state(meta["tokenizer"])
    return build_encoder(cfg.model, meta["image_shape"][0], tok.size, context_len)


@torch.no_grad()
def embed_texts(run: Run, texts: list[str]) -> Tensor:
    """Unit caption embeddings (N, E) of a contrastive run (UserError for a caption it cannot read)."""
    tok, context_len = tokenizer_from_state(run.meta["tokenizer"])
    parts = []
    for i in range(0, len(texts), EMBED_BATCH):
        ids, mask = trimmed_tokens(tok, texts[i:i + EMBED_BATCH], context_len)
        parts.append(run.module.embed_texts(ids.to(run.device), mask.to(run.device)).cpu())
    return torch.cat(parts)


@torch.no_grad()
def embed_images(encoder: ContrastiveEncoder, x: Tensor) -> Tensor:
    """Unit image embeddings (N, E) of images x (N, C, H, W) in [-1, 1]."""
    device = next(encoder.parameters()).device
    return torch.cat([encoder.embed_images(x[i:i + EMBED_BATCH].to(device)).cpu()
                      for i in range(0, len(x), EMBED_BATCH)])


def _set_metrics(run: Run, data: CaptionedImages, grid, prompt_emb: Tensor | None) -> dict:
    img = embed_images(run.module, data.x)
    pairs = first_caption_pairs(data.captions)
    out = retrieval(img[pairs], embed_texts(run, [data.captions[i][0] for i in pairs.tolist()]))
    if grid is not None:
        groups = captioned.ATTRIBUTE_GROUPS[run.cfg.data.name]
        attrs = captioned.attribute_columns(run.cfg.data, data)
        out |= zero_shot_attributes(img, prompt_emb, grid[1], attrs, tuple(name for name, _ in groups))
    return out


def contrastive_evaluate(run: Run, opts: EvalOptions) -> dict:
    """Retrieval recall@1 and (for sources with attributes) zero-shot attribute accuracy on every
    evaluation set; written to RUN/metrics.json."""
    n = opts.n or run.cfg.eval.n
    check_positive(n=n)
    grid = captioned.prompt_grid(run.cfg.data)
    prompt_emb = None if grid is None else embed_texts(run, grid[0])
    metrics = {"step": run.step, "loss": run.cfg.model.loss, "n": n,
               "logit_scale": run.module.logit_scale.exp().item()}
    for name, data in captioned.eval_sets(run.cfg.data, run.cfg.run.seed, n).items():
        metrics |= {f"{name}_{k}": v for k, v in _set_metrics(run, data, grid, prompt_emb).items()}
    write_text(run.dir / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    return metrics


def contrastive_sample(run: Run, opts: SampleOptions):
    raise UserError(f"{run.dir} is a contrastive run (a text-image encoder): it draws no samples; a "
                    "text_to_image run conditioned on it does")


CONTRASTIVE = Task("contrastive", ContrastiveConfig, build_setup, module_from_meta, contrastive_sample,
                   contrastive_evaluate, sample_options=frozenset(), eval_options=frozenset({"n"}),
                   after_train=after_train)
