"""Sampling a continuous run: its noise range and grids, samples by per-sample streams, optimized grids.

Sample i depends only on (seed, i): its initial noise and every later draw come from its own stream
(`diffspace.rng.Streams`), and under torchrun whole chunks are dealt to the ranks, so a sample is the
same for any n, chunk size, batch layout or world size.
"""

import json
import logging
import math
import os
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
from torch import Tensor

from diffspace.eval.featurenet import load_classifier
from diffspace.files import read_json, write_text
from diffspace.rng import Streams
from diffspace.runs.continuous import (
    TABLE_GRIDS,
    as_denoiser,
    build_path,
    check_sampler_fits,
    sampler_fits,
    to_data_units,
)
from diffspace.runs.options import Run, SampleOptions, check_finite_samples, check_positive, check_steps
from diffspace.samplers.grids import GRIDS, check_grid, sampling_range
from diffspace.samplers.guidance import (
    ClassifierFreeGuidance,
    ClassifierGuidance,
    EDMClassifier,
    null_class,
)
from diffspace.samplers.learned import LearnedSolver, learn_solver, sample_learned
from diffspace.samplers.ode import sample_adaptive
from diffspace.samplers.optimize_grid import (
    Schedule,
    candidate_sigmas,
    check_dp_plan,
    dp_schedule,
    grid_error,
    optimize_sigmas,
    reference_trajectory,
    sample_schedule,
)
from diffspace.samplers.pas import PASCorrection, check_pas_options, learn_pas, sample_euler_pas
from diffspace.samplers.registry import SAMPLERS, check_sampler_options, nfe_steps
from diffspace.train.distributed import map_chunks, world
from diffspace.types import UserError

log = logging.getLogger("diffspace")

GRIDS_FILE = "grids.json"  # optimized grids stored with the run: {"SAMPLER:STEPS": {"step", "sigmas"}}
CHUNK = 2500  # samples per sampling batch


def sampler_fn(name: str, options: dict | None = None) -> Callable:
    """The sampler function with its options (e.g. {"eta": 0.5}) checked and bound."""
    options = check_sampler_options(name, options)
    fn = SAMPLERS[name].fn
    return lambda *a, **kw: fn(*a, **options, **kw)


def run_sigmas(run: Run, grid: str, steps: int, sampler: str, sigma_min: float | None = None,
               sigma_max: float | None = None) -> Tensor:
    """The float64 grid named `grid` for this run, over the path's own noise range unless sigma_min /
    sigma_max narrow it (a DDPM table starts at timestep 999, sigma ~ 157, like diffusers); "optimized"
    reads the one `optimize_grid` stored, refusing a grid fitted to the weights of another step, and a
    few-step sampler on a run that is not its kind of map (`check_sampler_fits`)."""
    check_steps(steps)
    check_sampler_fits(sampler, run.cfg.model, str(run.dir))
    path = build_path(run.cfg)
    if grid == "optimized":
        if run.task != "continuous":  # why: its grids.json would have to come from a command that refuses it
            raise UserError(f"--grid optimized holds the plans optimize-grid fits for continuous runs; a "
                            f"{run.task} run has none: choose another --grid")
        if unfittable(sampler):  # why: no plan can exist, so do not suggest fitting one
            raise UserError(f"--grid optimized holds grids that optimize-grid fits for deterministic "
                            f"fixed-step samplers; {sampler!r} {unfittable(sampler)}: choose another --grid")
        if sigma_min is not None or sigma_max is not None:
            raise UserError("an optimized grid brings its own noise levels; drop --sigma-min / --sigma-max")
        sigmas = stored_plan(run, sampler, steps)["sigmas"]
        return check_grid(torch.tensor(sigmas, dtype=torch.float64), path, "optimized grid")
    if grid not in GRIDS:
        raise UserError(f"unknown grid {grid!r}; choose one of {', '.join([*GRIDS, 'optimized'])}")
    if grid in TABLE_GRIDS and (sigma_min is not None or sigma_max is not None):  # they were ignored
        raise UserError(f"the {grid} grid is spaced on the DDPM table's own timesteps, so --sigma-min / "
                        "--sigma-max do not apply to it; drop them, or use karras, logsnr or uniform_t")
    return GRIDS[grid](steps, *sampling_range(path, sigma_min, sigma_max), path=path)


