"""The [fewstep] section of a continuous run and its checks against [model], [loss] and [sample]: flow maps
trained from scratch (MeanFlow, shortcut), consistency training and distillation, progressive distillation
and reflow (docs/fewstep.md). runs/fewstep.py builds the training batches and losses from it.

References: [MEANFLOW] arXiv 2505.13447v1, [SHORTCUT] 2410.12557v3, [CM] 2303.01469v2, [ICT] 2310.14189v1,
[PD] 2202.00512v2, [RF] 2209.03003v1.

Which objective trains which parameterization:

| loss.objective | model.parameterization | fewstep.teacher |
|---|---|---|
| meanflow, shortcut | average_velocity (a net with second_cond) | none |
| consistency | consistency (path edm) | none: consistency training; a run: distillation |
| progressive | any Denoiser reading (edm, x0, eps, v, score, velocity) | a run (required) |
| flow | velocity | a run: reflow, flow matching on its (noise, sample) pairs (path linear) |
"""

from dataclasses import dataclass

from diffspace.config import choice
from diffspace.losses import T_PROPOSALS
from diffspace.samplers.grids import GRIDS
from diffspace.samplers.registry import SAMPLERS
from diffspace.types import UserError

FEWSTEP_OBJECTIVES = ("meanflow", "shortcut", "consistency", "progressive")
JUMP_GRIDS = ("karras_jumps", "uniform_t_jumps")  # n levels of the 2n-step grid are every other level
TRAINED_BY = {"average_velocity": ("meanflow", "shortcut"), "consistency": ("consistency",)}
TEACHER_OBJECTIVES = ("progressive", "consistency", "flow")


@dataclass
class FewStepConfig:
    teacher: str = ""  # a trained continuous run: progressive / consistency distillation, reflow (see above)
    init_from_teacher: bool = False  # start from the teacher's network weights (the same network)
    # meanflow ([MEANFLOW] Sec. 4.3): (t, r) two logit-normal draws, r = t on a fraction 1 - ratio
    ratio: float = 0.25  # Fig. 4a's best
    t_mean: float = -0.4
    t_std: float = 1.0
    adaptive_p: float = 0.0  # loss weight 1 / (loss + c)^p; 0 = plain L2 (p = 1 biased 2-D data, docs)
    adaptive_c: float = 1e-3
    # shortcut ([SHORTCUT] Sec. 3)
    max_steps: int = 128  # smallest jump 1 / max_steps (a power of two)
    fraction: float = 0.25  # rows trained on self-consistency (the others on flow matching)
    # consistency ([CM], [ICT]): Karras levels over the path's sampling range
    levels: int = 0  # N levels; 0 = [ICT]'s curriculum N(k) from s0 + 1 to s1 + 1 (training only)
    s0: int = 10
    s1: int = 1280
    p_mean: float = -1.1  # [ICT] Sec. 3.5: log-normal proposal of the level pairs
    p_std: float = 2.0
    distance: str = choice("pseudo_huber", "pseudo_huber", "l2")  # [ICT] Sec. 3.3 / [CM]
    teacher_step: str = choice("heun", "heun", "euler")  # distillation: the teacher's ODE step ([CM]: Heun)
    # consistency, shortcut: the target network, the model under stop-gradient ([ICT] Sec. 3.2) or the
    # run's EMA ([CM] theta^-, its rate set by train.ema_halflife_steps / ema_decay)
    target: str = choice("model", "model", "ema")
    # reflow ([RF]): (noise, sample) pairs from the teacher's deterministic sampler
    pairs: int = 20_000
    pair_sampler: str = "heun"
    pair_steps: int = 18
    pair_grid: str = "karras"


def _second_cond(model) -> bool:
    return getattr(model, "mlp" if model.net == "plain_mlp" else model.net).second_cond


