"""The text-image tasks through the runs layer: a text_to_image run carries its frozen sources and their
tokenizer (it samples with the sources deleted), records where they came from, trains diffusion on
latents scaled to unit std with the configured caption dropout, and samples by per-sample streams in
prompt order; guidance w = 0 on a prompt is the null caption; every path x parameterization x sampler
trains and samples in latent space as on pixels."""

import shutil

import pytest
import torch
from scipy.stats import binomtest
from t2i_configs import autoencoder_config, encoder_config, t2i_config

from diffspace import runs
from diffspace.data.captions import tokenizer_from_state
from diffspace.families.autoencoder import posterior
from diffspace.runs.captioned import CaptionDataConfig, load_train
from diffspace.runs.tasks import TASKS
from diffspace.types import UserError

RED, BLUE = "a small red circle at the top left", "a large blue square at the center"


def test_tokenizer_is_stored_and_rebuilt_without_data(t2i_runs):
    enc = runs.load_run(t2i_runs["encoder"])
    state = enc.meta["tokenizer"]
    tok, context_len = tokenizer_from_state(state)
    train = load_train(CaptionDataConfig(**{k: v for k, v in enc.meta["config"]["data"].items()}), 0)
    assert state["kind"] == "char" and set(state["alphabet"]) >= set("".join(train.captions[0]))
    assert context_len % 8 == 0 and context_len >= max(len(c) for caps in train.captions for c in caps)
    assert tok.decode(tok.encode(RED)) == RED
    assert runs.load_run(t2i_runs["latent"]).meta["tokenizer"] == state  # copied with the encoder


def test_run_copies_its_frozen_sources_and_records_them(t2i_runs):
    run, enc, ae = (runs.load_run(t2i_runs[k]) for k in ("latent", "encoder", "autoencoder"))
    src = run.meta["sources"]
    assert src["encoder"]["dir"] == str(t2i_runs["encoder"]) and src["encoder"]["step"] == enc.step == 3
    assert src["autoencoder"]["dir"] == str(t2i_runs["autoencoder"])
    assert runs.load_run(t2i_runs["pixel"]).meta["sources"]["autoencoder"] is None
    for mine, theirs in ((run.module.encoder, enc.module), (run.module.autoencoder, ae.module)):
        for (name, a), (_, b) in zip(mine.state_dict().items(), theirs.state_dict().items(), strict=True):
            assert torch.equal(a, b), name  # training left the copies as they were
    # [LDM] Sec. 4.3.2: the latents diffusion sees have unit std over the training images
    mean = posterior(ae.module, load_train(run.cfg.data, 0).x)[0]
    assert (mean.double() * run.meta["latent_scale"]).std().item() == pytest.approx(1.0, rel=1e-5)
    assert run.module.latent_scale.item() == pytest.approx(run.meta["latent_scale"], rel=1e-6)


def test_a_run_samples_on_its_own(t2i_runs, tmp_path):
    """The sources are copied: with them gone, the run loads and draws the same images."""
    for name in ("encoder", "autoencoder", "latent"):
        shutil.copytree(t2i_runs[name], tmp_path / name)
    opts = runs.SampleOptions(n=2, prompts=(RED,), guidance=2.0)
    before = runs.sample(runs.load_run(tmp_path / "latent"), opts)
    shutil.rmtree(tmp_path / "encoder"), shutil.rmtree(tmp_path / "autoencoder")
    after = runs.sample(runs.load_run(tmp_path / "latent"), opts)
    assert before.shape == (2, 3, 16, 16) and torch.equal(before, after)


def test_samples_come_prompt_by_prompt_from_per_sample_streams(t2i_runs):
    run = runs.load_run(t2i_runs["latent"])
    two = runs.sample(run, runs.SampleOptions(n=3, prompts=(RED, BLUE), seed=5))
    one = runs.sample(run, runs.SampleOptions(n=3, prompts=(RED,), seed=5))
    assert two.shape == (6, 3, 16, 16) and two.abs().max() <= 1
    torch.testing.assert_close(two[:3], one, rtol=1e-5, atol=1e-5)  # sample i depends on (seed, i)
    assert not torch.allclose(two[:3], runs.sample(run, runs.SampleOptions(n=3, prompts=(RED,), seed=6)))


@pytest.mark.parametrize("name", ["latent", "pixel"])
def test_guidance_zero_on_a_prompt_is_the_null_caption(t2i_runs, name, randomize):
    """[CFG] with w = 0 is the unconditional denoiser: the same images as sampling with no prompt (the
    null caption), and w = 1 differs from it (the prompt is read)."""
    run = runs.load_run(t2i_runs[name])
    randomize(run.module.denoiser)  # a 2-step model is nearly constant: perturb it so the prompt matters
    null = runs.sample(run, runs.SampleOptions(n=3))
    w0 = runs.sample(run, runs.SampleOptions(n=3, prompts=(RED,), guidance=0.0))
    torch.testing.assert_close(w0, null, rtol=1e-4, atol=1e-4)
    assert (runs.sample(run, runs.SampleOptions(n=3, prompts=(RED,), guidance=1.0)) - null).abs().max() > 1e-3