def read_plans(stored: Path) -> dict:
    """The table of RUN/grids.json ({} if absent); UserError for a file that is not a JSON object."""
    if not stored.exists():
        return {}
    try:
        return read_json(stored)
    except UserError as e:
        raise UserError(f"{e}; mend it, or move it aside (it holds every stored plan) and run "
                        "`diffspace optimize-grid` again") from None


def describe_plan(key: str, entry: dict) -> str:
    """One line on a stored plan: its key, method, step and its calibration and held-out errors beside the
    baseline grid's (see `calibration`), where the entry records them."""
    if not isinstance(entry, dict):
        return f"{key}: malformed"
    method = " ".join(str(entry.get("method", "nelder-mead")).split())  # why: a hand edit stays one line
    method += " with PAS coordinates" if "pas" in entry else ""
    method += " choosing Euler or Heun per step" if "orders" in entry else ""
    line = f"{key}: method {method}, fitted at step {entry.get('step')}"
    try:
        cal = entry["calibration"]
        base = cal["baseline"]
        steps, n = int(base["steps"]), int(cal["n"])
        line += (f"; calibration error {float(cal['rmse']):.4g} against {float(base['rmse']):.4g} with the "
                 f"{base['grid']} grid of {steps} step{'s' * (steps != 1)} (RMS per coordinate to the "
                 f"adaptive PF-ODE, {n} noise{'s' * (n != 1)}, NFE {int(cal['nfe'])})")
    except (KeyError, TypeError, ValueError, OverflowError):  # why: older plans, or hand edits (Infinity)
        return line
    try:
        held = cal["holdout"]
        return line + (f"; held-out error {float(held['rmse']):.4g} against "
                       f"{float(held['baseline_rmse']):.4g} ({int(held['n'])} other noises)")
    except (KeyError, TypeError, ValueError, OverflowError):  # why: older plans, or hand edits
        return line


def stored_plan(run: Run, sampler: str, steps: int) -> dict:
    """The entry `optimize_grid` stored for (sampler, steps): {"step", "method", "sigmas"} and, for a DP
    plan with several solver orders, "orders", for a PAS-corrected Euler grid, "pas", for a learned solver,
    "learned". UserError if there is none or it was fitted to the weights of another step."""
    stored = run.dir / GRIDS_FILE
    table, key = read_plans(stored), f"{sampler}:{steps}"
    if key not in table:
        earlier = sorted(Path(run.dir).glob(f"stale/step_*/{GRIDS_FILE}"))  # moved when training resumed
        note = f" (those fitted to earlier weights are in {earlier[-1].parent})" if earlier else ""
        method = {"euler": " [--method dp]", "heun": " [--method dp]" * (steps % 2),  # a DP Heun NFE is odd
                  "dpmpp_2m": " [--method learned]"}
        raise UserError(f"no optimized grid for {key} in {stored}{note}; run `diffspace optimize-grid "
                        f"{run.dir} --sampler {sampler} --steps {steps}{method.get(sampler, '')}` first")
    entry = table[key]
    try:
        check_entry(entry, sampler, steps)
    except UserError as e:
        raise UserError(f"{stored}: {e}") from None
    if entry["step"] != run.step:  # why: one plan per key, so a fit for these weights replaces that one
        how = f" --method {entry['method']}" if entry.get("method") in ("dp", "learned") else ""
        raise UserError(f"the optimized grid for {key} was fitted at step {entry['step']}, these weights are "
                        f"step {run.step}; fit one for them (it replaces that plan): `diffspace "
                        f"optimize-grid RUN --sampler {sampler} --steps {steps}{how} --overwrite`, RUN as "
                        "given here")
    return entry


def plan_problem(run: Run, key: str, entry) -> str | None:
    """Why `sample --grid optimized` would refuse the plan stored under `key` for this run's weights (a
    malformed entry, another step), or None: what `diffspace info` shows beside each plan."""
    sampler, _, steps = key.rpartition(":")
    if not steps.isdigit():
        return "its key is not SAMPLER:STEPS"
    try:
        check_entry(entry, sampler, int(steps))
    except UserError as e:
        return str(e)
    if entry["step"] != run.step:
        return (f"fitted at step {entry['step']}, the run is at step {run.step}: refit it with --overwrite "
                "to sample with it")
    return None


def plan_nfe(entry: dict, sampler: str) -> int:
    """The network calls a stored plan spends: by its per-step orders (a DP plan of Euler and Heun steps),
    else by the sampler's rule for its grid's steps. KeyError, TypeError or ValueError for a malformed
    entry."""
    if "orders" in entry:
        sigmas = torch.tensor(entry["sigmas"], dtype=torch.float64)
        return Schedule(sigmas, tuple(int(o) for o in entry["orders"])).nfe
    return SAMPLERS[sampler].nfe(len(entry["sigmas"]) - 1)


