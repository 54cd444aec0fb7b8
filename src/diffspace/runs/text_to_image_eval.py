"""Evaluating a text_to_image run, and the task's record.

For every evaluation set of runs/captioned.py (shapes: "seen" shape-colour pairs and "heldout" ones),
each real image's caption (one phrasing, drawn by the seed) is a prompt, and one image is generated per
prompt at each guidance scale w of the sweep ([eval] guidance, or --cfg alone). Each set of images,
and the real images beside them, is scored by:

- FID, KID, precision/recall ([FID] arXiv 1706.08500) on the features of the attribute reader
  (eval/attributes.py), against a reference of real training images of the same kind;
- CLIP score ([CLIPSCORE] arXiv 2104.08718) with the run's own (copied) encoder;
- attribute accuracy: the reader's reading of each image against the attributes its prompt asked for.

The reader is trained once on real images into RUN/featurenet.safetensors (or given by --featurenet).
RUN/metrics.json gets every row and a summary at the best w (the highest all-attributes accuracy on
the seen set; CLIP score for sources without attributes); RUN/guidance.png plots FID against CLIP
score and attribute accuracy along the sweep; RUN/samples.png shows prompts of each set at that w.
"""

import json
import logging
import time
from pathlib import Path

import torch
from torch import Tensor

from diffspace.eval.attributes import load_attribute_reader, read_attributes, train_attribute_reader
from diffspace.eval.featurenet import features
from diffspace.eval.image_eval import score_samples
from diffspace.eval.image_metrics import feature_stats
from diffspace.eval.metrics import baseline_ratio
from diffspace.eval.pictures import save_grid
from diffspace.eval.plots import guidance_tradeoff
from diffspace.eval.text_image import attribute_accuracy, clip_score
from diffspace.files import write_text
from diffspace.runs import captioned
from diffspace.runs.continuous_task import after_train
from diffspace.runs.contrastive import embed_images
from diffspace.runs.options import EvalOptions, Run, Task, check_sample_count
from diffspace.runs.text_to_image import (
    TextToImageConfig,
    build_setup,
    draw_images,
    module_from_meta,
    prompt_condition,
    sampling_plan,
    text_to_image_sample,
)
from diffspace.train.distributed import is_main
from diffspace.types import UserError

log = logging.getLogger("diffspace")
SUMMARY = ("fid", "fid_ratio", "clip_score", "acc_mean", "acc_all")
PICTURE_PROMPTS, PICTURE_PER_PROMPT = 4, 8  # per evaluation set, in RUN/samples.png


class Scorer:
    """Scores of image sets against one set's prompts: CLIP score, and with an attribute reader FID (and
    KID, precision/recall) against the reference and attribute accuracy."""

    def __init__(self, run: Run, reader, ref: Tensor | None):
        self.run, self.reader = run, reader
        self.groups = captioned.ATTRIBUTE_GROUPS[run.cfg.data.name]
        if reader is not None:
            self.ref_feats = features(reader, ref)
            self.ref_stats = feature_stats(self.ref_feats)

    def __call__(self, x: Tensor, text_pooled: Tensor, attrs: Tensor | None) -> dict:
        out = {"clip_score": clip_score(embed_images(self.run.module.encoder, x), text_pooled).mean().item()}
        if self.reader is None:
            return out
        out |= score_samples(self.reader, x, None, self.ref_stats, self.ref_feats)
        read = read_attributes(self.reader, [k for _, k in self.groups], x)
        return out | attribute_accuracy(read, attrs, tuple(name for name, _ in self.groups))


def train_reader(cfg: TextToImageConfig, path: Path) -> dict:
    """Train the attribute reader of cfg's data into `path` for eval.reader_steps on eval.n_reference
    real training images (offline), tested on the seen set; its metadata."""
    log.info("training the attribute reader of %s into %s", cfg.data.name, path)
    ref = captioned.reference_set(cfg.data, cfg.run.seed, cfg.eval.n_reference)
    test = captioned.eval_sets(cfg.data, cfg.run.seed, cfg.eval.n)["seen"]
    blind, background = captioned.colour_blind(cfg.data)
    groups = captioned.ATTRIBUTE_GROUPS[cfg.data.name]
    return train_attribute_reader(ref.x, captioned.attribute_columns(cfg.data, ref), groups, path,
                                  steps=cfg.eval.reader_steps, seed=cfg.run.seed, x_test=test.x,
                                  attrs_test=captioned.attribute_columns(cfg.data, test), blind=blind,
                                  background=background)