def check_fewstep(src: str, model, loss, sample, fs: FewStepConfig) -> None:
    """UserError (one line, naming the keys) for a [fewstep] section that contradicts [model], [loss] or
    [sample], or a value out of its range."""
    p, obj = model.parameterization, loss.objective
    for param, objectives in TRAINED_BY.items():
        if (p == param) != (obj in objectives):
            want = f"model.parameterization = {param!r}" if obj in objectives else \
                f"loss.objective in {objectives}"
            raise UserError(f"{src}: loss.objective = {obj!r} with model.parameterization = {p!r}: "
                            f"set {want}")
    if (p == "average_velocity") != _second_cond(model):
        raise UserError(f"{src}: [model.{model.net}] second_cond must be true exactly for model."
                        f"parameterization = 'average_velocity' (a two-time map), got {_second_cond(model)}")
    if p == "consistency" and model.path != "edm":
        raise UserError(f"{src}: model.parameterization = 'consistency' lives in EDM sigma ([CM] levels "
                        f"0.002..80): set model.path = 'edm', got {model.path!r}")
    _check_teacher(src, model, loss, sample, fs)
    for key, value, ok, what in (
            ("ratio", fs.ratio, 0 <= fs.ratio <= 1, "in [0, 1]"),
            ("fraction", fs.fraction, 0 <= fs.fraction <= 1, "in [0, 1]"),
            ("t_std", fs.t_std, fs.t_std > 0, "positive"), ("p_std", fs.p_std, fs.p_std > 0, "positive"),
            ("adaptive_p", fs.adaptive_p, fs.adaptive_p >= 0, ">= 0"),
            ("adaptive_c", fs.adaptive_c, fs.adaptive_c > 0, "positive"),
            ("levels", fs.levels, fs.levels == 0 or fs.levels >= 2, "0 (the curriculum) or >= 2"),
            ("s0", fs.s0, 1 <= fs.s0 <= fs.s1, "in [1, fewstep.s1]"),
            ("max_steps", fs.max_steps, fs.max_steps >= 2 and fs.max_steps & (fs.max_steps - 1) == 0,
             "a power of two >= 2"),
            ("pairs", fs.pairs, fs.pairs > 0, "positive"), ("pair_steps", fs.pair_steps, fs.pair_steps > 0,
                                                            "positive")):
        if not ok:
            raise UserError(f"{src}: fewstep.{key} must be {what}, got {value!r}")
    if fs.target == "ema" and obj not in ("consistency", "shortcut"):
        raise UserError(f"{src}: fewstep.target = 'ema' is for loss.objective consistency or shortcut, "
                        f"got {obj!r}")


def _check_teacher(src: str, model, loss, sample, fs: FewStepConfig) -> None:
    obj = loss.objective
    if fs.teacher and obj not in TEACHER_OBJECTIVES:
        raise UserError(f"{src}: fewstep.teacher is read by loss.objective {', '.join(TEACHER_OBJECTIVES)}; "
                        f"loss.objective = {obj!r} trains without one")
    if fs.init_from_teacher and not fs.teacher:
        raise UserError(f"{src}: fewstep.init_from_teacher needs fewstep.teacher")
    if obj == "progressive":
        if not fs.teacher:
            raise UserError(f"{src}: loss.objective = 'progressive' distills a teacher: set fewstep.teacher")
        if sample.grid not in JUMP_GRIDS:
            raise UserError(f"{src}: progressive distillation samples on every other level of the teacher's "
                            f"grid: sample.grid must be one of {', '.join(JUMP_GRIDS)}, got {sample.grid!r}")
    if obj == "consistency" and fs.teacher and fs.levels < 2:
        raise UserError(f"{src}: consistency distillation takes a fixed number of levels: set fewstep.levels "
                        ">= 2 (18 in [CM])")
    if obj == "flow" and fs.teacher:
        if model.path != "linear":
            raise UserError(f"{src}: reflow trains a rectified flow: set model.path = 'linear', got "
                            f"{model.path!r}")
        if fs.pair_sampler not in SAMPLERS or SAMPLERS[fs.pair_sampler].stochastic:
            deterministic = ", ".join(n for n, s in SAMPLERS.items() if not s.stochastic)
            raise UserError(f"{src}: fewstep.pair_sampler = {fs.pair_sampler!r}: reflow pairs need a "
                            f"deterministic sampler (the teacher's ODE map), one of {deterministic}")
        if loss.proposal not in T_PROPOSALS:
            raise UserError(f"{src}: reflow draws t: loss.proposal must be one of {', '.join(T_PROPOSALS)}, "
                            f"got {loss.proposal!r}")
        if fs.pair_grid not in GRIDS:
            raise UserError(f"{src}: fewstep.pair_grid = {fs.pair_grid!r} is not one of {', '.join(GRIDS)}")
