"""Feature net and noise-aware classifier artifacts, and a tiny end-to-end digits training whose samples
must beat noise clearly on the feature-net FID."""

import json

import pytest
import torch

from diffspace import runs
from diffspace.data.images import load_digits
from diffspace.eval.featurenet import (
    features,
    load_classifier,
    load_noisy_classifier,
    predict,
    train_classifier,
    train_featurenet,
)
from diffspace.eval.image_metrics import fid_from_features
from diffspace.runs.continuous import load_data
from diffspace.types import UserError


@pytest.fixture(scope="module")
def featurenet(tmp_path_factory):
    path = tmp_path_factory.mktemp("fn") / "fn.safetensors"
    meta = train_featurenet("digits", path, steps=300, width=16)
    return path, meta


def test_featurenet_artifact_round_trip_and_accuracy(featurenet):
    path, meta = featurenet
    assert meta["test_accuracy"] > 0.9  # 10 classes: chance is 0.1
    assert json.loads(path.with_suffix(".json").read_text())["test_accuracy"] == meta["test_accuracy"]
    net, loaded = load_classifier(path, "featurenet")
    x, y = load_digits("test")
    assert float((predict(net, x) == y).double().mean()) == pytest.approx(meta["test_accuracy"])
    assert features(net, x[:5]).shape == (5, 64)
    with pytest.raises(UserError, match="expected a 'noisy_classifier'"):
        load_classifier(path, "noisy_classifier")


def test_artifact_errors(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_classifier(tmp_path / "none.safetensors", "featurenet")
    (tmp_path / "bad.safetensors").write_bytes(b"junk")
    with pytest.raises(UserError, match="not a readable"):
        load_classifier(tmp_path / "bad.safetensors", "featurenet")


def test_noisy_classifier_is_accurate_at_low_noise(tmp_path):
    meta = train_classifier("digits", tmp_path / "clf.safetensors", steps=300, width=16)
    assert meta["test_accuracy_sigma_0.05"] > 0.8
    clf = load_noisy_classifier(tmp_path / "clf.safetensors")
    x, _ = load_digits("test")
    assert clf(x[:4], torch.full((4,), 0.1)).shape == (4, 10)


@pytest.mark.slow
def test_tiny_digits_training_beats_noise_on_fid(featurenet, tmp_path):
    run = runs.train({
        "run": {"dir": str(tmp_path)},
        "data": {"name": "digits"},
        "model": {"net": "unet", "sigma_data": 0.75, "num_classes": 10,
                  "unet": {"channels": 16, "channel_mults": [1, 2], "num_res_blocks": 1,
                           "attn_resolutions": [], "dropout": 0.0}},
        "train": {"steps": 400, "batch_size": 64, "lr": 3e-3, "warmup_steps": 20, "ema_halflife_steps": 40.0,
                  "ckpt_every": 100_000, "log_every": 100_000},
    })
    data = load_data(run.cfg)
    net, _ = load_classifier(featurenet[0], "featurenet")
    x = runs.sample(run, runs.SampleOptions(n=300, seed=1, sampler="heun", steps=12))  # classes 0..9 cycled
    noise = torch.rand(300, 1, 8, 8, generator=torch.Generator().manual_seed(2)) * 2 - 1
    ref = features(net, data["x_train"])
    fid, fid_noise = fid_from_features(ref, features(net, x)), fid_from_features(ref, features(net, noise))
    fid_base = fid_from_features(ref, features(net, data["x_test"]))
    print(f"tiny digits: fid {fid:.3f}, noise {fid_noise:.3f}, real baseline {fid_base:.3f}")
    assert fid < 0.1 * fid_noise
    assert fid < 3 * fid_base  # the bar for the full run already holds for this tiny one

    # `diffspace eval` on the saved run: same real baseline, CFG metrics, pictures and metrics written
    opts = runs.EvalOptions(guidance=2.0, n=40, sampler="euler", steps=6, featurenet=str(featurenet[0]))
    metrics = runs.evaluate(runs.load_run(tmp_path), opts)
    assert metrics["fid_real_baseline"] == pytest.approx(fid_base, rel=1e-9)
    assert 0 <= metrics["cas"] <= 1 and 0 <= metrics["cas_nocfg"] <= 1 and metrics["fid"] > 0
    assert (tmp_path / "samples.png").is_file() and (tmp_path / "denoising.png").is_file()
    assert json.loads((tmp_path / "metrics.json").read_text()) == metrics