def key_nfe(sampler: str, steps: int, method) -> int:
    """The NFE a plan stored under SAMPLER:STEPS spends: STEPS for a DP plan (its --steps counts calls),
    else the sampler's NFE for STEPS steps (heun:5 of Nelder-Mead is 9 calls)."""
    return steps if method == "dp" else SAMPLERS[sampler].nfe(steps)


def check_entry(entry, sampler: str, steps: int) -> None:
    """UserError (one line) unless `entry` is a stored plan for SAMPLER:STEPS that sampling can run: a
    step, a list of real noise levels, a step rule that fits them, the NFE its key names."""
    key = f"{sampler}:{steps}"
    real = lambda v: isinstance(v, int | float) and not isinstance(v, bool)  # noqa: E731
    try:
        if not isinstance(entry, dict) or not isinstance(entry.get("step"), int) \
                or not isinstance(entry.get("sigmas"), list) or not all(map(real, entry["sigmas"])) \
                or (entry.get("method") == "learned" and "learned" not in entry):
            raise ValueError("a step, noise levels and the step rule of its method")
        nfe, want = plan_nfe(entry, sampler), key_nfe(sampler, steps, entry.get("method"))
        if nfe != want:  # why: a hand-edited grid of 60 levels was sampled as 60 steps under --steps 5
            raise ValueError(f"its plan spends {nfe} network calls, its key {want}")
        plan_sampler(entry, sampler)
        check_grid(torch.tensor(entry["sigmas"], dtype=torch.float64), what="optimized grid")
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as e:  # Infinity: int(inf)
        raise UserError(f"the entry for {key} is malformed ({e}); run `diffspace optimize-grid` again") \
            from None


def plan(run: Run, sampler: str, steps: int, grid: str, options: dict | None = None,
         sigma_min: float | None = None, sigma_max: float | None = None) -> tuple[Callable, Tensor]:
    """The sampler function and float64 grid of a sampling protocol. A stored optimized plan may bring its
    own step rule (per-step solver orders of a DP plan, PAS coordinates for Euler, a learned solver's
    weights): same NFE as asked. UserError for sampler options other than the defaults on an optimized
    plan, which was fitted with them."""
    sigmas = run_sigmas(run, grid, steps, sampler, sigma_min, sigma_max)
    entry = stored_plan(run, sampler, steps) if grid == "optimized" else {}
    if entry:  # why: optimize-grid fits a sampler with its default options (DDIM's grid, not eta = 1's)
        given, default = check_sampler_options(sampler, options), check_sampler_options(sampler, None)
        flags = ", ".join("--" + "no-" * (given[k] is False) + k.replace("_", "-")  # a bool's off switch
                          for k in sorted(given) if given[k] != default[k])
        if flags:
            raise UserError(f"the optimized plan for {sampler}:{steps} was fitted with {sampler}'s default "
                            f"options; {flags} would run another solver on it: drop {flags}, or choose "
                            "another --grid")
    return plan_sampler(entry, sampler, options), sigmas


def plan_sampler(entry: dict, sampler: str, options: dict | None = None) -> Callable:
    """The sampler function of a stored plan's entry (its own step rule, if it brings one), else the
    sampler with its options."""
    if "learned" in entry:
        return partial(sample_learned, solver=LearnedSolver.from_json(entry["learned"]))
    if "pas" in entry:
        return partial(sample_euler_pas, pas=PASCorrection.from_json(entry["pas"]))
    if "orders" in entry:
        return partial(sample_schedule, orders=tuple(int(o) for o in entry["orders"]))
    return sampler_fn(sampler, options)


