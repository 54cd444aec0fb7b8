"""What the relatives of diffusion share as runs (issue 15): the [data] and [eval] sections, the data in
model units, the training batch, and one `evaluate` that scores samples beside their data baselines and
reports the likelihood through eval/bits.py. Each family's Task is in its own module: runs/flow.py,
runs/vae.py, runs/gan.py, runs/autoregressive.py.

Every likelihood is in nats per example of the run's data and in bits/dim, labelled `nll_kind` (exact or
bound) and `nll_of` (what it is the likelihood of):
- vector data (toy sets, files): the density of the continuous test points (a file standardised for
  training adds sum_d log std_d, the change of variables back to the data's own units);
- digits: the probability of the discrete data on its grid (17 grey levels, or 2 when binarized);
  a density of dequantized data (flows) is turned into a bound on it by `eval.bits.dequantized_nll`,
  exactly as diffusion's `eval --nll`, so a number means the same thing in every row of a table
  (docs/likelihood.md, docs/families.md).
Evaluation runs on rank 0 under torchrun (the other ranks return {} / None at once).
"""

import json
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from diffspace.data.gmm import eight_gaussians_mixture
from diffspace.data.quantized import BINARY, DIGITS, Grid, binarize
from diffspace.data.toy import TOY_SETS
from diffspace.eval.bits import summarize
from diffspace.eval.image_eval import image_report
from diffspace.eval.metrics import vector_report
from diffspace.eval.modes import mode_coverage
from diffspace.eval.pictures import save_grid
from diffspace.eval.plots import scatter_2d
from diffspace.files import write_text
from diffspace.rng import Streams
from diffspace.runs import registries
from diffspace.runs.continuous import DataConfig, scaling, to_data_units, to_model_units
from diffspace.runs.evaluation import featurenet_for
from diffspace.runs.options import EvalOptions, Run, check_finite_samples, check_positive, check_sample_count
from diffspace.train.distributed import is_main
from diffspace.types import UserError

FAMILY_DATA = (*TOY_SETS, "file", "digits")
EVAL_CHUNK = 1000  # examples per likelihood call


@dataclass
class FamilyDataConfig(DataConfig):
    """[data]: a toy set, a vector file or "digits" (the continuous task's fields, plus `binarize`)."""

    binarize: bool = False  # digits: a pixel is on above half grey (the 2-level grid)


@dataclass
class FamilySampleConfig:
    n: int = 10_000


@dataclass
class FamilyEvalConfig:
    n: int = 10_000  # samples scored against the test split (images: 0 = as many as the test split)
    nll_n: int = 2000  # test examples of `eval --nll`
    featurenet_steps: int = 1500  # images: training steps of the feature net trained into the run


def check_family(src: str, d: FamilyDataConfig, e: FamilyEvalConfig, n_sample: int) -> None:
    """The checks every family config makes on [data], [eval] and sample.n."""
    if d.name not in FAMILY_DATA:
        raise UserError(f"{src}: data.name = {d.name!r} is not one of {', '.join(FAMILY_DATA)} for this task")
    if d.binarize and d.name != "digits":
        raise UserError(f"{src}: data.binarize applies to digits only, not data.name = {d.name!r}")
    for key, value in [("eval.nll_n", e.nll_n), ("eval.featurenet_steps", e.featurenet_steps),
                       ("sample.n", n_sample)]:  # data.n_train, data.n_test: DataConfig.validate
        if value <= 0:
            raise UserError(f"{src}: {key} must be positive, got {value}")
    if e.n < 0:
        raise UserError(f"{src}: eval.n must be >= 0, got {e.n}")


def data_grid(d: FamilyDataConfig) -> Grid | None:
    """The grid of discrete data (digits), None for continuous data."""
    if d.name != "digits":
        return None
    return BINARY if d.binarize else DIGITS


def load(cfg) -> tuple[dict, dict]:
    """(data, metadata): x_train, x_test (and y_train, y_test for digits) in model units, and the
    checkpoint metadata: data_shape and a vector file's standardisation (runs.continuous.scaling)."""
    data = registries.load(cfg)
    if cfg.data.binarize:
        data = {**data, "x_train": binarize(data["x_train"]), "x_test": binarize(data["x_test"])}
    meta = scaling(cfg, data["x_train"])
    data |= {k: to_model_units(meta, data[k]) for k in ("x_train", "x_test")}
    return data, {"data_shape": list(data["x_train"].shape[1:]), **meta}


def batches(x_train: Tensor, device: torch.device,
            draw: Callable[[torch.Generator, Tensor], dict[str, Tensor]]) -> Callable:
    """The TrainSetup batch: n training examples "x" drawn with the loop's generator, and the family's
    own draws draw(generator, x) (noise, latents; an entry "x" replaces the data, e.g. dequantized)."""
    x_train = x_train.to(device)

    def batch(g: torch.Generator, n: int) -> dict[str, Tensor]:
        x = x_train[torch.randint(len(x_train), (n,), generator=g).to(device)]
        return {"x": x, **draw(g, x)}

    return batch


