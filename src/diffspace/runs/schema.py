"""The config sections shared by every task: [run] (and [train], `diffspace.train.loop.TrainConfig`)."""

from dataclasses import dataclass

from diffspace.config import choice
from diffspace.types import UserError

MAX_SEED = 2**63 - 1  # why: torch.manual_seed takes a signed 64-bit integer; SeedSequence no negative one


@dataclass
class RunConfig:
    dir: str = "runs/default"  # the run directory (a resumed run uses the directory it is given)
    seed: int = 0
    device: str = choice("auto", "auto", "cpu", "cuda")

    def validate(self, src: str) -> None:
        if not 0 <= self.seed <= MAX_SEED:
            raise UserError(f"{src}: run.seed must be in 0..{MAX_SEED}, got {self.seed}")
