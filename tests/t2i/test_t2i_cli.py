"""The text-to-image commands as a user meets them: `diffspace sample RUN --prompt .. --prompt .. --out
grid.png` writes a grid (one row per prompt) and the arrays with their prompts, `diffspace eval` the
guidance sweep; every bad input of issue 16 (an empty prompt, one longer than the text context, --prompt
on an unconditional run, a caption file naming a missing image; two prompts for a text run) is one line
and exit 2."""

import json

import numpy as np
import pytest
from PIL import Image
from t2i_configs import encoder_config

from diffspace import runs
from diffspace.cli.main import main
from test_cli import assert_one_line_error
from test_cli_images import in_process

RED, BLUE = "a small red circle at the top left", "a large blue square at the center"


def test_sample_writes_a_grid_with_a_row_per_prompt_and_the_arrays(t2i_runs, tmp_path):
    out = tmp_path / "grid.png"
    argv = ["sample", t2i_runs["latent"], "--prompt", RED, "--prompt", BLUE, "--cfg", 4, "--n", 4,
            "--out", out]
    assert main([str(a) for a in argv]) == 0
    width, height = Image.open(out).size  # 4 columns, 2 rows of 16-pixel images shown at least 4x, with a
    assert width > 4 * 16 * 4 and height > 2 * 16 * 4  # title and the prompts as row labels around them
    arrays = np.load(out.with_suffix(".npz"))
    assert arrays["samples"].shape == (8, 3, 16, 16) and list(arrays["prompts"]) == [RED] * 4 + [BLUE] * 4
    expected = runs.sample(runs.load_run(t2i_runs["latent"]),
                           runs.SampleOptions(n=4, prompts=(RED, BLUE), guidance=4.0))
    np.testing.assert_allclose(arrays["samples"], expected.numpy(), atol=1e-5)


def test_bad_prompts_through_the_cli(t2i_runs, capsys):
    run = t2i_runs["pixel"]
    for args, words in ((["--prompt", ""], ["prompt 1 (--prompt) is empty"]),
                        (["--prompt", RED, "--prompt", "  "], ["prompt 2 (--prompt) is empty"]),
                        (["--prompt", RED * 4], ["tokens long", "the text context holds"]),
                        (["--cfg", "2"], ["needs a prompt (--prompt)"])):
        assert_one_line_error(in_process(capsys, "sample", run, *args), *words)
    assert_one_line_error(in_process(capsys, "sample", t2i_runs["encoder"], "--prompt", RED),
                          "contrastive runs cannot use the option 'prompts' (--prompt)")


def test_prompt_on_an_unconditional_run_is_refused(tmp_path, capsys):
    run = tmp_path / "vectors"
    runs.train({"run": {"dir": str(run)}, "data": {"name": "checkerboard", "n_train": 200, "n_test": 50},
                "model": {"mlp": {"hidden": 8, "depth": 1}}, "train": {"steps": 2, "batch_size": 16}})
    assert_one_line_error(in_process(capsys, "sample", run, "--prompt", RED),
                          "continuous runs cannot use the option 'prompts' (--prompt)")


def test_a_text_run_takes_exactly_one_prompt(tmp_path, capsys):
    (tmp_path / "corpus.txt").write_text("the quick brown fox jumps over the lazy dog. " * 50)
    run = tmp_path / "text"
    runs.train({"task": "text", "run": {"dir": str(run)},
                "data": {"corpus": str(tmp_path / "corpus.txt"), "tokenizer": "char", "seq_len": 16},
                "model": {"kind": "ar", "dim": 16, "depth": 1, "heads": 2},
                "train": {"steps": 2, "batch_size": 8}})
    assert_one_line_error(in_process(capsys, "sample", run, "--prompt", "the", "--prompt", "a"),
                          "text runs continue one prompt")
    assert main(["sample", str(run), "--prompt", "the ", "--n", "2", "--out", str(tmp_path / "s.txt")]) == 0
    assert (tmp_path / "s.txt").read_text().count("=== sample") == 2


def test_a_caption_file_naming_a_missing_image_stops_training(tmp_path, capsys):
    folder = tmp_path / "captioned"
    folder.mkdir()
    Image.new("RGB", (16, 16), (200, 30, 30)).save(folder / "red.png")
    lines = [{"file_name": "red.png", "text": "a red square"},
             {"file_name": "gone.png", "text": "a blue square"}]
    (folder / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    cfg = encoder_config(tmp_path / "run")
    toml = (f'task = "contrastive"\n[run]\ndir = "{tmp_path / "run"}"\n[data]\nname = "folder"\n'
            f'file = "{folder}"\n[train]\nsteps = {cfg["train"]["steps"]}\n')
    (tmp_path / "c.toml").write_text(toml)
    assert_one_line_error(in_process(capsys, "train", tmp_path / "c.toml", "--no-progress"),
                          "names image 'gone.png'", "does not exist")
    assert not (tmp_path / "run").exists()


def test_eval_sweeps_guidance_and_reuses_its_attribute_reader(t2i_runs, tmp_path):
    run = t2i_runs["latent"]
    assert main(["eval", str(run), "--n", "12", "--json", str(tmp_path / "m.json")]) == 0
    m = json.loads((tmp_path / "m.json").read_text())
    gen = [r for r in m["rows"] if r["guidance"] is not None]
    assert sorted({(r["set"], r["guidance"]) for r in gen}) == [("heldout", 1.0), ("heldout", 3.0),
                                                                ("seen", 1.0), ("seen", 3.0)]
    assert m["best_guidance"] in (1.0, 3.0) and 0 <= m["seen_acc_all"] <= m["seen_acc_mean"] <= 1
    for r in m["rows"]:
        assert r["fid"] >= 0 and 0 <= r["clip_score"] <= 100 and r["n"] == 12
    for name in ("guidance.png", "samples.png", "featurenet.safetensors", "metrics.json"):
        assert (run / name).is_file(), name
    reader = tmp_path / "reader.safetensors"
    reader.write_bytes((run / "featurenet.safetensors").read_bytes())
    reader.with_suffix(".json").write_bytes((run / "featurenet.json").read_bytes())
    assert main(["eval", str(t2i_runs["pixel"]), "--n", "12", "--cfg", "2", "--featurenet", str(reader)]) == 0
    pixel = json.loads((t2i_runs["pixel"] / "metrics.json").read_text())
    assert pixel["best_guidance"] == 2.0 and not (t2i_runs["pixel"] / "featurenet.safetensors").exists()
    with pytest.raises(SystemExit):
        main(["eval", str(run), "--featurenet"])
