"""The continuous task's record: vectors and images, trained, sampled and evaluated the same way."""

from pathlib import Path

import torch

from diffspace.eval.plots import loss_curve
from diffspace.runs import continuous
from diffspace.runs.continuous import ContinuousConfig, module_from_meta
from diffspace.runs.evaluation import evaluate
from diffspace.runs.options import Task
from diffspace.runs.preview import preview
from diffspace.runs.sampling import sample
from diffspace.train.loop import TrainSetup


def build_setup(cfg: ContinuousConfig, device: torch.device) -> tuple[TrainSetup, dict]:
    """continuous.build_setup with the TensorBoard preview of samples (runs/preview.py)."""
    setup, meta = continuous.build_setup(cfg, device)
    setup.preview = preview(cfg, meta, device)
    return setup, meta


def after_train(run_dir: Path) -> None:
    loss_curve(run_dir / "log.jsonl", run_dir / "loss.png")


CONTINUOUS = Task(
    "continuous", ContinuousConfig, build_setup, module_from_meta, sample, evaluate,
    sample_options=frozenset({"n", "seed", "sampler", "steps", "grid", "sampler_options", "sigma_min",
                              "sigma_max", "guidance", "class_labels", "classifier", "classifier_scale"}),
    eval_options=frozenset({"n", "seed", "sampler", "steps", "grid", "sampler_options", "sigma_min",
                            "sigma_max", "guidance", "featurenet", "nll", "nll_n"}),
    after_train=after_train)
