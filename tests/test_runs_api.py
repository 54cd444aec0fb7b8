"""The runs API as a Python user meets it: sampling ranges, options honoured or refused, configs that cannot
contradict themselves."""

import pytest
import torch

from diffspace import runs
from diffspace.runs.continuous import build_path
from diffspace.runs.sampling import run_sigmas
from diffspace.types import UserError

TINY = {"data": {"name": "moons", "n_train": 500, "n_test": 100},
        "model": {"mlp": {"hidden": 16, "depth": 1}},
        "train": {"steps": 4, "batch_size": 32, "log_every": 100, "ckpt_every": 100}}


@pytest.fixture(scope="module")
def ddpm_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("api") / "ddpm"
    config = {**TINY, "run": {"dir": str(d)},
              "model": {**TINY["model"], "path": "ddpm", "parameterization": "eps"},
              "loss": {"weighting": "eps", "proposal": "uniform"}}
    return runs.train(config)


@pytest.fixture(scope="module")
def trailing_run(tmp_path_factory):
    """A DDPM run whose [sample] grid is the table's trailing spacing (diffusers' usual one)."""
    d = tmp_path_factory.mktemp("api") / "trailing"
    config = {**TINY, "run": {"dir": str(d)}, "sample": {"grid": "trailing"},
              "model": {**TINY["model"], "path": "ddpm", "parameterization": "eps"},
              "loss": {"weighting": "eps", "proposal": "uniform"}}
    return runs.train(config)


def test_a_table_grid_refuses_a_noise_range_it_would_ignore(trailing_run):
    """The trailing grid is the table's timesteps: --sigma-max 80 used to be ignored silently (the run
    started at 157 anyway); now it is refused in one line. Karras takes the range."""
    with pytest.raises(UserError, match="trailing grid is spaced on the DDPM table's own timesteps"):
        run_sigmas(trailing_run, "trailing", 5, "euler", sigma_max=80.0)
    assert float(run_sigmas(trailing_run, "karras", 5, "euler", sigma_max=80.0)[0]) == 80.0


def test_calibration_baseline_is_the_runs_grid_over_the_fitted_range(trailing_run):
    """optimize-grid's baseline is the run's [sample] grid (trailing) over the path's range, which
    Nelder-Mead also starts from, so its plan is no worse there; over --sigma-max 80, where the table's
    trailing grid does not reach, the baseline is karras from 80 (it was trailing from 157, beside
    calibration noise of scale 80)."""
    from diffspace.runs.continuous import as_denoiser
    from diffspace.runs.sampling import stored_plan
    from diffspace.samplers.grids import karras_sigmas, sampling_range
    from diffspace.samplers.ode import sample_adaptive, sample_euler
    from diffspace.samplers.optimize_grid import grid_error

    runs.optimize_grid(trailing_run, "dpmpp_2m", steps=3, n_calib=32, budget=40)
    cal = stored_plan(trailing_run, "dpmpp_2m", 3)["calibration"]
    assert cal["baseline"]["grid"] == "trailing" and cal["rmse"] <= cal["baseline"]["rmse"]
    runs.optimize_grid(trailing_run, "euler", steps=3, n_calib=32, budget=20, sigma_max=80.0)
    cal = stored_plan(trailing_run, "euler", 3)["calibration"]
    lo, _ = sampling_range(build_path(trailing_run.cfg))
    den = as_denoiser(trailing_run.cfg, trailing_run.module)
    g = torch.Generator().manual_seed(7919)  # optimize_grid's calibration noise (seed 0)
    x = torch.randn((32, *trailing_run.meta["data_shape"]), generator=g) * 80
    with torch.no_grad():
        ref = sample_adaptive(den, x, 80.0, lo)
        expected = grid_error(sample_euler, den, x, karras_sigmas(3, lo, 80.0), ref)
    assert cal["baseline"]["grid"] == "karras"
    assert cal["baseline"]["rmse"] == pytest.approx(expected, rel=1e-9)


