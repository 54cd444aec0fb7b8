"""diffusers in and out (runs/diffusers_io.py, nets/diffusers_model.py), on small random models saved
locally.

In: a UNet2DModel folder loaded by diffspace has the scheduler's exact float32 table and prediction type,
and gives diffusers' own samples for the same table and noise to 1e-4 (DDIMPipeline; an Euler scheduler
loop against `runs.sample`, whose noise comes from diffspace's per-sample streams); every diffspace
sampler and grid runs on it. Out: an exported diffspace UNet / DiT run loads with diffusers' own loaders
and gives the same network output to 1e-5 and the same denoiser output (x0 or velocity) under diffusers'
schedulers; DDIMPipeline on the export samples what diffspace samples. Refusals are one line.
"""

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from diffspace import runs
from diffspace.cli.main import main
from diffspace.config import to_dict
from diffspace.rng import Streams
from diffspace.runs.continuous import MAP_SAMPLERS, build_module, build_path
from diffspace.runs.diffusers_io import load_diffusers
from diffspace.runs.options import Run
from diffspace.samplers.grids import GRIDS
from diffspace.samplers.registry import SAMPLERS
from diffspace.types import UserError

diffusers = pytest.importorskip("diffusers")
SHAPE = (3, 8, 8)


def tiny_unet(**extra):
    torch.manual_seed(0)  # diffusers initialises from the global generator
    return diffusers.UNet2DModel(
        sample_size=8, in_channels=3, out_channels=3, block_out_channels=(16, 32), layers_per_block=1,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=8, attention_head_dim=8, **extra).eval()


@pytest.fixture(scope="module")
def unet():
    return tiny_unet()


def ddim(prediction):
    return diffusers.DDIMScheduler(clip_sample=False, set_alpha_to_one=True, prediction_type=prediction)


@pytest.fixture(scope="module")
def folders(tmp_path_factory, unet):
    """A DDIM pipeline folder per prediction type, and a model folder with an Euler scheduler beside it."""
    root = tmp_path_factory.mktemp("diffusers")
    out = {}
    for prediction in ("epsilon", "v_prediction", "sample"):
        out[prediction] = root / prediction
        diffusers.DDIMPipeline(unet=unet, scheduler=ddim(prediction)).save_pretrained(out[prediction])
    for prediction in ("v_prediction", "sample"):
        out["euler-" + prediction] = root / f"euler-{prediction}"
        unet.save_pretrained(out["euler-" + prediction])
        diffusers.EulerDiscreteScheduler(prediction_type=prediction, timestep_spacing="trailing") \
            .save_pretrained(out["euler-" + prediction])
    return out


def test_loaded_run_has_the_schedulers_table_prediction_and_defaults(folders):
    run = runs.load_run(folders["v_prediction"])
    assert run.task == "diffusers" and run.meta["data_shape"] == list(SHAPE)
    table = ddim("v_prediction").alphas_cumprod.double()
    assert torch.equal(run.module.path.alphas_cumprod, table)  # float32 values, kept exactly
    assert run.module.prediction == "v"
    assert (run.cfg.sample.sampler, run.cfg.sample.grid) == ("ddim", "leading")
    euler = runs.load_run(folders["euler-sample"])
    assert euler.module.prediction == "x0"
    assert (euler.cfg.sample.sampler, euler.cfg.sample.grid) == ("euler", "trailing")


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction", "sample"])
def test_denoiser_equals_the_schedulers_x0(folders, unet, prediction):
    run, scheduler = runs.load_run(folders[prediction]), ddim(prediction)
    scheduler.set_timesteps(10)
    path = build_path(run.cfg)
    x_t = torch.randn(3, *SHAPE, generator=torch.Generator().manual_seed(1))
    for k in (999, 500, 10, 0):
        t = torch.tensor(k)
        with torch.no_grad():
            theirs = scheduler.step(unet(x_t, t).sample, t, x_t).pred_original_sample
            sigma = path.log_sigmas[k].exp()
            ours = run.module((x_t.double() * torch.sqrt(1 + sigma**2)).float(), sigma.float().expand(3))
        # why relative: at timestep 999 a random eps-net's x0 is ~600 (x_t / alpha), where float32 keeps ~1e-4
        assert (ours - theirs).abs().max() <= 1e-5 * max(1.0, float(theirs.abs().max())), k


