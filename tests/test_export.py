"""Weights-only export (`diffspace export RUN [--ema] --out FILE.safetensors`, runs.export_weights): the file
holds exactly one set of the run's weights under the module's own keys and the run's metadata without its
training state; `diffspace sample FILE` gives the samples of the run itself; nothing is ever replaced."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from diffspace import runs
from diffspace.cli.main import main
from diffspace.train.checkpoint import WEIGHTS_FORMAT, load_checkpoint, split_prefix

ROOT = Path(__file__).resolve().parents[1]
TINY = ["model.mlp.hidden=16", "model.mlp.depth=1", "train.steps=30", "train.batch_size=64",
        "data.n_train=500", "data.n_test=100"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("export") / "run"
    runs.train(runs.load_config(ROOT / "configs/demo.toml", [f"run.dir={d}", *TINY]))
    return d


@pytest.mark.parametrize("ema,prefix", [(True, "ema.module."), (False, "model.")])
def test_weights_file_holds_one_set_and_the_metadata(run_dir, tmp_path, capsys, ema, prefix):
    out = tmp_path / "model.safetensors"
    assert main(["export", str(run_dir), "--out", str(out), *(["--ema"] if ema else [])]) == 0
    tensors, meta = load_checkpoint(run_dir / "checkpoints" / "last.safetensors")
    expected = split_prefix(tensors, prefix)
    got = load_file(out)
    assert set(got) == set(expected) == set(runs.load_run(run_dir).module.state_dict())
    assert all(torch.equal(got[k], expected[k]) for k in got)
    with safe_open(str(out), "pt") as f:
        header = json.loads(f.metadata()["diffspace"])
    assert header["format"] == WEIGHTS_FORMAT and header["weights"] == ("ema" if ema else "model")
    assert header["step"] == meta["step"] and header["config"] == meta["config"]
    assert not {"optim_groups", "sched"} & set(header)  # no training state
    assert out.stat().st_size < (run_dir / "checkpoints" / "last.safetensors").stat().st_size / 3


def test_the_two_sets_differ(run_dir):
    tensors, _ = load_checkpoint(run_dir / "checkpoints" / "last.safetensors")
    ema, raw = split_prefix(tensors, "ema.module."), split_prefix(tensors, "model.")
    assert any(not torch.equal(ema[k], raw[k]) for k in ema)  # so the test above tells them apart


def test_sampling_a_weights_file_equals_sampling_the_run(run_dir, tmp_path):
    out = tmp_path / "ema.safetensors"
    assert main(["export", str(run_dir), "--ema", "--out", str(out)]) == 0
    for source, samples in ((run_dir, tmp_path / "a.npz"), (out, tmp_path / "b.npz")):
        assert main(["sample", str(source), "--n", "64", "--steps", "4", "--out", str(samples)]) == 0
    a, b = (np.load(tmp_path / name)["samples"] for name in ("a.npz", "b.npz"))
    assert np.array_equal(a, b)
    run = runs.load_run(out)
    assert run.meta["weights"] == "ema" and run.step == runs.load_run(run_dir).step


def test_info_counts_the_parameters_of_a_weights_file(run_dir, tmp_path, capsys):
    out = tmp_path / "ema.safetensors"
    assert main(["export", str(run_dir), "--ema", "--out", str(out)]) == 0
    counts = []
    for source in (run_dir, out):
        capsys.readouterr()
        assert main(["info", str(source)]) == 0
        counts.append(next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("parameters")))
    assert counts[0] == counts[1] and counts[0].split()[-1] != "0"


def test_export_never_replaces_and_checks_names(run_dir, tmp_path, capsys):
    taken = tmp_path / "taken.safetensors"
    taken.write_text("mine")
    for argv, words in (([str(run_dir), "--out", str(taken)], ["exists"]),
                        ([str(run_dir), "--out", str(tmp_path / "model.pt")], [".safetensors"]),
                        ([str(run_dir), "--format", "diffusers", "--out", str(tmp_path / "d")],
                         ["model.net unet or dit"])):
        assert main(["export", *argv]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and all(w in lines[0] for w in words), lines
    assert taken.read_text() == "mine" and not (tmp_path / "d").exists()


def test_eval_of_a_weights_file_says_to_give_the_run_directory(run_dir, tmp_path, capsys):
    weights = tmp_path / "w.safetensors"
    assert main(["export", str(run_dir), "--out", str(weights)]) == 0
    capsys.readouterr()
    assert main(["eval", str(weights), "--n", "50"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "so metrics.json is not written there" in lines[0], lines
    assert "give that (an exported weights file can be sampled with --out)" in lines[0], lines
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.safetensors"]