def test_describe_plan_is_one_line_whatever_the_entry():
    """info and optimize-grid print a stored plan in one line: an old entry without calibration, a
    hand-edited one (a method with a newline, a calibration that is not numbers), or not an object."""
    from diffspace.runs.sampling import describe_plan

    assert describe_plan("euler:5", {"method": "dp", "step": 4}) == "euler:5: method dp, fitted at step 4"
    assert describe_plan("euler:5", {"method": "d\np", "step": 4, "calibration": {"rmse": "x"}}) == \
        "euler:5: method d p, fitted at step 4"
    assert describe_plan("euler:5", [1, 2]) == "euler:5: malformed"
    assert describe_plan("euler:5", {"method": "dp", "step": 4, "pas": {}}) == \
        "euler:5: method dp with PAS coordinates, fitted at step 4"  # the plan says what it brings
    cal = {"n": 64, "nfe": 5, "rmse": 0.25, "baseline": {"grid": "karras", "steps": 5, "rmse": 0.5}}
    said = ("euler:5: method dp, fitted at step 4; calibration error 0.25 against 0.5 with the karras grid "
            "of 5 steps (RMS per coordinate to the adaptive PF-ODE, 64 noises, NFE 5)")
    assert describe_plan("euler:5", {"method": "dp", "step": 4, "calibration": cal}) == said
    held = {"n": 256, "rmse": 0.3, "baseline_rmse": 0.5}
    assert describe_plan("euler:5", {"method": "dp", "step": 4, "calibration": cal | {"holdout": held}}) == \
        said + "; held-out error 0.3 against 0.5 (256 other noises)"
    assert describe_plan("euler:1", {"method": "dp", "step": 4, "calibration": cal | {
        "n": 1, "baseline": {"grid": "karras", "steps": 1, "rmse": 0.5}}}).endswith(
        "karras grid of 1 step (RMS per coordinate to the adaptive PF-ODE, 1 noise, NFE 5)")


def test_a_ddpm_run_starts_at_the_tables_sigma_max(ddpm_run):
    """Issue 13 item 4: the first level is timestep 999 (sigma ~ 157), as diffusers starts, not EDM's 80."""
    path = build_path(ddpm_run.cfg)
    for grid in ("karras", "trailing", "logsnr"):
        sigmas = run_sigmas(ddpm_run, grid, 5, "heun")
        assert float(sigmas[0]) == pytest.approx(path.sigma_max, rel=1e-12), grid
    abar = path.alphas_cumprod[-1]  # timestep 999
    assert path.sigma_max == pytest.approx(float(((1 - abar) / abar).sqrt()), rel=1e-12)
    narrowed = run_sigmas(ddpm_run, "karras", 5, "heun", sigma_max=80.0)
    assert float(narrowed[0]) == 80.0
    with pytest.raises(UserError, match="outside the range"):
        run_sigmas(ddpm_run, "karras", 5, "heun", sigma_max=1000.0)


def test_options_a_run_cannot_honour_are_refused(ddpm_run):
    with pytest.raises(UserError, match=r"continuous runs cannot use the option 'prompts' \(--prompt\)"):
        runs.sample(ddpm_run, runs.SampleOptions(n=2, prompts=("hello",)))
    with pytest.raises(UserError, match="class-conditional"):
        runs.sample(ddpm_run, runs.SampleOptions(n=2, guidance=2.0))
    with pytest.raises(UserError, match="class-conditional"):  # eval once ran and ignored it
        runs.evaluate(ddpm_run, runs.EvalOptions(n=4, steps=2, guidance=2.0))
    with pytest.raises(UserError, match="has no option 'eta'"):
        runs.sample(ddpm_run, runs.SampleOptions(n=2, sampler="heun", sampler_options={"eta": 0.5}))
    with pytest.raises(UserError, match=r"n \(--n\) must be positive"):
        runs.sample(ddpm_run, runs.SampleOptions(n=-1))
    x = runs.sample(ddpm_run, runs.SampleOptions(n=3, sampler="ddim", steps=3, sampler_options={"eta": 0.5}))
    assert x.shape == (3, 2) and torch.isfinite(x).all()


@pytest.mark.parametrize("override,words", [
    ({"sample": {"sampler": "heunn"}}, "sample.sampler = 'heunn'"),
    ({"sample": {"grid": "trailing"}}, "spaces the timesteps of a DDPM table"),
    ({"loss": {"objective": "flow"}}, "model.parameterization = 'velocity'"),
    ({"model": {"precond": "edm"}}, "unknown key 'model.precond'"),
])
def test_configs_cannot_contradict_themselves(override, words):
    merged = {k: {**TINY.get(k, {}), **v} for k, v in override.items()}
    with pytest.raises(UserError, match=words.replace(".", r"\.").replace("(", r"\(").replace(")", r"\)")):
        runs.load_config({**TINY, **merged})


