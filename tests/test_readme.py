"""The README's Python example of the runs API runs as written (in a scratch working directory)."""

import os
import re
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_readme_python_example_runs(tmp_path, monkeypatch, capsys):
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    example = next(b for b in blocks if b.startswith("from diffspace import runs"))
    shutil.copytree(ROOT / "configs", tmp_path / "configs")
    monkeypatch.chdir(tmp_path)
    exec(compile(example, "README.md", "exec"), {})
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("torch.Size([2000, 2])")
    sw2, floor = map(float, out[0].split()[-2:])
    assert 0 < floor < sw2 < 10 * floor  # 300 steps: a rough model, but of the data, not of noise
    texts = eval(out[1])  # noqa: S307 - our own printed list of two strings
    assert len(texts) == 2 and all(t.startswith("The ") for t in texts)
    assert 0 < float(out[2]) < 8.5  # bits per char of a byte model: below uniform over bytes
    assert (tmp_path / "runs" / "py-demo" / "metrics.json").is_file()
    assert set(os.listdir(tmp_path / "runs")) == {"py-demo", "py-text"}
