"""`train-featurenet` / `train-classifier` (and train_featurenet / train_classifier): the artifact is a new
.safetensors file with a new .json beside it, both written atomically; an existing file, another suffix or
an option the data set cannot use is refused with one line before any training, and a refused or failed
command leaves the folder byte for byte as it was, with no temp file."""

import json
from pathlib import Path

import pytest

import diffspace.eval.featurenet as featurenet
from diffspace.eval.featurenet import load_classifier, train_classifier, train_featurenet
from diffspace.files import atomic_write
from diffspace.types import UserError
from test_cli import assert_one_line_error
from test_cli_images import in_process

COMMANDS = [("train-featurenet", "featurenet"), ("train-classifier", "noisy_classifier")]


def _tree(root: Path) -> dict[str, bytes | None]:
    """Every path under root with its bytes (None for a folder)."""
    return {p.relative_to(root).as_posix(): None if p.is_dir() else p.read_bytes() for p in root.rglob("*")}


@pytest.fixture
def no_training(monkeypatch):
    """Fail the test if training starts: a refusal must come first."""
    def fit(*_):
        raise AssertionError("training started before the refusal")

    monkeypatch.setattr(featurenet, "_fit", fit)


@pytest.mark.parametrize("command,kind", COMMANDS)
def test_a_run_writes_the_weights_and_the_json_beside_them(tmp_path, capsys, command, kind):
    out = tmp_path / "new" / "c.safetensors"
    res = in_process(capsys, command, "--out", out, "--steps", 2)
    assert res.returncode == 0, res.stderr
    assert sorted(_tree(tmp_path)) == ["new", "new/c.json", "new/c.safetensors"]  # no temp file left
    _, meta = load_classifier(out, kind)
    meta.pop("format")  # the header's own; the .json holds the rest
    assert json.loads((tmp_path / "new" / "c.json").read_text()) == meta


@pytest.mark.parametrize("command", [c for c, _ in COMMANDS])
@pytest.mark.parametrize("existing", ["c.safetensors", "c.json", "c.safetensors/"])
def test_an_existing_output_is_refused_before_training(tmp_path, capsys, no_training, command, existing):
    if existing.endswith("/"):
        (tmp_path / existing).mkdir()
        (tmp_path / existing / "mine.txt").write_text("mine\n")
    else:
        (tmp_path / existing).write_bytes(b"the user's own bytes\n")
    before = _tree(tmp_path)
    res = in_process(capsys, command, "--out", tmp_path / "c.safetensors", "--steps", 2)
    assert_one_line_error(res, f"{tmp_path / existing.rstrip('/')} exists; choose a new name")
    assert _tree(tmp_path) == before


@pytest.mark.parametrize("out", ["fn.json", "fn.npz", "fn"])
def test_an_output_other_than_safetensors_is_refused(tmp_path, capsys, no_training, out):
    res = in_process(capsys, "train-featurenet", "--out", tmp_path / out, "--steps", 2)
    assert_one_line_error(res, f"--out {tmp_path / out}: a classifier is saved as a .safetensors file")
    assert _tree(tmp_path) == {}


def test_an_output_inside_a_file_is_refused(tmp_path, capsys, no_training):
    (tmp_path / "f").write_bytes(b"mine\n")
    res = in_process(capsys, "train-classifier", "--out", tmp_path / "f" / "c.safetensors", "--steps", 2)
    assert_one_line_error(res, f"{tmp_path / 'f'} is a file, not a folder")
    assert _tree(tmp_path) == {"f": b"mine\n"}


