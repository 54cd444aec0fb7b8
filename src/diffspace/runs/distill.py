"""Few-step students of a trained continuous run: `diffspace distill TEACHER --method M` (`distill`).

References: [PD] arXiv 2202.00512v2, [CM] 2303.01469v2, [RF] 2209.03003v1.

Each round is an ordinary continuous run in OUT/round_K whose config names its teacher (fewstep.teacher,
runs/fewstep.py), so it trains in the one loop, resumes (`diffspace train OUT/round_K --resume`) and is
sampled and evaluated like any run. The student's config is the teacher's with the method's changes, then
the --set overrides (applied to every round):

- progressive ([PD]): the student starts as the teacher's network and learns one DDIM step for two of its
  teacher's; round 1 distills the teacher's DDIM on 2 x `steps` levels of its grid's `_jumps` form (N
  levels then 0), and every round halves the steps, the student becoming the next teacher (default: down
  to one step);
- consistency ([CM]): a consistency function on the EDM path (the teacher's network weights when the
  teacher is EDM-preconditioned), distilled from the teacher's Heun step between adjacent levels of 18
  Karras levels, the run's EMA as target network; one round;
- reflow ([RF]): a rectified flow (linear path, velocity) trained on (noise, sample) pairs of the
  teacher's deterministic sampler (round 1: the teacher's [sample] protocol; later rounds: Heun on 18
  uniform_t steps of the previous flow), k rounds for the k-rectified flow.

After each round the student is evaluated (RUN/metrics.json, its own [sample] protocol); for reflow the
straightness of the teacher and of each round ([RF] S(Z), `families.distill.straightness` on the linear
path's clock) joins it. OUT/distill.json lists the rounds.
"""

import copy
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from diffspace.config import apply_overrides, to_dict
from diffspace.families.distill import straightness
from diffspace.files import write_text
from diffspace.param import VelocityFromDenoiser
from diffspace.paths import LinearFlow
from diffspace.rng import Streams
from diffspace.runs import api, rundir
from diffspace.runs.continuous import as_denoiser
from diffspace.runs.options import EvalOptions, Run, check_positive, check_steps
from diffspace.samplers.fewstep import uniform_times
from diffspace.types import UserError

METHODS = ("progressive", "consistency", "reflow")
STRAIGHTNESS_N, STRAIGHTNESS_STEPS = 500, 32  # trajectories and RK4 steps (129 NFE each)
SUMMARY = ("sw2_ratio", "fid_ratio", "cas")  # the metrics of each round in OUT/distill.json


@dataclass(frozen=True)
class DistillOptions:
    """Options of `distill`. rounds None: progressive halves down to one step, reflow and consistency one
    round. steps: progressive's first student steps (its teacher takes twice as many)."""

    method: str
    out: str | None = None  # folder of the rounds (default: TEACHER-METHOD beside the teacher)
    rounds: int | None = None
    steps: int = 16
    overrides: tuple[str, ...] = ()  # 'key=value' on every student's config
    overwrite: bool = False  # replace round directories diffspace made
    featurenet: str | None = None  # image runs: the feature net the rounds are evaluated with


def _jumps(grid: str) -> str:
    return grid if grid.endswith("_jumps") else f"{grid}_jumps" if grid in ("karras", "uniform_t") else \
        "karras_jumps"


def _student(teacher: Run, method: str, round_dir: Path, steps: int, first: bool) -> dict:
    """The student's config dict for one round: the teacher's with the method's changes."""
    c = copy.deepcopy(to_dict(teacher.cfg))
    m, sc = c["model"], c["sample"]
    fewstep = {"teacher": str(teacher.dir.resolve())}
    c["run"]["dir"] = str(round_dir)
    if method == "progressive":
        c["loss"] = {"objective": "progressive"}
        fewstep["init_from_teacher"] = True
        c["sample"] = {"sampler": "ddim", "grid": _jumps(sc["grid"]), "steps": steps, "n": sc["n"]}
    elif method == "consistency":
        edm = m["parameterization"] == "edm" and m["path"] == "edm"
        m.update(path="edm", scheduler_config="", parameterization="consistency")
        c["loss"] = {"objective": "consistency"}
        fewstep |= {"levels": 18, "init_from_teacher": edm, "target": "ema"}  # [CM] Sec. 6: N = 18
        c["sample"] = {"sampler": "consistency", "grid": "karras_jumps", "steps": 1, "n": sc["n"]}
    else:
        flow = c["loss"]["objective"] == "flow" and m["path"] == "linear"
        m.update(path="linear", scheduler_config="", parameterization="velocity")
        if m["net"] == "mlp" and not flow:  # a velocity net's output is not bounded (nets/mlp.py)
            m["mlp"]["out_norm"] = False
        c["loss"] = {"objective": "flow", "proposal": "uniform"}  # [RF]: t ~ U(0, 1)
        pair = (sc["sampler"], sc["steps"], sc["grid"]) if first else ("heun", 18, "uniform_t")
        fewstep |= {"init_from_teacher": flow, "pair_sampler": pair[0], "pair_steps": pair[1],
                    "pair_grid": pair[2]}
        c["sample"] = {"sampler": "euler", "grid": "uniform_t_jumps", "steps": 1, "n": sc["n"]}
    c["fewstep"] = fewstep
    return c


