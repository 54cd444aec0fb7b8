"""The command line as a user meets it: help, dry runs, and every bad input -> one line, exit 2."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--set", "model.mlp.hidden=16", "--set", "model.mlp.depth=1", "--set", "train.steps=4",
        "--set", "train.batch_size=32", "--set", "data.n_train=500", "--set", "data.n_test=100",
        "--set", "eval.n=100", "--no-progress"]


def cli(*args, cwd=None):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "diffspace", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, env=env, timeout=300)


def assert_one_line_error(res, *words):
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("diffspace: error:"), res.stderr
    for w in words:
        assert w in lines[0], (w, lines[0])


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli") / "run"
    res = cli("train", ROOT / "configs/demo.toml", "--set", f"run.dir={d}", *TINY)
    assert res.returncode == 0, res.stderr
    return d


def test_help_describes_every_option_with_default():
    for sub in ["", "train", "sample", "eval", "info"]:
        res = cli(*([sub] if sub else []), "--help")
        assert res.returncode == 0
        assert "usage: diffspace" in res.stdout
    out = " ".join(cli("sample", "--help").stdout.split())
    for opt in ["--n", "--out", "--sampler", "--steps", "--grid", "--seed", "--device"]:
        assert opt in out
    assert "the run's [sample] sampler" in out and "the run's [sample] n" in out
    from diffspace.samplers.grids import GRIDS
    assert all(f" {name}" in out for name in [*GRIDS, "optimized"]), "--grid's help names every grid"


def test_dry_run_prints_resolved_config():
    res = cli("train", ROOT / "configs/demo.toml", "--dry-run", "--set", "train.steps=7")
    assert res.returncode == 0 and "steps = 7" in res.stdout and 'path = "edm"' in res.stdout


def test_train_writes_run_and_sample_eval_info_work(run, tmp_path):
    for name in ["config.toml", "log.jsonl", "loss.png", "checkpoints/last.safetensors"]:
        assert (run / name).is_file(), name
    out = tmp_path / "s.npz"
    res = cli("sample", run, "--n", 50, "--steps", 3, "--out", out)
    assert res.returncode == 0, res.stderr
    assert out.is_file() and out.with_suffix(".png").is_file()
    res = cli("eval", run, "--n", 100, "--steps", 3, "--nll", "--nll-n", 10, "--json", tmp_path / "m.json")
    assert res.returncode == 0, res.stderr
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["sw2_data_baseline"] > 0 and math.isfinite(metrics["nll_nats"]) and metrics["nll_nfe"] > 0
    res = cli("info", run)
    assert res.returncode == 0 and "step        4 of 4" in res.stdout


@pytest.mark.parametrize("text,words", [
    ("[train\nsteps = 3\n", ["malformed TOML"]),
    ("[train]\nstepz = 3\n", ["unknown key", "train.stepz"]),
    ('[model]\npath = "vpp"\n', ["model.path", "vpp"]),
    ("[train]\nsteps = -3\n", ["train.steps", "positive"]),
    ('[train]\nlr = "fast"\n', ["train.lr", "float"]),
    ('[data]\nname = "file"\nfile = "/nonexistent/x.npy"\n', ["not found", "/nonexistent/x.npy"]),
])
def test_bad_config_is_one_line_exit_2(tmp_path, text, words):
    cfg = tmp_path / "bad.toml"
    cfg.write_text(text)
    steps_at = TINY.index("train.steps=4") - 1  # keep the config's own train.steps
    tiny = TINY[:steps_at] + TINY[steps_at + 2:-1]
    res = cli("train", cfg, "--set", f"run.dir={tmp_path / 'r'}", *tiny)
    assert_one_line_error(res, str(cfg) if "not found" not in words else "", *words)
    assert not (tmp_path / "r" / "checkpoints").exists()


@pytest.mark.parametrize("sampler", ["ddpm", "pc"])
def test_stochastic_samples_do_not_depend_on_n(run, tmp_path, sampler):
    """Issue 11: `--n 3` gives the first three samples of `--n 5` (each sample has its own stream)."""
    for n in (3, 5):
        res = cli("sample", run, "--sampler", sampler, "--seed", 5, "--n", n, "--steps", 4,
                  "--out", tmp_path / f"{n}.npy")
        assert res.returncode == 0, res.stderr
    three, five = np.load(tmp_path / "3.npy"), np.load(tmp_path / "5.npy")
    # why not bitwise: a float32 network's matmuls round differently for a batch of 3 and of 5 (~1e-7)
    assert three.shape == (3, 2) and np.abs(three - five[:3]).max() < 1e-5


def test_bad_sampling_arguments(run):
    assert_one_line_error(cli("sample", run, "--steps", -2), "--steps")
    assert_one_line_error(cli("sample", run, "--sampler", "nope"), "nope")
    assert_one_line_error(cli("sample", ROOT / "no-such-run"), "no checkpoint")


def test_existing_run_is_not_overwritten(run):
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()}
    res = cli("train", ROOT / "configs/demo.toml", "--set", f"run.dir={run}", *TINY)
    assert_one_line_error(res, "holds a trained run", "--resume")
    assert before == {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()}


def test_checkpoint_of_another_model_and_corrupt_checkpoint(run, tmp_path):
    res = cli("train", ROOT / "configs/demo.toml", "--resume", "--set", f"run.dir={run}",
              *TINY[:-1], "--set", "model.mlp.hidden=24", "--set", "train.steps=8")
    assert_one_line_error(res, "does not fit this model")
    bad = tmp_path / "corrupt.safetensors"
    bad.write_bytes(b"\x00garbage" * 10)
    assert_one_line_error(cli("sample", bad), "not a readable diffspace checkpoint")
    assert_one_line_error(cli("info", bad), "not a readable diffspace checkpoint")


@pytest.mark.parametrize("what,words", [("folder", ["is a directory, expected a TOML config file"]),
                                        (os.devnull, ["is not a regular file"])])
def test_a_config_that_is_not_a_regular_file_says_what_it_is(tmp_path, what, words):
    """The break-it review: a folder or /dev/null given as the config once said "not found"."""
    path = tmp_path if what == "folder" else what
    assert_one_line_error(cli("train", path, "--dry-run"), f"config file {path} ", *words)


def test_seeds_outside_64_bits_are_one_line(tmp_path):
    """run.seed = 10**20 was a torch 'Overflow when unpacking long long' traceback, -1 a SeedSequence one
    at the first per-sample draw; every --seed takes what torch's generators take, 0..2**63 - 1."""
    from diffspace import runs
    from diffspace.rng import MAX_SEED
    from diffspace.runs.options import check_options
    from diffspace.types import UserError

    assert MAX_SEED == 2**63 - 1
    demo = ROOT / "configs/demo.toml"
    for bad in (10**20, -1):
        assert_one_line_error(cli("train", demo, "--dry-run", "--set", f"run.seed={bad}"),
                              f"run.seed must be in 0..{MAX_SEED}, got {bad}")
    assert cli("train", demo, "--dry-run", "--set", f"run.seed={MAX_SEED}").returncode == 0
    for command in (["sample", tmp_path], ["optimize-grid", tmp_path], ["train-featurenet", "--out", "x"]):
        assert_one_line_error(cli(*command, "--seed", 2**64), "argument --seed: a seed is in 0..")
    assert_one_line_error(cli("sample", tmp_path, "--seed", "1e3"), "a seed is an integer, got '1e3'")
    with pytest.raises(UserError, match=rf"seed \(--seed\) must be in 0\.\.{MAX_SEED}, got {2**64}$"):
        check_options(runs.SampleOptions(seed=2**64), frozenset({"seed"}), "continuous")


