"""Training a few-step continuous run ([fewstep], runs/fewstep_config.py) in the one training loop: the batch
draws and per-example losses of MeanFlow, shortcut models, consistency training and distillation,
progressive distillation and reflow, with a teacher run where the objective has one.

References: [MEANFLOW] arXiv 2505.13447v1, [SHORTCUT] 2410.12557v3, [CM] 2303.01469v2, [ICT] 2310.14189v1,
[PD] 2202.00512v2, [RF] 2209.03003v1.

Every draw lives in the batch (noise, times, pair uniforms, student step indices) and iCT's discretization
curriculum N(k) is a `TrainSetup.schedule` value, so a few-step run is reproducible and resumes exactly
like any other. A target network that is the EMA of the weights ([CM] theta^-, `fewstep.target = "ema"`)
is the Trainer's own EMA, handed to the loss by `TrainSetup.bind_ema`. The teacher (a loaded continuous
run, EMA weights, frozen) is read through its Denoiser on its own path: any path, any parameterization.
Reflow's (noise, sample) pairs are drawn from the teacher when the run is built: sample i from noise
stream i of seed run.seed + 1 (rng.Streams), so they are the same at every (re)start.
"""

from collections.abc import Callable
from functools import partial
from typing import NamedTuple

import torch
from torch import Tensor, nn

from diffspace.families.consistency import (
    consistency_distillation_loss,
    consistency_training_loss,
    ict_levels,
    ict_num_levels,
    ict_pair_probs,
    pair_index,
    pseudo_huber,
    squared_l2,
)
from diffspace.families.distill import progressive_distillation_loss
from diffspace.losses import T_PROPOSALS, flow_matching_loss
from diffspace.losses.maps import (
    adaptive_weight,
    draw_meanflow_times,
    draw_shortcut_times,
    meanflow_loss,
    shortcut_loss,
)
from diffspace.losses.weighting import v_weight
from diffspace.paths import GaussianPath
from diffspace.rng import Streams
from diffspace.runs.continuous import (
    ContinuousConfig,
    as_denoiser,
    build_module,
    build_path,
    load_data,
    scaling,
    to_model_units,
)
from diffspace.runs.fewstep_config import FEWSTEP_OBJECTIVES
from diffspace.runs.options import Run
from diffspace.runs.sampling import generate, run_sigmas, sampler_fn
from diffspace.samplers.grids import GRIDS, sampling_range
from diffspace.samplers.ode import euler_step, heun_step
from diffspace.train.checkpoint import load_weights
from diffspace.train.loop import TrainSetup
from diffspace.types import UserError

Batch = dict[str, Tensor]
DISTANCES = {"pseudo_huber": pseudo_huber, "l2": squared_l2}
TEACHER_STEPS = {"heun": partial(heun_step, want_x0=False), "euler": partial(euler_step, want_x0=False)}


class Objective(NamedTuple):
    """A few-step objective: draws(g, n) -> the batch's noise and times; loss(model, batch, cond) -> (B,)."""

    draws: Callable[[torch.Generator, int], Batch]
    loss: Callable[[nn.Module, Batch, dict], Tensor]
    schedule: Callable[[int], dict[str, float]] | None = None


def is_fewstep(cfg: ContinuousConfig) -> bool:
    """Whether `build_setup` here (not the plain continuous one) trains this config."""
    return cfg.loss.objective in FEWSTEP_OBJECTIVES or bool(cfg.fewstep.teacher)


def network(module: nn.Module) -> nn.Module:
    """The network inside a parameterization wrapper (the outermost submodule called `net`)."""
    return next(m for name, m in module.named_modules() if name.rsplit(".", 1)[-1] == "net")


def _noise(shape: tuple[int, ...]) -> Callable[[torch.Generator, int], Tensor]:
    return lambda g, n: torch.randn((n, *shape), generator=g)


def _meanflow(cfg: ContinuousConfig, path: GaussianPath, shape, **_) -> Objective:
    fs, noise = cfg.fewstep, _noise(shape)

    def draws(g, n):
        t, r = draw_meanflow_times(n, g, fs.ratio, fs.t_mean, fs.t_std)  # [MEANFLOW] Sec. 4.3
        return {"eps": noise(g, n), "t": t, "r": r}

    def loss(model, b, cond):
        sq = meanflow_loss(model, b["x0"], b["eps"], b["t"], b["r"], path, **cond)
        return adaptive_weight(sq, fs.adaptive_p, fs.adaptive_c) * sq

    return Objective(draws, loss)


