"""The text task's interface: corpora and tokenizers, bad input (one clear UserError each), config
validation, and a tiny training through the library's loop and the CLI that must beat the unigram
entropy of its data."""

import math
from collections import Counter

import pytest
import torch

from diffspace.config import build, to_dict
from diffspace.data import text as tx
from diffspace.runs.text import (
    TextConfig,
    build_text_setup,
    eval_text,
    sample_text,
    token_model,
)
from diffspace.train.loop import TrainConfig, train
from diffspace.types import UserError

PANGRAM = "the quick brown fox jumps over the lazy dog. "


def test_empty_and_missing_corpus(tmp_path):
    (tmp_path / "blank.txt").write_text("  \n\n")
    with pytest.raises(UserError, match="empty"):
        tx.load_corpus(str(tmp_path))
    with pytest.raises(UserError, match="not found"):
        tx.load_corpus(str(tmp_path / "nope.txt"))


def test_non_utf8_bytes_work_for_bytes_and_fail_clearly_for_chars(tmp_path):
    f = tmp_path / "latin1.txt"
    f.write_bytes(b"caf\xe9 au lait " * 20)
    docs = tx.load_corpus(str(f))
    ids = tx.ByteTokenizer().encode(docs[0])
    assert 0xE9 in ids and bytes(ids) == docs[0]
    with pytest.raises(UserError, match="not valid UTF-8 at byte 3"):
        tx.CharTokenizer(docs)


def test_unknown_characters_are_errors_for_char_and_bpe():
    docs = [PANGRAM.encode() * 30]
    with pytest.raises(UserError, match="not in the training alphabet"):
        tx.CharTokenizer(docs).encode("THE")
    bpe = tx.BPETokenizer(docs, vocab_size=60)
    assert bpe.decode(bpe.encode("the lazy fox")) == "the lazy fox"
    with pytest.raises(UserError, match="unknown token"):
        bpe.encode("the €")


def test_prompt_longer_than_the_context_is_an_error():
    tok = tx.ByteTokenizer()
    assert tx.encode_prompt(tok, "abc", 8).tolist() == [97, 98, 99]
    with pytest.raises(UserError, match="no room in the context of 8"):
        tx.encode_prompt(tok, "abcdefghij", 8)


def test_split_rule_and_chunks_stay_inside_documents_without_packing():
    docs = [bytes([65 + i]) * (20 + i) for i in range(23)]
    sp = tx.split_corpus(docs)
    assert sp["val"] == [docs[8], docs[18]] and sp["test"] == [docs[9], docs[19]] and len(sp["train"]) == 19
    st = tx.tokenize_split(tx.ByteTokenizer(), sp["train"], 16, pack=False)
    chunks = tx.random_chunks(st, 500, 16, torch.Generator().manual_seed(0))
    assert (chunks == chunks[:, :1]).all()  # every chunk is one repeated letter: one document
    assert tx.eval_chunks(st, 16).shape[1] == 16


@pytest.mark.parametrize("bad, msg", [
    ({"model": {"kind": "bd3", "block": 5}}, "multiple of model.block"),
    ({"model": {"kind": "ar"}, "sample": {"sampler": "tweedie"}}, "does not fit"),
    ({"model": {"kind": "llada"}}, "linear"),
    ({"model": {"kind": "gpt"}}, "not one of"),
    ({"data": {"seq_len": 0}}, "positive"),
    ({"model": {"kind": "mdlm", "noise_cond": True}}, "estimator = 'time'"),
])
def test_config_validation(bad, msg):
    with pytest.raises(UserError, match=msg):
        build(TextConfig, {"task": "text", **bad}, "t.toml")


def _tiny(tmp_path, kind, **sections):
    (tmp_path / "corpus.txt").write_text(PANGRAM * 400)
    data = {"corpus": str(tmp_path / "corpus.txt"), "tokenizer": "char", "seq_len": 16}
    cfg = {"task": "text", "run": {"dir": str(tmp_path / "run")}, "data": data,
           "model": {"kind": kind, "dim": 32, "depth": 1, "heads": 2},
           "sample": {"steps": 16, "n": 4}, "eval": {"max_chunks": 32, "n_mc": 2, "n_samples": 8}}
    for k, v in sections.items():
        cfg[k] = {**cfg.get(k, {}), **v}
    return build(TextConfig, cfg)


@pytest.mark.parametrize("kind", ["ar", "mdlm", "bd3"])
def test_tiny_training_beats_the_unigram_entropy(tmp_path, kind):
    torch.manual_seed(0)
    cfg = _tiny(tmp_path, kind)
    setup, data = build_text_setup(cfg, torch.device("cpu"))
    tc = TrainConfig(steps=400, batch_size=32, lr=3e-3, warmup_steps=10, ema_halflife_steps=20, log_every=50,
                     ckpt_every=1000)
    (tmp_path / "run").mkdir()
    tr = train(setup, tc, tmp_path / "run", to_dict(cfg), progress=False)
    m = eval_text(tr.ema.module, cfg, data, ppl_only=True)
    counts = torch.tensor(list(Counter(PANGRAM).values()), dtype=torch.float64)
    unigram = float(-(counts / counts.sum() * (counts / counts.sum()).log2()).sum())  # ~4.1 bits
    # a model that learned nothing about order cannot go below the unigram entropy
    assert m["bits_per_char"] < 0.4 * unigram, (m, unigram)  # measured: AR 0.44, BD3 0.53, MDLM 1.2
    text = sample_text(tr.ema.module, cfg, data.tok, 2, prompt="the ")
    assert all(t.startswith("the ") and len(t) == 16 for t in text)
    assert math.isfinite(m["bits_per_char_stderr"])


