"""A sample count whose float32 samples exceed the machine's memory is refused up front, in one line naming
the size (`diffspace sample --n 100000000000` sampled for hours before running out of memory)."""

import os

import pytest
import torch

from diffspace import runs
from diffspace.cli.main import main
from diffspace.runs import sampling
from diffspace.runs.sampling import check_sample_memory, generate, physical_memory
from diffspace.samplers.ode import sample_euler
from diffspace.types import UserError

TINY = {"data": {"name": "moons", "n_train": 500, "n_test": 100},
        "model": {"mlp": {"hidden": 16, "depth": 1}},
        "train": {"steps": 2, "batch_size": 32, "log_every": 100, "ckpt_every": 100}}
HUGE = 100_000_000_000  # 8e11 bytes of 2-D float32 samples: more than any test machine has


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return runs.train({**TINY, "run": {"dir": str(tmp_path_factory.mktemp("mem") / "run")}})


def test_physical_memory_is_the_machines():
    assert physical_memory() == os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") > 0


def test_the_cli_refuses_more_samples_than_memory_in_one_line(run, capsys, tmp_path):
    assert main(["sample", str(run.dir), "--n", str(HUGE), "--out", str(tmp_path / "x.npy")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"diffspace: error: {HUGE} samples of shape (2,) take 800 GB "
                                               "as float32, more than this machine's "), err
    assert err[0].endswith(" GB of memory; ask for fewer (a smaller --n)")
    assert not (tmp_path / "x.npy").exists()


def test_every_caller_of_generate_is_bounded(run, monkeypatch):
    with pytest.raises(UserError, match=r"^100000000000 samples of shape \(2,\) take 800 GB as float32"):
        runs.sample(run, runs.SampleOptions(n=HUGE, steps=2))

    monkeypatch.setattr(sampling, "physical_memory", lambda: 1000)  # bytes
    check_sample_memory(125, (2,))  # exactly 1000 bytes fit
    want = (r"^126 samples of shape \(2,\) take 1.01e-06 GB as float32, more than this machine's 1e-06 GB "
            r"of memory; ask for fewer \(a smaller --n\)$")
    with pytest.raises(UserError, match=want):
        generate(lambda x, s: x, (2,), 126, torch.tensor([1.0, 0.0], dtype=torch.float64), sample_euler, 0,
                 torch.device("cpu"))
    monkeypatch.setattr(sampling, "physical_memory", lambda: None)  # a system that does not say: no bound
    check_sample_memory(HUGE, (3, 64, 64))
