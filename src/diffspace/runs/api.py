"""The verbs of the runs layer: what the CLI does, for Python users, returning tensors and dicts.

    cfg = load_config("configs/demo.toml", ["train.steps=500", "run.dir=runs/mine"])
    run = train(cfg)                                   # writes runs/mine, returns the trained Run
    run = load_run("runs/mine")                        # EMA weights, eval mode
    x = sample(run, SampleOptions(n=1000, sampler="dpmpp_2m", steps=10))
    metrics = evaluate(run, EvalOptions(nll=True))

Nothing here prints: notes go to the "diffspace" logger, errors are UserError (bad input) or
TrainingError (a run that cannot go on).
"""

import copy
import dataclasses
import json
import logging
import math
from pathlib import Path

import torch

from diffspace.config import apply_overrides, build, load_toml, to_dict, to_toml
from diffspace.files import missing_folders
from diffspace.runs import rundir, sampling
from diffspace.runs.continuous import load_data
from diffspace.runs.diffusers_io import is_diffusers_dir, load_diffusers
from diffspace.runs.evaluation import nll_metrics
from diffspace.runs.loading import build_run, read_run
from diffspace.runs.options import EvalOptions, Run, SampleOptions, check_options
from diffspace.runs.tasks import TASKS, task_of
from diffspace.train.checkpoint import load_checkpoint
from diffspace.train.distributed import barrier, init_distributed, is_main, peer_guard, world
from diffspace.train.loop import TrainConfig, Trainer, check_batch_split, lr_lambda
from diffspace.train.loop import train as train_loop
from diffspace.types import UserError
from diffspace.utils import resolve_device

log = logging.getLogger("diffspace")


def _absolute_files(data: dict) -> dict:
    """Paths in the config that name existing files or folders, made absolute (a run can then be resumed,
    sampled and evaluated from any working directory)."""
    out = copy.deepcopy(data)
    for section, key in (("data", "file"), ("data", "corpus"), ("eval", "ar_run"),
                         ("model", "scheduler_config"), ("sources", "encoder"), ("sources", "autoencoder")):
        table = out.get(section)
        value = table.get(key) if isinstance(table, dict) else None  # a non-table is refused by validation
        if isinstance(value, str) and value and Path(value).exists():
            out[section][key] = str(Path(value).resolve())
    return out


def load_config(source, overrides: list[str] = (), resume: bool = False):
    """A validated config dataclass from a TOML file (or dict, or config dataclass) and 'key=value'
    overrides; with `resume` and a run directory, the run's own stored config. UserError on bad input."""
    if dataclasses.is_dataclass(source):
        source = to_dict(source)
    if not isinstance(source, dict) and is_diffusers_dir(source):
        raise UserError(f"{source} is a diffusers model: diffspace can sample it (`diffspace sample "
                        f"{source}`) but not train or resume it")
    if isinstance(source, dict):
        data, src = apply_overrides(source, overrides), "<config>"
    elif resume and Path(source).is_dir():
        ckpt = rundir.checkpoint_of(source)
        data, src = apply_overrides(load_checkpoint(ckpt)[1]["config"], overrides), str(ckpt)
    elif Path(source).suffix == ".safetensors":  # why: it was read as TOML ("malformed TOML ('utf-8' ...")
        raise UserError(f"{source} is a weights file, not a TOML config: to continue a run, give its "
                        "directory with --resume; to sample or evaluate it, use `diffspace sample` / `eval`")
    else:
        data, src = load_toml(source, overrides), str(source)
    task = task_of(data, src)
    return build(task.config_cls, _absolute_files(data), src)


def _lr_at(train_cfg: TrainConfig, step: int) -> float:
    return train_cfg.lr * lr_lambda(train_cfg)(step)


def _note_extension(old_train: dict, new_train: TrainConfig, step: int) -> None:
    """Say what continuing a run with another [train] schedule does to its learning rate."""
    old = build(TrainConfig, old_train, "the run's stored config")
    if (old.steps, old.lr, old.warmup_steps, old.schedule) == (new_train.steps, new_train.lr,
                                                              new_train.warmup_steps, new_train.schedule):
        return
    before, after = _lr_at(old, step), _lr_at(new_train, step)
    # why: 'goes from 0.00062 to 0.00062' said nothing where the two schedules meet at this step
    now = f"stays {after:.3g}" if math.isclose(before, after, rel_tol=1e-3) else \
        f"goes from {before:.3g} to {after:.3g}"
    log.warning("continuing from step %d to %d: the %s learning-rate schedule is recomputed for %d steps, so "
                "the learning rate at step %d %s", step, new_train.steps, new_train.schedule, new_train.steps,
                step, now)


