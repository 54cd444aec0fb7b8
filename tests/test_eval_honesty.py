"""Evaluation that says how much to trust it: bootstrap standard errors (checked against the analytic
standard error of a mean), metrics marked UNRELIABLE when the feature net is near chance, progress
logged while a scorer trains, and samples with NaN or inf refused before anything is written."""

import logging
import math
from pathlib import Path

import pytest
import torch

from diffspace import runs
from diffspace.eval.featurenet import train_featurenet
from diffspace.eval.metrics import baseline_ratio, bootstrap_se, mmd_rbf
from diffspace.runs.options import check_finite_samples, check_sample_count
from diffspace.types import UserError
from test_cli import assert_one_line_error, cli

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_bootstrap_se_of_a_mean_matches_sigma_over_sqrt_n():
    x = torch.randn(400, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 3.0
    se = bootstrap_se(lambda a: float(a.mean()), x, reps=400)
    assert se == pytest.approx(float(x.std()) / math.sqrt(len(x)), rel=0.1)  # 1/sqrt(2*399) ~ 3.5 % noise
    assert bootstrap_se(lambda a: float(a.mean()), x, reps=400) == se  # seeded


def test_vector_metrics_carry_standard_errors(tmp_path):
    run = runs.train({"run": {"dir": str(tmp_path)}, "model": {"mlp": {"hidden": 16, "depth": 1}},
                      "data": {"n_train": 400, "n_test": 200},
                      "train": {"steps": 30, "batch_size": 64, "log_every": 30, "ckpt_every": 30}})
    m = runs.evaluate(run, runs.EvalOptions(n=200, steps=4))
    assert 0 < m["sw2_se"] < m["sw2"] and 0 < m["sw2_data_baseline_se"] < m["sw2_data_baseline"]


@pytest.mark.slow
def test_metrics_of_a_chance_level_feature_net_are_marked(tmp_path, caplog):
    fn = tmp_path / "weak.safetensors"
    with caplog.at_level(logging.INFO, logger="diffspace"):
        meta = train_featurenet("digits", fn, steps=2, width=8)
    progress = [r.message for r in caplog.records if "training the feature net on digits: step" in r.message]
    assert len(progress) == 2 and progress[-1].startswith("training the feature net on digits: step 2/2")
    assert meta["test_accuracy"] < 0.5
    unet = {"channels": 8, "channel_mults": [1], "num_res_blocks": 1, "attn_resolutions": []}
    run = runs.train({"run": {"dir": str(tmp_path / "run")}, "data": {"name": "digits"},
                      "model": {"net": "unet", "unet": unet}, "train": {"steps": 1, "batch_size": 8}})
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="diffspace"):
        m = runs.evaluate(run, runs.EvalOptions(n=20, steps=2, featurenet=str(fn)))
    assert m["featurenet_warning"].startswith(f"UNRELIABLE: the feature net's test accuracy is "
                                              f"{meta['test_accuracy']:.3f} < 0.9")
    assert [r.message for r in caplog.records if r.levelno == logging.WARNING] == [m["featurenet_warning"]]
    assert m["fid_se"] > 0 and m["fid_real_baseline_se"] > 0


def _nan_checkpoint(run_dir):
    """Set one weight of the run's last checkpoint to NaN (a run saved just before it diverged)."""
    from diffspace.train.checkpoint import load_checkpoint, save_checkpoint

    path = run_dir / "checkpoints" / "last.safetensors"
    tensors, meta = load_checkpoint(path)
    for k in tensors:
        if k.endswith("weight") and tensors[k].is_floating_point():
            tensors[k].view(-1)[0] = float("nan")
    save_checkpoint(path, tensors, {k: v for k, v in meta.items() if k != "format"})


def test_non_finite_samples_are_counted_and_refused():
    x = torch.zeros(5, 3, 2)
    x[1, 0, 0], x[3, 2, 1], x[3, 0, 0] = float("nan"), float("inf"), -float("inf")
    with pytest.raises(UserError, match=r"^the model produced non-finite samples \(2 of 5\), so nothing "):
        check_finite_samples(x)
    check_finite_samples(torch.zeros(0, 2))  # nothing to refuse
    check_finite_samples(torch.full((3, 2), 1e30))


def test_a_model_with_nan_weights_writes_no_samples(tmp_path):
    run_dir = tmp_path / "run"
    runs.train({"run": {"dir": str(run_dir)}, "model": {"mlp": {"hidden": 16, "depth": 1}},
                "data": {"n_train": 400, "n_test": 200},
                "train": {"steps": 4, "batch_size": 64, "log_every": 4, "ckpt_every": 4}})
    _nan_checkpoint(run_dir)
    before = sorted(p.name for p in run_dir.iterdir())
    with pytest.raises(UserError, match=r"non-finite samples \(7 of 7\)"):
        runs.sample(runs.load_run(run_dir), runs.SampleOptions(n=7, steps=3))
    out = tmp_path / "s.npz"
    res = cli("sample", run_dir, "--n", "7", "--steps", "3", "--out", out)
    assert_one_line_error(res, "non-finite samples (7 of 7)", "nothing was written")
    assert not out.exists() and not out.with_suffix(".png").exists()
    res = cli("eval", run_dir, "--n", "50", "--steps", "3")
    assert_one_line_error(res, "non-finite samples (50 of 50)")
    res = cli("eval", run_dir, "--nfe", "2,4", "--n", "50")
    assert_one_line_error(res, "non-finite samples (50 of 50)")
    assert sorted(p.name for p in run_dir.iterdir()) == before  # no metrics.json, nfe.json or pictures


def test_a_family_model_with_nan_weights_writes_no_samples(tmp_path):
    run_dir = tmp_path / "vae"
    runs.train(CONFIGS / "checkerboard-vae.toml",
               ["data.n_train=400", "data.n_test=200", "train.steps=2", "train.batch_size=32",
                "train.warmup_steps=1", "train.ckpt_every=2", "model.hidden=16", f"run.dir={run_dir}"])
    _nan_checkpoint(run_dir)
    with pytest.raises(UserError, match=r"^the vae model of .* non-finite samples \(9 of 9\)"):
        runs.sample(runs.load_run(run_dir), runs.SampleOptions(n=9))


def test_scores_need_two_samples_and_a_nonzero_baseline():
    """n = 1 wrote MMD NaN (invalid JSON) and a standard error of 0; a baseline of 0 (constant data) was
    a ZeroDivisionError traceback; MMD of coincident points took the median of no distances (NaN)."""
    with pytest.raises(UserError, match=r"^n \(--n\) must be at least 2 to score samples, got 1$"):
        check_sample_count(n=1)
    with pytest.raises(UserError, match=r"^nll_n \(--nll-n\) must be at least 2"):
        check_sample_count(n=5, nll_n=1)
    check_sample_count(n=2, nll_n=None)
    assert baseline_ratio(3.0, 2.0, "sw2") == 1.5
    with pytest.raises(UserError, match=r"the data baseline of fid is 0 .* fid_ratio is undefined"):
        baseline_ratio(1.0, 0.0, "fid")
    same = torch.ones(50, 2)
    assert mmd_rbf(same, same.clone()) == 0.0
    # cross distances^2 are 2, the median heuristic's bandwidth sqrt(2): k = exp(-2 / 4) across, 1 within
    assert mmd_rbf(same, same + 1.0) == pytest.approx(2.0 - 2.0 * math.exp(-0.5))


def test_eval_refuses_one_sample_and_constant_data_in_one_line(tmp_path):
    run_dir = tmp_path / "run"
    runs.train({"run": {"dir": str(run_dir)}, "model": {"mlp": {"hidden": 16, "depth": 1}},
                "data": {"n_train": 400, "n_test": 200},
                "train": {"steps": 2, "batch_size": 64, "log_every": 2, "ckpt_every": 2}})
    assert_one_line_error(cli("eval", run_dir, "--n", "1", "--steps", "2"), "n (--n) must be at least 2")
    assert_one_line_error(cli("eval", run_dir, "--n", "20", "--steps", "2", "--nll", "--nll-n", "1"),
                          "nll_n (--nll-n) must be at least 2")
    assert_one_line_error(cli("eval", run_dir, "--nfe", "1,2", "--n", "1"), "n (--n) must be at least 2")
    assert not (run_dir / "metrics.json").exists() and not (run_dir / "nfe.json").exists()
    np = pytest.importorskip("numpy")
    np.save(tmp_path / "const.npy", np.ones((300, 2), dtype=np.float32))
    const = tmp_path / "const"
    runs.train({"run": {"dir": str(const)}, "model": {"mlp": {"hidden": 16, "depth": 1}},
                "data": {"name": "file", "file": str(tmp_path / "const.npy")},
                "train": {"steps": 2, "batch_size": 64, "log_every": 2, "ckpt_every": 2}})
    assert_one_line_error(cli("eval", const, "--n", "50", "--steps", "2"), "the data baseline of sw2 is 0")
    assert not (const / "metrics.json").exists()