@pytest.mark.parametrize("method,extra,key", [
    ("dp", {"steps": 4}, None), ("dp", {"steps": 5, "orders": (1, 2)}, "orders"),
    ("nelder-mead", {"steps": 3, "budget": 40, "pas": True}, "pas"),
])
def test_optimize_grid_methods_store_a_plan_that_sampling_uses(ddpm_run, method, extra, key):
    """Issue 13's schedule lab from the runs API: a DP plan (Euler, or Euler/Heun per step at a fixed
    NFE) or a PAS-corrected Euler grid is stored with the run and used by --grid optimized."""
    from diffspace.runs.sampling import stored_plan

    steps = extra["steps"]
    sigmas = runs.optimize_grid(ddpm_run, "euler", n_calib=64, method=method,
                                candidates=16 if method == "dp" else None,
                                **{k: v for k, v in extra.items() if k != "steps"}, steps=steps)
    entry = stored_plan(ddpm_run, "euler", steps)
    assert entry["method"] == method and entry["sigmas"] == sigmas.tolist()
    assert (key is None and "orders" not in entry and "pas" not in entry) or key in entry
    if key == "orders":  # the plan spends exactly the NFE asked for
        heun_calls = sum(2 if o == 2 and s > 0 else 1 for o, s in zip(entry["orders"], entry["sigmas"][1:],
                                                                     strict=True))
        assert heun_calls == steps
    x = runs.sample(ddpm_run, runs.SampleOptions(n=5, sampler="euler", steps=steps, grid="optimized"))
    assert x.shape == (5, 2) and torch.isfinite(x).all()
    _check_calibration(ddpm_run, "euler", steps, entry, steps, candidates=16 if method == "dp" else None)


def _check_calibration(run, sampler, steps, entry, nfe, candidates=None):
    """The calibration errors optimize_grid records are those of the plan and of the run's [sample] grid
    at the same NFE, recomputed here from the calibration noise and the adaptive PF-ODE solution."""
    from diffspace.runs.continuous import as_denoiser
    from diffspace.runs.sampling import plan
    from diffspace.samplers.grids import GRIDS, sampling_range
    from diffspace.samplers.ode import sample_adaptive
    from diffspace.samplers.optimize_grid import candidate_sigmas, grid_error, reference_trajectory
    from diffspace.samplers.registry import SAMPLERS

    path = build_path(run.cfg)
    den, (lo, hi) = as_denoiser(run.cfg, run.module), sampling_range(path)
    x = torch.randn((64, *run.meta["data_shape"]), generator=torch.Generator().manual_seed(7919)) * hi
    with torch.no_grad():
        ref = sample_adaptive(den, x, hi, lo) if candidates is None else \
            reference_trajectory(den, x, candidate_sigmas(candidates, lo, hi))[-1]
        fn, grid = plan(run, sampler, steps, "optimized")
        fitted = grid_error(fn, den, x, grid, ref)
        base_steps = max(n for n in range(1, nfe + 1) if SAMPLERS[sampler].nfe(n) <= nfe)
        base_grid = GRIDS[run.cfg.sample.grid](base_steps, lo, hi, path=path)
        baseline = grid_error(SAMPLERS[sampler].fn, den, x, base_grid, ref)
        # the held-out noise: 256 (at least) apart from the calibration noise, its own adaptive solution
        x = torch.randn((256, *run.meta["data_shape"]), generator=torch.Generator().manual_seed(104729)) * hi
        ref = sample_adaptive(den, x, hi, lo)
        held = [grid_error(fn, den, x, grid, ref), grid_error(SAMPLERS[sampler].fn, den, x, base_grid, ref)]
    cal = entry["calibration"]
    assert (cal["n"], cal["nfe"], cal["baseline"]["grid"], cal["baseline"]["steps"]) == \
        (64, nfe, run.cfg.sample.grid, base_steps)
    assert cal["rmse"] == pytest.approx(fitted, rel=1e-9)
    assert cal["baseline"]["rmse"] == pytest.approx(baseline, rel=1e-9)
    assert cal["holdout"]["n"] == 256
    assert [cal["holdout"]["rmse"], cal["holdout"]["baseline_rmse"]] == pytest.approx(held, rel=1e-9)
    return cal


