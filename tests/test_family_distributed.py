"""A Glow run under torchrun (two ranks, gloo) starts like one process with the whole batch: ActNorm's
data-dependent initialization happens in build_setup on a batch drawn with the run's seed, before the
loop wraps the model in DistributedDataParallel, so both ranks (and the single process) start from the
same parameters. Initialized lazily in the first training step instead, each rank would see only its
half of the batch.

The runs take steps of lr = 1e-9, so the checkpoints are the initial parameters to 1e-8: why, Adam's
first steps move a parameter by about lr whatever the size of its gradient, and ActNorm's bias
gradients are near zero right after the data init, so rounding differences between a two-rank and a
one-process gradient sum would flip their signs and hide what is compared."""

import json
from pathlib import Path

import pytest
import torch

from diffspace.train.checkpoint import load_checkpoint
from distributed_helpers import in_process, sets, torchrun

CONFIG = str(Path(__file__).parents[1] / "configs" / "checkerboard-glow.toml")
TINY = ["model.layers=2", "model.hidden=16", "data.n_train=2000", "data.n_test=500", "train.batch_size=64",
        "train.lr=1e-9", "train.warmup_steps=0", "train.schedule=constant", "train.steps=2",
        "train.log_every=1"]


def _weights(run: Path) -> dict[str, torch.Tensor]:
    tensors, _ = load_checkpoint(run / "checkpoints" / "last.safetensors")
    return {k: v.double() for k, v in tensors.items() if k.startswith(("model.", "ema."))}


@pytest.mark.slow
def test_glow_two_ranks_start_like_one_process(tmp_path):
    args = lambda run: ["train", CONFIG, *sets(*TINY, f"run.dir={run}"), "--overwrite", "--no-progress"]
    torchrun(*args(tmp_path / "ws2"))
    in_process(*args(tmp_path / "ws1"))
    one, two = _weights(tmp_path / "ws1"), _weights(tmp_path / "ws2")
    scales = [k for k in one if k.startswith("model.") and k.endswith("log_scale")]
    assert one.keys() == two.keys() and scales and min(float(one[k].abs().min()) for k in scales) > 1e-3
    diff = max(float((one[k] - two[k]).abs().max()) for k in one)
    assert diff <= 1e-6, f"two ranks start {diff:.2e} away from one process"
    losses = [json.loads(line)["loss"] for d in ("ws1", "ws2")
              for line in (tmp_path / d / "log.jsonl").read_text().splitlines()[:1]]
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)  # the global mean loss of the first batch
