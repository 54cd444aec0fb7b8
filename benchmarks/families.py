"""The relatives of diffusion on one table per dataset (issue 15): flows, VAEs, a GAN and autoregressive
models trained by the runs layer beside the project's diffusion (EDM) and flow-matching runs and zuko's
neural spline flow (the `bench` extra), on the checkerboard, 8 gaussians and the 8x8 digits.

Per row: the NLL in nats per example and bits/dim, labelled exact or bound (toy sets: the density of
the continuous test points; digits: the probability of the 17-level data, flows' and diffusion's by
dequantization, eval/bits.py); sliced W2 beside the data baseline (toy sets) or FID / precision / recall
on the project's digits feature net beside the real baseline; samples per CPU-second of `runs.sample`;
training CPU-minutes. Every training runs alone on one thread (torch.set_num_threads(1)); its CPU time
is this process's (time.process_time) and the load average of the shared machine is recorded around it.

    python benchmarks/families.py                              # all datasets (about 35 CPU-minutes)
    python benchmarks/families.py --datasets checkerboard --only RealNVP
    python benchmarks/families.py --table                      # rewrite the .md and picture from the .json

Writes benchmarks/results/families.json (merged row by row, so partial runs add up), families.md and
families.png (samples of every row side by side).
"""

import argparse
import json
import math
import os
import platform
import time
from pathlib import Path

import torch

from diffspace import runs
from diffspace.eval.bits import summarize
from diffspace.eval.metrics import vector_report
from diffspace.runs.continuous import load_data

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
RUNS = ROOT / "benchmarks" / "cache" / "families"
FM = ["loss.objective=flow", "model.path=linear", "model.parameterization=velocity",
      "loss.proposal=logit_normal"]
C = lambda name: str(ROOT / "configs" / f"{name}.toml")  # noqa: E731

# (row label, config, overrides); steps are the configs' own unless overridden
ENTRIES = {
    "checkerboard": [
        ("RealNVP", C("checkerboard-realnvp"), []),
        ("Glow", C("checkerboard-glow"), ["train.steps=3000"]),
        ("VAE (Gaussian)", C("checkerboard-vae"), ["train.steps=3000"]),
        ("VAE (Gumbel-softmax)", C("checkerboard-gumbel-vae"), ["train.steps=3000"]),
        ("GAN", C("checkerboard-gan"), []),
        ("MADE (32-bin histogram)", C("checkerboard-made"), ["train.steps=2000"]),
        ("diffusion (EDM)", C("demo"), ["train.steps=2000"]),
        ("flow matching", C("demo"), ["train.steps=2000", *FM]),
    ],
    "digits": [
        ("Glow", C("digits-glow"), []),
        ("RealNVP", C("digits-realnvp"), []),
        ("VAE (Gaussian)", C("digits-vae"), []),
        ("VAE (Gumbel-softmax)", C("digits-gumbel-vae"), []),
        ("GAN", C("digits-gan"), []),
        ("MADE", C("digits-made"), []),
        ("PixelCNN", C("digits-pixelcnn"), []),
        ("diffusion (EDM)", C("digits-edm"), ["train.steps=1500"]),
        ("flow matching", C("digits-fm"), ["train.steps=1500", "train.minutes=0"]),
    ],
    "8gaussians": [
        ("RealNVP", C("8gaussians-realnvp"), ["train.steps=3000"]),
        ("VAE (Gaussian)", C("8gaussians-vae"), ["train.steps=3000"]),
        ("VAE (Gumbel-softmax)", C("8gaussians-gumbel-vae"), ["train.steps=3000"]),
        ("GAN", C("8gaussians-gan"), []),
        ("MADE (48-bin histogram)", C("8gaussians-made"), ["train.steps=2000"]),
        ("diffusion (EDM)", C("demo"), ["train.steps=2000", "data.name=8gaussians"]),
        ("flow matching", C("demo"), ["train.steps=2000", "data.name=8gaussians", *FM]),
    ],
}
NSF = "neural spline flow (zuko)"
TRUE_ENTROPY = {"checkerboard": math.log(8)}  # uniform on 8 unit squares
TOY_N, NLL_N = 5000, 1000  # toy sets: samples scored, test points of the NLL
DIGITS_NLL_N = 200  # digits: test images of the NLL (diffusion's PF-ODE with Hutchinson is the slow one)


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-")


def measured(fn):
    """(fn(), CPU seconds, load averages before and after)."""
    load, c0 = os.getloadavg()[0], time.process_time()
    out = fn()
    return out, time.process_time() - c0, [round(load, 2), round(os.getloadavg()[0], 2)]