def test_a_learned_solver_is_stored_and_sampling_uses_it(ddpm_run):
    """optimize-grid --method learned: dpmpp_2m's weights and levels learned from the run's fixed grids,
    stored with the run; --grid optimized samples with them at the same NFE, and they lower the
    calibration batch's error below 2M's on its best start grid."""
    from diffspace.runs.continuous import as_denoiser, build_path
    from diffspace.runs.sampling import learn_starts, plan, stored_plan
    from diffspace.samplers.grids import sampling_range
    from diffspace.samplers.multistep import sample_dpmpp_2m
    from diffspace.samplers.ode import CountingDenoiser, sample_adaptive

    sigmas = runs.optimize_grid(ddpm_run, "dpmpp_2m", steps=4, n_calib=64, method="learned", budget=60)
    entry = stored_plan(ddpm_run, "dpmpp_2m", 4)
    assert entry["method"] == "learned" and entry["learned"]["sigmas"] == entry["sigmas"] == sigmas.tolist()
    fn, grid = plan(ddpm_run, "dpmpp_2m", 4, "optimized")
    den, (lo, hi) = CountingDenoiser(as_denoiser(ddpm_run.cfg, ddpm_run.module)), \
        sampling_range(build_path(ddpm_run.cfg))
    g = torch.Generator().manual_seed(7919)  # the calibration noise of optimize_grid (seed 0)
    x = torch.randn((64, *ddpm_run.meta["data_shape"]), generator=g) * hi
    with torch.no_grad():
        ref = sample_adaptive(den.denoiser, x, hi, lo)
        err = lambda out: float((out - ref).pow(2).sum(1).mean().sqrt())
        learned = err(fn(den, x, grid))
        assert den.nfe == 4
        starts = learn_starts(ddpm_run, 4, lo, hi)
        assert [len(g) for g in starts] == [5, 5, 5, 5]  # trailing too: the run's path is a DDPM table
        assert learned < min(err(sample_dpmpp_2m(den.denoiser, x, s)) for s in starts)
    out = runs.sample(ddpm_run, runs.SampleOptions(n=5, sampler="dpmpp_2m", steps=4, grid="optimized"))
    assert out.shape == (5, 2) and torch.isfinite(out).all()
    cal = _check_calibration(ddpm_run, "dpmpp_2m", 4, entry, 4)
    assert cal["rmse"] < cal["baseline"]["rmse"]


@pytest.mark.parametrize("edit, words", [
    (lambda e: e | {"learned": None}, "malformed"),
    (lambda e: e | {"learned": e["learned"] | {"gamma": ["x"] * 3}}, "malformed"),
    (lambda e: e | {"learned": e["learned"] | {"beta": None}}, "malformed"),
    (lambda e: e | {"learned": e["learned"] | {"gamma": [float("nan")] * 3}}, "finite numbers"),
    (lambda e: {k: v for k, v in e.items() if k != "step"}, "malformed"),
    (lambda e: {k: v for k, v in e.items() if k != "learned"}, "malformed"),
    (lambda e: e | {"sigmas": e["sigmas"][:-1] + [None]}, "malformed"),  # was a TypeError traceback
    (lambda e: e | {"sigmas": [True, *e["sigmas"][1:]]}, "malformed"),  # was silently read as 1.0
    (lambda e: e | {"sigmas": [e["sigmas"][0], *e["sigmas"]]}, "spends 4 network calls, its key 3"),
])
def test_a_hand_edited_plan_is_one_line(ddpm_run, tmp_path, edit, words):
    """The fresh-user review: a corrupted entry of RUN/grids.json gave tracebacks (KeyError, TypeError,
    ValueError) or was silently sampled as plain 2M; now each is a one-line UserError."""
    import json
    import shutil

    from diffspace.runs.sampling import GRIDS_FILE, plan

    runs.optimize_grid(ddpm_run, "dpmpp_2m", steps=3, n_calib=16, method="learned", budget=4)
    copy = tmp_path / "run"
    shutil.copytree(ddpm_run.dir, copy)
    table = json.loads((copy / GRIDS_FILE).read_text())
    table["dpmpp_2m:3"] = edit(table["dpmpp_2m:3"])
    (copy / GRIDS_FILE).write_text(json.dumps(table))
    with pytest.raises(UserError, match=words):
        plan(runs.load_run(copy), "dpmpp_2m", 3, "optimized")


@pytest.mark.parametrize("extra", [
    {"orders": [float("inf"), 1, 1, 1, 1]},  # JSON's Infinity: int(inf) raised OverflowError, a traceback
    {"pas": {"sigmas": [80.0, 1.0, 0.5, 0.1, 0.01, 0.0], "k": float("inf"), "coords": {}}},
])
def test_an_infinite_count_in_a_stored_plan_is_one_line(extra):
    from diffspace.runs.sampling import check_entry, describe_plan

    entry = {"step": 4, "method": "dp", "sigmas": [80.0, 1.0, 0.5, 0.1, 0.01, 0.0]}
    check_entry(entry, "euler", 5)  # the plan itself is sound
    with pytest.raises(UserError, match="the entry for euler:5 is malformed"):
        check_entry(entry | extra, "euler", 5)
    cal = {"n": float("inf"), "nfe": 5, "rmse": 0.2, "baseline": {"grid": "karras", "steps": 5, "rmse": 0.5}}
    assert describe_plan("euler:5", entry | {"calibration": cal}) == "euler:5: method dp, fitted at step 4"


def test_a_broken_grids_file_and_a_range_on_an_optimized_grid_are_refused(ddpm_run, tmp_path):
    import shutil

    from diffspace.runs.sampling import GRIDS_FILE, plan

    copy = tmp_path / "run"
    shutil.copytree(ddpm_run.dir, copy)
    (copy / GRIDS_FILE).write_text('{"dpmpp_2m:3": {')
    run = runs.load_run(copy)
    with pytest.raises(UserError, match="not valid JSON"):
        plan(run, "dpmpp_2m", 3, "optimized")
    with pytest.raises(UserError, match="not valid JSON"):  # before any fitting
        runs.optimize_grid(run, "dpmpp_2m", steps=3, n_calib=16, method="learned", budget=4)
    with pytest.raises(UserError, match="brings its own noise levels"):
        plan(runs.load_run(ddpm_run.dir), "dpmpp_2m", 3, "optimized", sigma_max=10.0)


def test_an_optimized_plan_refuses_sampler_options_it_was_not_fitted_with(ddpm_run):
    """optimize-grid fits a sampler with its default options: `sample --sampler ddim --eta 1 --grid
    optimized` sampled stochastic DDIM on deterministic DDIM's grid without a word. Options that change the
    solver are refused for every kind of plan; the defaults, given explicitly, sample the same values."""
    from diffspace.runs.sampling import plan

    runs.optimize_grid(ddpm_run, "ddim", steps=3, n_calib=16, budget=10)
    with pytest.raises(UserError, match=r"ddim:3 was fitted with ddim's default options; --eta would"):
        plan(ddpm_run, "ddim", 3, "optimized", {"eta": 1.0})
    given = runs.sample(ddpm_run, runs.SampleOptions(n=5, sampler="ddim", steps=3, grid="optimized",
                                                     sampler_options={"eta": 0.0}))
    plain = runs.sample(ddpm_run, runs.SampleOptions(n=5, sampler="ddim", steps=3, grid="optimized"))
    assert torch.equal(given, plain)
    runs.optimize_grid(ddpm_run, "dpmpp_2m", steps=3, n_calib=16, method="learned", budget=4)
    with pytest.raises(UserError, match="; --no-lower-order-final would run another solver"):
        plan(ddpm_run, "dpmpp_2m", 3, "optimized", {"lower_order_final": False})