@pytest.mark.parametrize("args,words", [
    (["--size", -1], ["image size must be >= 0", "got -1"]),
    (["--size", 24], ["data 'digits' keeps its images' own size", "got 24"]),
    (["--path", "some/folder"], ["data 'digits' is embedded and takes no file", "'some/folder'"]),
    (["--data", "lfw", "--path", "x.npz"], ["data 'lfw' is embedded and takes no file"]),
])
def test_an_option_the_data_cannot_use_is_refused(tmp_path, capsys, no_training, args, words):
    res = in_process(capsys, "train-featurenet", "--out", tmp_path / "c.safetensors", "--steps", 2, *args)
    assert_one_line_error(res, *words)
    assert _tree(tmp_path) == {}


def test_the_library_refuses_as_the_cli_does(tmp_path, no_training):
    (tmp_path / "c.json").write_bytes(b"mine\n")
    with pytest.raises(UserError, match="c.json exists"):
        train_classifier("digits", tmp_path / "c.safetensors", steps=2)
    with pytest.raises(UserError, match="image size must be >= 0"):
        train_featurenet("digits", tmp_path / "d.safetensors", steps=2, size=-1)
    assert _tree(tmp_path) == {"c.json": b"mine\n"}


def test_a_file_that_appears_during_training_is_not_replaced(tmp_path, monkeypatch):
    fit = featurenet._fit

    def fit_then_user_writes(*args):
        fit(*args)
        (tmp_path / "c.json").write_bytes(b"written meanwhile\n")

    monkeypatch.setattr(featurenet, "_fit", fit_then_user_writes)
    with pytest.raises(UserError, match="c.json exists"):
        train_featurenet("digits", tmp_path / "c.safetensors", steps=2, width=8)
    assert _tree(tmp_path) == {"c.json": b"written meanwhile\n"}


def test_a_failed_json_write_leaves_neither_file(tmp_path, monkeypatch):
    def full_disk(path):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(featurenet, "atomic_write", full_disk)
    with pytest.raises(OSError, match="No space left"):
        train_featurenet("digits", tmp_path / "c.safetensors", steps=2, width=8)
    assert _tree(tmp_path) == {}


def test_a_rename_onto_a_folder_fails_and_leaves_no_temp_file(tmp_path):
    (tmp_path / "c.safetensors").mkdir()
    with pytest.raises(IsADirectoryError), atomic_write(tmp_path / "c.safetensors") as tmp:
        tmp.write_bytes(b"new\n")
    assert _tree(tmp_path) == {"c.safetensors": None}


def test_a_runs_stale_featurenet_json_does_not_stop_evaluation(tmp_path):
    """RUN/featurenet.json without its weights (deleted to train again) is diffspace's own: evaluation
    trains the feature net into the run again instead of refusing the .json as a user's file."""
    from types import SimpleNamespace

    from diffspace.runs.continuous import DataConfig
    from diffspace.runs.evaluation import featurenet_for

    (tmp_path / "featurenet.json").write_text('{"stale": true}\n')
    run = SimpleNamespace(dir=tmp_path, cfg=SimpleNamespace(data=DataConfig(name="digits"),
                                                            eval=SimpleNamespace(featurenet_steps=2),
                                                            run=SimpleNamespace(seed=0)))
    net, meta = featurenet_for(run)
    assert meta["data"] == "digits"
    assert sorted(_tree(tmp_path)) == ["featurenet.json", "featurenet.safetensors"]
    written = json.loads((tmp_path / "featurenet.json").read_text())
    assert written == {k: v for k, v in meta.items() if k != "format"}


@pytest.mark.parametrize("steps", [0, -3])
def test_fewer_than_one_step_is_refused_before_any_work(tmp_path, capsys, no_training, steps):
    """The CLI refused --steps 0 itself; the library divided its learning-rate schedule by zero."""
    res = in_process(capsys, "train-classifier", "--out", tmp_path / "c.safetensors", "--steps", steps)
    assert_one_line_error(res, f"steps (--steps) must be a positive integer, got {steps}")
    with pytest.raises(UserError, match="must be a positive integer, got 0"):
        train_featurenet("digits", tmp_path / "d.safetensors", steps=0)
    assert _tree(tmp_path) == {}
