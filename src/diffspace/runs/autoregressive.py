"""The autoregressive task: MADE (vectors, or images in raster order) and a gated PixelCNN (one-channel
images) over the levels of a grid (families/autoregressive.py), with the exact likelihood by the chain
rule.

On digits the grid is the data's own (17 grey levels, or 2 binarized). Continuous vector data are
modelled through a histogram: each coordinate's range model.range is cut into model.bins bins of width
delta, the model is trained on the bin indices, and p(y) = P(bin(y)) / delta^D is a density on the
range — so -log p(y) = -log P(bin(y)) + D log delta = the discrete NLL minus eval.bits'
dequantization offset, exact, the same quantity as a flow's; points outside the range have density 0.
Samples of that density are a bin drawn by the model and a point uniform in it (`Grid.dequantize`).
"""

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from diffspace.config import choice
from diffspace.data.quantized import Grid
from diffspace.eval.bits import dequantization_offset
from diffspace.families.autoregressive import MADE, PixelCNN, ar_loss, sample_autoregressive
from diffspace.rng import Streams
from diffspace.runs import families
from diffspace.runs.continuous_task import after_train
from diffspace.runs.families import FamilyDataConfig, FamilyEvalConfig, FamilySampleConfig, data_grid
from diffspace.runs.options import EvalOptions, Run, SampleOptions, Task
from diffspace.runs.schema import RunConfig
from diffspace.train.loop import TrainConfig, TrainSetup
from diffspace.types import UserError


@dataclass
class ARModelConfig:
    kind: str = choice("made", "made", "pixelcnn")
    hidden: int = 256  # MADE
    depth: int = 2  # MADE: hidden layers
    channels: int = 32  # PixelCNN
    layers: int = 5  # PixelCNN: gated layers
    kernel: int = 3  # PixelCNN: odd kernel size
    bins: int = 32  # vector data: histogram bins per coordinate over `range`
    range: list[float] = field(default_factory=lambda: [-2.0, 2.0])  # vector data: [low, high] edges


@dataclass
class ARConfig:
    task: str = choice("autoregressive", "autoregressive")
    run: RunConfig = field(default_factory=RunConfig)
    data: FamilyDataConfig = field(default_factory=FamilyDataConfig)
    model: ARModelConfig = field(default_factory=ARModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: FamilySampleConfig = field(default_factory=FamilySampleConfig)
    eval: FamilyEvalConfig = field(default_factory=FamilyEvalConfig)

    def validate(self, src: str) -> None:
        families.check_family(src, self.data, self.eval, self.sample.n)
        m = self.model
        for key in ("hidden", "depth", "channels", "layers", "kernel"):
            if getattr(m, key) <= 0:
                raise UserError(f"{src}: model.{key} must be positive, got {getattr(m, key)}")
        if m.bins < 2 or len(m.range) != 2 or not m.range[1] > m.range[0]:
            raise UserError(f"{src}: model.bins must be >= 2 and model.range = [low, high] with high > low, "
                            f"got {m.bins}, {m.range}")


def model_grid(cfg: ARConfig) -> Grid:
    """The data's grid (digits), or the histogram's: bin centres of model.range cut into model.bins."""
    grid = data_grid(cfg.data)
    if grid is not None:
        return grid
    (lo, hi), delta = cfg.model.range, (cfg.model.range[1] - cfg.model.range[0]) / cfg.model.bins
    return Grid(cfg.model.bins, lo + delta / 2, hi - delta / 2)


def build_ar(cfg: ARConfig, shape: tuple[int, ...]) -> nn.Module:
    m, grid = cfg.model, model_grid(cfg)
    if m.kind == "pixelcnn":
        return PixelCNN(shape, grid, m.channels, m.layers, m.kernel)
    return MADE(shape, grid, m.hidden, m.depth)


def build_setup(cfg: ARConfig, device: torch.device) -> tuple[TrainSetup, dict]:
    data, meta = families.load(cfg)
    model = build_ar(cfg, tuple(data["x_train"].shape[1:])).to(device)
    grid = model_grid(cfg)
    x = grid.quantize(data["x_train"])  # vectors: bin centres; digits: already on the grid
    return TrainSetup(model, families.batches(x, device, lambda g, xb: {}), ar_loss), meta


def module_from_meta(cfg: ARConfig, meta: dict) -> nn.Module:
    return build_ar(cfg, tuple(meta["data_shape"]))


def _draw(run: Run):
    histogram = data_grid(run.cfg.data) is None

    def draw(n: int, streams: Streams) -> Tensor:
        x = sample_autoregressive(run.module, n, streams)
        # the histogram's draw: a point uniform in the drawn bin, from the same per-example streams
        return run.module.grid.dequantize(x, streams) if histogram else x

    return draw


def ar_sample(run: Run, opts: SampleOptions) -> Tensor | None:
    return families.sample(run, opts.n or run.cfg.sample.n, opts.seed, _draw(run))


def _nll(run: Run, x: Tensor, seed: int) -> dict:
    model, grid = run.module, run.module.grid
    if data_grid(run.cfg.data) is not None:
        return families.likelihood(run, x, lambda xb, i: -model(xb), "exact")
    lo, hi = run.cfg.model.range

    def density_nll(xb: Tensor, i: int) -> Tensor:
        inside = ((xb >= lo) & (xb < hi)).flatten(1).all(1)
        nll = -model(grid.quantize(xb)) - dequantization_offset(xb[0].numel(), grid)
        return torch.where(inside, nll, math.inf)  # the histogram's density is 0 outside its range

    return families.likelihood(run, x, density_nll, "exact")


def ar_evaluate(run: Run, opts: EvalOptions) -> dict:
    return families.evaluate(run, opts, _draw(run), _nll)


def network(run: Run) -> tuple:
    """One pass over all positions (the likelihood's cost; sampling takes one pass per position)."""
    grid = run.module.grid
    x = grid.quantize(torch.rand(1, *run.meta["data_shape"], device=run.device) * (grid.high - grid.low)
                      + grid.low)
    if run.cfg.model.kind == "pixelcnn":
        return (lambda v: run.module.logits(v)[:, 0].permute(0, 3, 1, 2)), x, "one pass over every pixel"
    return run.module.logits, x, "one pass over every dimension"


AUTOREGRESSIVE = Task("autoregressive", ARConfig, build_setup, module_from_meta, ar_sample, ar_evaluate,
                      sample_options=frozenset({"n", "seed"}),
                      eval_options=frozenset({"n", "seed", "featurenet", "nll", "nll_n"}),
                      after_train=after_train, network=network)
