"""diffusers models in and out of diffspace (diffusers is an optional extra, imported where used).

In: `load_diffusers(dir)` turns a local diffusers folder into a Run of task "diffusers" that every
diffspace sampler and grid can sample. The folder is a pipeline (model_index.json, unet/, scheduler/) or
a model folder (config.json and weights, with scheduler_config.json beside them) holding a `UNet2DModel`
(or a diffspace export, nets/diffusers_model.py) and a scheduler over a DDPM table. The Run's Denoiser is
`NetDenoiser(model, path, prediction)` with the exact float32 table diffusers builds from the scheduler
config (`ddpm_from_scheduler_config`) and the scheduler's prediction_type (epsilon -> eps,
v_prediction -> v, sample -> x0); its [sample] defaults follow the scheduler (its method, its timestep
spacing, 50 steps). Such a Run has no data set and no training state: `evaluate`, `train`, `--resume` and
`optimize-grid` refuse it with one line. diffspace's samplers do not clip x0 (`clip_sample`,
`thresholding`) nor shift leading timesteps (`steps_offset`); a config asking for them is loaded with a
warning that says so.

Out: `export_diffusers(run, dir)` writes a diffspace UNet or DiT run as a folder that diffusers loads:
unet/ (config.json, diffusion_pytorch_model.safetensors: the net as `DiffspaceNet`, a diffusers
ModelMixin around diffspace's own module code, since no UNet2DModel reproduces diffspace's UNet) and
scheduler/ with the scheduler of the run's path and prediction:

    ddpm / ddpm_zsnr, eps | v | x0   DDIMScheduler (the run's table, prediction_type); model_index.json
                                     names a DDIMPipeline, so DiffusionPipeline.from_pretrained(dir) runs it
    EDM preconditioning (any path)   EDMEulerScheduler (sigma_data, the run's sigma range, Karras rho 7)
    linear path, velocity            FlowMatchEulerDiscreteScheduler (shift 1: timestep = 1000 t)

A run of the default `ddpm` path was trained on the float64 table; diffusers rebuilds it in float32 (up
to 8e-5 apart in log sigma, paths/ddpm.py). Other paths (vp, cosine, subvp, ve with raw predictions) have
no diffusers scheduler and are refused.
"""

import dataclasses
import logging
import os
import shutil
from pathlib import Path

import torch
from torch import Tensor, nn

from diffspace.config import build, to_dict
from diffspace.files import check_new_files, make_folders, new_temp, plain_mode, read_json, remove_folders
from diffspace.nets.diffusers_model import EXTRA, diffusers_net_class
from diffspace.param import NetDenoiser
from diffspace.paths.ddpm import CONFIG_DEFAULTS
from diffspace.runs.continuous import TABLE_GRIDS, ContinuousConfig, build_path
from diffspace.runs.continuous_task import CONTINUOUS
from diffspace.runs.options import Run, Task
from diffspace.runs.sampling import sample
from diffspace.samplers.grids import sampling_range
from diffspace.types import UserError
from diffspace.utils import resolve_device

log = logging.getLogger("diffspace")

# diffusers schedulers over a DDPM table -> the diffspace sampler of the same method (a run's default)
SCHEDULERS = {"DDPMScheduler": "ddpm", "DDIMScheduler": "ddim", "EulerDiscreteScheduler": "euler",
              "EulerAncestralDiscreteScheduler": "euler_ancestral", "HeunDiscreteScheduler": "heun",
              "DPMSolverMultistepScheduler": "dpmpp_2m", "UniPCMultistepScheduler": "unipc",
              "DEISMultistepScheduler": "deis", "PNDMScheduler": "dpmpp_2m",
              "LMSDiscreteScheduler": "dpmpp_2m"}
PREDICTIONS = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}  # diffusers name -> diffspace name
DEFAULT_STEPS, DEFAULT_N = 50, 16  # diffusers' pipelines default to 50 inference steps


def _diffusers():
    try:
        import diffusers
    except ImportError:
        raise UserError(EXTRA) from None
    return diffusers


def is_diffusers_dir(path: str | Path) -> bool:
    """Whether `path` is a diffusers folder (model_index.json, or a model's config.json) rather than a run."""
    p = Path(path)
    return p.is_dir() and ((p / "model_index.json").is_file() or (p / "config.json").is_file())


def _locate(root: Path) -> tuple[Path, Path]:
    """(model folder, scheduler_config.json) of a pipeline folder or a model folder."""
    if (root / "model_index.json").is_file():
        index = read_json(root / "model_index.json")
        names = [c for c in ("unet", "transformer") if c in index]
        if not names:
            raise UserError(f"{root / 'model_index.json'} names no 'unet' or 'transformer' component")
        model_dir, scheduler = root / names[0], root / "scheduler" / "scheduler_config.json"
    else:
        model_dir, scheduler = root, root / "scheduler_config.json"
    if not scheduler.is_file():
        raise UserError(f"{root}: no scheduler config at {scheduler} (diffspace needs the training table)")
    return model_dir, scheduler


