"""`diffspace train/sample/eval` for the continuous task."""

import json
from pathlib import Path

import numpy as np
import torch

from diffspace.cli.continuous import ContinuousConfig, as_denoiser, build_module, build_path, build_setup
from diffspace.cli.registries import DATA
from diffspace.cli.runs import Run, sample_chunk
from diffspace.eval.metrics import mmd_rbf, sliced_w2
from diffspace.eval.plots import loss_curve, scatter_2d
from diffspace.rng import Streams
from diffspace.samplers.grids import GRIDS
from diffspace.samplers.registry import SAMPLERS
from diffspace.train.distributed import map_chunks
from diffspace.types import UserError

__all__ = ["ContinuousConfig", "setup_for_cli", "module_for_cli", "sample_cmd", "eval_cmd", "after_train",
           "optimize_grid_cmd"]

GRIDS_FILE = "grids.json"  # optimized grids stored with the run, keyed "SAMPLER:STEPS"


def setup_for_cli(cfg: ContinuousConfig, device: torch.device):
    setup, data = build_setup(cfg, device)
    return setup, {"data_shape": list(data["x_train"].shape[1:])}


def module_for_cli(cfg: ContinuousConfig, meta: dict):
    return build_module(cfg, tuple(meta["data_shape"]))


def after_train(run_dir: Path) -> None:
    loss_curve(run_dir / "log.jsonl", run_dir / "loss.png")


def generate(run: Run, n: int, sampler: str, steps: int, grid: str, seed: int = 0,
             chunk: int = 2500, device: torch.device | str = "cpu") -> torch.Tensor | None:
    """n samples from a run; sample i depends only on (seed, i), not on n, the chunk or the batch layout.

    Under torchrun the chunks are dealt to the ranks and gathered: rank 0 gets all n samples (the
    same as one process), the other ranks get None."""
    if steps <= 0 or n <= 0:
        raise UserError(f"--steps and --n must be positive, got steps={steps}, n={n}")
    fn = sampler_fn(sampler)
    sigmas = run_sigmas(run, grid, steps, sampler)
    denoiser = as_denoiser(run.cfg, run.module)
    shape = tuple(run.meta["data_shape"])
    parts = map_chunks(lambda lo, hi, _: sample_chunk(denoiser, shape, Streams(seed, hi - lo, lo), sigmas, fn,
                                                      torch.device(device)), n, seed, chunk)
    return None if parts is None else torch.cat(parts)


def sampler_fn(name: str):
    if name not in SAMPLERS:
        raise UserError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}")
    return SAMPLERS[name].fn


def sigma_range(run: Run) -> tuple[float, float]:
    """The sampling range: the path's own, within EDM's [0.002, 80] ([EDM] Table 1)."""
    path = build_path(run.cfg)
    return max(path.sigma_min, 0.002), min(path.sigma_max, 80.0)


def run_sigmas(run: Run, grid: str, steps: int, sampler: str) -> torch.Tensor:
    """The float64 grid named `grid`; "optimized" reads the one `diffspace optimize-grid` stored."""
    if grid == "optimized":
        stored = run.dir / GRIDS_FILE
        table = json.loads(stored.read_text()) if stored.is_file() else {}
        key = f"{sampler}:{steps}"
        if key not in table:
            raise UserError(f"no optimized grid for {key} in {stored}; run `diffspace optimize-grid "
                            f"{run.dir} --sampler {sampler} --steps {steps}` first")
        return torch.tensor(table[key], dtype=torch.float64)
    if grid not in GRIDS:
        raise UserError(f"unknown grid {grid!r}; choose one of {', '.join([*GRIDS, 'optimized'])}")
    return GRIDS[grid](steps, *sigma_range(run), path=build_path(run.cfg))


def optimize_grid_cmd(run: Run, args) -> None:
    """Choose the sampler's `steps` noise levels that minimize its error against the adaptive PF-ODE
    solution on a calibration batch ([AYS] in spirit), and store them in RUN/grids.json."""
    from diffspace.samplers.optimize_grid import optimize_sigmas

    fn = sampler_fn(args.sampler)
    if SAMPLERS[args.sampler].stochastic:
        raise UserError(f"optimize-grid needs a deterministic sampler; {args.sampler!r} is stochastic")
    lo, hi = sigma_range(run)
    g = torch.Generator().manual_seed(args.seed + 7919)  # calibration noise apart from sampling seeds
    x = (torch.randn((args.n_calib, *run.meta["data_shape"]), generator=g) * hi).to(args.device_obj)
    sigmas = optimize_sigmas(fn, as_denoiser(run.cfg, run.module), x, args.steps, lo, hi)
    stored = run.dir / GRIDS_FILE
    table = json.loads(stored.read_text()) if stored.is_file() else {}
    table[f"{args.sampler}:{args.steps}"] = sigmas.tolist()
    stored.write_text(json.dumps(table, indent=1) + "\n")
    print(f"stored the optimized {args.steps}-step grid for {args.sampler} in {stored}: "
          + ", ".join(f"{v:.4g}" for v in sigmas.tolist()))