def test_ddim_pipeline_samples_equal_diffspace(folders):
    pipe = diffusers.DDIMPipeline.from_pretrained(folders["sample"])
    pipe.set_progress_bar_config(disable=True)
    images = pipe(batch_size=4, generator=torch.Generator().manual_seed(0), num_inference_steps=10,
                  output_type="np").images  # (B, H, W, C) = (x0 / 2 + 1/2) clamped to [0, 1]
    theirs = torch.from_numpy(images).permute(0, 3, 1, 2)
    run = runs.load_run(folders["sample"])
    noise = torch.randn((4, *SHAPE), generator=torch.Generator().manual_seed(0))  # the pipeline's x_T
    sigmas = GRIDS["leading"](10, path=build_path(run.cfg))
    with torch.no_grad():  # x_T in VP space is x_T / alpha_T = x_T sqrt(1 + sigma_T^2) in sigma space
        ours = SAMPLERS["ddim"].fn(run.module, noise * math.sqrt(1 + float(sigmas[0]) ** 2), sigmas)
    assert ((theirs > 0) & (theirs < 1)).float().mean() > 0.9  # real samples, not clamped ones
    assert ((ours / 2 + 0.5).clamp(0, 1) - theirs).abs().max() < 1e-4


@pytest.mark.parametrize("prediction", ["sample", "v_prediction"])
def test_euler_scheduler_loop_equals_runs_sample(folders, unet, prediction):
    folder = folders["euler-" + prediction]
    ours = runs.sample(runs.load_run(folder), runs.SampleOptions(n=4, steps=10, seed=3))  # euler, trailing
    scheduler = diffusers.EulerDiscreteScheduler.from_pretrained(folder)
    scheduler.set_timesteps(10)
    x = (Streams(3, 4).randn((4, *SHAPE), torch.float64) * float(scheduler.sigmas[0])).float()  # our noise
    with torch.no_grad():
        for t in scheduler.timesteps:
            x = scheduler.step(unet(scheduler.scale_model_input(x, t), t).sample, t, x).prev_sample
    assert (x.abs() < 1).float().mean() > 0.5  # mostly inside the [-1, 1] that runs.sample clamps to
    assert (ours - x.clamp(-1, 1)).abs().max() < 1e-4


def test_every_sampler_and_grid_runs(folders):
    run = runs.load_run(folders["sample"])
    for sampler in SAMPLERS:  # rk45 at loose tolerances: a random net's PF-ODE takes it many steps
        options = {"rtol": 1e-2, "atol": 1e-2} if sampler == "rk45" else {}
        if sampler in MAP_SAMPLERS:  # few-step samplers need a map run
            with pytest.raises(UserError, match=f"sampler '{sampler}' needs a run with model"):
                runs.sample(run, runs.SampleOptions(n=2, sampler=sampler, steps=3))
            continue
        x = runs.sample(run, runs.SampleOptions(n=2, sampler=sampler, steps=3, sampler_options=options))
        assert x.shape == (2, *SHAPE) and torch.isfinite(x).all(), sampler
    for grid in GRIDS:
        x = runs.sample(run, runs.SampleOptions(n=2, sampler="dpmpp_2m", steps=3, grid=grid))
        assert x.shape == (2, *SHAPE) and torch.isfinite(x).all(), grid


def test_cli_samples_a_diffusers_folder(folders, tmp_path):
    out = tmp_path / "s.npz"
    assert main(["sample", str(folders["sample"]), "--sampler", "unipc", "--steps", "10", "--n", "4",
                 "--out", str(out)]) == 0
    x = torch.from_numpy(np.load(out)["samples"])
    options = runs.SampleOptions(n=4, sampler="unipc", steps=10)
    expected = runs.sample(runs.load_run(folders["sample"]), options)
    assert torch.equal(x, expected) and out.with_suffix(".png").is_file()


def one_line_error(capsys, *words):
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("diffspace: error:"), lines
    assert all(w in lines[0] for w in words), lines[0]


def test_what_a_diffusers_folder_cannot_do_is_refused(folders, tmp_path, capsys):
    folder = str(folders["sample"])
    before = sorted(p.name for p in folders["sample"].rglob("*"))
    for argv, words in ((["train", folder], ["diffusers model", "not train"]),
                        (["sample", folder], ["not a diffspace run directory", "--out"]),
                        (["train", folder, "--resume"], ["diffusers model", "not train"]),
                        (["eval", folder], ["not a diffspace run directory", "metrics.json"]),
                        (["optimize-grid", folder], ["continuous run"]),
                        (["sample", folder, "--class", "1", "--out", str(tmp_path / "s.npz")],
                         ["class-conditional"]),
                        (["export", folder, "--out", str(tmp_path / "w.safetensors")], ["already holds"])):
        assert main(argv) == 2, argv
        one_line_error(capsys, *words)
    assert sorted(p.name for p in folders["sample"].rglob("*")) == before  # nothing written into it
    edm = tmp_path / "edm"
    tiny_unet().save_pretrained(edm)
    diffusers.EDMEulerScheduler().save_pretrained(edm)
    with pytest.raises(UserError, match="not over a DDPM table"):
        load_diffusers(edm)
    (edm / "scheduler_config.json").unlink()
    with pytest.raises(UserError, match="no scheduler config"):
        load_diffusers(edm)
    labelled = tmp_path / "labelled"
    tiny_unet(num_class_embeds=3).save_pretrained(labelled)
    ddim("epsilon").save_pretrained(labelled)
    with pytest.raises(UserError, match="class-conditional"):
        load_diffusers(labelled)


def test_without_diffusers_one_line_names_the_extra(folders, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "diffusers", None)  # `import diffusers` now raises ImportError
    assert main(["sample", str(folders["sample"]), "--n", "2"]) == 2
    one_line_error(capsys, "pip install 'diffspace[diffusers]'")
    with pytest.raises(UserError, match=r"diffspace\[diffusers\]"):
        runs.export_diffusers(random_run("unet", "ddpm", "eps", tmp_path), tmp_path / "out")
    # and nothing else needs it: the package imports without diffusers
    code = "import sys; sys.modules['diffusers'] = None; import diffspace.runs, diffspace.cli.main"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0


# ---- export ----------------------------------------------------------------------------------

def random_run(net, path, parameterization, tmp_path, **sections) -> Run:
    """A continuous run of a small net on 3 x 8 x 8 images with random weights (no training needed)."""
    record = {"data": {"name": "digits"}, **sections,
              "model": {"net": net, "path": path, "parameterization": parameterization,
                        "unet": {"channels": 16, "num_res_blocks": 1, "heads": 2, "dropout": 0.0},
                        "dit": {"patch": 2, "hidden": 32, "depth": 2, "heads": 2}}}
    cfg = runs.load_config(record)
    module = build_module(cfg, SHAPE)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # zero-initialised output layers would make the net constant
        for p in module.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g))
    return Run("continuous", cfg, module.eval(), tmp_path, 7,
               {"step": 7, "data_shape": list(SHAPE), "config": to_dict(cfg), "weights": "ema"})


EXPORTS = [("unet", "ddpm", "eps", {}), ("dit", "ddpm", "v", {}), ("unet", "ddpm", "x0", {}),
           ("unet", "edm", "edm", {}), ("dit", "linear", "velocity", {"loss": {"objective": "flow"}})]


