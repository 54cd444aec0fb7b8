"""The files of a run directory as a crash or a hand edit leaves them: a torn last log line is dropped and a
resume continues; a corrupt log refuses the resume with one line and changes nothing; `info` and `report`
only read, so a file they cannot read is one 'unreadable' note and the rest is shown; a diverging run says
which checkpoint it kept, or that there is none."""

import shutil
from pathlib import Path

import pytest

from diffspace import runs
from diffspace.cli.main import main
from diffspace.train.checkpoint import load_checkpoint
from diffspace.train.loop import read_log
from diffspace.types import TrainingError, UserError

ROOT = Path(__file__).resolve().parents[1]
TINY = ["model.mlp.hidden=16", "model.mlp.depth=1", "train.batch_size=32", "data.n_train=500",
        "data.n_test=100", "train.log_every=5", "train.ckpt_every=10"]
ROW = '{"step": %d, "loss": 1.0, "grad_norm": 1.0, "lr": 0.001}\n'


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    d = tmp_path_factory.mktemp("files") / "base"
    runs.train(ROOT / "configs/demo.toml", [f"run.dir={d}", "train.steps=20", *TINY])
    return d


@pytest.fixture
def run(base, tmp_path):
    return Path(shutil.copytree(base, tmp_path / "run"))


def _files(d: Path) -> dict[str, bytes]:
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def _corrupt_middle(log: Path, line: str) -> None:
    rows = log.read_text().splitlines(keepends=True)
    log.write_text("".join([rows[0], line + "\n", *rows[1:]]))


def test_read_log_drops_a_torn_last_line_and_refuses_any_other_bad_line(tmp_path):
    log = tmp_path / "log.jsonl"
    assert read_log(log) == []
    log.write_text(ROW % 5 + ROW % 10 + '{"step": 11, "loss": 1.0')
    assert [r["step"] for r in read_log(log)] == [5, 10]
    for bad in ('{"step": 7, "loss"', "{}", "[1, 2]", '{"step": "7", "loss": 1.0, "grad_norm": 1, "lr": 1}'):
        log.write_text(ROW % 5 + bad + "\n" + ROW % 10)
        with pytest.raises(UserError, match=r"log.jsonl is corrupt: line 2 is not a JSON object"):
            read_log(log)
    log.write_text(ROW % 5 + "{}\n")  # parses, so no torn write: a bad row even at the end
    with pytest.raises(UserError, match="line 2"):
        read_log(log)


def test_resume_after_a_torn_log_line_continues_to_the_end(run):
    (run / "samples.png").write_bytes(b"computed from the step-20 weights")
    with open(run / "log.jsonl", "a") as f:
        f.write('{"step": 21, "loss": 1.0')  # a crash during the append
    resumed = runs.train(run, ["train.steps=30"], resume=True)
    assert resumed.step == 30 and load_checkpoint(run / "checkpoints/last.safetensors")[1]["step"] == 30
    assert [r["step"] for r in read_log(run / "log.jsonl")] == [5, 10, 15, 20, 25, 30]
    assert (run / "log.jsonl").read_text().endswith("}\n")
    assert (run / "stale/step_00000020/samples.png").is_file()


def test_resume_refuses_a_corrupt_log_and_changes_nothing(run, capsys):
    _corrupt_middle(run / "log.jsonl", '{"step": 6, "lo')
    (run / "samples.png").write_bytes(b"computed from the step-20 weights")
    before = _files(run)
    assert main(["train", str(run), "--resume", "--set", "train.steps=30", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"diffspace: error: {run / 'log.jsonl'} is corrupt: line 2 is not a JSON object with "
                   "numbers step, loss, grad_norm, lr; mend it, or move log.jsonl aside, to resume"]
    assert _files(run) == before  # nothing retired to stale/, config.toml and the log untouched


@pytest.mark.parametrize("name, text, why", [
    ("metrics.json", '{"sw2": 0.1', "metrics.json: not valid JSON"),
    ("metrics.json", "[]", "metrics.json: expected a JSON object, found array"),
    ("nfe.json", '[{"nfe": 3', "nfe.json: not valid JSON"),
    ("nfe.json", '{"nfe": 3}', "nfe.json: expected a JSON array, found object"),
    ("grids.json", "[", "grids.json: not valid JSON"),
    ("log.jsonl", None, "log.jsonl is corrupt: line 2"),
])
def test_info_and_report_note_an_unreadable_file_and_show_the_rest(run, capsys, name, text, why):
    if text is None:
        _corrupt_middle(run / name, "{}")
    else:
        (run / name).write_text(text)
    assert main(["info", str(run)]) == 0
    out = capsys.readouterr().out
    assert "step        20 of 20" in out and "[train]" in out
    if name != "nfe.json":  # info does not read nfe.json
        assert any(line.split()[1] == "unreadable:" and why in line for line in out.splitlines())
    assert main(["report", str(run)]) == 0
    page = (run / "report.html").read_text()
    assert why in page and "left out of this report" in page and '<section id="config">' in page
    if name != "log.jsonl":
        assert '<section id="curves">' in page  # the readable log is still drawn


def test_info_and_report_skip_a_torn_last_log_line(run, capsys):
    with open(run / "log.jsonl", "a") as f:
        f.write('{"step": 21, "loss"')
    assert main(["info", str(run)]) == 0
    assert "at step 20" in capsys.readouterr().out
    assert main(["report", str(run)]) == 0
    page = (run / "report.html").read_text()
    assert '<section id="curves">' in page and "left out of this report" not in page


DIVERGE = ["train.lr=1e4", "train.warmup_steps=0", "train.grad_clip=0", "train.steps=40"]


def test_divergence_before_the_first_checkpoint_says_there_is_none(tmp_path):
    with pytest.raises(TrainingError, match="no checkpoint was saved before it, so there is nothing to"):
        runs.train(ROOT / "configs/demo.toml", [f"run.dir={tmp_path / 'div'}", *TINY, *DIVERGE])
    assert not (tmp_path / "div/checkpoints").exists()


def test_divergence_names_the_checkpoint_it_kept(tmp_path):
    d = tmp_path / "div"
    with pytest.raises(TrainingError, match=r"the last good checkpoint \(step (\d+)\) is kept at (.*)") as e:
        runs.train(ROOT / "configs/demo.toml", [f"run.dir={d}", *TINY, *DIVERGE, "train.ckpt_every=1"])
    step = int(str(e.value).split("(step ")[1].split(")")[0])
    assert str(e.value).endswith(f"is kept at {d / 'checkpoints/last.safetensors'}")
    assert load_checkpoint(d / "checkpoints/last.safetensors")[1]["step"] == step >= 1