def test_a_weights_file_given_as_config_says_so(tmp_path):
    """`train RUN/checkpoints/last.safetensors --resume` read the weights as TOML ('malformed TOML')."""
    (tmp_path / "w.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    for extra in ((), ("--resume",)):
        assert_one_line_error(cli("train", tmp_path / "w.safetensors", *extra),
                              "w.safetensors is a weights file, not a TOML config", "--resume")


@pytest.mark.parametrize("argv,words", [
    (["eval", "{run}", "--json", ""], ["argument --json: an empty value"]),
    (["eval", "{run}", "--nfe", ""], ["argument --nfe: an empty value"]),
    (["sample", "{run}", "--out", " "], ["argument --out: an empty value"]),
    (["sample", ""], ["argument run: an empty value"]),
    (["eval", "{run}", "--json", "{tmp}/metrics/"], ["metrics/ names a folder; give a file name"]),
    (["eval", "{run}", "--json", "{tmp}/f/m.json"], ["f is a file, not a folder"]),
    (["eval", "{run}", "--json", "{tmp}/f"], ["f exists; choose a new name"]),
])
def test_an_empty_name_or_a_folder_is_no_output_file(run, tmp_path, argv, words):
    """An empty --json or --nfe was taken as not given (eval wrote no file, or a plain evaluation ran), an
    empty run as the current directory, and `--json DIR/` wrote a file named DIR."""
    (tmp_path / "f").write_text("mine\n")
    before = {p: p.stat().st_mtime_ns for p in [*run.rglob("*"), *tmp_path.rglob("*")]}
    assert_one_line_error(cli(*[a.format(run=run, tmp=tmp_path) for a in argv]), *words)
    assert before == {p: p.stat().st_mtime_ns for p in [*run.rglob("*"), *tmp_path.rglob("*")]}


@pytest.mark.parametrize("command,error,words", [
    ("train", RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't "
                           "allocate memory: you tried to allocate 40000000000 bytes. Error code 12"),
     ["diffspace: train stopped: out of memory (it asked for 40 GB more); use a smaller train.batch_size",
      "--accumulate N"]),
    ("train", type("OutOfMemoryError", (RuntimeError,), {})("CUDA out of memory. Tried to allocate 20.00 "
                                                             "GiB. GPU 0 has 79 GiB"),
     ["diffspace: train stopped: out of memory (it asked for 20.00 GiB more)"]),
    ("sample", PermissionError(13, "Permission denied", "/data/ro/.s.tmpab12cd34.npz"),
     ["diffspace: sample stopped: Permission denied: /data/ro/.s.tmpab12cd34.npz"]),
    ("sample", OSError("cannot write /x/last.safetensors: Error while serializing: I/O error: No space left"),
     ["diffspace: sample stopped: cannot write /x/last.safetensors: Error while serializing"]),
])
def test_what_the_machine_refuses_is_one_line(monkeypatch, capsys, command, error, words):
    """Out of memory (a batch too large), a read-only folder or a full disk was a traceback of 16-39 lines;
    it is one line naming the size or the file, with what to change where diffspace knows."""
    from diffspace.cli import main as cli_main

    def fails(args):
        raise error

    monkeypatch.setitem(cli_main.COMMANDS, command, fails)
    assert cli_main.main([command, "x"]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and all(w in lines[0] for w in words), lines


def test_other_runtime_errors_are_not_taken_for_out_of_memory(monkeypatch):
    from diffspace.cli import main as cli_main

    def train(args):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    monkeypatch.setitem(cli_main.COMMANDS, "train", train)
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        cli_main.main(["train", "cfg.toml"])


def test_a_trailing_slash_never_writes_beside_a_users_file(run, tmp_path):
    """`sample --out keep.png/` wrote the samples over the user's keep.npz: 'keep.png/' did not end in .png,
    so only keep.png was checked, and the arrays went to keep.npz."""
    (tmp_path / "keep.npz").write_text("the user's own\n")
    for out in ("keep.png/", "x.npz/"):
        assert_one_line_error(cli("sample", run, "--n", 5, "--out", f"{tmp_path}/{out}"),
                              f"{tmp_path}/{out} names a folder; give a file name")
    assert_one_line_error(cli("export", run, "--out", f"{tmp_path}/w.safetensors/"), "names a folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.npz"]
    assert (tmp_path / "keep.npz").read_text() == "the user's own\n"




def test_resume_cannot_move_a_run_and_a_dangling_link_is_no_run_dir(run, tmp_path):
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*")}
    res = cli("train", run, "--resume", "--set", f"run.dir={tmp_path / 'elsewhere'}",
              "--set", "train.steps=8", "--no-progress")
    assert_one_line_error(res, f"--resume continues the run in {run}", "run.dir cannot send it elsewhere")
    assert before == {p: p.stat().st_mtime_ns for p in run.rglob("*")} and not any(tmp_path.iterdir())
    (tmp_path / "link").symlink_to(tmp_path / "nowhere")
    res = cli("train", ROOT / "configs/demo.toml", "--set", f"run.dir={tmp_path / 'link'}", *TINY)
    assert_one_line_error(res, f"run directory {tmp_path / 'link'} is a link to {tmp_path / 'nowhere'}")