@pytest.mark.parametrize("net,path,param,sections", EXPORTS, ids=[f"{e[0]}-{e[1]}-{e[2]}" for e in EXPORTS])
def test_export_gives_the_same_denoiser_under_diffusers(tmp_path, net, path, param, sections):
    from diffspace.nets.diffusers_model import DiffspaceNet

    run = random_run(net, path, param, tmp_path, **sections)
    out = runs.export_diffusers(run, tmp_path / "export")
    model = DiffspaceNet.from_pretrained(out / "unet")  # diffusers' own loader
    scheduler_cls = json.loads((out / "scheduler" / "scheduler_config.json").read_text())["_class_name"]
    scheduler = getattr(diffusers, scheduler_cls).from_pretrained(out / "scheduler")
    scheduler.set_timesteps(10)
    x = torch.randn(3, *SHAPE, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        for i, t in enumerate(scheduler.timesteps):
            sigma = scheduler.sigmas[i] if hasattr(scheduler, "sigmas") else None
            if scheduler_cls == "DDIMScheduler":  # diffusers' x0 from the network at timestep t
                out_net = model(x, t).sample
                theirs = scheduler.step(out_net, t, x).pred_original_sample
                sigma = build_path(run.cfg).log_sigmas[int(t)].exp()
                ours = run.module((x.double() * torch.sqrt(1 + sigma**2)).float(), sigma.float().expand(3))
                assert (out_net - run.module.net(x, t.float().reshape(1))).abs().max() < 1e-5
                # why relative: float32 cancellation in x0 = (x_t - sigma_t eps) / alpha_t at high noise
                assert (ours - theirs).abs().max() <= 1e-5 * max(1.0, float(theirs.abs().max())), int(t)
            elif scheduler_cls == "EDMEulerScheduler":  # diffusers' preconditioned denoiser D(x; sigma)
                x_sigma = x * sigma
                theirs = scheduler.precondition_outputs(
                    x_sigma, model(scheduler.precondition_inputs(x_sigma, sigma), t).sample, sigma)
                assert (run.module(x_sigma, sigma.float().expand(3)) - theirs).abs().max() < 1e-5
            else:  # flow matching: the velocity at x_t, t = sigma (timestep 1000 t)
                assert (run.module(x, sigma.float().expand(3)) - model(x, t).sample).abs().max() < 1e-5


def test_ddim_pipeline_on_an_export_samples_what_diffspace_samples(tmp_path):
    run = random_run("unet", "ddpm", "x0", tmp_path, sample={"grid": "trailing"})
    out = runs.export_diffusers(run, tmp_path / "export")
    pipe = diffusers.DiffusionPipeline.from_pretrained(out)  # model_index.json names DDIMPipeline
    pipe.set_progress_bar_config(disable=True)
    theirs = torch.from_numpy(pipe(batch_size=4, generator=torch.Generator().manual_seed(0),
                                   num_inference_steps=10, output_type="np").images).permute(0, 3, 1, 2)
    noise = torch.randn((4, *SHAPE), generator=torch.Generator().manual_seed(0))
    sigmas = GRIDS["trailing"](10, path=build_path(run.cfg))
    with torch.no_grad():
        ours = SAMPLERS["ddim"].fn(run.module, noise * math.sqrt(1 + float(sigmas[0]) ** 2), sigmas)
    assert ((theirs > 0) & (theirs < 1)).float().mean() > 0.5
    assert ((ours / 2 + 0.5).clamp(0, 1) - theirs).abs().max() < 1e-4
    back = runs.load_run(out)  # and diffspace reads its own export back as a diffusers folder
    x, level = torch.randn(2, *SHAPE), torch.tensor([3.0])
    assert (back.module.net.model.net(x, level) - run.module.net(x, level)).abs().max() < 1e-5


def test_a_run_on_a_diffusers_table_exports_that_table_exactly(tmp_path):
    table = tmp_path / "scheduler_config.json"
    diffusers.DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012) \
        .save_pretrained(tmp_path)  # Stable Diffusion's table
    run = random_run("unet", "ddpm", "v", tmp_path, sample={"grid": "trailing"})
    run.cfg.model.scheduler_config = str(table)
    out = runs.export_diffusers(run, tmp_path / "export")
    exported = diffusers.DDIMScheduler.from_pretrained(out / "scheduler")
    config = exported.config
    assert (config.beta_schedule, config.prediction_type) == ("scaled_linear", "v_prediction")
    assert torch.equal(exported.alphas_cumprod.double(), build_path(run.cfg).alphas_cumprod)
    zsnr = tmp_path / "zsnr"
    diffusers.DDPMScheduler(rescale_betas_zero_snr=True).save_pretrained(zsnr)
    with pytest.raises(UserError, match="describes a 'ddpm_zsnr' table; set model.path = 'ddpm_zsnr'"):
        runs.load_config({"model": {"path": "ddpm", "parameterization": "v",
                                    "scheduler_config": str(zsnr / "scheduler_config.json")}})


def test_export_refusals(tmp_path):
    with pytest.raises(UserError, match="no scheduler for model.path = 'vp'"):
        runs.export_diffusers(random_run("unet", "vp", "eps", tmp_path), tmp_path / "a")
    run = random_run("unet", "ddpm", "eps", tmp_path)
    (tmp_path / "taken").mkdir()
    with pytest.raises(UserError, match="exists"):
        runs.export_diffusers(run, tmp_path / "taken")
    mlp = runs.load_config({"model": {"net": "mlp"}})
    with pytest.raises(UserError, match="model.net unet or dit"):
        runs.export_diffusers(Run("continuous", mlp, run.module, tmp_path, 0, {}), tmp_path / "b")