def _shortcut(cfg: ContinuousConfig, path: GaussianPath, shape, target, **_) -> Objective:
    fs, noise = cfg.fewstep, _noise(shape)

    def draws(g, n):
        t, r = draw_shortcut_times(n, g, fs.max_steps, fs.fraction)
        return {"eps": noise(g, n), "t": t, "r": r}

    def loss(model, b, cond):
        return shortcut_loss(model, b["x0"], b["eps"], b["t"], b["r"], path, target_map=target(), **cond)

    return Objective(draws, loss)


def _consistency(cfg: ContinuousConfig, path: GaussianPath, shape, target, teacher, **_) -> Objective:
    """Training ([ICT]: the curriculum N(k) unless fewstep.levels is set) or, with a teacher, distillation
    on fewstep.levels Karras levels over the run's sampling range ([CM])."""
    fs, noise = cfg.fewstep, _noise(shape)
    lo, hi = sampling_range(path)
    distance = DISTANCES[fs.distance]

    def draws(g, n):
        return {"eps": noise(g, n), "u": torch.rand(n, generator=g, dtype=torch.float64)}

    def loss(model, b, cond):
        n_levels = fs.levels or int(b["num_levels"][0])
        levels = ict_levels(n_levels, lo, hi)
        k = pair_index(b["u"], ict_pair_probs(levels, fs.p_mean, fs.p_std))  # [ICT] Sec. 3.5
        if teacher is None:
            return consistency_training_loss(model, b["x0"], b["eps"], k, levels, distance, target(), **cond)
        step = TEACHER_STEPS[fs.teacher_step]
        return consistency_distillation_loss(model, teacher, step, b["x0"], b["eps"], k, levels, None,
                                             distance, target(), **cond)

    schedule = None
    if not fs.levels:  # [ICT] Sec. 3.4: N(k) doubles from s0 + 1 to s1 + 1 levels over the run
        schedule = lambda step: {"num_levels": float(ict_num_levels(step, cfg.train.steps, fs.s0, fs.s1))}
    return Objective(draws, loss, schedule)


def _progressive(cfg: ContinuousConfig, path: GaussianPath, shape, teacher, **_) -> Objective:
    """The student samples on sample.steps levels of sample.grid, every other level of the teacher's
    2 x sample.steps grid ([PD] Alg. 2); weight SNR + 1 on the x0 error ([PD] Sec. 4)."""
    n_student, noise = cfg.sample.steps, _noise(shape)
    sigmas = GRIDS[cfg.sample.grid](2 * n_student, *sampling_range(path), path=path)

    def draws(g, n):
        return {"eps": noise(g, n), "k": torch.randint(n_student, (n,), generator=g)}

    def loss(model, b, cond):
        k = b["k"]
        weight = v_weight(sigmas.to(k.device)[2 * k])
        return progressive_distillation_loss(model, teacher, b["x0"], b["eps"], k, sigmas, weight, **cond)

    return Objective(draws, loss)


def _reflow(cfg: ContinuousConfig, path: GaussianPath, shape, **_) -> Objective:
    """Flow matching on the teacher's pairs: x0 and eps come with the batch's rows ([RF] "reflow")."""
    lo = cfg.loss

    def draws(g, n):
        return {"t": T_PROPOSALS[lo.proposal](n, g, path.t_min, path.t_max)}

    def loss(model, b, cond):
        return flow_matching_loss(model, b["x0"], b["t"], path, eps=b["eps"], **cond)

    return Objective(draws, loss)


OBJECTIVES = {"meanflow": _meanflow, "shortcut": _shortcut, "consistency": _consistency,
              "progressive": _progressive, "flow": _reflow}