class DiffusersNet(nn.Module):
    """A diffusers model called as a diffspace network: net(x, noise_cond (B,) or (1,), class_labels) ->
    model(x, timestep=noise_cond).sample (diffusers' timestep is the DDPM table's, as diffspace's is)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: Tensor, noise_cond: Tensor, class_labels: Tensor | None = None) -> Tensor:
        return self.model(x, noise_cond, class_labels=class_labels).sample


def _load_model(model_dir: Path) -> tuple[nn.Module, dict]:
    """The diffusers model in model_dir (a UNet2DModel or a DiffspaceNet) and its config."""
    config = read_json(model_dir / "config.json")
    name = config.get("_class_name")
    diffusers = _diffusers()
    classes = {"UNet2DModel": diffusers.UNet2DModel, "DiffspaceNet": diffusers_net_class()}
    if name not in classes:
        raise UserError(f"{model_dir}: model class {name!r} is not supported; diffspace loads "
                        f"{', '.join(classes)}")
    if config.get("num_class_embeds") or config.get("class_embed_type"):
        raise UserError(f"{model_dir}: a class-conditional UNet2DModel has no null class for diffspace's "
                        "guidance; only unconditional UNet2DModels are supported")
    if config.get("out_channels", config.get("in_channels")) != config.get("in_channels"):
        raise UserError(f"{model_dir}: out_channels = {config.get('out_channels')} differs from "
                        f"in_channels = {config.get('in_channels')} (a learned variance is not supported)")
    try:
        return classes[name].from_pretrained(model_dir).eval(), config
    except (OSError, ValueError, RuntimeError, TypeError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UserError(f"cannot load the diffusers model in {model_dir}: {first}") from None


def _sample_defaults(scheduler: dict, source: Path) -> dict:
    """The [sample] section of a diffusers Run: the scheduler's method and spacing; warns about what the
    scheduler config asks that diffspace's samplers do not do."""
    grid = "karras" if scheduler.get("use_karras_sigmas") else scheduler.get("timestep_spacing", "leading")
    ignored = [k for k in ("clip_sample", "thresholding") if scheduler.get(k)]
    if scheduler.get("steps_offset") and grid == "leading":
        ignored.append(f"steps_offset = {scheduler['steps_offset']}")
    if ignored:
        log.warning("%s asks for %s, which diffspace's samplers do not apply", source, ", ".join(ignored))
    return {"sampler": SCHEDULERS[scheduler["_class_name"]], "steps": DEFAULT_STEPS, "n": DEFAULT_N,
            "grid": grid if grid in (*TABLE_GRIDS, "karras") else "leading"}


def load_diffusers(path: str | Path, device: str | torch.device = "cpu") -> Run:
    """A Run of task "diffusers" from a local diffusers folder (see the module docstring). Raises
    UserError naming the file and what is missing or unsupported; UserError naming the extra when diffusers
    is not installed."""
    root = Path(path)
    model_dir, scheduler_file = _locate(root)
    scheduler = read_json(scheduler_file)
    if scheduler.get("_class_name") not in SCHEDULERS:
        raise UserError(f"{scheduler_file}: scheduler {scheduler.get('_class_name')!r} is not over a DDPM "
                        f"table; diffspace loads {', '.join(SCHEDULERS)}")
    kind = scheduler.get("prediction_type", "epsilon")
    if kind not in PREDICTIONS:
        raise UserError(f"{scheduler_file}: prediction_type {kind!r} is not one of {', '.join(PREDICTIONS)}")
    model, config = _load_model(model_dir)
    size = config.get("sample_size")
    shape = [config["in_channels"], *([size, size] if isinstance(size, int) else size)]
    model_record = {"net": config.get("architecture", "unet"), "num_classes": config.get("num_classes", 0),
                    "path": "ddpm_zsnr" if scheduler.get("rescale_betas_zero_snr") else "ddpm",
                    "scheduler_config": str(scheduler_file.resolve()), "parameterization": PREDICTIONS[kind]}
    record = {"task": "continuous", "run": {"dir": str(root)}, "data": {"name": "npz"}, "model": model_record,
              "sample": _sample_defaults(scheduler, scheduler_file)}
    cfg = build(ContinuousConfig, record, str(scheduler_file))
    module = NetDenoiser(DiffusersNet(model), build_path(cfg), cfg.model.parameterization)
    dev = resolve_device(device) if isinstance(device, str) else device
    meta = {"step": 0, "elapsed": 0.0, "config": to_dict(cfg), "data_shape": shape, "weights": "diffusers",
            "diffusers": {"model": config["_class_name"], "scheduler": scheduler["_class_name"]}}
    return Run("diffusers", cfg, module.to(dev).eval(), root, 0, meta)


