"""files.py: every write goes through a temp file beside its target, and a new output never replaces one."""

import matplotlib.pyplot as plt
import pytest
from PIL import Image

from diffspace.eval.plots import save_figure
from diffspace.files import atomic_write, check_new_files, is_temp, new_temp, write_text
from diffspace.types import UserError


def test_temp_names_keep_the_suffix_are_new_and_are_recognised(tmp_path):
    mine = tmp_path / ".samples.tmp.npz"
    mine.write_text("the user's own\n")
    made = [new_temp(tmp_path / "samples.npz") for _ in range(3)]
    assert len(set(made)) == 3 and mine.read_text() == "the user's own\n"
    assert all(p.parent == tmp_path and p.name.startswith(".samples.tmp") and p.suffix == ".npz"
               for p in made)
    assert all(is_temp(p.name) for p in made)
    assert is_temp(new_temp(tmp_path / "last.safetensors").name)
    assert is_temp(new_temp(tmp_path / ".diffspace-run").name)
    assert is_temp(new_temp(tmp_path / "hf", folder=True).name) and (tmp_path / "hf").exists() is False
    for name in ("samples.npz", ".hidden", "notes.tmp", "a.tmp.npz", ".samples.tmp.npz", ".x.tmpab.npz"):
        assert not is_temp(name), name


def test_a_failed_write_leaves_the_old_file_and_nothing_else(tmp_path):
    target = tmp_path / "metrics.json"
    target.write_text("old\n")
    with pytest.raises(RuntimeError, match="disk"), atomic_write(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("disk went away")
    assert target.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["metrics.json"]
    deep = tmp_path / "new" / "deeper" / "m.json"
    with pytest.raises(RuntimeError, match="disk"), atomic_write(deep):
        raise RuntimeError("disk went away")
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]  # the folders it made are gone too
    write_text(target, "new\n")
    assert target.read_text() == "new\n" and [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_new_files_are_checked(tmp_path):
    (tmp_path / "mine.txt").write_text("mine\n")
    (tmp_path / "folder").mkdir()
    check_new_files(tmp_path / "new.json", tmp_path / "a" / "b" / "new.json")  # folders are made on write
    for path, words in ((tmp_path / "mine.txt", "mine.txt exists; choose a new name"),
                        (tmp_path / "folder", "folder exists"),
                        (f"{tmp_path}/out/", "out/ names a folder; give a file name"),
                        (tmp_path / "mine.txt" / "x.json", "mine.txt is a file, not a folder")):
        with pytest.raises(UserError, match=words):
            check_new_files(tmp_path / "new.json", path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder", "mine.txt"]


def test_figures_are_written_whole(tmp_path):
    fig, ax = plt.subplots(figsize=(2, 2))
    ax.plot([0, 1], [1, 0])
    save_figure(fig, tmp_path / "curve.png", dpi=50)
    assert Image.open(tmp_path / "curve.png").size == (100, 100)
    assert [p.name for p in tmp_path.iterdir()] == ["curve.png"]
    assert not plt.get_fignums()  # closed


def test_every_output_gets_the_mode_open_gives(tmp_path):
    """Checkpoints and exported weights were 0600 (safetensors' own choice) beside 0644 pictures and JSON."""
    import os

    import torch

    from diffspace.train.checkpoint import save_checkpoint

    mask = os.umask(0o022)
    try:
        save_checkpoint(tmp_path / "w.safetensors", {"a": torch.zeros(2)}, {})
        write_text(tmp_path / "m.json", "{}\n")
    finally:
        os.umask(mask)
    assert {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()} == {"w.safetensors": 0o644,
                                                                               "m.json": 0o644}


def test_an_unwritable_folder_is_refused_before_any_work(tmp_path, monkeypatch):
    """(A root user may write anywhere, so os.access is asked as for a user who may not.)"""
    import os

    monkeypatch.setattr(os, "access", lambda path, mode: False)
    with pytest.raises(UserError, match=f"the folder {tmp_path} is not writable"):
        check_new_files(tmp_path / "m.json")