def test_a_refit_keeps_a_better_stored_plan_unless_told(ddpm_run):
    """A refit runs the plan stored under its key and the new one on noise neither was fitted to (the new
    plan's calibration error is in-sample: a refit on 2 noises replaced a 4x better plan): a better stored
    plan is kept (the file unchanged), a worse one replaced; overwrite replaces it anyway, and a plan over
    another range does not compete."""
    from diffspace.runs.continuous import as_denoiser
    from diffspace.runs.sampling import GRIDS_FILE, HOLDOUT_SEED, stored_plan
    from diffspace.samplers.grids import sampling_range
    from diffspace.samplers.ode import sample_adaptive, sample_euler
    from diffspace.samplers.optimize_grid import grid_error

    good = runs.optimize_grid(ddpm_run, "euler", steps=2, n_calib=32, budget=100)
    stored = (ddpm_run.dir / GRIDS_FILE).read_bytes()
    den, (lo, hi) = as_denoiser(ddpm_run.cfg, ddpm_run.module), sampling_range(build_path(ddpm_run.cfg))
    held_out = torch.randn((256, 2), generator=torch.Generator().manual_seed(HOLDOUT_SEED)) * hi  # seed 0
    with torch.no_grad():
        kept = grid_error(sample_euler, den, held_out, good, sample_adaptive(den, held_out, hi, lo))
    with pytest.raises(UserError, match=rf"kept the nelder-mead plan stored for euler:2: on 256 noises "
                                        rf"neither plan was fitted to, the stored plan errs {kept:.4g}, "
                                        rf"the new dp plan"):
        runs.optimize_grid(ddpm_run, "euler", steps=2, n_calib=32, method="dp", candidates=4)
    assert (ddpm_run.dir / GRIDS_FILE).read_bytes() == stored
    coarse = runs.optimize_grid(ddpm_run, "euler", steps=2, n_calib=32, method="dp", candidates=4,
                                overwrite=True)
    assert stored_plan(ddpm_run, "euler", 2)["sigmas"] == coarse.tolist() != good.tolist()
    assert runs.optimize_grid(ddpm_run, "euler", steps=2, n_calib=32, budget=100).tolist() == good.tolist()
    assert (ddpm_run.dir / GRIDS_FILE).read_bytes() == stored  # the good plan again
    with pytest.raises(UserError, match=r"cannot be compared with the nelder-mead plan stored for euler:2, "
                                        r"fitted over sigma 0.01 .. 157.4 \(this fit: 0.01 .. 5\)"):
        runs.optimize_grid(ddpm_run, "euler", steps=2, n_calib=32, method="dp", candidates=4, sigma_max=5.0)
    assert (ddpm_run.dir / GRIDS_FILE).read_bytes() == stored
    low = runs.optimize_grid(ddpm_run, "euler", steps=2, n_calib=32, method="dp", candidates=4, sigma_max=5.0,
                             overwrite=True)
    entry = stored_plan(ddpm_run, "euler", 2)
    assert entry["sigmas"] == low.tolist() and entry["range"] == [entry["range"][0], 5.0] and low[0] == 5.0


def test_plans_of_other_weights_or_nfe_are_replaced_only_when_told(ddpm_run, tmp_path):
    """The review of the refit rule: heun:5 is 5 calls of a DP plan and 9 of a Nelder-Mead grid, and a plan
    fitted on a checkpoint has its weights; neither competes with a refit, and neither is replaced without
    overwrite. A malformed stored plan (orders one short) is replaced, not run."""
    import json
    import shutil

    from diffspace.runs.sampling import GRIDS_FILE, stored_plan

    copy = tmp_path / "run"
    shutil.copytree(ddpm_run.dir, copy)
    run = runs.load_run(copy)
    runs.optimize_grid(run, "heun", steps=5, n_calib=16, method="dp", candidates=6, overwrite=True)
    stored = (copy / GRIDS_FILE).read_bytes()
    with pytest.raises(UserError, match=r"heun:5, fitted for 5 network calls \(this fit: 9\)"):
        runs.optimize_grid(run, "heun", steps=5, n_calib=16, budget=4)
    table = json.loads(stored)
    table["heun:5"]["step"] += 1
    (copy / GRIDS_FILE).write_text(json.dumps(table))
    with pytest.raises(UserError, match=rf"fitted at step {run.step + 1} \(this fit: step {run.step}\)"):
        runs.optimize_grid(run, "heun", steps=5, n_calib=16, method="dp", candidates=6)
    runs.optimize_grid(run, "euler", steps=5, n_calib=16, method="dp", orders=(1, 2), candidates=6,
                       overwrite=True)
    table = json.loads((copy / GRIDS_FILE).read_text())
    table["euler:5"]["orders"] = table["euler:5"]["orders"][:-1]
    (copy / GRIDS_FILE).write_text(json.dumps(table))
    with pytest.raises(UserError, match="malformed"):
        stored_plan(run, "euler", 5)
    runs.optimize_grid(run, "euler", steps=5, n_calib=16, method="dp", orders=(1, 2), candidates=6)
    assert stored_plan(run, "euler", 5)["step"] == run.step


@pytest.fixture(scope="module")
def edm_run(tmp_path_factory):
    """An EDM run on the checkerboard trained long enough (300 steps, 2 s) for its PF-ODE to have shape."""
    d = tmp_path_factory.mktemp("api") / "edm"
    return runs.train({"data": {"name": "checkerboard", "n_train": 2000, "n_test": 100},
                       "model": {"mlp": {"hidden": 64, "depth": 2}, "path": "edm"}, "run": {"dir": str(d)},
                       "train": {"steps": 300, "batch_size": 256, "log_every": 1000, "ckpt_every": 1000}})


