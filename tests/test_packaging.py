"""The package as a user installs it: `diffspace --version`, configs shipped by name (the repository's
configs/ is the one copy; src/diffspace/configs links to it), and the wheel's contents and metadata.

The fresh-install check (build the wheel, install it into a new venv with the local torch wheel, run
`diffspace --version` and `diffspace train demo --set train.steps=50` there) takes about two minutes on
two cores, so it runs under `make wheel-check` (DIFFSPACE_WHEEL_CHECK=1), not in `make test`.
"""

import os
import re
import shutil
import subprocess
import sys
import zipfile
from email.parser import Parser
from importlib.metadata import version
from pathlib import Path

import pytest

import diffspace
from diffspace import runs
from diffspace.cli.main import main
from diffspace.config import CONFIGS, config_file, shipped_configs
from diffspace.types import UserError

ROOT = Path(__file__).resolve().parents[1]


def test_version_flag(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0
    assert capsys.readouterr().out.strip() == f"diffspace {diffspace.__version__}"
    assert version("diffspace") == diffspace.__version__  # pyproject reads it from diffspace.__version__


def test_configs_are_shipped_by_name_from_the_one_copy(tmp_path, monkeypatch):
    assert CONFIGS.resolve() == (ROOT / "configs").resolve()  # a link, not a second copy
    assert shipped_configs() == sorted(p.stem for p in (ROOT / "configs").glob("*.toml"))
    monkeypatch.chdir(tmp_path)  # no configs/ here
    assert config_file("demo") == CONFIGS / "demo.toml" == config_file("demo.toml")
    assert runs.load_config("demo") == runs.load_config(ROOT / "configs" / "demo.toml")
    (tmp_path / "demo.toml").write_text('[run]\ndir = "mine"\n')
    assert runs.load_config("demo.toml").run.dir == "mine"  # a file of that name comes first
    with pytest.raises(UserError, match="shipped configs: .*demo"):
        runs.load_config("no-such-config")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel, built from a copy of the sources (the working tree gets no build/ folder)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    shutil.copytree(ROOT / "src", src / "src", symlinks=True,  # src/diffspace/configs stays a link
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    shutil.copytree(ROOT / "configs", src / "configs")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    # why build isolation: the backend (setuptools>=68) comes from the package index, whatever the venv has
    pip = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps"]
    subprocess.run([*pip, str(src), "-w", str(tmp / "dist")], check=True, capture_output=True, timeout=300)
    return next((tmp / "dist").glob("diffspace-*.whl"))


def test_wheel_carries_configs_types_entry_point_and_bounded_dependencies(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    shipped = {n.removeprefix("diffspace/configs/") for n in names if n.startswith("diffspace/configs/")}
    assert shipped == {p.name for p in (ROOT / "configs").glob("*.toml")}
    assert "diffspace/py.typed" in names and "diffspace/nets/diffusers_model.py" in names
    info = next(n for n in names if n.endswith(".dist-info/METADATA"))
    meta = Parser().parsestr(zipfile.ZipFile(wheel).read(info).decode())
    assert meta["Version"] == diffspace.__version__
    entry = zipfile.ZipFile(wheel).read(info.replace("METADATA", "entry_points.txt")).decode()
    assert "diffspace = diffspace.cli.main:main" in entry
    for req in meta.get_all("Requires-Dist"):
        if "extra ==" not in req:  # every run-time dependency has an upper bound or an exact pin
            assert re.search(r"<\d|==", req), req


@pytest.mark.skipif(os.environ.get("DIFFSPACE_WHEEL_CHECK") != "1",
                    reason="the fresh-venv install takes minutes: run `make wheel-check`")
def test_fresh_install_trains_the_shipped_demo(wheel, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([shutil.which("python3.11") or sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, "torch==2.13.0"], check=True, timeout=900)  # the local CPU wheel
    subprocess.run([*pip, str(wheel)], check=True, timeout=900)
    exe, work = venv / "bin" / "diffspace", tmp_path / "work"  # a folder without configs/
    work.mkdir()
    env = dict(os.environ, OMP_NUM_THREADS="1")
    res = subprocess.run([exe, "--version"], capture_output=True, text=True, cwd=work, env=env)
    assert res.returncode == 0 and res.stdout.strip() == f"diffspace {diffspace.__version__}"
    res = subprocess.run([exe, "train", "demo", "--set", "train.steps=50", "--set", "run.dir=runs/demo",
                          "--no-progress"], capture_output=True, text=True, cwd=work, env=env, timeout=600)
    assert res.returncode == 0, res.stderr
    assert "trained 50 steps" in res.stdout
    assert (work / "runs" / "demo" / "checkpoints" / "last.safetensors").is_file()
