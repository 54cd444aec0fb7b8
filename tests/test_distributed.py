"""Two processes under torchrun (CPU, gloo) behave as one: the same weights (and EMA) after training
as one process with the whole batch or with gradient accumulation, and the same samples bit for bit
(points and text), the same text bound. The single-process runs go through the same CLI in this
process."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist

from diffspace.train.checkpoint import load_checkpoint
from diffspace.train.distributed import gather_shares, init_distributed, my_share, peer_guard
from diffspace.types import TrainingError
from distributed_helpers import CONFIG, TINY, in_process, sets, torchrun

STEPS = 12  # checkpoints (kept) every 4 steps: the runs are compared at steps 4, 8 and 12


def train_args(run: Path, *extra: str) -> list[str]:
    over = sets(*TINY, f"run.dir={run}", f"train.steps={STEPS}", "train.ckpt_every=4", "train.keep_every=4",
                "train.log_every=4")
    return ["train", CONFIG, *over, "--overwrite", "--no-progress", *extra]


def weights(run: Path, step: int) -> dict[str, torch.Tensor]:
    tensors, meta = load_checkpoint(run / "checkpoints" / f"step_{step:08d}.safetensors")
    assert meta["step"] == step
    return {k: v.double() for k, v in tensors.items() if k.startswith(("model.", "ema."))}


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("dist")
    out = {"ws2": root / "ws2", "ws1": root / "ws1", "acc2": root / "acc2"}
    torchrun(*train_args(out["ws2"]))  # per-rank batch 32
    in_process(*train_args(out["ws1"]))  # batch 64 in one process
    in_process(*train_args(out["acc2"], "--accumulate", "2"))  # 2 micro-batches of 32
    return out


@pytest.mark.slow
@pytest.mark.parametrize("other", ["ws2", "acc2"])
def test_two_ranks_and_accumulation_train_like_one_batch(runs, other):
    ref_first, ref_last = weights(runs["ws1"], 4), weights(runs["ws1"], STEPS)
    moved = max_diff(ref_first, ref_last)
    assert moved > 1e-2, f"the weights barely moved ({moved:.2e}): the comparison would say nothing"
    ema_gap = max(float((ref_last[k] - ref_last["ema.module." + k[6:]]).abs().max())
                  for k in ref_last if k.startswith("model."))
    assert ema_gap > 1e-4, "EMA equals the raw weights: its comparison would say nothing"
    for step in (4, 8, STEPS):
        diff = max_diff(weights(runs["ws1"], step), weights(runs[other], step))
        assert diff <= 1e-5, f"{other} differs from one process with batch 64 at step {step}: {diff:.2e}"


@pytest.mark.slow
def test_logged_loss_is_the_global_mean(runs):
    def losses(run):
        return [json.loads(line)["loss"] for line in (run / "log.jsonl").read_text().splitlines()]

    ref, two = losses(runs["ws1"]), losses(runs["ws2"])
    assert len(ref) == len(two) == STEPS // 4
    assert np.allclose(ref, two, rtol=0, atol=1e-5), (ref, two)


@pytest.mark.slow
def test_two_ranks_sample_exactly_like_one(runs, tmp_path):
    # 6000 samples in chunks of 2500: rank 0 draws chunks 0 and 2, rank 1 chunk 1; a stochastic
    # sampler, so every draw must come from the sample's own stream
    common = ["sample", str(runs["ws2"]), "--num-samples", "6000", "--steps", "4", "--seed", "3",
              "--sampler", "edm_sde"]
    in_process(*common, "--out", str(tmp_path / "one.npz"))
    torchrun(*common, "--out", str(tmp_path / "two.npz"))
    one, two = np.load(tmp_path / "one.npz")["samples"], np.load(tmp_path / "two.npz")["samples"]
    assert one.shape == (6000, 2) and np.isfinite(one).all()
    assert np.array_equal(one, two), f"max difference {np.abs(one - two).max():.3e}"


@pytest.mark.slow
def test_two_ranks_sample_and_evaluate_text_like_one(tmp_path):
    """40 sequences in batches of 16 and 150 validation chunks in batches of 64: rank 0 does batches
    0 and 2, rank 1 batch 1, and rank 0 alone writes. Sequence i draws from its own random stream, so
    it is also the same in a run of 5 or of 20 sequences, on one process or two."""
    (tmp_path / "corpus.txt").write_text("the quick brown fox jumps over the lazy dog. " * 600)
    run = tmp_path / "run"
    (tmp_path / "t.toml").write_text(
        f'task = "text"\n[run]\ndir = "{run}"\n[data]\ncorpus = "{tmp_path / "corpus.txt"}"\nseq_len = 16\n'
        '[model]\nkind = "mdlm"\ndim = 32\ndepth = 1\nheads = 2\n[train]\nsteps = 20\nbatch_size = 8\n'
        '[eval]\nmax_chunks = 150\nn_mc = 2\n')
    in_process("train", str(tmp_path / "t.toml"), "--no-progress")
    sample = ["sample", str(run), "--num-samples", "40", "--steps", "8", "--seed", "2"]
    in_process(*sample, "--out", str(tmp_path / "one.txt"))
    torchrun(*sample, "--out", str(tmp_path / "two.txt"))
    one = (tmp_path / "one.txt").read_text()
    assert one.count("=== sample") == 40 and one == (tmp_path / "two.txt").read_text()
    # per-sequence streams: the first sequences are the same for any n and world size (20 = a batch
    # of 16 on rank 0 and one of 4 on rank 1; 5 = one batch in one process)
    in_process(*sample[:3], "5", *sample[4:], "--out", str(tmp_path / "five.txt"))
    torchrun(*sample[:3], "20", *sample[4:], "--out", str(tmp_path / "twenty.txt"))
    for name, n in (("five", 5), ("twenty", 20)):
        part = (tmp_path / f"{name}.txt").read_text()
        assert part.count("=== sample") == n and one.startswith(part)
        assert one[len(part):].startswith(f"=== sample {n}\n")
    in_process("eval", str(run), "--ppl", "--json", str(tmp_path / "one.json"))
    torchrun("eval", str(run), "--ppl", "--json", str(tmp_path / "two.json"))
    one, two = (json.loads((tmp_path / f"{k}.json").read_text()) for k in ("one", "two"))
    assert one["val_chunks"] == 150 and one == two


@pytest.mark.slow
def test_two_ranks_evaluate_images_like_one(tmp_path):
    """Image eval under torchrun: the ranks share the sampling, rank 0 alone trains the feature net (once)
    and writes; the metrics equal one process's with that feature net."""
    run = tmp_path / "digits"
    digits = str(Path(CONFIG).parent / "digits-edm.toml")
    in_process("train", digits, *sets(f"run.dir={run}", "train.steps=6", "train.batch_size=16",
                                      "model.unet.channels=8", "model.unet.attn_resolutions=[]",
                                      "eval.featurenet_steps=100"),
               "--no-progress")
    common = ["eval", str(run), "--num-samples", "30", "--steps", "2", "--sampler", "euler", "--cfg", "2"]
    torchrun(*common, "--json", str(tmp_path / "two.json"))
    assert (run / "featurenet.safetensors").is_file()  # trained by rank 0 during the two-rank eval
    stamp = (run / "featurenet.safetensors").stat().st_mtime_ns
    in_process(*common, "--json", str(tmp_path / "one.json"))
    assert (run / "featurenet.safetensors").stat().st_mtime_ns == stamp  # reused, not trained again
    one, two = (json.loads((tmp_path / f"{k}.json").read_text()) for k in ("one", "two"))
    assert one.keys() == two.keys() and one["n"] == 30
    for k, v in one.items():
        assert v == pytest.approx(two[k], rel=1e-5, abs=1e-6) if isinstance(v, float) else v == two[k], k


def test_peer_guard_names_a_lost_peer_and_lets_other_errors_through():
    with pytest.raises(TrainingError, match=r"lost contact with another rank \(Read error: Connection reset "
                                            r"by peer\); resume from here$"):
        with peer_guard("resume from here"):
            raise dist.DistBackendError("[pair.cc:537] Read error: Connection reset by peer. This is ...")
    with pytest.raises(RuntimeError, match="mat1 and mat2") as caught:  # a bug stays a traceback
        with peer_guard("resume from here"):
            raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")
    assert not isinstance(caught.value, TrainingError)
    with pytest.raises(TrainingError, match="^loss became nan"):  # the trainer's own errors pass unchanged
        with peer_guard("resume from here"):
            raise TrainingError("loss became nan at step 3")


def test_one_process_needs_no_process_group(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert init_distributed(torch.device("cpu")) == torch.device("cpu")
    assert not dist.is_initialized()
    items = list(range(7))
    assert gather_shares([i * i for i in my_share(items)]) == [i * i for i in items]
