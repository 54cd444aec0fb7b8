"""Few-step generation from the command line (issue 14): the ready-made configs train, `diffspace distill`
writes its rounds, `diffspace eval --nfe` writes the quality-against-NFE table and plot for a teacher and
its students alike, and the bad inputs of must-show 4 are one line, exit 2. Tiny sizes: these test the
plumbing and the bookkeeping (NFE per row, files, refusals); the quality is benchmarks/fewstep.py's."""

import json
from pathlib import Path

import pytest
from PIL import Image

from diffspace.eval.featurenet import train_featurenet
from test_cli import assert_one_line_error
from test_cli_images import in_process

ROOT = Path(__file__).resolve().parents[2]
TINY_DATA = ["--set", "train.batch_size=32", "--set", "eval.n=200", "--no-progress"]
TINY_MLP = ["--set", "model.mlp.hidden=16", "--set", "model.mlp.depth=1", "--set", "data.n_train=500",
            "--set", "data.n_test=200", *TINY_DATA]
TINY_UNET = ["--set", "model.unet.channels=8", "--set", "model.unet.attn_resolutions=[]", *TINY_DATA]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A tiny EDM run on the checkerboard (Heun, like the benchmark's teacher)."""
    from diffspace.cli.main import main

    d = tmp_path_factory.mktemp("fewstep") / "teacher"
    assert main(["train", str(ROOT / "configs/demo.toml"), "--set", f"run.dir={d}", "--set", "train.steps=4",
                 *TINY_MLP]) == 0
    return d


def _nfe_rows(run: Path) -> list[dict]:
    return json.loads((run / "nfe.json").read_text())


@pytest.mark.parametrize("config, tiny", [("checkerboard-meanflow", TINY_MLP), ("checkerboard-ict", TINY_MLP),
                                          ("digits-meanflow", TINY_UNET), ("digits-ict", TINY_UNET)])
def test_fewstep_configs_train_and_sample_at_each_nfe(config, tiny, tmp_path, capsys):
    """Each ready-made config trains with `diffspace train`, and its few-step sampler makes exactly N
    network calls for N = 1, 2, 4 (one jump or one consistency step per call)."""
    run = tmp_path / "run"
    res = in_process(capsys, "train", ROOT / f"configs/{config}.toml", "--set", f"run.dir={run}",
                     "--set", "train.steps=2", *tiny)
    assert res.returncode == 0, res.stderr
    images = []
    if config.startswith("digits"):  # a small feature net instead of the default one trained on demand
        train_featurenet("digits", tmp_path / "fn.safetensors", steps=5, width=8)
        images = ["--featurenet", tmp_path / "fn.safetensors"]
    res = in_process(capsys, "eval", run, "--nfe", "1,2,4", "--n", 20, *images)
    assert res.returncode == 0, res.stderr
    rows = _nfe_rows(run)
    assert [(r["nfe"], r["nfe_asked"], r["steps"]) for r in rows] == [(1, 1, 1), (2, 2, 2), (4, 4, 4)]
    assert f"{rows[0]['sampler']} on the {rows[0]['grid']} grid" in res.stdout  # the table names its protocol
    metric = "fid_ratio" if config.startswith("digits") else "sw2_ratio"
    assert all(r[metric] > 0 for r in rows)
    assert "replacing" not in res.stdout
    if config == "checkerboard-meanflow":  # a second curve says it replaced the first
        again = in_process(capsys, "eval", run, "--nfe", "1,2", "--n", 20)
        assert again.returncode == 0 and f"(replacing the earlier curves of {run})" in again.stdout
        assert [r["nfe"] for r in _nfe_rows(run)] == [1, 2]


def test_distill_progressive_then_nfe_curve_of_teacher_and_students(teacher, tmp_path, capsys):
    """`diffspace distill --method progressive --steps 2`: two rounds (2 then 1 DDIM steps), each a run whose
    config names its teacher and which was evaluated; then one `eval --nfe --compare` draws the teacher
    (Heun: 2n - 1 calls, so NFE 2 is met with 1) and both students (DDIM: N calls) on one plot."""
    out = tmp_path / "pd"
    res = in_process(capsys, "distill", teacher, "--method", "progressive", "--steps", 2, "--out", out,
                     "--set", "train.steps=3", "--set", "train.batch_size=32", "--no-progress")
    assert res.returncode == 0, res.stderr
    record = json.loads((out / "distill.json").read_text())
    assert record["method"] == "progressive"
    assert [r["round"] for r in record["rounds"]] == [0, 1, 2]
    assert [r["steps"] for r in record["rounds"][1:]] == [2, 1]
    assert [r["train_steps"] for r in record["rounds"][1:]] == [3, 3]
    assert all(r["sw2_ratio"] > 0 for r in record["rounds"][1:])
    assert str(teacher.resolve()) in (out / "round_1" / "config.toml").read_text()
    assert str(out / "round_1") in (out / "round_2" / "config.toml").read_text()

    res = in_process(capsys, "eval", teacher, "--nfe", "1,2,4", "--n", 50, "--compare", out / "round_1",
                     out / "round_2")
    assert res.returncode == 0, res.stderr
    heun = _nfe_rows(teacher)
    assert [(r["nfe_asked"], r["nfe"], r["steps"], r["sampler"]) for r in heun] == \
        [(1, 1, 1, "heun"), (2, 1, 1, "heun"), (4, 3, 2, "heun")]
    for student in ("round_1", "round_2"):
        rows = _nfe_rows(out / student)
        assert [(r["nfe"], r["steps"], r["sampler"], r["n"]) for r in rows] == \
            [(1, 1, "ddim", 50), (2, 2, "ddim", 50), (4, 4, "ddim", 50)]
    assert "round_2 (ddim)" in res.stdout and "teacher (heun)" in res.stdout
    with Image.open(teacher / "nfe.png") as im:
        assert im.width > 400 and im.height > 300
    assert not (out / "round_1" / "nfe.png").exists()  # one plot, in the first run's directory


def test_distill_reflow_pairs_and_straightness(teacher, tmp_path, capsys):
    """`diffspace distill --method reflow`: a rectified flow on the teacher's deterministic (noise, sample)
    pairs, Euler in uniform t as its sampler, the straightness of teacher and student in metrics.json."""
    out = tmp_path / "rf"
    res = in_process(capsys, "distill", teacher, "--method", "reflow", "--out", out, "--set", "train.steps=3",
                     "--set", "fewstep.pairs=64", "--set", "train.batch_size=32", "--no-progress")
    assert res.returncode == 0, res.stderr
    metrics = json.loads((out / "round_1" / "metrics.json").read_text())
    record = json.loads((out / "distill.json").read_text())["rounds"]
    assert metrics["straightness_teacher"] == record[0]["straightness"] > 0
    assert metrics["straightness"] == record[1]["straightness"] >= 0
    cfg = (out / "round_1" / "config.toml").read_text()
    assert 'pair_sampler = "heun"' in cfg and 'sampler = "euler"' in cfg and 'path = "linear"' in cfg


def test_bad_fewstep_input_is_one_line_exit_2(teacher, tmp_path, capsys):
    """Must-show 4: distilling a text run, a stochastic sampler for reflow pairs, an NFE list with 0."""
    text_run = tmp_path / "text"
    (tmp_path / "corpus.txt").write_text("the quick brown fox jumps over the lazy dog. " * 50)
    (tmp_path / "t.toml").write_text(
        f'task = "text"\n[run]\ndir = "{text_run}"\n[data]\ncorpus = "{tmp_path / "corpus.txt"}"\n'
        'seq_len = 16\n[model]\nkind = "mdlm"\ndim = 16\ndepth = 1\nheads = 2\n[train]\nsteps = 1\n'
        'batch_size = 4\n')
    assert in_process(capsys, "train", tmp_path / "t.toml", "--no-progress").returncode == 0
    assert_one_line_error(in_process(capsys, "distill", text_run, "--method", "consistency"),
                          "distill needs a continuous run as teacher", "text run")
    for sampler in ("euler_maruyama", "edm_sde"):
        res = in_process(capsys, "distill", teacher, "--method", "reflow", "--out", tmp_path / "rf",
                         "--set", f"fewstep.pair_sampler={sampler}")
        assert_one_line_error(res, f"fewstep.pair_sampler = {sampler!r}", "deterministic sampler")
    assert not (tmp_path / "rf" / "round_1" / "checkpoints").exists()
    for nfe in ("0", "1,0,4", "-2", "1000000000"):  # the last ran for minutes into 24 GB before failing
        assert_one_line_error(in_process(capsys, "eval", teacher, "--nfe", nfe), "--nfe",
                              "integers in 1..10000")
    assert_one_line_error(in_process(capsys, "eval", teacher, "--nfe", "1,two"), "--nfe", "'1,two'")


def test_distill_refuses_before_training_what_it_would_lose_or_not_honour(teacher, tmp_path, capsys):
    """--rounds below 1 (0 read as the default and trained every round; -1 did nothing, exit 0); a
    distill.json distill did not write (it was replaced); an --out that is a file (a traceback); an earlier
    distillation without --overwrite (it said "use --resume", an option distill does not have). Each is
    one line, exit 2, and leaves the folder as it was."""
    rounds = lambda *extra: in_process(capsys, "distill", teacher, "--method", "progressive", "--steps", 2,  # noqa: E731
                                       "--set", "train.steps=2", "--set", "train.batch_size=32",
                                       "--no-progress", *extra)
    for bad in ("0", "-1"):
        assert_one_line_error(rounds("--rounds", bad, "--out", tmp_path / "r"), "rounds (--rounds)",
                              f"must be positive, got {bad}")
    assert not (tmp_path / "r").exists()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "distill.json").write_text('{"my": "notes"}\n')
    for extra in ((), ("--overwrite",)):
        assert_one_line_error(rounds("--out", mine, *extra), "distill.json was not written by diffspace")
    assert (mine / "distill.json").read_text() == '{"my": "notes"}\n' and sorted(mine.iterdir()) == \
        [mine / "distill.json"]
    (tmp_path / "file.toml").write_text("x = 1\n")
    assert_one_line_error(rounds("--out", tmp_path / "file.toml"), "is a file")
    out = tmp_path / "pd"
    assert rounds("--out", out).returncode == 0
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    res = rounds("--out", out)
    assert_one_line_error(res, "holds an earlier distillation (distill.json, round_1, round_2)",
                          "--overwrite replaces it")
    assert "--resume" not in res.stderr
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before
    assert rounds("--out", out, "--overwrite").returncode == 0