def _refuse_training(*_) -> None:
    raise UserError("a diffusers model cannot be trained or resumed by diffspace; sample it with "
                    "`diffspace sample DIR`")


def _refuse_evaluation(run: Run, _opts) -> dict:
    raise UserError(f"{run.dir} is a diffusers model with no data set to compare samples with; sample it "
                    f"with `diffspace sample {run.dir}` (evaluate needs a diffspace run)")


DIFFUSERS = Task("diffusers", ContinuousConfig, _refuse_training, _refuse_training, sample,
                 _refuse_evaluation, sample_options=CONTINUOUS.sample_options,
                 eval_options=CONTINUOUS.eval_options)


# ---- export ----------------------------------------------------------------------------------

def _scheduler(cfg: ContinuousConfig) -> tuple[str, dict, float]:
    """(diffusers scheduler class, its config, DiffspaceNet.timestep_scale) for a run's path and
    parameterization; UserError for a combination diffusers has no scheduler for."""
    m = cfg.model
    if m.parameterization == "edm":
        lo, hi = sampling_range(build_path(cfg))
        return "EDMEulerScheduler", {"sigma_min": lo, "sigma_max": hi, "sigma_data": m.sigma_data, "rho": 7.0,
                                     "sigma_schedule": "karras", "prediction_type": "epsilon"}, 1000.0
    if m.parameterization == "velocity" and m.path == "linear":
        return "FlowMatchEulerDiscreteScheduler", {"num_train_timesteps": 1000, "shift": 1.0}, 1.0
    names = {v: k for k, v in PREDICTIONS.items()}
    if m.path in ("ddpm", "ddpm_zsnr") and m.parameterization in names:
        table = CONFIG_DEFAULTS | {"rescale_betas_zero_snr": m.path == "ddpm_zsnr"}
        if m.scheduler_config:
            table = table | {k: v for k, v in read_json(Path(m.scheduler_config)).items() if k in table}
        spacing = cfg.sample.grid if cfg.sample.grid in TABLE_GRIDS else "trailing"
        return "DDIMScheduler", {**table, "prediction_type": names[m.parameterization], "steps_offset": 0,
                                 "clip_sample": False, "set_alpha_to_one": True,
                                 "timestep_spacing": spacing}, 1.0
    raise UserError(f"diffusers has no scheduler for model.path = {m.path!r} with model.parameterization = "
                    f"{m.parameterization!r}; export supports ddpm / ddpm_zsnr (eps, v, x0), edm "
                    "preconditioning, and the linear path with velocity")


def export_diffusers(run: Run, out: str | Path) -> Path:
    """Write a continuous UNet or DiT run (its module's weights, as loaded) as a diffusers folder `out`
    (see the module docstring); returns it. Raises UserError if `out` exists, for another kind of run,
    and naming the extra when diffusers is not installed. The folder appears whole or not at all."""
    cfg, out = run.cfg, Path(out)
    if run.task != "continuous" or cfg.model.net not in ("unet", "dit"):
        raise UserError(f"export to diffusers needs a continuous image run with model.net unet or dit; "
                        f"{run.dir} is a {run.task} run with model.net = {getattr(cfg.model, 'net', None)!r}")
    check_new_files(out)
    scheduler_name, scheduler_config, scale = _scheduler(cfg)
    diffusers = _diffusers()
    C, H, W = run.meta["data_shape"]
    model = diffusers_net_class()(architecture=cfg.model.net, in_channels=C, sample_size=H,
                                  net_config=dataclasses.asdict(getattr(cfg.model, cfg.model.net)),
                                  num_classes=cfg.model.num_classes, timestep_scale=scale)
    model.net.load_state_dict(run.module.net.state_dict())
    scheduler = getattr(diffusers, scheduler_name).from_config(scheduler_config)
    made = make_folders(out.parent)
    tmp = new_temp(out, folder=True)
    try:
        if scheduler_name == "DDIMScheduler":
            diffusers.DDIMPipeline(unet=model.eval(), scheduler=scheduler).save_pretrained(tmp)
        else:
            model.eval().save_pretrained(tmp / "unet")
            scheduler.save_pretrained(tmp / "scheduler")
        os.chmod(tmp, plain_mode(folder=True))
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # why: made by new_temp for this write, nobody else's
        remove_folders(made)
        raise
    return out