@pytest.mark.parametrize("nfe, warns", [(5, True), (7, False)])
def test_a_heun_dp_plan_that_euler_beats_is_warned_of(edm_run, nfe, warns, caplog):
    """The new-user pass: `--sampler heun --method dp` at NFE 5 stored a plan whose last Euler step into 0
    started at sigma 15 (the samples collapsed onto the posterior mean), with no warning, since Heun on
    the run's grid at that NFE was worse still. The fit now also runs the DP plan of Euler steps at the
    same NFE on the calibration noise and warns, with both errors, where that does better."""
    from diffspace.runs.continuous import as_denoiser, build_path
    from diffspace.runs.sampling import stored_plan
    from diffspace.samplers.grids import sampling_range
    from diffspace.samplers.ode import sample_euler
    from diffspace.samplers.optimize_grid import (
        candidate_sigmas,
        dp_schedule,
        grid_error,
        reference_trajectory,
    )

    with caplog.at_level("WARNING", logger="diffspace"):
        runs.optimize_grid(edm_run, "heun", steps=nfe, n_calib=64, method="dp", candidates=12)
    heun = stored_plan(edm_run, "heun", nfe)["calibration"]["rmse"]
    den, (lo, hi) = as_denoiser(edm_run.cfg, edm_run.module), sampling_range(build_path(edm_run.cfg))
    x = torch.randn((64, 2), generator=torch.Generator().manual_seed(7919)) * hi  # optimize_grid's, seed 0
    with torch.no_grad():
        trajectory = reference_trajectory(den, x, candidate_sigmas(12, lo, hi))
        euler = dp_schedule(den, x, nfe, lo, hi, n_candidates=12, reference=trajectory)
        euler = grid_error(sample_euler, den, x, euler.sigmas, trajectory[-1])
    warned = [r.getMessage() for r in caplog.records if "plan of Heun steps" in r.getMessage()]
    assert (heun > euler) == warns
    assert warned == [f"on its calibration noise this plan of Heun steps errs {heun:.4g}, the DP plan of "
                      f"Euler steps at NFE {nfe} errs {euler:.4g}: fit that (--sampler euler), let the DP "
                      "mix the two (--orders 1,2), or search a Heun grid of the same NFE (--method "
                      f"nelder-mead --steps {(nfe + 1) // 2})"] * warns


def test_what_a_stored_plan_is_told_by_info_and_eval(ddpm_run, tmp_path):
    """The new-user pass: `eval --grid optimized` recorded the path's noise range, not the plan's, and
    nothing of the plan; `info` listed a malformed plan, or one of older weights, as usable."""
    import json
    import shutil

    from diffspace.runs.sampling import GRIDS_FILE, describe_plan, plan_problem, stored_plan

    copy = tmp_path / "run"
    shutil.copytree(ddpm_run.dir, copy)
    run = runs.load_run(copy)
    runs.optimize_grid(run, "ddim", steps=3, n_calib=16, budget=10, sigma_max=20.0, overwrite=True)
    entry = stored_plan(run, "ddim", 3)
    m = runs.evaluate(run, runs.EvalOptions(n=20, sampler="ddim", steps=3, grid="optimized"))
    assert m["sigma_range"] == entry["range"] and entry["range"][1] == 20.0
    assert m["plan"] == describe_plan("ddim:3", entry)
    assert plan_problem(run, "ddim:3", entry) is None
    assert plan_problem(run, "ddim:3", entry | {"step": run.step + 1}) == \
        f"fitted at step {run.step + 1}, the run is at step {run.step}: refit it with --overwrite to " \
        "sample with it"
    assert plan_problem(run, "bogus", entry) == "its key is not SAMPLER:STEPS"
    assert m["nfe"] == 3
    from diffspace.runs.report import write_report

    runs.optimize_grid(run, "heun", steps=5, n_calib=16, method="dp", candidates=6, overwrite=True)
    m = runs.evaluate(run, runs.EvalOptions(n=20, sampler="heun", steps=5, grid="optimized"))
    page = write_report(run.dir).read_text()  # a DP plan's --steps counts calls: 5, not Heun's 2 * 5 - 1
    assert m["nfe"] == 5 and '<td>NFE per sample</td><td class="num">5</td>' in page and "method dp" in page
    assert "malformed (its plan spends 4 network calls, its key 3)" in \
        plan_problem(run, "ddim:3", entry | {"sigmas": [entry["sigmas"][0], *entry["sigmas"]]})
    table = json.loads((copy / GRIDS_FILE).read_text())
    table["ddim:3"]["step"] += 1
    (copy / GRIDS_FILE).write_text(json.dumps(table))
    with pytest.raises(UserError, match=rf"fitted at step {run.step + 1}, these weights are step {run.step}; "
                                        r"fit one for them \(it replaces that plan\): `diffspace "
                                        r"optimize-grid RUN --sampler ddim --steps 3 --overwrite`"):
        runs.sample(run, runs.SampleOptions(n=2, sampler="ddim", steps=3, grid="optimized"))


