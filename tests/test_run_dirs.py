"""Run directories never lose a user's files (issue 12), driven through the CLI as a user would:
--overwrite refuses foreign folders, the working directory and its parents; --resume works on the
directory it is given from any working directory; a failed start never blocks a retry; a refused resume
changes nothing; files computed from older weights are retired."""

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from test_cli import ROOT, TINY, assert_one_line_error, cli

CONFIG = ROOT / "configs" / "demo.toml"


def snapshot(folder: Path) -> dict[str, str]:
    """Every file below folder with a hash of its bytes."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def train(run_dir, *extra, cwd=None):
    return cli("train", CONFIG, "--set", f"run.dir={run_dir}", *TINY, *extra, cwd=cwd)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    d = tmp_path_factory.mktemp("trained") / "run"
    res = train(d)
    assert res.returncode == 0, res.stderr
    return d


def test_overwrite_refuses_a_folder_with_foreign_files(tmp_path, trained):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    (run / "notes.txt").write_text("my notes")
    before = snapshot(run)
    assert_one_line_error(train(run, "--overwrite"), "did not write", "notes.txt")
    assert snapshot(run) == before


def test_overwrite_refuses_the_working_directory_and_a_parent(tmp_path, trained):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    before = snapshot(run)
    assert_one_line_error(train(".", "--overwrite", cwd=run), "current directory")
    res = train("..", "--overwrite", cwd=run / "checkpoints")
    assert_one_line_error(res, "contains the current directory")
    assert snapshot(run) == before


def test_a_folder_diffspace_did_not_create_is_never_cleared(tmp_path):
    (tmp_path / "my.toml").write_text(CONFIG.read_text())
    before = snapshot(tmp_path)
    res = cli("train", "my.toml", "--set", "run.dir=.", "--overwrite", *TINY, cwd=tmp_path)
    assert_one_line_error(res, "not created by diffspace")
    assert snapshot(tmp_path) == before


def test_overwrite_replaces_a_run_of_its_own(tmp_path, trained):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    res = train(run, "--overwrite", "--set", "train.steps=6")
    assert res.returncode == 0, res.stderr
    assert json.loads((run / "log.jsonl").read_text().splitlines()[-1])["step"] == 6


def test_resume_extends_a_copied_run_and_leaves_the_original_alone(tmp_path, trained):
    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(trained, a)
    shutil.copytree(a, b)
    original = snapshot(a)
    res = cli("train", b, "--resume", "--set", "train.steps=8", "--no-progress")
    assert res.returncode == 0, res.stderr
    assert snapshot(a) == original
    assert json.loads((b / "log.jsonl").read_text().splitlines()[-1])["step"] == 8
    assert f'dir = "{b}"' in (b / "config.toml").read_text()


def test_resume_from_another_working_directory(tmp_path, trained):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    res = cli("train", run.resolve(), "--resume", "--set", "train.steps=6", "--no-progress", cwd=elsewhere)
    assert res.returncode == 0, res.stderr
    assert not any(elsewhere.iterdir())


def test_a_failed_start_does_not_block_a_retry(tmp_path):
    run = tmp_path / "run"
    res = train(run, "--set", "data.name=file", "--set", f"data.file={tmp_path / 'missing.csv'}")
    assert_one_line_error(res, "missing.csv")
    assert not run.exists()  # nothing was written before the data loaded
    res = train(run, "--set", "train.ckpt_every=1000", "--set", "train.steps=3")
    assert res.returncode == 0, res.stderr


def test_a_refused_resume_changes_nothing(tmp_path, trained):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    before = snapshot(run)
    res = cli("train", run, "--resume", "--set", "model.mlp.hidden=24", "--set", "train.steps=9",
              "--no-progress")
    assert_one_line_error(res, "does not fit this model")
    res = cli("train", run, "--resume", "--set", "train.steps=2", "--no-progress")
    assert_one_line_error(res, "at step 4", "train.steps = 2")
    assert snapshot(run) == before


def test_artefacts_of_older_weights_are_retired(tmp_path, trained, monkeypatch):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    assert cli("optimize-grid", run, "--steps", 2, "--n-calib", 16).returncode == 0
    import diffspace.eval.plots
    from diffspace.cli.main import main

    titles = []
    monkeypatch.setattr(diffspace.eval.plots, "scatter_2d", lambda x, ref, out, title: titles.append(title))
    assert main(["sample", str(run), "--grid", "optimized", "--steps", "2", "--sampler", "dpmpp_2m",
                 "--n", "5", "--out", str(tmp_path / "s.npz")]) == 0
    assert titles == ["dpmpp_2m, 2 steps, optimized grid"]  # the picture says an optimized plan drew it
    stored = (run / "grids.json").read_bytes()
    worse = cli("optimize-grid", run, "--steps", 2, "--n-calib", 16, "--budget", 3)
    assert_one_line_error(worse, "kept the nelder-mead plan stored for dpmpp_2m:2: on 256 noises neither "
                                 "plan was fitted to, the stored plan errs ", ", the new nelder-mead plan ",
                          "--overwrite")
    assert (run / "grids.json").read_bytes() == stored  # a refit that does worse loses nothing
    again = cli("optimize-grid", run, "--steps", 2, "--n-calib", 16, "--budget", 3, "--overwrite")
    assert again.returncode == 0  # re-fitting says what it replaced, and what that was worth on this noise
    assert "diffspace: replaced the plan stored for dpmpp_2m:2 (--overwrite)" in again.stderr  # no comparison
    table = json.loads((run / "grids.json").read_text())["dpmpp_2m:2"]["calibration"]
    base = table["baseline"]
    said = (f"calibration error {table['rmse']:.4g} against {base['rmse']:.4g} with the {base['grid']} grid "
            "of 2 steps (RMS per coordinate to the adaptive PF-ODE, 16 noises")
    assert said in again.stdout  # what the fit gained on its calibration noise
    info = cli("info", run)
    assert info.returncode == 0 and f"plan        dpmpp_2m:2: method nelder-mead, fitted at step 4; {said}" \
        in info.stdout  # info lists the stored plans
    assert cli("eval", run, "--n", 50, "--steps", 2).returncode == 0
    res = cli("train", run, "--resume", "--set", "train.steps=6", "--no-progress")
    assert res.returncode == 0, res.stderr
    assert "learning rate" in res.stderr  # extending a finished run says what happens to the schedule
    stale = run / "stale" / "step_00000004"
    assert (stale / "metrics.json").is_file() and (stale / "grids.json").is_file()
    assert not (run / "metrics.json").exists() and not (run / "grids.json").exists()
    res = cli("sample", run, "--grid", "optimized", "--steps", 2, "--sampler", "dpmpp_2m", "--n", 5)
    assert_one_line_error(res, "no optimized grid", f"earlier weights are in {stale}",
                          "--sampler dpmpp_2m --steps 2 [--method learned]`")  # only the method that fits


def test_a_dp_plan_of_heun_steps_and_info_on_a_broken_grids_file(tmp_path, trained):
    """The review of this session: optimize-grid --method dp --sampler heun (no --orders) failed at every
    NFE; info stopped with exit 2, before the config, on a grids.json it could not read."""
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    res = cli("optimize-grid", run, "--sampler", "heun", "--steps", 5, "--method", "dp", "--n-calib", 16,
              "--candidates", 16)
    assert res.returncode == 0, res.stderr
    assert "stored the 3-step grid (NFE 5) for heun" in res.stdout  # 2 + 2 + 1 calls
    assert f"sample with: diffspace sample {run} --sampler heun --steps 5 --grid optimized" in res.stdout
    # RUN naming a checkpoint in the run: the lines name the run's own grids.json, and a refit tells what
    # the plan it replaced was worth
    res = cli("optimize-grid", run / "checkpoints" / "last.safetensors", "--sampler", "heun", "--steps", 5,
              "--method", "dp", "--n-calib", 16, "--candidates", 16)
    assert res.returncode == 0, res.stderr
    assert f"for heun in {run / 'grids.json'}: " in res.stdout
    assert f"sample with: diffspace sample {run} --sampler heun" in res.stdout
    said = res.stderr.split("neither plan was fitted to, the stored plan errs ")[1].split("\n")[0]
    kept, new = said.split(", the new dp plan ")
    assert kept == new  # the same plan again, run on the same held-out noise
    plans = (run / "grids.json").read_text()
    # refused in one line before any fitting: an NFE Heun steps alone cannot make, orders without the
    # sampler's own, and an optimized grid for a sampler optimize-grid cannot fit
    for argv, said in (
        (("--sampler", "heun", "--steps", 6, "--method", "dp"), "Heun steps alone makes an odd NFE"),
        (("--sampler", "heun", "--steps", 5, "--method", "dp", "--orders", "1"), "leaves out heun's own"),
        (("--sampler", "euler", "--steps", 5, "--method", "dp", "--orders", "2"), "leaves out euler's own"),
    ):
        assert_one_line_error(cli("optimize-grid", run, *argv), said)
    res = cli("sample", run, "--sampler", "euler_ancestral", "--steps", 5, "--grid", "optimized", "--n", 4)
    assert_one_line_error(res, "'euler_ancestral' is stochastic: choose another --grid")
    assert (run / "grids.json").read_text() == plans
    (run / "grids.json").write_text("{bad")
    res = cli("info", run)
    assert res.returncode == 0 and "plans       unreadable:" in res.stdout and "not valid JSON" in res.stdout
    assert "[train]" in res.stdout  # the config still follows


def test_nothing_is_written_beside_weights_in_a_users_folder(tmp_path, trained):
    folder = tmp_path / "mine"
    folder.mkdir()
    shutil.copy(trained / "checkpoints" / "last.safetensors", folder / "weights.safetensors")
    (folder / "samples.npz").write_bytes(b"my own samples")
    (folder / "metrics.json").write_text("{}")
    before = snapshot(folder)
    for argv, what in ((("sample", folder / "weights.safetensors", "--n", 4), "samples"),
                       (("eval", folder / "weights.safetensors", "--n", 20), "metrics.json"),
                       (("optimize-grid", folder / "weights.safetensors", "--steps", 2), "grids.json"),
                       (("report", folder / "weights.safetensors"), "report.html")):
        assert_one_line_error(cli(*argv), "not a diffspace run directory", what)
    assert snapshot(folder) == before
    out = tmp_path / "elsewhere" / "s.npz"
    assert cli("sample", folder / "weights.safetensors", "--n", 4, "--out", out).returncode == 0
    assert out.is_file() and snapshot(folder) == before


def test_overwrite_refuses_a_users_file_inside_checkpoints(tmp_path, trained):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    (run / "checkpoints" / "mybackup.safetensors").write_text("mine")
    before = snapshot(run)
    assert_one_line_error(train(run, "--overwrite"), "did not write", "checkpoints/mybackup.safetensors")
    assert snapshot(run) == before


def test_out_and_json_never_replace_a_users_file(tmp_path, trained):
    mine = tmp_path / "mine"
    mine.mkdir()
    for name in ("s.npz", "p.png", "m.json"):
        (mine / name).write_text("my own")
    before = snapshot(mine)
    # the file named; the arrays beside a .png; the picture beside the arrays; --json
    for argv, name in ((("sample", trained, "--n", 4, "--out", mine / "s.npz"), "s.npz"),
                       (("sample", trained, "--n", 4, "--out", mine / "s.png"), "s.npz"),
                       (("sample", trained, "--n", 4, "--out", mine / "p.npz"), "p.png"),
                       (("eval", trained, "--n", 20, "--json", mine / "m.json"), "m.json")):
        assert_one_line_error(cli(*argv), str(mine / name), "exists")
    assert snapshot(mine) == before


@pytest.mark.parametrize("argv, words", [
    (("sample", "--seed", -1), ["--seed", "a seed is in 0..", "got -1"]),
    (("sample", "--n", 0), ["n (--n) must be positive", "0"]),
    (("sample", "--steps", 0), ["steps (--steps) must be in 1..10000", "got 0"]),
    # a typo of a huge step count allocated gigabytes before failing (break-it review)
    (("sample", "--steps", 1_000_000_000), ["steps (--steps) must be in 1..10000"]),
    (("eval", "--steps", 20_000), ["steps (--steps) must be in 1..10000"]),
    (("optimize-grid", "--steps", 1_000_000_000, "--method", "learned"),
     ["steps (--steps) must be in 1..10000"]),
    (("eval", "--n", 0), ["n (--n) must be positive"]),
    # options of another method were silently ignored (review of this session)
    (("optimize-grid", "--candidates", 8), ["(--candidates) is for method dp", "(here: method nelder-mead)"]),
    (("optimize-grid", "--method", "dp", "--sampler", "euler", "--budget", 9),
     ["(--budget) is for methods nelder-mead and learned"]),
    (("optimize-grid", "--sampler", "euler", "--pas-k", 2), ["(--pas-k) is for --pas", "no --pas"]),
    (("optimize-grid", "--sampler", "unipc", "--order", 1), ["unrecognized arguments: --order 1"]),
    (("optimize-grid", "--budget", 0), ["budget (--budget) must be positive, got 0"]),
    (("optimize-grid", "--sampler", "euler", "--pas", "--pas-tol", 2), ["0 <= tol < 1", "tol=2.0"]),
])
def test_zero_and_negative_values_are_refused_not_defaulted(trained, argv, words):
    assert_one_line_error(cli(argv[0], trained, *argv[1:]), *words)


def test_bad_config_shapes_and_data_files_are_one_line(tmp_path):
    assert_one_line_error(train(tmp_path / "a", "--set", "model=1"), "[model] must be a table")
    res = train(tmp_path / "h", "--set", "model.mlp.hidden=0")
    assert_one_line_error(res, "model.mlp.hidden", "positive")
    (tmp_path / "one.csv").write_text("1.0,2.0\n")
    res = train(tmp_path / "b", "--set", 'data.name="file"', "--set", f'data.file="{tmp_path / "one.csv"}"')
    assert_one_line_error(res, "1 row", "at least 2")


@pytest.mark.parametrize("setting", ["train.lr=inf", "model.sigma_data=nan", "loss.p_mean=nan",
                                     "train.grad_clip=nan"])
def test_non_finite_config_values_are_refused_at_load(tmp_path, setting):
    """They once passed validation and stopped training with a NaN loss (exit 1), leaving a run behind."""
    res = cli("train", CONFIG, "--set", setting, "--set", f"run.dir={tmp_path / 'r'}", "--dry-run")
    assert_one_line_error(res, setting.split("=")[0], "finite")


@pytest.mark.parametrize("argv, words", [
    (("eval", "--featurenet", "fn.safetensors"), ["--featurenet fn.safetensors", "image runs only"]),
    (("eval", "--nll-n", 10), ["--nll-n 10 needs --nll"]),
    (("eval", "--nfe", "1,2", "--nll-n", 10), ["drop --nll-n"]),
    (("eval", "--nfe", "1,2", "--featurenet", "fn.safetensors"), ["--featurenet fn.safetensors",
                                                                  "image runs only"]),
])
def test_eval_options_a_vector_run_would_ignore_are_refused(trained, argv, words):
    """The break-it review: each ran and silently ignored the option."""
    assert_one_line_error(cli(argv[0], trained, *argv[1:]), *words)


@pytest.mark.parametrize("argv, need", [
    (("sample", "--sampler", "flow_map", "--n", 4), "'average_velocity'"),
    (("sample", "--sampler", "consistency", "--n", 4), "'consistency'"),
    (("eval", "--sampler", "consistency", "--n", 20), "'consistency'"),
])
def test_few_step_samplers_refuse_a_plain_edm_run(trained, argv, need):
    """They once sampled an EDM run (flow_map as Euler steps, consistency on x0_hat) without a word."""
    res = cli(argv[0], trained, *argv[1:])
    assert_one_line_error(res, f"sampler {argv[2]!r} needs a run with model.parameterization = {need}",
                          "this one has 'edm'")


def test_a_config_naming_a_few_step_sampler_for_a_plain_run_is_refused(tmp_path):
    res = cli("train", CONFIG, "--set", 'sample.sampler="flow_map"', "--set", f"run.dir={tmp_path / 'r'}",
              "--dry-run")
    assert_one_line_error(res, str(CONFIG), "sampler 'flow_map' needs", "'average_velocity'")


@pytest.mark.parametrize("value", ["0.0", "-1.2"])
def test_a_non_positive_lognormal_width_is_refused_at_load(tmp_path, value):
    res = cli("train", CONFIG, "--set", f"loss.p_std={value}", "--set", f"run.dir={tmp_path / 'r'}",
              "--dry-run")
    assert_one_line_error(res, f"loss.p_std must be positive, got {value}")


def test_a_text_file_named_npy_and_a_complex_array_are_one_line(tmp_path):
    (tmp_path / "text.npy").write_text("1.0,2.0\n3.0,4.0\n")
    np.save(tmp_path / "complex.npy", np.ones((10, 2)) * (1 + 2j))
    for name, words in (("text.npy", ["not a valid .npy array file"]),
                        ("complex.npy", ["complex arrays are not supported", "complex128"])):
        res = train(tmp_path / "r", "--set", 'data.name="file"', "--set", f'data.file="{tmp_path / name}"')
        assert_one_line_error(res, str(tmp_path / name), *words)
        assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("existing", [False, True])
def test_a_new_run_that_fails_at_its_first_step_leaves_nothing(tmp_path, monkeypatch, existing):
    """Out of memory at the first step left .diffspace-run and config.toml in a folder that was not there."""
    from diffspace import runs
    from diffspace.train.loop import Trainer

    def out_of_memory(self):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 8000 bytes")

    monkeypatch.setattr(Trainer, "train_step", out_of_memory)
    run = tmp_path / "run" / "deep" / "er"  # every folder made for it goes, none that was there
    if existing:
        run.mkdir(parents=True)
    with pytest.raises(RuntimeError, match="allocate"):
        runs.train(CONFIG, [f"run.dir={run}", "model.mlp.hidden=16", "train.steps=3"])
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == \
        (["run", "run/deep", "run/deep/er"] if existing else [])


def test_a_new_run_that_logged_steps_before_failing_keeps_its_log(tmp_path, monkeypatch):
    from diffspace import runs
    from diffspace.train.loop import Trainer

    step = Trainer.train_step

    def fails_at_step_3(self):
        if self.step == 2:
            raise RuntimeError("simulated failure")
        return step(self)

    monkeypatch.setattr(Trainer, "train_step", fails_at_step_3)
    run = tmp_path / "run"
    with pytest.raises(RuntimeError, match="simulated"):
        runs.train(CONFIG, [f"run.dir={run}", "model.mlp.hidden=16", "train.steps=9", "train.log_every=1",
                            "train.ckpt_every=100"])
    assert {".diffspace-run", "config.toml", "log.jsonl"} <= {p.name for p in run.iterdir()}