def reflow_pairs(cfg: ContinuousConfig, teacher: Run, shape: tuple[int, ...], labels: Tensor | None,
                 device: torch.device) -> tuple[Tensor, Tensor]:
    """(eps, x0), each (fewstep.pairs, *shape): x0 = the teacher's deterministic sampler (fewstep.pair_*)
    from eps * sigma_max on its own grid, sample i from stream i of seed run.seed + 1."""
    fs, n, seed = cfg.fewstep, cfg.fewstep.pairs, cfg.run.seed + 1
    sigmas = run_sigmas(teacher, fs.pair_grid, fs.pair_steps, fs.pair_sampler)
    cond = None if labels is None else {"class_labels": labels}
    x0 = generate(as_denoiser(teacher.cfg, teacher.module), shape, n, sigmas, sampler_fn(fs.pair_sampler),
                  seed, device, cond)
    eps = Streams(seed, n).randn((n, *shape), torch.float64)  # the draw sample_chunk started from
    return eps.float(), x0


def _check_teacher(cfg: ContinuousConfig, teacher: Run, shape: tuple[int, ...], scale: dict) -> None:
    fits = (list(teacher.meta["data_shape"]) == list(shape), teacher.cfg.data.name == cfg.data.name,
            {k: teacher.meta.get(k) for k in scale} == scale,
            teacher.cfg.model.num_classes == cfg.model.num_classes)
    if not all(fits):
        t = teacher.cfg
        raise UserError(f"fewstep.teacher {cfg.fewstep.teacher}: trained on {t.data.name} "
                        f"{tuple(teacher.meta['data_shape'])} with {t.model.num_classes} classes; this run "
                        f"has {cfg.data.name} {shape} with {cfg.model.num_classes}")


def build_setup(cfg: ContinuousConfig, device: torch.device, teacher: Run | None) -> tuple[TrainSetup, dict]:
    """The TrainSetup of a few-step config (`is_fewstep`) and its checkpoint metadata, as
    continuous.build_setup; `teacher` is the loaded fewstep.teacher run (None without one)."""
    data = load_data(cfg)
    scale = scaling(cfg, data["x_train"])
    shape = tuple(data["x_train"].shape[1:])
    module = build_module(cfg, shape).to(device)
    path, m, fs = build_path(cfg), cfg.model, cfg.fewstep
    source = {"x0": to_model_units(scale, data["x_train"])}
    if m.num_classes:
        source["class_labels"] = data["y_train"]
    teacher_den = None
    if teacher is not None:
        _check_teacher(cfg, teacher, shape, scale)
        if fs.init_from_teacher:  # the student starts as the teacher's network ([PD], [CM])
            load_weights(network(module), network(teacher.module).state_dict(), fs.teacher)
        teacher.module.requires_grad_(False)
        teacher_den = as_denoiser(teacher.cfg, teacher.module)
        if cfg.loss.objective == "flow":
            labels = torch.arange(fs.pairs) % m.num_classes if m.num_classes else None
            source["eps"], source["x0"] = reflow_pairs(cfg, teacher, shape, labels, device)
            if labels is not None:  # the class each pair was drawn for
                source["class_labels"] = labels
    source = {k: v.to(device) for k, v in source.items()}
    ema: dict[str, nn.Module] = {}
    target = (lambda: ema["module"]) if fs.target == "ema" else (lambda: None)
    obj = OBJECTIVES[cfg.loss.objective](cfg, path, shape, target=target, teacher=teacher_den)

    def batch(g: torch.Generator, n: int) -> Batch:
        idx = torch.randint(len(source["x0"]), (n,), generator=g).to(device)
        out = {k: v[idx] for k, v in source.items()}
        out |= {k: v.to(device) for k, v in obj.draws(g, n).items()}
        if m.num_classes:
            drop = torch.rand(n, generator=g).to(device) < m.p_uncond  # [CFG] label dropout
            out["class_labels"] = torch.where(drop, m.num_classes, out["class_labels"])
        return out

    def loss(model: nn.Module, b: Batch) -> Tensor:
        return obj.loss(model, b, {"class_labels": b["class_labels"]} if m.num_classes else {})

    bind = (lambda module_: ema.update(module=module_)) if fs.target == "ema" else None
    setup = TrainSetup(module, batch, loss, schedule=obj.schedule, bind_ema=bind)
    return setup, {"data_shape": list(shape), **scale}

