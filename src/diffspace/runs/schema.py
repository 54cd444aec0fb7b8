"""The config sections shared by every task: [run] (and [train], `diffspace.train.loop.TrainConfig`)."""

from dataclasses import dataclass

from diffspace.config import choice
from diffspace.rng import MAX_SEED
from diffspace.types import UserError


@dataclass
class RunConfig:
    dir: str = "runs/default"  # the run directory (a resumed run uses the directory it is given)
    seed: int = 0
    device: str = choice("auto", "auto", "cpu", "cuda")

    def validate(self, src: str) -> None:
        if not 0 <= self.seed <= MAX_SEED:
            raise UserError(f"{src}: run.seed must be in 0..{MAX_SEED}, got {self.seed}")