def reader_for(run: Run, path: str | None) -> tuple[object, dict | None]:
    """The attribute reader at `path`, else RUN/featurenet.safetensors, trained there (offline) if absent;
    (None, None) for a source without attributes."""
    cfg = run.cfg
    groups, shape = captioned.ATTRIBUTE_GROUPS[cfg.data.name], tuple(run.meta["image_shape"])
    if not groups:
        return None, None
    p = Path(path) if path else run.dir / "featurenet.safetensors"
    if not p.exists():
        if path:
            raise UserError(f"attribute reader not found: {p} (`diffspace eval` trains one into the run)")
        train_reader(cfg, p)
    return load_attribute_reader(p, groups, shape, captioned.colour_blind(cfg.data)[0])


def _best(rows: list[dict]) -> float:
    gen = [r for r in rows if r["guidance"] is not None and r["set"] == rows[0]["set"]]
    key = "acc_all" if "acc_all" in gen[0] else "clip_score"
    return max(gen, key=lambda r: r[key])["guidance"]


def _pictures(run: Run, prompts: dict[str, list[str]], w: float, fn, sigmas: Tensor, seed: int) -> None:
    chosen = [p for ps in prompts.values() for p in list(dict.fromkeys(ps))[:PICTURE_PROMPTS]]
    cond = {k: v.repeat_interleave(PICTURE_PER_PROMPT, 0) for k, v in prompt_condition(run, chosen).items()}
    x = draw_images(run, cond, len(chosen) * PICTURE_PER_PROMPT, w, fn, sigmas, seed)
    if x is not None:
        save_grid(x, run.dir / "samples.png", ncols=PICTURE_PER_PROMPT)


def text_to_image_evaluate(run: Run, opts: EvalOptions) -> dict:
    """Scores along the guidance sweep (or at opts.guidance) on every evaluation set, beside the real
    images' (see the module docstring); rank 0 writes RUN/metrics.json and the pictures."""
    cfg = run.cfg
    n = opts.n or cfg.eval.n
    check_sample_count(n=n)
    scales = cfg.eval.guidance if opts.guidance is None else [opts.guidance]
    protocol, fn, sigmas = sampling_plan(run, opts.sampler, opts.steps, opts.grid, opts.sampler_options,
                                         opts.sigma_min, opts.sigma_max)
    reader, reader_meta = reader_for(run, opts.featurenet) if is_main() else (None, None)
    ref = captioned.reference_set(cfg.data, cfg.run.seed, cfg.eval.n_reference).x if reader else None
    score = Scorer(run, reader, ref) if is_main() else None
    rows, prompts = [], {}
    for name, data in captioned.eval_sets(cfg.data, cfg.run.seed, n).items():
        prompts[name] = data.pick(torch.arange(len(data)), torch.Generator().manual_seed(opts.seed))
        cond = prompt_condition(run, prompts[name])
        attrs = captioned.attribute_columns(cfg.data, data) if reader else None
        real = score(data.x, cond["text_pooled"], attrs) if score else {}
        rows.append({"set": name, "guidance": None, "n": len(data), **real})
        for w in scales:
            start = time.process_time()
            x = draw_images(run, cond, len(data), w, fn, sigmas, opts.seed)
            seconds = (time.process_time() - start) / len(data)
            if x is not None:
                row = {"set": name, "guidance": w, "n": len(data), "sample_cpu_s": seconds,
                       **score(x, cond["text_pooled"], attrs)}
                if "fid" in row:
                    row["fid_ratio"] = baseline_ratio(row["fid"], real["fid"], "fid")
                rows.append(row)
    best = _best(rows) if is_main() else scales[0]
    _pictures(run, prompts, best, fn, sigmas, opts.seed)
    if not is_main():  # the other ranks only helped sample
        return {}
    metrics = {"step": run.step, "seed": opts.seed, **protocol, "n": n, "best_guidance": best}
    for r in rows:
        if r["guidance"] == best:
            metrics |= {f"{r['set']}_{k}": r[k] for k in SUMMARY if k in r}
        elif r["guidance"] is None and "fid" in r:
            metrics[f"{r['set']}_fid_real_baseline"] = r["fid"]
    if reader_meta is not None:
        metrics |= {f"reader_{k}": v for k, v in reader_meta.items() if k.startswith("test_accuracy")}
    metrics["rows"] = rows
    if reader is not None:
        guidance_tradeoff(rows, run.dir / "guidance.png")
    write_text(run.dir / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    return metrics


TEXT_TO_IMAGE = Task(
    "text_to_image", TextToImageConfig, build_setup, module_from_meta, text_to_image_sample,
    text_to_image_evaluate,
    sample_options=frozenset({"n", "seed", "sampler", "steps", "grid", "sampler_options", "sigma_min",
                              "sigma_max", "guidance", "prompts"}),
    eval_options=frozenset({"n", "seed", "sampler", "steps", "grid", "sampler_options", "sigma_min",
                            "sigma_max", "guidance", "featurenet"}),
    after_train=after_train)