# why: [train] is noted by _note_extension; the run's directory and device legitimately differ when a
# run is moved or resumed on another machine, so they are no change of the run's settings.
_UNNOTED = ("train", "run.dir", "run.device")


def _flat(data: dict, prefix: str = "") -> dict:
    """{'section.key.subkey': value} of a nested config dict; tuples as lists (as JSON stores them)."""
    out = {}
    for k, v in data.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            out |= _flat(v, name + ".")
        else:
            out[name] = json.loads(json.dumps(v))
    return out


def _note_changes(old_config: dict, new_config: dict) -> None:
    """One warning listing each setting a resume changes, as `section.key: old -> new` (nested tables
    key by key), outside [train] and run.dir / run.device. Changing them is allowed (e.g. fine-tuning
    on new data); saying so keeps a resumed run from silently training under other settings."""
    missing = object()  # a key only one side has (a config stored by an older diffspace)

    def shown(v) -> str:
        return "(unset)" if v is missing else repr(v)

    old, new = _flat(old_config), _flat(new_config)
    changed = [f"{k}: {shown(old.get(k, missing))} -> {shown(new.get(k, missing))}"
               for k in sorted(old.keys() | new.keys())
               if old.get(k, missing) != new.get(k, missing)
               and not any(k == u or k.startswith(u + ".") for u in _UNNOTED)]
    if changed:
        log.warning("resuming with %d changed setting%s (training continues under the new ones): %s",
                    len(changed), "" if len(changed) == 1 else "s", "; ".join(changed))


def train(config, overrides: list[str] = (), *, resume: bool = False, overwrite: bool = False,
          accumulate: int = 1, device: str = "auto", progress: bool = False) -> Run:
    """Train a run and return it (EMA weights, eval mode).

    `config`: a TOML file, a dict or a config dataclass; with `resume`, a run directory (or a config
    whose run.dir holds a checkpoint). Nothing is written before the config is validated, the data and
    model are built and (for `resume`) the checkpoint is known to fit; see runs/rundir.py for what may
    be overwritten; a new run that fails before it logs a step leaves no files (`rundir.undo_start`).
    Under torchrun every rank calls this; rank 0 alone writes. A resume that changes
    settings outside [train] is allowed, with one warning listing them (`_note_changes`).

    UserError for bad input: an invalid config or override, `accumulate` < 1, a train.batch_size that
    does not split into world size x `accumulate` (`check_batch_split`), a run directory that cannot be
    started or resumed, or train.steps not beyond a resumed run's step.
    """
    cfg = load_config(config, overrides, resume)
    task = TASKS[cfg.task]
    run_dir = Path(config) if resume and not isinstance(config, dict) and Path(config).is_dir() \
        else Path(cfg.run.dir)
    if run_dir.resolve() != Path(cfg.run.dir).resolve() and any(o.partition("=")[0].strip() == "run.dir"
                                                                 for o in overrides):
        raise UserError(f"--resume continues the run in {run_dir} and writes there; run.dir cannot send it "
                        "elsewhere (copy the folder and resume the copy)")
    cfg.run.dir = str(run_dir)
    record = to_dict(cfg)
    dev = init_distributed(resolve_device(device if device != "auto" else cfg.run.device))
    check_batch_split(cfg.train.batch_size, world()[1], accumulate)  # why: before data and model are built
    plan = rundir.plan_start(run_dir, resume=resume, overwrite=overwrite)
    old = load_checkpoint(rundir.checkpoint_of(run_dir))[1] if resume else None
    if old is not None and cfg.train.steps <= old["step"]:
        raise UserError(f"the run in {run_dir} is at step {old['step']}; train.steps = {cfg.train.steps} "
                        f"would train nothing (set a larger train.steps to extend it)")
    torch.manual_seed(cfg.run.seed)
    setup, meta = task.build_setup(cfg, dev)

    def on_start(tr: Trainer) -> None:
        """Runs once the checkpoint (if any) is restored: only now do files change."""
        if is_main():
            if old is not None:  # why rank 0 alone: one note per job, not one per rank
                _note_extension(old["config"]["train"], cfg.train, tr.step)
                _note_changes(old["config"], record)
                moved = rundir.retire_derived(run_dir, old["step"])
                if moved:
                    log.info("moved %s (from the weights at step %d) to %s", ", ".join(moved), old["step"],
                             run_dir / "stale")
            rundir.start(run_dir, plan, to_toml(record))
        barrier()

    made = missing_folders(run_dir)
    fresh = plan == "create" and (made or not any(run_dir.iterdir()))  # an earlier failed start stays
    try:
        with peer_guard(f"the last checkpoint in {run_dir / 'checkpoints'} is intact; continue with "
                        f"`diffspace train {run_dir} --resume` (under torchrun or not)"):
            tr = train_loop(setup, cfg.train, run_dir, record, seed=cfg.run.seed, resume=resume,
                            accumulate=accumulate, progress=progress, extra=meta, on_start=on_start)
    except BaseException:
        if fresh and is_main():
            rundir.undo_start(run_dir, made)
        raise
    if tr.rank == 0 and task.after_train:
        task.after_train(run_dir)
    meta = {"step": tr.step, "elapsed": tr.elapsed, "config": record, "weights": "ema", **meta}
    return Run(task.name, cfg, tr.ema.module.eval(), run_dir, tr.step, meta)


