"""The config sections shared by every task: [run] (and [train], `diffspace.train.loop.TrainConfig`)."""

from dataclasses import dataclass

from diffspace.config import choice


@dataclass
class RunConfig:
    dir: str = "runs/default"  # the run directory (a resumed run uses the directory it is given)
    seed: int = 0
    device: str = choice("auto", "auto", "cpu", "cuda")