def test_optimize_grid_refuses_what_it_cannot_plan(ddpm_run):
    with pytest.raises(UserError, match=r"orders are solver orders such as \(1, 2\) \(--orders 1,2\), got "
                                        r"'1,2'"):
        runs.optimize_grid(ddpm_run, "euler", steps=5, method="dp", orders="1,2")  # was a TypeError
    with pytest.raises(UserError, match="PAS corrects a plain Euler grid, and --orders lets the DP plan"):
        runs.optimize_grid(ddpm_run, "euler", steps=5, method="dp", orders=(1, 2), pas=True)  # before fitting
    with pytest.raises(UserError, match="stochastic"):
        runs.optimize_grid(ddpm_run, "ddpm", steps=3)
    with pytest.raises(UserError, match="picks its steps"):
        runs.optimize_grid(ddpm_run, "rk45", steps=3)
    # an unknown name is told the samplers optimize-grid can fit for this run and method, not every sampler
    with pytest.raises(UserError, match=r"'huen' is not a sampler; choose one of euler, ") as err:
        runs.optimize_grid(ddpm_run, "huen", steps=3)
    named = str(err.value).split("choose one of ")[1].split(", ")
    assert "heun" in named and "dpmpp_2m" in named
    assert not {"ddpm", "rk45", "flow_map", "consistency"} & set(named)  # stochastic, adaptive, other models
    with pytest.raises(UserError, match=r"'huen' is not a sampler; choose one of euler, heun$"):
        runs.optimize_grid(ddpm_run, "huen", steps=3, method="dp")
    with pytest.raises(UserError, match=r"'huen' is not a sampler; choose one of dpmpp_2m$"):
        runs.optimize_grid(ddpm_run, "huen", steps=3, method="learned")
    with pytest.raises(UserError, match=r"'huen' is not a sampler; choose one of euler$"):
        runs.optimize_grid(ddpm_run, "huen", steps=3, pas=True)
    with pytest.raises(UserError, match="needs a run with model.parameterization = 'average_velocity'"):
        runs.optimize_grid(ddpm_run, "flow_map", steps=3)  # was fitted, then refused by sample
    with pytest.raises(UserError, match="plans euler or heun"):  # the method's rule first: a map run won't do
        runs.optimize_grid(ddpm_run, "flow_map", steps=3, method="dp")
    with pytest.raises(UserError, match="method must be"):
        runs.optimize_grid(ddpm_run, "huen", steps=3, method="bogus")
    with pytest.raises(UserError, match=r"candidates \(--candidates\) is for method dp"):
        runs.optimize_grid(ddpm_run, "euler", steps=3, candidates=8)  # was ignored
    with pytest.raises(UserError, match=r"pas_tol \(--pas-tol\) is for --pas"):
        runs.optimize_grid(ddpm_run, "euler", steps=3, method="dp", pas_tol=0.1)
    with pytest.raises(UserError, match="plans euler or heun"):
        runs.optimize_grid(ddpm_run, "dpmpp_2m", steps=3, method="dp")
    with pytest.raises(UserError, match="PAS corrects Euler"):
        runs.optimize_grid(ddpm_run, "heun", steps=3, pas=True)
    with pytest.raises(UserError, match="learns the weights of dpmpp_2m"):
        runs.optimize_grid(ddpm_run, "unipc", steps=3, method="learned")
    with pytest.raises(UserError, match="choose steps of method 'dp'"):
        runs.optimize_grid(ddpm_run, "dpmpp_2m", steps=3, method="learned", orders=(1, 2))


def test_the_diffusers_style_eps_config_builds():
    """configs/ddpm-eps-checkerboard.toml: plain MLP, integer timesteps, lr floor, EMA with warmup."""
    from pathlib import Path

    cfg = runs.load_config(Path(__file__).parents[1] / "configs" / "ddpm-eps-checkerboard.toml")
    t = cfg.train
    assert (cfg.model.net, cfg.loss.proposal, t.lr_min, t.ema_decay, t.ema_warmup) == \
        ("plain_mlp", "table", 2e-5, 0.999, True)
    with pytest.raises(UserError, match="'table' draws a DDPM table"):
        runs.load_config({**TINY, "loss": {"proposal": "table"}})