def likelihood(run: Run, x: Tensor, nll_fn: Callable[[Tensor, int], Tensor], kind: str,
               chunk: int | None = None) -> dict:
    """nll_fn(x_chunk, index_offset) -> (B,) nats of test examples x in model units (index_offset: the
    global index of the chunk's first example, for per-example streams), summarised through
    eval.bits.summarize with the change of variables of a standardised file."""
    chunk = chunk or EVAL_CHUNK
    with torch.no_grad():
        nll = torch.cat([nll_fn(x[i:i + chunk].to(run.device), i).double().cpu()
                         for i in range(0, len(x), chunk)])
    if "data_std" in run.meta:  # -log p(x) = -log p(z) + sum_d log std_d
        nll = nll + torch.tensor(run.meta["data_std"], dtype=torch.float64).log().sum()
    grid = data_grid(run.cfg.data)
    of = "density of x" if grid is None else f"P(x) of the data on its {grid.levels}-level grid"
    s = summarize(nll, x[0].numel())  # the keys of diffusion's `eval --nll` (runs.evaluation.nll_metrics)
    return {"nll_nats": s["nll_nats"], "nll_stderr": s["nll_stderr"], "nll_bits_per_dim": s["bits_per_dim"],
            "nll_bits_per_dim_stderr": s["bits_per_dim_stderr"], "nll_n": s["n"], "nll_kind": kind,
            "nll_of": of}


def _sample_metrics(run: Run, x: Tensor, data: dict, opts: EvalOptions) -> dict:
    """Sample metrics beside their data baselines, and RUN/samples.png."""
    name = run.cfg.data.name
    if x.ndim == 4:
        net, meta = featurenet_for(run, opts.featurenet)
        save_grid(x[:100], run.dir / "samples.png", ncols=10)
        return {"featurenet": meta["data"], "featurenet_test_accuracy": meta["test_accuracy"],
                **image_report(net, x, data)}
    x_test = to_data_units(run.meta, data["x_test"][:len(x)])
    x_train = to_data_units(run.meta, data["x_train"])
    out = vector_report(x, x_test, x_train)
    if name == "8gaussians":  # modes 2 apart, std 0.1 (data/gmm.py)
        gm = eight_gaussians_mixture()
        cover = mode_coverage(x, gm.means, float(gm.stds[0]))
        out |= {"modes_within_3sigma": cover["within_fraction"], "modes_covered": cover["modes_covered"]}
    if x.shape[1] >= 2:
        scatter_2d(x, x_test, run.dir / "samples.png",
                   f"{name}, {run.task}: sw2 {out['sw2']:.4f} (data {out['sw2_data_baseline']:.4f})")
    return out


def evaluate(run: Run, opts: EvalOptions, draw: Callable[[int, Streams], Tensor],
             nll: Callable[[Run, Tensor, int], dict] | None) -> dict:
    """The family's metrics: draw(n, streams) -> n samples in model units (timed: samples_per_s), their
    metrics beside the data baselines and, with opts.nll, nll(run, x_test, seed) -> `likelihood`'s
    dict (None: the family has no likelihood). Written to RUN/metrics.json; {} on other ranks."""
    if opts.nll and nll is None:
        raise UserError(f"{run.dir} is a {run.task} run: it defines no likelihood to evaluate (--nll); "
                        "evaluate it without --nll for its sample metrics")
    if not is_main():
        return {}
    data, _ = load(run.cfg)
    images = data["x_train"].ndim == 4
    n = opts.n or run.cfg.eval.n or len(data["x_test"])
    check_sample_count(n=n, nll_n=opts.nll_n)
    t0 = time.perf_counter()
    with torch.no_grad():
        x = draw(n, Streams(opts.seed, n)).cpu()
    seconds = time.perf_counter() - t0
    check_finite_samples(x, f"the {run.task} model of {run.dir}")
    x = x.clamp(-1, 1) if images else to_data_units(run.meta, x)
    metrics = {"step": run.step, "seed": opts.seed, "n": n, "samples_per_s": n / seconds,
               **_sample_metrics(run, x, data, opts)}
    if opts.nll:
        x_test = data["x_test"][:opts.nll_n or run.cfg.eval.nll_n]
        metrics |= nll(run, x_test, opts.seed)
    write_text(run.dir / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    return metrics


def sample(run: Run, n: int, seed: int, draw: Callable[[int, Streams], Tensor]) -> Tensor | None:
    """n samples (n, *data_shape) in the data's units on the CPU, sample i from stream (seed, i); None
    on torchrun ranks other than 0. UserError for samples with NaN or inf."""
    check_positive(n=n)
    if not is_main():
        return None
    with torch.no_grad():
        x = draw(n, Streams(seed, n)).cpu()
    check_finite_samples(x, f"the {run.task} model of {run.dir}")
    return to_data_units(run.meta, x)
