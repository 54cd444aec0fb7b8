"""`diffspace report RUN`: one static page with every section the run has material for, opened in
headless Chromium (installed by tests/browser.py when missing, else skipped with the reason): no
console error, every picture decodes, nothing fetched but the file itself and its data: URIs."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from browser import Browser, find_chromium
from diffspace import runs
from diffspace.eval.featurenet import train_featurenet
from diffspace.runs.report import nfe_of, write_report

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = ("metrics", "samples", "curves", "grids", "nfe", "config")


@pytest.fixture(scope="module")
def chromium():
    binary, why = find_chromium()
    if binary is None:
        pytest.skip(f"no headless Chromium: {why}")
    browser = Browser(binary)
    yield browser
    browser.close()


@pytest.fixture(scope="module")
def vector_run(tmp_path_factory):
    """A tiny demo run with metrics, an optimized grid and the NFE files another command writes."""
    d = tmp_path_factory.mktemp("report") / "run"
    run = runs.train(runs.load_config(ROOT / "configs/demo.toml", [
        f"run.dir={d}", "model.mlp.hidden=32", "model.mlp.depth=1", "train.steps=60", "train.batch_size=128",
        "train.log_every=10", "data.n_train=2000", "data.n_test=500"]))
    runs.evaluate(run, runs.EvalOptions(n=500, sampler="heun", steps=6))
    runs.optimize_grid(run, "euler", 3, n_calib=64)
    (d / "nfe.json").write_text(json.dumps([{"sampler": "euler", "nfe": 3, "sw2": 0.5},
                                            {"sampler": "euler", "nfe": 10, "sw2": 0.2}]))
    Image.new("RGB", (40, 30), "steelblue").save(d / "nfe.png")
    return d


def test_report_from_the_cli_has_every_section_and_no_outside_reference(vector_run):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    res = subprocess.run([sys.executable, "-m", "diffspace", "report", str(vector_run)], capture_output=True,
                         text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr
    page = (vector_run / "report.html").read_text()
    for anchor in SECTIONS:
        assert f'<section id="{anchor}">' in page, anchor
    assert not re.search(r"""(src|href)=["'](?!data:|#)""", page)  # pictures inline, links within the page
    assert "<script" not in page
    m = json.loads((vector_run / "metrics.json").read_text())
    for key in ("sw2", "sw2_data_baseline", "sw2_se"):
        assert f"{m[key]:.4g}" in page, key
    assert "<td>NFE per sample</td><td class=\"num\">11</td>" in page  # heun, 6 steps: 2 * 5 + 1


def test_nfe_rule_counts_guidance_twice():
    assert nfe_of("heun", 18, False) == 35 and nfe_of("heun", 18, True) == 70
    assert nfe_of("rk45", 5, False) == "adaptive" and nfe_of("nope", 5, False) == "?"


def _images(browser) -> list:
    return browser.evaluate("Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth])")


def test_report_renders_in_chromium_without_errors(vector_run, chromium, tmp_path):
    write_report(vector_run)
    chromium.open(vector_run / "report.html")
    assert chromium.errors() == []
    images = _images(chromium)
    assert [alt for alt, _, _ in images] == [
        "samples.png", "from log.jsonl (loss and gradient norm on log scales)",
        "optimized noise levels against the step", "nfe.png"]
    assert all(complete and width > 0 for _, complete, width in images), images
    requests = chromium.requests()
    assert requests[0] == (vector_run / "report.html").resolve().as_uri()
    assert all(u.startswith("data:image/png;base64,") for u in requests[1:]), requests
    chromium.screenshot(tmp_path / "shot.png")
    assert Image.open(tmp_path / "shot.png").size[0] == 1200


@pytest.mark.slow
def test_image_report_shows_pictures_and_an_unreliable_feature_net_in_red(chromium, tmp_path):
    unet = {"channels": 8, "channel_mults": [1], "num_res_blocks": 1, "attn_resolutions": []}
    run = runs.train({"run": {"dir": str(tmp_path / "run")}, "data": {"name": "digits"},
                      "model": {"net": "unet", "num_classes": 10, "unet": unet},
                      "train": {"steps": 2, "batch_size": 8}})
    weak = str(tmp_path / "weak.safetensors")
    train_featurenet("digits", weak, steps=2, width=8)
    runs.evaluate(run, runs.EvalOptions(n=20, steps=2, guidance=2.0, featurenet=weak))
    chromium.open(write_report(tmp_path / "run"))
    assert chromium.errors() == []
    warning = chromium.evaluate("[document.querySelector('.warn').textContent, "
                                "getComputedStyle(document.querySelector('.warn')).color]")
    assert warning[0].startswith("UNRELIABLE: the feature net's test accuracy")
    assert warning[1] == "rgb(183, 28, 28)"  # the .warn colour #b71c1c
    images = _images(chromium)
    assert [alt for alt, _, _ in images][:2] == ["samples.png", "denoising.png"]
    assert all(complete and width > 0 for _, complete, width in images), images