def test_bad_prompts_are_one_line_errors(t2i_runs):
    run = runs.load_run(t2i_runs["latent"])
    for prompts, words in (((" ",), "prompt 1 (--prompt) is empty"),
                           ((RED, ""), "prompt 2 (--prompt) is empty"),
                           ((RED * 5,), "the text context holds"),
                           (("A SHOUTED PROMPT",), "not in the training alphabet")):
        with pytest.raises(UserError, match=words.replace("(", r"\(").replace(")", r"\)")) as e:
            runs.sample(run, runs.SampleOptions(n=1, prompts=prompts))
        assert "\n" not in str(e.value)
    with pytest.raises(UserError, match=r"needs a prompt \(--prompt\)"):
        runs.sample(run, runs.SampleOptions(n=1, guidance=3.0))
    with pytest.raises(UserError, match="a text_to_image run has none: choose another --grid"):  # not a
        runs.sample(run, runs.SampleOptions(n=1, prompts=(RED,), grid="optimized"))  # dead-end suggestion
    for task in ("encoder", "autoencoder"):
        with pytest.raises(UserError, match="cannot use the option 'prompts'"):
            runs.sample(runs.load_run(t2i_runs[task]), runs.SampleOptions(prompts=(RED,)))


def test_caption_dropout_rate_of_training_batches_matches_the_config(t2i_runs):
    cfg = runs.load_config(t2i_config(t2i_runs["latent"] / "x", t2i_runs["encoder"], model={"p_uncond": 0.3}))
    setup, meta = TASKS["text_to_image"].build_setup(cfg, torch.device("cpu"))
    b = setup.batch(torch.Generator().manual_seed(0), 1000)
    null = int((~b["text_mask"].any(dim=1)).sum())
    assert binomtest(null, 1000, 0.3).pvalue > 1e-3, null
    assert b["x0"].shape == (1000, 3, 16, 16) and torch.isfinite(b["text_emb"]).all()


@pytest.mark.parametrize("space", ["latent", "pixel"])
@pytest.mark.parametrize("model, loss, sampler", [
    ({"path": "edm", "parameterization": "edm"}, {}, "heun"),
    ({"path": "vp", "parameterization": "eps"}, {"weighting": "eps", "proposal": "uniform"}, "ddim"),
    ({"path": "ddpm", "parameterization": "v"}, {"weighting": "v", "proposal": "uniform"}, "dpmpp_2m"),
    ({"path": "linear", "parameterization": "velocity"}, {"objective": "flow", "proposal": "logit_normal"},
     "euler"),
])
def test_every_design_choice_trains_and_samples_in_latent_and_pixel_space(t2i_runs, tmp_path, space, model,
                                                                         loss, sampler):
    ae = t2i_runs["autoencoder"] if space == "latent" else ""
    cfg = t2i_config(tmp_path / "run", t2i_runs["encoder"], ae, model=model, loss=loss,
                     sample={"sampler": sampler}, train={"steps": 1})
    cfg["model"]["unet"] = t2i_config("", "", ae)["model"]["unet"]
    run = runs.train(cfg)
    loss_log = (tmp_path / "run" / "log.jsonl").read_text()
    assert '"step": 1' in loss_log
    x = runs.sample(run, runs.SampleOptions(n=2, prompts=(RED,)))
    assert x.shape == (2, 3, 16, 16) and torch.isfinite(x).all()
    assert run.meta["data_shape"] == ([4, 4, 4] if space == "latent" else [3, 16, 16])


def test_sources_are_checked_before_anything_is_written(t2i_runs, tmp_path):
    for sources, words in (({"encoder": str(t2i_runs["autoencoder"])}, "expected a contrastive run"),
                           ({"encoder": str(tmp_path / "none")}, "no checkpoint"),
                           ({"autoencoder": str(t2i_runs["encoder"])}, "expected a autoencoder run")):
        cfg = t2i_config(tmp_path / "run", t2i_runs["encoder"], sources=sources)
        with pytest.raises(UserError, match=words):
            runs.train(cfg)
        assert not (tmp_path / "run").exists()
    with pytest.raises(UserError, match="sources.encoder must name a contrastive run"):
        runs.load_config(t2i_config(tmp_path / "run", ""))
    big = encoder_config(tmp_path / "enc32", **{}) | {"data": {"name": "shapes", "n_train": 64, "size": 32}}
    runs.train(big)
    with pytest.raises(UserError, match=r"trained on images \[3, 32, 32\], the data here are \[3, 16, 16\]"):
        runs.train(t2i_config(tmp_path / "run", tmp_path / "enc32"))
    assert autoencoder_config(tmp_path)["task"] == "autoencoder"
