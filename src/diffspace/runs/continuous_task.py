"""The continuous task's record: vectors and images, trained, sampled and evaluated the same way."""

from pathlib import Path

from diffspace.eval.plots import loss_curve
from diffspace.runs.continuous import ContinuousConfig, build_setup, module_from_meta
from diffspace.runs.evaluation import evaluate
from diffspace.runs.options import Task
from diffspace.runs.sampling import sample


def after_train(run_dir: Path) -> None:
    loss_curve(run_dir / "log.jsonl", run_dir / "loss.png")


CONTINUOUS = Task(
    "continuous", ContinuousConfig, build_setup, module_from_meta, sample, evaluate,
    sample_options=frozenset({"n", "seed", "sampler", "steps", "grid", "sampler_options", "sigma_min",
                              "sigma_max", "guidance", "class_labels"}),
    eval_options=frozenset({"n", "seed", "sampler", "steps", "grid", "sampler_options", "sigma_min",
                            "sigma_max", "guidance", "featurenet", "nll", "nll_n"}),
    after_train=after_train)
