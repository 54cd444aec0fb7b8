"""The continuous task's record: vectors and images, trained, sampled and evaluated the same way."""

from pathlib import Path

import torch

from diffspace.eval.plots import loss_curve
from diffspace.runs import continuous, fewstep
from diffspace.runs.continuous import ContinuousConfig, as_denoiser, module_from_meta
from diffspace.runs.evaluation import evaluate
from diffspace.runs.loading import load_as
from diffspace.runs.options import Task
from diffspace.runs.preview import preview
from diffspace.runs.sampling import sample
from diffspace.train.loop import TrainSetup


def build_setup(cfg: ContinuousConfig, device: torch.device) -> tuple[TrainSetup, dict]:
    """continuous.build_setup (fewstep.build_setup for a few-step objective or a teacher, which is loaded
    here: a continuous run) with the TensorBoard preview of samples (runs/preview.py)."""
    if fewstep.is_fewstep(cfg):
        teacher = load_as(CONTINUOUS, cfg.fewstep.teacher, device) if cfg.fewstep.teacher else None
        setup, meta = fewstep.build_setup(cfg, device, teacher)
    else:
        setup, meta = continuous.build_setup(cfg, device)
    setup.preview = preview(cfg, meta, device)
    return setup, meta


def after_train(run_dir: Path) -> None:
    loss_curve(run_dir / "log.jsonl", run_dir / "loss.png")


def network(run) -> tuple:
    """One denoiser call on one example at noise level 1 (a sampler step costs one or two)."""
    x = torch.randn(1, *run.meta["data_shape"], device=run.device)
    sigma = torch.ones(1, device=run.device)
    return (lambda v: as_denoiser(run.cfg, run.module)(v, sigma)), x, "one denoiser call"


CONTINUOUS = Task(
    "continuous", ContinuousConfig, build_setup, module_from_meta, sample, evaluate,
    sample_options=frozenset({"n", "seed", "sampler", "steps", "grid", "sampler_options", "sigma_min",
                              "sigma_max", "guidance", "class_labels", "classifier", "classifier_scale"}),
    eval_options=frozenset({"n", "seed", "sampler", "steps", "grid", "sampler_options", "sigma_min",
                            "sigma_max", "guidance", "featurenet", "nll", "nll_n"}),
    after_train=after_train, network=network)
