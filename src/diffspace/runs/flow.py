"""The flow task: NICE, RealNVP and Glow (families/flows.py) trained by maximum likelihood on vectors or
digits, sampled with a temperature, and evaluated by their exact log-likelihood (vectors) or its
dequantization bound (digits, eval.bits.dequantized_nll).

ActNorm's data-dependent initialization runs in `build_setup` on a batch drawn with the run's seed,
before the training loop wraps the model in DistributedDataParallel: every rank builds the same model
from the same batch, so the ranks start equal ([GLOW] arXiv 1807.03039v2 Sec. 3.1).
"""

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from diffspace.config import choice
from diffspace.eval.bits import dequantized_nll
from diffspace.families.flows import Flow, flow_loss, glow, nice, realnvp
from diffspace.rng import Streams
from diffspace.runs import families
from diffspace.runs.continuous_task import after_train
from diffspace.runs.families import FamilyDataConfig, FamilyEvalConfig, FamilySampleConfig, data_grid
from diffspace.runs.options import EvalOptions, Run, SampleOptions, Task
from diffspace.runs.schema import RunConfig
from diffspace.train.loop import TrainConfig, TrainSetup
from diffspace.types import UserError


@dataclass
class FlowModelConfig:
    kind: str = choice("realnvp", "nice", "realnvp", "glow")
    layers: int = 8  # NICE, RealNVP on vectors: couplings; Glow: steps of flow (per level on images)
    hidden: int = 256  # conditioner width (MLP units, or conv channels on images)
    depth: int = 2  # hidden layers of the MLP conditioners
    levels: int = 2  # images: multi-scale levels (RealNVP, Glow)


@dataclass
class FlowSampleConfig(FamilySampleConfig):
    temperature: float = 1.0  # x = f^-1(T z): T < 1 is [GLOW]'s reduced-temperature sampling


@dataclass
class FlowConfig:
    task: str = choice("flow", "flow")
    run: RunConfig = field(default_factory=RunConfig)
    data: FamilyDataConfig = field(default_factory=FamilyDataConfig)
    model: FlowModelConfig = field(default_factory=FlowModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: FlowSampleConfig = field(default_factory=FlowSampleConfig)
    eval: FamilyEvalConfig = field(default_factory=FamilyEvalConfig)

    def validate(self, src: str) -> None:
        families.check_family(src, self.data, self.eval, self.sample.n)
        m = self.model
        for key in ("layers", "hidden", "depth", "levels"):
            if getattr(m, key) <= 0:
                raise UserError(f"{src}: model.{key} must be positive, got {getattr(m, key)}")
        if not self.sample.temperature > 0:
            raise UserError(f"{src}: sample.temperature must be positive, got {self.sample.temperature}")


def build_flow(m: FlowModelConfig, shape: tuple[int, ...]) -> Flow:
    """The [model] flow for data of `shape` (UserError for a shape its couplings cannot split)."""
    if m.kind == "nice":
        return nice(shape, m.layers, m.hidden, m.depth)
    if m.kind == "realnvp":
        return realnvp(shape, m.layers, m.hidden, m.depth, m.levels)
    return glow(shape, m.layers, m.hidden, m.depth, m.levels)


def build_setup(cfg: FlowConfig, device: torch.device) -> tuple[TrainSetup, dict]:
    data, meta = families.load(cfg)
    x, grid = data["x_train"], data_grid(cfg.data)
    flow = build_flow(cfg.model, tuple(x.shape[1:])).to(device)

    def draw(g: torch.Generator, xb: Tensor) -> dict[str, Tensor]:
        return {} if grid is None else {"x": grid.dequantize(xb, g)}  # [RNVP] Sec. 4.1

    g = torch.Generator().manual_seed(cfg.run.seed)  # why: the same init batch on every rank
    init = x[torch.randint(len(x), (cfg.train.batch_size,), generator=g)].to(device)
    flow.initialize(draw(g, init).get("x", init))
    return TrainSetup(flow, families.batches(x, device, draw), flow_loss), meta


def module_from_meta(cfg: FlowConfig, meta: dict) -> nn.Module:
    return build_flow(cfg.model, tuple(meta["data_shape"]))


def _draw(run: Run, temperature: float | None):
    grid, T = data_grid(run.cfg.data), temperature or run.cfg.sample.temperature

    def draw(n: int, streams: Streams) -> Tensor:
        y = run.module.sample(n, streams, T)
        return y if grid is None else grid.quantize(y)  # the discrete model's draw: the bin y falls in

    return draw


def flow_sample(run: Run, opts: SampleOptions) -> Tensor | None:
    return families.sample(run, opts.n or run.cfg.sample.n, opts.seed, _draw(run, opts.temperature))


def _nll(run: Run, x: Tensor, seed: int) -> dict:
    grid, flow = data_grid(run.cfg.data), run.module
    if grid is None:
        return families.likelihood(run, x, lambda xb, i: -flow.log_prob(xb), "exact")
    return families.likelihood(run, x, lambda xb, i: dequantized_nll(lambda y: -flow.log_prob(y), xb, grid,
                                                                     seed, i), "bound")


def flow_evaluate(run: Run, opts: EvalOptions) -> dict:
    return families.evaluate(run, opts, _draw(run, None), _nll)


def network(run: Run) -> tuple:
    """The density direction x -> z on one example (what training and the likelihood run)."""
    x = torch.randn(1, *run.meta["data_shape"], device=run.device)
    return (lambda v: run.module(v)[0]), x, "the flow x -> z (sampling runs its inverse)"


FLOW = Task("flow", FlowConfig, build_setup, module_from_meta, flow_sample, flow_evaluate,
            sample_options=frozenset({"n", "seed", "temperature"}),
            eval_options=frozenset({"n", "seed", "featurenet", "nll", "nll_n"}),
            after_train=after_train, network=network)