def _write_samples(x: torch.Tensor, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".npy":
        np.save(out, x.numpy())
    elif out.suffix == ".npz":
        np.savez(out, samples=x.numpy())
    elif out.suffix == ".csv":
        np.savetxt(out, x.flatten(1).numpy(), delimiter=",")
    else:
        raise UserError(f"--out {out}: use a .npz, .npy or .csv file name")


def _sampling(run: Run, args) -> tuple[str, int, str]:
    """--sampler/--steps/--grid, each defaulting to the run's [sample] section."""
    sc = run.cfg.sample
    steps = sc.steps if args.steps is None else args.steps
    return args.sampler or sc.sampler, steps, args.grid or sc.grid


def sample_cmd(run: Run, args) -> None:
    sampler, steps, grid = _sampling(run, args)
    x = generate(run, args.n, sampler, steps, grid, args.seed, device=args.device_obj)
    if x is None:  # not rank 0
        return
    out = Path(args.out) if args.out else run.dir / "samples.npz"
    _write_samples(x, out)
    if x.ndim == 2 and x.shape[1] >= 2:
        data = DATA[run.cfg.data.name](run.cfg)["x_test"]
        scatter_2d(x, data, out.with_suffix(".png"), f"{sampler}, {steps} steps")
    print(f"wrote {len(x)} samples to {out}")


IMAGE_DATA = ("digits", "lfw", "folder", "npz")


def nll_metrics(run: Run, data: dict, args) -> dict:
    """`eval --nll`: PF-ODE NLL of (part of) the test split; bits/dim on the 17-level digits grid."""
    from diffspace.eval.bits import nll_report

    cfg, n = run.cfg, args.nll_n
    x = data["x_test"][:n].to(args.device_obj)
    y = data.get("y_test")
    cond = {"class_labels": y[:n].to(args.device_obj)} if y is not None and cfg.model.num_classes else None
    levels = 17 if cfg.data.name == "digits" else None  # sklearn digits take 17 values (0..16)
    report = nll_report(as_denoiser(cfg, run.module), build_path(cfg), x, levels=levels, cond=cond,
                        seed=args.seed)
    return {f"nll_{k}" if not k.startswith(("nll", "bound")) else k: v for k, v in report.items()}


def eval_cmd(run: Run, args) -> dict:
    cfg = run.cfg
    if cfg.data.name in IMAGE_DATA:
        from diffspace.eval.image_eval import eval_images

        metrics = eval_images(run, args)
        if metrics and args.nll:
            metrics |= nll_metrics(run, DATA[cfg.data.name](cfg), args)
        return metrics
    n = args.n or cfg.eval.n
    data = DATA[cfg.data.name](cfg)
    x_test, x_train = data["x_test"][:n], data["x_train"]
    sampler, steps, grid = _sampling(run, args)
    x = generate(run, n, sampler, steps, grid, args.seed, device=args.device_obj)
    if x is None:  # not rank 0: metrics are computed once, there
        return {}
    if not torch.isfinite(x).all():
        raise UserError("the model produced non-finite samples")
    base = x_train[torch.randperm(len(x_train), generator=torch.Generator().manual_seed(1))[: len(x_test)]]
    metrics = {
        "step": run.step, "n": n, "sampler": sampler, "steps": steps, "grid": grid,
        "sw2": sliced_w2(x, x_test), "sw2_data_baseline": sliced_w2(base, x_test),
        "mmd": mmd_rbf(x, x_test), "mmd_data_baseline": mmd_rbf(base, x_test),
    }
    metrics["sw2_ratio"] = metrics["sw2"] / metrics["sw2_data_baseline"]
    if args.nll:
        metrics |= nll_metrics(run, data, args)
    if x.ndim == 2 and x.shape[1] >= 2:
        title = f"{cfg.data.name}: sw2 {metrics['sw2']:.4f} (data {metrics['sw2_data_baseline']:.4f})"
        scatter_2d(x, x_test, run.dir / "samples.png", title)
    (run.dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics
