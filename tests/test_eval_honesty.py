"""Evaluation that says how much to trust it: bootstrap standard errors (checked against the analytic
standard error of a mean), metrics marked UNRELIABLE when the feature net is near chance, and progress
logged while a scorer trains."""

import logging
import math

import pytest
import torch

from diffspace import runs
from diffspace.eval.featurenet import train_featurenet
from diffspace.eval.metrics import bootstrap_se


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