def featurenet() -> str:
    """The digits feature net every digits row is scored on (trained once, cached)."""
    from diffspace.eval.featurenet import train_featurenet

    path = RUNS / "featurenet-digits.safetensors"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        train_featurenet("digits", path, steps=1500, seed=0)
    return str(path)


def run_entry(data: str, label: str, config: str, overrides: list[str]) -> tuple[dict, torch.Tensor]:
    out_dir = RUNS / data / _slug(label)
    run, cpu, load = measured(lambda: runs.train(config, [*overrides, f"run.dir={out_dir}"], overwrite=True))
    likelihood = run.task != "gan"
    opts = runs.EvalOptions(n=None if data == "digits" else TOY_N, nll=likelihood,
                            nll_n=(DIGITS_NLL_N if data == "digits" else NLL_N) if likelihood else None,
                            featurenet=featurenet() if data == "digits" else None)
    metrics, eval_cpu, _ = measured(lambda: runs.evaluate(run, opts))
    n = 400 if data == "digits" else TOY_N
    x, sample_cpu, _ = measured(lambda: runs.sample(run, runs.SampleOptions(n=n)))
    kind = metrics.get("nll_kind") or ("bound" if data == "digits" else "exact")  # diffusion: dequantized
    # metrics first: their "steps" (a diffusion sampler's) must not hide the training steps
    row = {**{k: v for k, v in metrics.items() if not isinstance(v, (list, dict))},
           "family": label, "task": run.task, "config": Path(config).name, "overrides": overrides,
           "steps": run.step, "train_cpu_s": cpu, "load_avg": load, "eval_cpu_s": eval_cpu,
           "samples_per_cpu_s": n / sample_cpu, "nll_kind": kind if likelihood else None}
    return row, x[:400]


def run_nsf(data: str, steps: int = 3000) -> tuple[dict, torch.Tensor]:
    """zuko's NSF (3 transforms of 8 rational-quadratic bins, 128 x 2 conditioners), Adam 1e-3, batch 512."""
    import zuko

    cfg = runs.load_config(C("demo"), [f"data.name={data}"])
    d = load_data(cfg)
    torch.manual_seed(0)
    flow = zuko.flows.NSF(features=2, transforms=3, bins=8, hidden_features=(128, 128))
    opt = torch.optim.Adam(flow.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)

    def fit():
        for _ in range(steps):
            idx = torch.randint(len(d["x_train"]), (512,), generator=g)
            loss = -flow().log_prob(d["x_train"][idx]).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()

    _, cpu, load = measured(fit)
    with torch.no_grad():
        s = summarize(-flow().log_prob(d["x_test"][:NLL_N]).double(), 2)
        x, sample_cpu, _ = measured(lambda: flow().sample((TOY_N,)))
    rep = vector_report(x, d["x_test"][:TOY_N], d["x_train"])
    return {"family": NSF, "task": "zuko", "steps": steps, "train_cpu_s": cpu, "load_avg": load,
            "samples_per_cpu_s": TOY_N / sample_cpu, "nll_kind": "exact", "nll_nats": s["nll_nats"],
            "nll_stderr": s["nll_stderr"], "nll_bits_per_dim": s["bits_per_dim"], **rep}, x[:400]


def _cell(v, fmt: str = ".3f") -> str:
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt)


