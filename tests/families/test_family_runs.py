"""The relatives as runs (issue 15, runs/flow.py, vae.py, gan.py, autoregressive.py): every family trains,
samples and evaluates through `diffspace.runs` on vectors and digits with its likelihood labelled exact
or bound in the units of diffusion's `eval --nll`; sample i depends only on (seed, i); the likelihood
does not depend on how the test set is chunked; the histogram density of an autoregressive run is
-log P(bin) + D log delta and zero outside its range; bad input is one line with exit 2."""

import math
from pathlib import Path

import pytest
import torch

from diffspace import runs
from diffspace.data.quantized import DIGITS
from diffspace.data.toy import make_toy
from diffspace.eval.featurenet import train_featurenet
from diffspace.families.flows import ActNorm
from diffspace.runs import families, vae
from diffspace.runs.autoregressive import _nll as ar_nll
from diffspace.runs.autoregressive import model_grid
from diffspace.runs.flow import build_setup as flow_setup
from diffspace.types import UserError
from test_cli import assert_one_line_error, cli

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
TOY = ["data.n_train=600", "data.n_test=300", "train.steps=3", "train.batch_size=32", "train.warmup_steps=1",
       "train.ckpt_every=3", "eval.n=200", "eval.nll_n=40"]
SMALL = {"flow": ["model.layers=2", "model.hidden=8"], "vae": ["model.hidden=16", "eval.iwae_k=4"],
         "gan": ["model.hidden=16"],
         "autoregressive": ["model.hidden=16", "model.channels=8", "model.layers=2"]}
# (config, task, likelihood kind on that data)
CASES = [("checkerboard-realnvp", "flow", "exact"), ("digits-glow", "flow", "bound"),
         ("checkerboard-gumbel-vae", "vae", "bound"), ("digits-vae", "vae", "bound"),
         ("8gaussians-gan", "gan", None), ("digits-gan", "gan", None),
         ("checkerboard-made", "autoregressive", "exact"), ("digits-pixelcnn", "autoregressive", "exact")]


@pytest.fixture(scope="module")
def featurenet(tmp_path_factory):
    path = tmp_path_factory.mktemp("fn") / "featurenet.safetensors"
    train_featurenet("digits", path, steps=20)
    return str(path)


def _train(tmp_path, name: str, task: str, *extra: str) -> runs.Run:
    return runs.train(CONFIGS / f"{name}.toml", [*TOY, *SMALL[task], f"run.dir={tmp_path / name}", *extra])


@pytest.mark.parametrize("name,task,kind", CASES)
def test_every_family_trains_samples_and_evaluates(tmp_path, featurenet, name, task, kind):
    run = _train(tmp_path, name, task)
    assert run.task == task and run.step == 3
    x = runs.sample(run, runs.SampleOptions(n=6, seed=1))
    assert x.shape == (6, *run.meta["data_shape"]) and torch.isfinite(x).all()
    if name.startswith("digits") and kind is not None:
        assert torch.equal(DIGITS.quantize(x), x)  # likelihood models draw on the data's grid
    loaded = runs.load_run(run.dir)
    assert torch.equal(runs.sample(loaded, runs.SampleOptions(n=6, seed=1)), x)
    # a feature net scores image runs; a run of vectors refuses one (test_run_dirs)
    net = featurenet if name.startswith("digits") else None
    m = runs.evaluate(loaded, runs.EvalOptions(nll=kind is not None, featurenet=net))
    assert m["n"] == 200 and m["samples_per_s"] > 0
    assert (run.dir / "metrics.json").is_file() and (run.dir / "samples.png").is_file()
    if name.startswith("digits"):
        assert m["fid_real_baseline"] > 0 and m["fid"] > 0
    else:
        assert m["sw2_data_baseline"] > 0 and m["sw2"] > 0
    if kind is None:
        assert "nll_nats" not in m
        with pytest.raises(UserError, match="defines no likelihood"):
            runs.evaluate(loaded, runs.EvalOptions(nll=True))
        return
    assert m["nll_kind"] == kind and m["nll_n"] == 40 and math.isfinite(m["nll_nats"])
    dim = math.prod(run.meta["data_shape"])
    assert m["nll_bits_per_dim"] == pytest.approx(m["nll_nats"] / (dim * math.log(2)), rel=1e-12)
    assert m["nll_of"] == ("P(x) of the data on its 17-level grid" if "digits" in name else "density of x")


@pytest.mark.parametrize("name,task", [("digits-glow", "flow"), ("checkerboard-made", "autoregressive"),
                                       ("checkerboard-vae", "vae"), ("digits-gan", "gan")])