def physical_memory() -> int | None:
    """The machine's physical memory in bytes (None where the system does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # no sysconf (Windows), or a name this system lacks
        return None


def check_sample_memory(n: int, shape: tuple[int, ...]) -> None:
    """UserError when n float32 samples of `shape` would not fit in the machine's physical memory.
    why: `diffspace sample --n 100000000000` had no bound: it sampled for hours, chunk after chunk, before
    running out of memory; refused before the first chunk, it is one line naming the size."""
    need, have = n * math.prod(shape) * 4, physical_memory()
    if have is not None and need > have:
        raise UserError(f"{n} samples of shape {tuple(shape)} take {need / 1e9:.3g} GB as float32, more than "
                        f"this machine's {have / 1e9:.3g} GB of memory; ask for fewer (a smaller --n)")


@torch.no_grad()
def sample_chunk(denoiser, shape: tuple[int, ...], streams: Streams, sigmas: Tensor, sampler,
                 device: torch.device, **cond) -> Tensor:
    """len(streams) samples of `shape`: sample i's initial noise and every later draw come from stream i."""
    noise = streams.randn((len(streams), *shape), torch.float64)
    x = (noise * sigmas[0]).to(device=device, dtype=torch.float32)
    return sampler(denoiser, x, sigmas.to(device), generator=streams, **cond).cpu()


def generate(denoiser, shape: tuple[int, ...], n: int, sigmas: Tensor, sampler, seed: int,
             device: torch.device, cond: dict[str, Tensor] | None = None,
             chunk: int = CHUNK) -> Tensor | None:
    """n samples of `shape`; `cond` holds the per-sample conditions of a conditional denoiser (class_labels
    (n,), text features (n, ...)), each sliced with its chunk. Under torchrun the chunks are dealt to the
    ranks: rank 0 gets all n (the same as one process), the other ranks None. UserError for samples with
    NaN or inf (`check_finite_samples`), so no caller writes, scores or trains on them, and, before any
    sampling, for n samples larger than the machine's memory (`check_sample_memory`)."""
    from tqdm import tqdm

    check_sample_memory(n, shape)

    # why: eval draws 10k samples (a minute on a CPU); a bar on a terminal, on rank 0, past one chunk
    bar = tqdm(total=n, desc="sampling", unit="sample", leave=False,
               disable=None if n > chunk and world()[0] == 0 else True)

    def one(lo: int, hi: int, _seed: int) -> Tensor:
        part = {k: v[lo:hi].to(device) for k, v in (cond or {}).items()}
        out = sample_chunk(denoiser, shape, Streams(seed, hi - lo, lo), sigmas, sampler, device, **part)
        bar.update(hi - lo)
        return out

    parts = map_chunks(one, n, seed, chunk)
    bar.close()
    if parts is None:
        return None
    x = torch.cat(parts)
    check_finite_samples(x)
    return x


def guided_denoiser(run: Run, guidance: float | None):
    """The run's Denoiser, with classifier-free guidance of scale `guidance` for a class-conditional
    run (None or 1: the conditional model). UserError for guidance on an unconditional run."""
    den, K = as_denoiser(run.cfg, run.module), run.cfg.model.num_classes
    if guidance is None or guidance == 1.0:
        return den
    if K == 0:
        raise UserError("guidance (--cfg) needs a class-conditional run (model.num_classes > 0)")
    return ClassifierFreeGuidance(den, guidance, null_class(K))


def classifier_guided(run: Run, denoiser, classifier: str | None, scale: float | None) -> tuple[object, int]:
    """(denoiser with [CG] classifier guidance of scale `scale` (default 1) by the noise-aware classifier
    file `classifier` from `diffspace train-classifier`, its number of classes); (denoiser, 0) without a
    classifier. UserError for a scale without a classifier, a classifier of other images or classes."""
    if classifier is None:
        if scale is not None:
            raise UserError("--classifier-scale needs --classifier FILE (from `diffspace train-classifier`)")
        return denoiser, 0
    net, meta = load_classifier(classifier, "noisy_classifier")
    K, shape = run.cfg.model.num_classes, list(run.meta["data_shape"])
    if meta["shape"] != shape:
        raise UserError(f"--classifier {classifier}: trained on images of shape {meta['shape']}, the run's "
                        f"are {shape}")
    if K and net.head[-1].out_features != K:
        raise UserError(f"--classifier {classifier}: {net.head[-1].out_features} classes, the run has {K}")
    clf = EDMClassifier(net, meta["sigma_data"]).to(run.device).eval()
    return ClassifierGuidance(denoiser, clf, 1.0 if scale is None else scale, conditional=K > 0), \
        net.head[-1].out_features