def load_run(path: str | Path, device: str | torch.device = "cpu", ema: bool = True) -> Run:
    """Rebuild the trained module of a run directory or checkpoint file (EMA weights by default), or of a
    weights file (`export_weights`), or load a diffusers folder as a Run of task "diffusers"."""
    if is_diffusers_dir(path):
        return load_diffusers(path, device)
    ckpt, tensors, meta = read_run(path)
    return build_run(task_of(meta["config"], str(ckpt)), ckpt, tensors, meta, device, ema)


def sample(run: Run, options: SampleOptions | None = None):
    """Samples of a run: a tensor (n, ...) for continuous runs, a list of strings for text runs; None on
    torchrun ranks other than 0 (they help draw). Options a task cannot honour are refused; UserError
    for samples with NaN or inf (`check_finite_samples`)."""
    task, options = TASKS[run.task], options or SampleOptions()
    check_options(options, task.sample_options, run.task)
    return task.sample(run, options)


def evaluate(run: Run, options: EvalOptions | None = None) -> dict:
    """The run's metrics beside their data baselines, with the protocol (seed, n, sampler, steps);
    also written to RUN/metrics.json by rank 0. {} on other torchrun ranks. UserError if RUN is not a
    run directory diffspace created (rundir.check_run_dir)."""
    task, options = TASKS[run.task], options or EvalOptions()
    check_options(options, task.eval_options, run.task, vectors=len(run.meta.get("data_shape", ())) == 1)
    rundir.check_run_dir(run.dir, "metrics.json", "; eval writes its metrics and pictures into the run "
                         "directory, so give that (an exported weights file can be sampled with --out)")
    return task.evaluate(run, options)


def log_likelihood(run: Run, n: int = 1000, seed: int = 0) -> dict:
    """PF-ODE NLL of the first n test examples of a continuous run (nats, bits/dim, standard errors, NFE;
    on 8x8 digits also the DDPM bound)."""
    if run.task != "continuous":
        raise UserError(f"log_likelihood needs a continuous run; {run.dir} is a {run.task} run "
                        "(text runs report bits/char through evaluate)")
    return nll_metrics(run, load_data(run.cfg), EvalOptions(nll=True, nll_n=n, seed=seed))


def optimize_grid(run: Run, sampler: str = "dpmpp_2m", steps: int = 5, n_calib: int = 512, seed: int = 0,
                  sigma_min: float | None = None, sigma_max: float | None = None, method: str = "nelder-mead",
                  budget: int | None = None, orders: tuple[int, ...] | None = None,
                  candidates: int | None = None, pas: bool = False, pas_k: int | None = None,
                  pas_tol: float | None = None, overwrite: bool = False) -> torch.Tensor:
    """Fit and store a sampler's `steps`-step grid (a DP plan, PAS coordinates) for a continuous run:
    see runs.sampling.optimize_grid."""
    if run.task != "continuous":
        raise UserError(f"optimize-grid needs a continuous run; {run.dir} is a {run.task} run")
    rundir.check_run_dir(run.dir, "grids.json")
    return sampling.optimize_grid(run, sampler, steps, n_calib, seed, sigma_min, sigma_max, method, budget,
                                  orders, candidates, pas, pas_k, pas_tol, overwrite)
