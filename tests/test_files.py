"""files.py: every write goes through a temp file beside its target, and a new output never replaces one."""

import matplotlib.pyplot as plt
import pytest
from PIL import Image

from diffspace.eval.plots import save_figure
from diffspace.files import atomic_write, check_new_files, is_temp, temp_path, write_text
from diffspace.types import UserError


def test_temp_names_keep_the_suffix_and_are_recognised(tmp_path):
    assert temp_path(tmp_path / "samples.npz") == tmp_path / ".samples.tmp.npz"
    assert temp_path(tmp_path / "last.safetensors").name == ".last.tmp.safetensors"
    assert temp_path(tmp_path / ".diffspace-run").name == "..diffspace-run.tmp"
    for name in (".samples.tmp.npz", ".last.tmp.safetensors", "..diffspace-run.tmp", ".config.tmp.toml"):
        assert is_temp(name), name
    for name in ("samples.npz", ".hidden", "notes.tmp", "a.tmp.npz", ".tmp"):
        assert not is_temp(name), name


def test_a_failed_write_leaves_the_old_file_and_its_temp_aside(tmp_path):
    target = tmp_path / "metrics.json"
    target.write_text("old\n")
    with pytest.raises(RuntimeError, match="disk"), atomic_write(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("disk went away")
    assert target.read_text() == "old\n"
    assert (tmp_path / ".metrics.tmp.json").read_text() == "half"
    write_text(target, "new\n")
    assert target.read_text() == "new\n" and sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]


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