def class_labels(run: Run, n: int, labels: tuple[int, ...] | None, num_classes: int = 0) -> Tensor | None:
    """Labels for n samples of a class-conditional run (or of a guiding classifier with `num_classes`):
    the given ones cycled, else 0, 1, .., K-1, 0, .. None for an unconditional run without a classifier
    (UserError if labels were given for one)."""
    K = num_classes or run.cfg.model.num_classes
    if K == 0:
        if labels:
            raise UserError("class labels (--class) need a class-conditional run (model.num_classes > 0) or "
                            "a --classifier")
        return None
    wanted = torch.tensor(labels, dtype=torch.long) if labels else torch.arange(K)
    if (wanted < 0).any() or (wanted >= K).any():
        raise UserError(f"class labels must be in 0..{K - 1}, got {list(labels)}")
    return wanted.repeat(-(-n // len(wanted)))[:n]


def sample(run: Run, opts: SampleOptions) -> Tensor | None:
    """opts.n samples (n, *data shape) on the CPU (None on torchrun ranks other than 0). UserError for bad
    options, or for n samples larger than the machine's memory (`check_sample_memory`, also checked by
    `generate`: here before the plan, a classifier or the labels are made)."""
    sc = run.cfg.sample
    n, steps = opts.n or sc.n, opts.steps or sc.steps
    sampler, grid = opts.sampler or sc.sampler, opts.grid or sc.grid
    check_positive(n=n, steps=steps)
    check_sample_memory(n, tuple(run.meta["data_shape"]))
    fn, sigmas = plan(run, sampler, steps, grid, opts.sampler_options, opts.sigma_min, opts.sigma_max)
    den, classes = classifier_guided(run, guided_denoiser(run, opts.guidance), opts.classifier,
                                     opts.classifier_scale)
    labels = class_labels(run, n, opts.class_labels, classes)
    x = generate(den, tuple(run.meta["data_shape"]), n, sigmas, fn, opts.seed,
                 run.device, None if labels is None else {"class_labels": labels})
    return None if x is None else (x.clamp(-1, 1) if run.cfg.images else to_data_units(run.meta, x))


def range_grid(run: Run, name: str, steps: int, lo: float, hi: float) -> Tensor | None:
    """The grid `name` of `steps` steps for this run from exactly sigma = hi down to lo, or None where the
    path has no such grid (a table grid, spaced on a DDPM table's timesteps, on another path or range)."""
    try:
        grid = GRIDS[name](steps, lo, hi, path=build_path(run.cfg))
    except UserError:  # why: trailing spaces a DDPM table's timesteps; other paths have none
        return None
    return grid if float(grid[0]) == hi and float(grid[-2]) >= lo else None


def learn_starts(run: Run, steps: int, lo: float, hi: float,
                 names: tuple[str, ...] = ("karras", "logsnr", "trailing", "uniform_t")) -> list[Tensor]:
    """The fixed grids `names` of `steps` steps that this run's path has from exactly sigma = hi down to lo
    (trailing only on a DDPM table when hi is its top): the learned solver's starts, and Nelder-Mead's
    beside the Karras and logSNR grids it always tries."""
    grids = (range_grid(run, name, steps, lo, hi) for name in names)
    return [g for g in grids if g is not None]


def unfittable(sampler: str) -> str | None:
    """Why optimize-grid cannot fit a grid for `sampler` (it fits deterministic fixed-step samplers), or
    None if it can."""
    if sampler not in SAMPLERS:
        return "is not a sampler"
    if SAMPLERS[sampler].stochastic:
        return "is stochastic"
    return "picks its steps" if SAMPLERS[sampler].nfe is None else None


# optimize-grid's methods that fit one kind of step, and the samplers they fit; the samplers PAS corrects
METHOD_SAMPLERS = {"dp": ("euler", "heun"), "learned": ("dpmpp_2m",)}
PAS_SAMPLERS = ("euler",)


def optimize_grid(run: Run, sampler: str = "dpmpp_2m", steps: int = 5, n_calib: int = 512, seed: int = 0,
                  sigma_min: float | None = None, sigma_max: float | None = None, method: str = "nelder-mead",
                  budget: int | None = None, orders: tuple[int, ...] | None = None,
                  candidates: int | None = None, pas: bool = False, pas_k: int | None = None,
                  pas_tol: float | None = None, overwrite: bool = False) -> Tensor:
    """Fit the sampler's `steps`-step grid to this run on a calibration batch and store it in RUN/grids.json
    (key "SAMPLER:STEPS") for `grid = "optimized"`; returns the grid. A plan already stored there for the
    same weights and starting level is run on the same calibration noise, and, unless `overwrite`, kept
    (UserError, the file unchanged) when it does better than the new one: a refit loses no better plan.

    method "nelder-mead": any deterministic sampler, `budget` runs of it (samplers/optimize_grid.py).
    method "dp": dynamic programming over `candidates` levels ([GITS]) for euler (orders (1,)) or heun
    ((2,)), or with orders (1, 2) a plan that picks Euler or Heun per step; `steps` is then the NFE.
    method "learned": dpmpp_2m's weights and levels learned with `budget` Adam steps from the fixed grids
    of this range ([S4S], samplers/learned.py); same NFE, sampled by --grid optimized.
    `pas`: learn PAS coordinates ([PAS]) for the Euler grid (no extra network calls when sampling).
    Defaults: budget 600, candidates 64, pas_k 4, pas_tol 0.01; UserError for one given to a method (or,
    pas_k and pas_tol, without pas) that would ignore it. Warns (logger "diffspace") where the plan does
    worse on its calibration noise than the run's grid, or, a plan of Heun steps alone, than the DP plan
    of Euler steps at the same NFE."""
    check_steps(steps)
    if method not in ("nelder-mead", "dp", "learned"):
        raise UserError(f"method must be 'nelder-mead', 'dp' or 'learned', got {method!r}")
    use = {"budget": ("methods nelder-mead and learned", method != "dp", budget),
           "candidates": ("method dp", method == "dp", candidates), "pas_k": ("--pas", pas, pas_k),
           "pas_tol": ("--pas", pas, pas_tol)}
    ignored = [f"{k} (--{k.replace('_', '-')}) is for {where}" for k, (where, applies, v) in use.items()
               if v is not None and not applies]
    if ignored:
        pas_given = not pas and (pas_k is not None or pas_tol is not None)
        raise UserError("; ".join(ignored) + f" (here: method {method}{', no --pas' if pas_given else ''})")
    default = lambda v, d: d if v is None else v  # noqa: E731
    budget, candidates, pas_k, pas_tol = default(budget, 600), default(candidates, 64), default(pas_k, 4), \
        default(pas_tol, 1e-2)
    check_positive(n_calib=n_calib, budget=budget, candidates=candidates)
    model = run.cfg.model
    why = unfittable(sampler)
    if why:
        fixed_step = [name for name in SAMPLERS if not unfittable(name)]
        plannable = [n for n in METHOD_SAMPLERS.get(method, fixed_step) if n in PAS_SAMPLERS or not pas]
        fittable = [n for n in plannable if sampler_fits(n, model)]
        raise UserError(f"optimize-grid fits the grid of a deterministic fixed-step sampler; {sampler!r} "
                        f"{why}; choose one of {', '.join(fittable) or 'none (no sampler fits all options)'}")
    if method == "learned" and sampler not in METHOD_SAMPLERS["learned"]:
        raise UserError(f"method 'learned' learns the weights of {METHOD_SAMPLERS['learned'][0]}, "
                        f"got sampler {sampler!r}")
    if orders is not None and method != "dp":
        raise UserError(f"solver orders (--orders) choose steps of method 'dp'; method {method!r} has none")
    if orders is not None and (not isinstance(orders, tuple | list)
                               or not all(isinstance(o, int) and not isinstance(o, bool) for o in orders)):
        raise UserError(f"orders are solver orders such as (1, 2) (--orders 1,2), got {orders!r}")
    if pas and orders is not None and set(orders) != {1}:  # why: before minutes of fitting, not after
        raise UserError("PAS corrects a plain Euler grid, and --orders lets the DP plan Heun steps; drop "
                        "--orders or --pas")
    if method == "dp" and sampler not in METHOD_SAMPLERS["dp"]:
        raise UserError(f"method 'dp' plans {' or '.join(METHOD_SAMPLERS['dp'])} steps, "
                        f"got sampler {sampler!r}")
    if method == "dp":  # why: before minutes of fitting, not after
        own = 1 if sampler == "euler" else 2
        if orders is not None and own not in orders:
            raise UserError(f"--orders {','.join(map(str, orders))} leaves out {sampler}'s own steps (order "
                            f"{own}); a plan stored for {sampler} takes them, with others only beside them")
        orders = tuple(orders or (own,))
        check_dp_plan(steps, orders)
    if pas and sampler not in PAS_SAMPLERS:
        raise UserError(f"PAS corrects Euler steps; got sampler {sampler!r}")
    check_sampler_fits(sampler, model, "optimize-grid")  # why: before fitting a plan `sample` would refuse
    fn = sampler_fn(sampler)
    if pas:  # why: before minutes of fitting, not after
        check_pas_options(pas_k, pas_tol)
    stored = Path(run.dir) / GRIDS_FILE
    table = read_plans(stored)  # why: a bad file is refused before minutes of fitting, not after
    lo, hi = sampling_range(build_path(run.cfg), sigma_min, sigma_max)
    key, nfe = f"{sampler}:{steps}", key_nfe(sampler, steps, method)
    rival, apart = rival_plan(run, table.get(key), sampler, steps, lo, hi, nfe)
    if apart and not overwrite:  # why: before minutes of fitting, not after
        raise UserError(f"this fit cannot be compared with the {apart}, so {stored} is unchanged "
                        "(--overwrite replaces that plan)")
    g = torch.Generator().manual_seed(seed + 7919)  # calibration noise apart from sampling seeds
    x = (torch.randn((n_calib, *run.meta["data_shape"]), generator=g) * hi).to(run.device)
    den = as_denoiser(run.cfg, run.module)
    entry = {"step": run.step, "method": method, "range": [lo, hi]}
    with torch.no_grad():  # the adaptive PF-ODE solution of the calibration noise, what every method fits
        if method == "dp":
            levels = candidate_sigmas(candidates, lo, hi)
            trajectory = reference_trajectory(den, x, levels)
            reference = trajectory[-1]
        else:
            reference = sample_adaptive(den, x, hi, lo)
    euler_error = None
    if method == "dp":
        schedule = dp_schedule(den, x, steps, lo, hi, orders=orders, candidates=levels,
                               reference=trajectory)
        sigmas = schedule.sigmas
        if len(set(schedule.orders)) > 1 or schedule.orders[0] != (1 if sampler == "euler" else 2):
            entry["orders"] = list(schedule.orders)
        if set(orders) == {2}:  # why: the DP's sum of one-step errors can pick a Heun plan that collapses
            euler = dp_schedule(den, x, steps, lo, hi, candidates=levels, reference=trajectory)
            euler_error = grid_error(sampler_fn("euler"), den, x, euler.sigmas, reference)
    elif method == "learned":
        solver = learn_solver(den, x, learn_starts(run, steps, lo, hi), lo, iters=budget, reference=reference)
        sigmas, entry["learned"] = solver.sigmas, solver.to_json()
    else:
        starts = learn_starts(run, steps, lo, hi, names=("trailing", "uniform_t"))
        sigmas = optimize_sigmas(fn, den, x, steps, lo, hi, starts=starts, max_evals=budget,
                                 reference=reference)
    if pas:
        entry["pas"] = learn_pas(den, x, sigmas, k=pas_k, tol=pas_tol).to_json()
    held_out = holdout_batch(run, den, n_calib, seed, lo, hi)
    entry["calibration"] = calibration(run, den, x, reference, sampler, nfe, lo, hi,
                                       plan_sampler(entry, sampler), sigmas, held_out)
    cal = entry["calibration"]
    if rival is not None and not overwrite:  # the same weights, range and NFE: both run on held-out noise
        with torch.no_grad():
            kept = grid_error(plan_sampler(rival, sampler), den, held_out[0],
                              torch.tensor(rival["sigmas"], dtype=torch.float64), held_out[1])
        new_error, n = cal["holdout"]["rmse"], cal["holdout"]["n"]
        old = " ".join(str(rival.get("method", "nelder-mead")).split())
        said = (f"on {n} noises neither plan was fitted to, the stored plan errs {kept:.4g}, the new "
                f"{method} plan {new_error:.4g}")
        if kept < new_error:
            raise UserError(f"kept the {old} plan stored for {key}: {said}; {stored} is unchanged "
                            "(--overwrite, or overwrite=True, stores the new plan)")
        log.info(f"replaced the {old} plan stored for {key}: {said}")
    elif apart or rival is not None:
        log.info(f"replaced the {apart or 'plan stored for ' + key} (--overwrite)")
    table[key] = {**entry, "sigmas": sigmas.tolist()}
    write_text(stored, json.dumps(table, indent=1) + "\n")
    if cal["rmse"] > cal["baseline"]["rmse"]:  # why: a DP plan minimizes one-step errors, not the whole run's
        base = cal["baseline"]["grid"]
        log.warning(f"on its calibration noise this plan is worse than the {base} grid; sample with --grid "
                    f"{base} instead, or fit another --method")
    if euler_error is not None and cal["rmse"] > euler_error < cal["baseline"]["rmse"]:  # else: the grid's
        log.warning(f"on its calibration noise this plan of Heun steps errs {cal['rmse']:.4g}, the DP plan "
                    f"of Euler steps at NFE {steps} errs {euler_error:.4g}: fit that (--sampler euler), let "
                    f"the DP mix the two (--orders 1,2), or search a Heun grid of the same NFE (--method "
                    f"nelder-mead --steps {(steps + 1) // 2})")
    return sigmas


HOLDOUT_SEED, HOLDOUT_MIN = 104729, 256  # why: a plan is fitted to its calibration noise, which flatters it


def holdout_batch(run: Run, den, n_calib: int, seed: int, lo: float, hi: float) -> tuple[Tensor, Tensor]:
    """max(n_calib, 256) noises apart from the calibration noise of `seed` (stream seed + HOLDOUT_SEED),
    scaled to hi, and their adaptive PF-ODE solution over [lo, hi]: where a fitted plan is compared fairly
    with one that was not fitted to them (`calibration`, a refit's stored plan)."""
    g = torch.Generator().manual_seed(seed + HOLDOUT_SEED)
    x = (torch.randn((max(n_calib, HOLDOUT_MIN), *run.meta["data_shape"]), generator=g) * hi).to(run.device)
    with torch.no_grad():
        return x, sample_adaptive(den, x, hi, lo)


def rival_plan(run: Run, entry, sampler: str, steps: int, lo: float, hi: float,
               nfe: int) -> tuple[dict | None, str | None]:
    """How a plan stored under SAMPLER:STEPS meets a refit over [lo, hi] at `nfe`: (entry, None) where
    the two compete (the same weights, range and NFE: the better one on held-out noise is kept, see
    `holdout_batch`), (None, what sets it apart) where they cannot be compared, (None, None) where there
    is none or it is malformed (it is replaced). The range of a plan stored before ranges were recorded is
    its first level alone."""
    try:
        check_entry(entry, sampler, steps)
        stored_lo, stored_hi = (float(v) for v in entry.get("range", [lo, entry["sigmas"][0]]))
    except (UserError, TypeError, ValueError):
        return None, None
    what = f"{' '.join(str(entry.get('method', 'nelder-mead')).split())} plan stored for {sampler}:{steps}"
    if entry["step"] != run.step:
        return None, f"{what}, fitted at step {entry['step']} (this fit: step {run.step})"
    if (stored_lo, stored_hi) != (lo, hi):
        return None, (f"{what}, fitted over sigma {stored_lo:.4g} .. {stored_hi:.4g} (this fit: {lo:.4g} .. "
                      f"{hi:.4g})")
    if plan_nfe(entry, sampler) != nfe:  # heun:5 is 5 calls of a DP plan, 9 of a Nelder-Mead grid
        return None, f"{what}, fitted for {plan_nfe(entry, sampler)} network calls (this fit: {nfe})"
    return entry, None


def calibration(run: Run, den, x: Tensor, reference: Tensor, sampler: str, nfe: int, lo: float, hi: float,
                fitted: Callable, sigmas: Tensor, held_out: tuple[Tensor, Tensor]) -> dict:
    """How much a fitted plan gained: the RMS error per coordinate against the adaptive PF-ODE solution, of
    the plan and of the sampler on the run's [sample] grid (karras where that is "optimized" or has no grid
    over [lo, hi]) with the most steps that fit the plan's NFE, on its calibration noise x (`reference`:
    their solution) and, under "holdout", on the noises of `holdout_batch` (held_out: (noise, solution)),
    since the calibration error flatters the plan fitted to that noise."""
    grid = run.cfg.sample.grid if run.cfg.sample.grid != "optimized" else "karras"
    steps = nfe_steps(sampler, nfe)[0]
    baseline = range_grid(run, grid, steps, lo, hi)
    if baseline is None:
        grid, baseline = "karras", GRIDS["karras"](steps, lo, hi)
    plans, x_held, held_reference = [(fitted, sigmas), (sampler_fn(sampler), baseline)], *held_out
    with torch.no_grad():
        errors = [grid_error(fn, den, x, grid_sigmas, reference) for fn, grid_sigmas in plans]
        held = [grid_error(fn, den, x_held, grid_sigmas, held_reference) for fn, grid_sigmas in plans]
    return {"n": len(x), "nfe": nfe, "rmse": errors[0],
            "baseline": {"grid": grid, "steps": steps, "rmse": errors[1]},
            "holdout": {"n": len(x_held), "rmse": held[0], "baseline_rmse": held[1]}}