def test_cli_train_sample_eval_and_bad_input(tmp_path, capsys):
    from diffspace.cli.main import main

    (tmp_path / "corpus.txt").write_text(PANGRAM * 100)
    run = tmp_path / "run"
    (tmp_path / "t.toml").write_text(
        f'task = "text"\n[run]\ndir = "{run}"\n[data]\ncorpus = "{tmp_path / "corpus.txt"}"\nseq_len = 16\n'
        '[model]\nkind = "bd3"\ndim = 32\ndepth = 1\nheads = 2\n[train]\nsteps = 20\nbatch_size = 8\n'
        '[sample]\nsteps = 2\n[eval]\nmax_chunks = 8\nn_mc = 2\nn_samples = 4\n')
    assert main(["train", str(tmp_path / "t.toml"), "--no-progress"]) == 0
    assert main(["sample", str(run), "--n", "3", "--steps", "2"]) == 0
    assert (run / "samples.txt").read_text().count("=== sample") == 3
    assert main(["sample", str(run), "--n", "20"]) == 0  # --n honoured (it once wrote the config's n)
    assert (run / "samples.txt").read_text().count("=== sample") == 20
    assert main(["sample", str(run)]) == 0  # without --n: the config's [sample] n = 8
    assert (run / "samples.txt").read_text().count("=== sample") == 8
    assert main(["eval", str(run)]) == 0
    assert "bits_per_char" in (run / "metrics.json").read_text()
    capsys.readouterr()
    for flags, words in ((["--grid", "karras"], "text runs cannot use the option 'grid' (--grid)"),
                         (["--cfg", "2"], "(--cfg)"), (["--nll"], "(--nll)"),
                         (["--ppl", "--n", "5"], "do not apply with --ppl")):
        assert main(["eval", str(run), *flags]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and words in err, err
    bad = ["train", str(tmp_path / "t.toml"), "--overwrite", "--set", f"data.corpus={tmp_path / 'none.txt'}"]
    assert main(bad) == 2
    assert "text corpus not found" in capsys.readouterr().err


@pytest.mark.parametrize("kind, extra", [
    ("llada", {"loss": {"schedule": "linear"}}), ("sedd_absorb", {}),
    ("sedd_uniform", {"model": {"noise_cond": True}}), ("mdlm", {}),
    ("bd3", {"model": {"noise_cond": True}, "loss": {"estimator": "time"}})])
def test_every_kind_takes_a_finite_step_and_samples_whole_sequences(tmp_path, kind, extra):
    cfg = _tiny(tmp_path, kind, **extra)
    setup, data = build_text_setup(cfg, torch.device("cpu"))
    loss = setup.loss(setup.model, setup.batch(torch.Generator().manual_seed(0), 8))
    assert loss.shape == (8,) and torch.isfinite(loss).all() and (loss > 0).all()
    loss.mean().backward()
    text = sample_text(setup.model.eval(), cfg, data.tok, 3, steps=4)
    assert len(text) == 3 and all(len(t) == 16 for t in text)  # every mask was resolved into a character


def test_bell_shaped_proposal_shapes_training_batches_only(tmp_path):
    """loss.proposal = "logit_normal" draws middling masked counts for training; evaluation batches
    stay uniform. With 16 tokens, k = floor(16 r) + 1 is in 5..11 when r is in [4/16, 11/16)."""
    from statistics import NormalDist

    cfg = _tiny(tmp_path, "mdlm", loss={"proposal": "logit_normal"})
    setup, data = build_text_setup(cfg, torch.device("cpu"))
    model = token_model(cfg, data.tok.size)
    logit = lambda p: math.log(p / (1 - p))  # noqa: E731
    bell = NormalDist().cdf(logit(11 / 16)) - NormalDist().cdf(logit(4 / 16))  # 0.649
    x0 = tx.random_chunks(data.val, 4000, 16, torch.Generator().manual_seed(0))
    for training, expect in ((True, bell), (False, 7 / 16)):
        g = torch.Generator().manual_seed(0)
        b = setup.batch(g, 4000) if training else model.draw(x0, g)  # evaluation draws are stratified
        k = (b["u"] < b["t"]).sum(1)  # the linear schedule masks where u < t
        mid = ((k >= 5) & (k <= 11)).double().mean().item()
        assert abs(mid - expect) < 4 * (expect * (1 - expect) / 4000) ** 0.5, (training, mid, expect)