def test_sample_i_depends_only_on_seed_and_i(tmp_path, name, task):
    run = _train(tmp_path, name, task)
    a = runs.sample(run, runs.SampleOptions(n=3, seed=5))
    b = runs.sample(run, runs.SampleOptions(n=7, seed=5))
    # the noise is the same bit for bit; a network on another batch size may round differently
    assert torch.allclose(a, b[:3], rtol=0, atol=1e-5)
    assert not torch.allclose(a, runs.sample(run, runs.SampleOptions(n=3, seed=6)), rtol=0, atol=1e-3)


@pytest.mark.parametrize("name,task", [("digits-glow", "flow"), ("digits-gumbel-vae", "vae")])
def test_likelihood_does_not_depend_on_chunking(tmp_path, monkeypatch, featurenet, name, task):
    """Dequantization noise (flows) and importance samples (VAEs) come from each example's own stream,
    so evaluating in chunks of 7 gives what one chunk gives (as shards under torchrun would)."""
    run = _train(tmp_path, name, task)
    whole = runs.evaluate(run, runs.EvalOptions(n=10, nll=True, nll_n=30, featurenet=featurenet))
    monkeypatch.setattr(families, "EVAL_CHUNK", 7)
    monkeypatch.setattr(vae, "BOUND_ELEMENTS", 7 * getattr(run.cfg.eval, "iwae_k", 1))
    chunked = runs.evaluate(run, runs.EvalOptions(n=10, nll=True, nll_n=30, featurenet=featurenet))
    other = runs.evaluate(run, runs.EvalOptions(n=10, nll=True, nll_n=30, featurenet=featurenet, seed=1))
    # why not bit for bit: float32 kernels may round differently at another batch size on some CPUs (2.6e-9
    # relative for the flow on one Xeon); other noise (another seed) moves the NLL a thousand times more
    gap = abs(chunked["nll_nats"] - whole["nll_nats"])
    assert gap <= 1e-7 * abs(whole["nll_nats"]) and gap * 1e3 < abs(other["nll_nats"] - whole["nll_nats"])


def test_histogram_density_of_an_autoregressive_run(tmp_path):
    """-log p(y) = -log P(bin(y)) + D log delta for y in the range (the density P / delta^D integrates to
    one: P sums to one over the bins), infinite outside it."""
    run = _train(tmp_path, "checkerboard-made", "autoregressive")
    grid = model_grid(run.cfg)
    assert grid.delta == pytest.approx(4 / 32) and grid.low == pytest.approx(-2 + 1 / 16)
    x = make_toy("checkerboard", 50, seed=3, split="test")
    with torch.no_grad():
        want = (-run.module(grid.quantize(x)).double() + 2 * math.log(grid.delta)).mean()
    got = families.likelihood(run, x, lambda xb, i: -run.module(grid.quantize(xb)) + 2 * math.log(grid.delta),
                              "exact")
    assert ar_nll(run, x, 0)["nll_nats"] == pytest.approx(float(want), rel=1e-6) == got["nll_nats"]
    outside = torch.tensor([[2.5, 0.0]])
    assert ar_nll(run, torch.cat([x, outside]), 0)["nll_nats"] == math.inf
    with torch.no_grad():  # P over all 32 x 32 bins sums to one
        centres = grid.value(torch.cartesian_prod(torch.arange(32), torch.arange(32)))
        assert float(run.module(centres).double().exp().sum()) == pytest.approx(1.0, abs=1e-5)


def test_actnorm_initializes_on_the_seeded_global_batch():
    """build_setup initializes ActNorm from a batch drawn with the run's seed, before the loop (and DDP)
    see the model: two builds (two ranks) agree, and the first layer whitens that batch."""
    cfg = runs.load_config(CONFIGS / "checkerboard-glow.toml", [*TOY, *SMALL["flow"]])
    built = []
    for _ in range(2):  # as runs.train does on every rank: the run's seed, then build_setup
        torch.manual_seed(cfg.run.seed)
        built.append(flow_setup(cfg, torch.device("cpu"))[0])
    a, b = built
    norms = [m for m in a.model.modules() if isinstance(m, ActNorm)]
    assert norms and all(float(m.initialized) == 1.0 for m in norms)
    for (name, p), q in zip(a.model.state_dict().items(), b.model.state_dict().values(), strict=True):
        assert torch.equal(p, q), name
    assert float(norms[0].log_scale.abs().min()) > 0 and float(norms[0].bias.abs().min()) > 0  # data-set


def test_bad_input_is_one_line_with_exit_2(tmp_path):
    run = _train(tmp_path, "8gaussians-gan", "gan")
    assert_one_line_error(cli("eval", run.dir, "--nll"), "defines no likelihood")
    (tmp_path / "one.csv").write_text("\n".join(str(v) for v in torch.randn(50).tolist()) + "\n")
    res = cli("train", CONFIGS / "checkerboard-realnvp.toml", "--set", "data.name=file", "--set",
              f"data.file={tmp_path / 'one.csv'}", "--set", f"run.dir={tmp_path / 'r'}")
    assert_one_line_error(res, "(1,)")
    assert not (tmp_path / "r").exists()