def flow_straightness(run: Run, seed: int = 0) -> float:
    """Mean straightness S of the run's PF-ODE on the linear path's clock from t_max to t_min ([RF] S(Z);
    STRAIGHTNESS_N trajectories of RK4)."""
    path = LinearFlow()
    shape = tuple(run.meta["data_shape"])
    eps = Streams(seed, STRAIGHTNESS_N).randn((STRAIGHTNESS_N, *shape)).to(run.device)
    velocity = VelocityFromDenoiser(as_denoiser(run.cfg, run.module), path)
    ts = uniform_times(STRAIGHTNESS_STEPS, path.t_max, path.t_min)
    labels = torch.arange(STRAIGHTNESS_N, device=run.device) % run.cfg.model.num_classes \
        if run.cfg.model.num_classes else None
    cond = {} if labels is None else {"class_labels": labels}
    return float(straightness(velocity, eps * path.t_max, ts, **cond).mean())


def _rounds(opts: DistillOptions) -> int:
    check_positive(rounds=opts.rounds)  # why: 0 would read as "the default", a negative as no rounds
    if opts.method == "progressive":
        check_steps(opts.steps)
        rounds = opts.rounds or int(math.log2(opts.steps)) + 1
        if opts.steps % 2 ** (rounds - 1):
            raise UserError(f"progressive distillation halves the steps each round: {opts.steps} steps "
                            f"cannot be halved {rounds - 1} times (use a power of two for --steps)")
        return rounds
    if opts.method == "consistency" and opts.rounds not in (None, 1):
        raise UserError(f"consistency distillation takes one round, got --rounds {opts.rounds}")
    return opts.rounds or 1


def _check_out(out: Path, rounds: int, overwrite: bool) -> None:
    """UserError, before any training, when `out` cannot take the rounds: a file; a distill.json that
    distill did not write; an earlier distillation (its distill.json or a trained round) without
    `overwrite`; a round directory `rundir.plan_start` refuses (files diffspace did not write)."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a folder for the rounds")
    record = out / "distill.json"
    if record.exists():
        try:
            data = json.loads(record.read_text())
        except (OSError, UnicodeDecodeError, ValueError):
            data = None
        if not (isinstance(data, dict) and set(data) == {"method", "rounds"}):
            raise UserError(f"{record} was not written by diffspace distill; move it or choose another --out")
    round_dirs = [out / f"round_{k}" for k in range(1, rounds + 1)]
    trained = [d.name for d in round_dirs if (d / rundir.CHECKPOINT).is_file()]
    if (record.exists() or trained) and not overwrite:
        shown = ", ".join((["distill.json"] if record.exists() else []) + trained)
        raise UserError(f"--out {out} holds an earlier distillation ({shown}); --overwrite replaces it, or "
                        "choose another --out")
    for d in round_dirs:
        rundir.plan_start(d, resume=False, overwrite=overwrite)


def distill(teacher: str | Path, opts: DistillOptions, device: str = "auto",
            progress: bool = False) -> list[Run]:
    """Train the rounds of `opts.method` from the continuous run `teacher`; returns the students (EMA
    weights). UserError (one line), before any training, for another kind of run, an unknown method, a
    config the method cannot use (e.g. a stochastic sampler for reflow pairs), rounds < 1 or an `out`
    that cannot take the rounds (`_check_out`)."""
    if opts.method not in METHODS:
        raise UserError(f"--method must be one of {', '.join(METHODS)}, got {opts.method!r}")
    rounds = _rounds(opts)
    current = api.load_run(teacher, device="cpu")
    if current.task != "continuous":
        raise UserError(f"distill needs a continuous run as teacher; {teacher} is a {current.task} run")
    out = Path(opts.out) if opts.out else current.dir.parent / f"{current.dir.name}-{opts.method}"
    _check_out(out, rounds, opts.overwrite)
    summary = [{"round": 0, "run": str(current.dir)}]
    if opts.method == "reflow":
        summary[0]["straightness"] = flow_straightness(current)
    students, steps = [], opts.steps
    for k in range(1, rounds + 1):
        cfg = apply_overrides(_student(current, opts.method, out / f"round_{k}", steps, k == 1),
                              list(opts.overrides))
        student = api.train(cfg, overwrite=opts.overwrite, device=device, progress=progress)
        images = student.cfg.images
        metrics = api.evaluate(student, EvalOptions(featurenet=opts.featurenet if images else None))
        record = {"round": k, "run": str(student.dir), "sampler": student.cfg.sample.sampler,
                  "steps": student.cfg.sample.steps, "train_steps": student.step,
                  "train_seconds": student.meta["elapsed"]}
        if opts.method == "reflow":
            record["straightness"] = flow_straightness(student)
            metrics |= {"straightness": record["straightness"],
                        "straightness_teacher": summary[-1]["straightness"], "straightness_n": STRAIGHTNESS_N}
            write_text(student.dir / "metrics.json", json.dumps(metrics, indent=2) + "\n")
        summary.append(record | {key: metrics[key] for key in SUMMARY if key in metrics})
        text = json.dumps({"method": opts.method, "rounds": summary}, indent=1)
        write_text(out / "distill.json", text + "\n")
        students.append(student)
        current, steps = student, steps // 2
    return students