def markdown(res: dict) -> str:
    lines = [f"# The relatives of diffusion, one table per dataset ({res['machine']})", "",
             "NLL in nats per example (± standard error over test examples) and bits/dim; **exact** or "
             "**bound**. Toy sets: the density of continuous test points (true entropy of the checkerboard "
             "log 8 = 2.0794 nats); digits: -log P of the 17-level data (flows and diffusion through "
             "dequantization + offset, eval/bits.py). Samples per CPU-second of `runs.sample`; training "
             "CPU-minutes on one thread, one training at a time, with the 1-minute load average of the "
             "shared 2-core machine before / after. Command: `python benchmarks/families.py`.", ""]
    for data, rows in res["datasets"].items():
        image = data == "digits"
        quality = "FID (real 'data' baseline) · precision / recall" if image else "sliced W2 (data baseline)"
        truth = TRUE_ENTROPY.get(data)
        gap = " NLL − log 8 |" if truth else ""
        lines += [f"## {data}", "", f"| family | NLL nats |{gap} kind | bits/dim | {quality} | "
                  "samples / CPU-s | train CPU-min | steps | load |", "|---" * (9 + bool(truth)) + "|"]
        for r in rows.values():
            nll = f"{r['nll_nats']:.4f} ± {r['nll_stderr']:.4f}" if r.get("nll_nats") is not None else "—"
            if truth:
                nll += f" | {r['nll_nats'] - truth:+.3f}" if r.get("nll_nats") is not None else " | —"
            if image:
                q = (f"{r['fid']:.2f} ({r['fid_real_baseline']:.2f}) · {r['precision']:.2f} / "
                     f"{r['recall']:.2f}")
            else:
                q = f"{r['sw2']:.4f} ({r['sw2_data_baseline']:.4f})"
                if "modes_covered" in r:
                    q += f", {r['modes_covered']}/8 modes, {r['modes_within_3sigma']:.3f} within 3σ"
            load = f"{r['load_avg'][0]} / {r['load_avg'][1]}"
            lines.append(f"| {r['family']} | {nll} | {r.get('nll_kind') or 'none'} | "
                         f"{_cell(r.get('nll_bits_per_dim'), '.4f')} | {q} | {r['samples_per_cpu_s']:.3g} | "
                         f"{r['train_cpu_s'] / 60:.2f} | {r['steps']} | {load} |")
        missing = [e[0] for e in ENTRIES[data] + ([] if image else [(NSF,)]) if e[0] not in rows]
        lines += ["", f"Not run for this table: {', '.join(missing)}.", ""] if missing else [""]
    return "\n".join(lines)


def picture(samples: dict, out: Path) -> None:
    """One row per dataset, one column per family: scatter plots of toy samples, tiles of digits."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from diffspace.eval.pictures import image_grid

    cols = max(len(v) for v in samples.values())
    fig, axes = plt.subplots(len(samples), cols, figsize=(2.0 * cols, 2.2 * len(samples)), squeeze=False)
    for i, (data, rows) in enumerate(samples.items()):
        for j in range(cols):
            ax = axes[i][j]
            ax.set_xticks([])
            ax.set_yticks([])
            if j >= len(rows):
                ax.axis("off")
                continue
            label, x = list(rows.items())[j]
            x = torch.as_tensor(x)
            if x.ndim == 4:
                ax.imshow(image_grid(x[:36].clamp(-1, 1), 6), cmap="gray")
            else:
                ax.scatter(x[:2000, 0], x[:2000, 1], s=0.3, alpha=0.5)
                ax.set_xlim(-3, 3)
                ax.set_ylim(-3, 3)
            ax.set_title(label, fontsize=7)
        axes[i][0].set_ylabel(data, fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets", nargs="+", default=list(ENTRIES), choices=list(ENTRIES))
    p.add_argument("--only", nargs="+", help="row labels to (re)run")
    p.add_argument("--no-nsf", action="store_true", help="skip zuko's neural spline flow")
    p.add_argument("--table", action="store_true", help="only rewrite the .md and picture from the .json")
    args = p.parse_args()
    torch.set_num_threads(1)
    out_json = RESULTS / "families.json"
    res = json.loads(out_json.read_text()) if out_json.exists() else {"datasets": {}}
    res["machine"] = f"{platform.machine()}, {os.cpu_count()} shared cores, torch {torch.__version__}"
    cache = RUNS / "samples.pt"
    samples = torch.load(cache) if cache.exists() else {}
    for data in [] if args.table else args.datasets:
        nsf = [] if data == "digits" or args.no_nsf else [(NSF, "", [])]
        for label, config, overrides in ENTRIES[data] + nsf:
            if args.only and label not in args.only:
                continue
            row, x = run_nsf(data) if label == NSF else run_entry(data, label, config, overrides)
            print(json.dumps(row), flush=True)
            res["datasets"].setdefault(data, {})[label] = row
            samples.setdefault(data, {})[label] = x
            out_json.write_text(json.dumps(res, indent=1) + "\n")
            torch.save(samples, cache)
    order = {d: {r[0]: None for r in ENTRIES[d] + [(NSF,)]} for d in ENTRIES}
    res["datasets"] = {d: {k: res["datasets"][d][k] for k in order[d] if k in res["datasets"][d]}
                       for d in ENTRIES if d in res["datasets"]}
    (RESULTS / "families.md").write_text(markdown(res))
    picture({d: {k: samples[d][k] for k in order[d] if k in samples.get(d, {})} for d in res["datasets"]},
            RESULTS / "families.png")


if __name__ == "__main__":
    main()
