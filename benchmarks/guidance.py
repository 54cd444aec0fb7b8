"""The guidance trade-off on a trained class-conditional image run: classifier-free guidance with scale
w and classifier guidance with scale s, each in {0, 1, 2, 4}, scored by feature-net FID (beside the
real-vs-real baseline), precision/recall and classification accuracy of the samples (CAS).

    python benchmarks/guidance.py --run runs/digits-edm

CFG w = 0 and classifier guidance s = 0 both sample the unconditional model (the null class), so their
rows must agree. Classifier guidance uses a noise-aware classifier trained into RUN/classifier.safetensors
when absent. Writes benchmarks/results/guidance.json, .md and .png.
"""

import argparse
import json
import time
from pathlib import Path

from diffspace.eval.featurenet import features, load_noisy_classifier, train_classifier
from diffspace.eval.image_eval import balanced_labels, score_samples
from diffspace.eval.image_metrics import feature_stats
from diffspace.runs import load_run
from diffspace.runs.continuous import as_denoiser, load_data
from diffspace.runs.evaluation import featurenet_for
from diffspace.runs.sampling import generate, run_sigmas, sampler_fn
from diffspace.samplers.guidance import ClassifierFreeGuidance, ClassifierGuidance, null_class


def classifier_for(run, path: str, steps: int):
    p = Path(path) if path else run.dir / "classifier.safetensors"
    if not p.exists():
        d = run.cfg.data
        print(f"training the noise-aware classifier into {p}")
        train_classifier(d.name, p, steps=steps, seed=run.cfg.run.seed, path=d.file or None,
                         size=d.image_size, sigma_data=run.cfg.model.sigma_data)
    return load_noisy_classifier(p)


def sweep(args) -> dict:
    run = load_run(args.run)
    cfg, K = run.cfg, run.cfg.model.num_classes
    if K == 0:
        raise SystemExit(f"{args.run} is not class-conditional: guidance needs model.num_classes > 0")
    data = load_data(cfg)
    net, meta = featurenet_for(run)
    ref_feats = features(net, data["x_train"])
    ref_stats = feature_stats(ref_feats)
    base = score_samples(net, data["x_test"], data["y_test"], ref_stats, ref_feats)
    clf = classifier_for(run, args.classifier, args.classifier_steps)
    den = as_denoiser(cfg, run.module)
    sigmas, fn = run_sigmas(run, "karras", args.steps, args.sampler), sampler_fn(args.sampler)
    labels = balanced_labels(args.n or len(data["x_test"]), K)
    shape = tuple(data["x_train"].shape[1:])
    rows = []
    for kind in ("cfg", "classifier"):
        for scale in args.scales:
            guided = (ClassifierFreeGuidance(den, scale, null_class(K)) if kind == "cfg"
                      else ClassifierGuidance(den, clf, scale))
            t0 = time.perf_counter()
            x = generate(guided, shape, len(labels), sigmas, fn, args.seed, run.device,
                         {"class_labels": labels}).clamp(-1, 1)
            seconds = time.perf_counter() - t0
            m = score_samples(net, x, labels, ref_stats, ref_feats)
            rows.append({"guidance": kind, "scale": scale, **m, "fid_ratio": m["fid"] / base["fid"],
                         "sample_seconds": seconds})
            print(json.dumps(rows[-1]))
    return {"run": str(args.run), "step": run.step, "sampler": args.sampler, "steps": args.steps,
            "n": len(labels), "featurenet_test_accuracy": meta["test_accuracy"],
            "real_baseline": base, "rows": rows}


def write_markdown(res: dict, path: Path) -> None:
    b = res["real_baseline"]
    lines = [f"# Guidance sweep on {res['run']} (step {res['step']}, {res['sampler']} {res['steps']} steps, "
             f"n = {res['n']})", "",
             f"Real-vs-real baseline (test split vs train statistics): FID {b['fid']:.3f}, "
             f"precision {b['precision']:.3f}, recall {b['recall']:.3f}, "
             f"feature-net accuracy {b['cas']:.3f}.", "",
             "| guidance | scale | FID | FID / baseline | KID | precision | recall | CAS | sampling s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        lines.append(f"| {r['guidance']} | {r['scale']:g} | {r['fid']:.3f} | {r['fid_ratio']:.2f} | "
                     f"{r['kid']:.4f} | {r['precision']:.3f} | {r['recall']:.3f} | {r['cas']:.3f} | "
                     f"{r['sample_seconds']:.1f} |")
    path.write_text("\n".join(lines) + "\n")


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for kind, label in (("cfg", "classifier-free (w)"), ("classifier", "classifier (s)")):
        rs = [r for r in res["rows"] if r["guidance"] == kind]
        scales = [r["scale"] for r in rs]
        for ax, key in zip(axes, ("fid", "cas", "recall"), strict=True):
            ax.plot(scales, [r[key] for r in rs], "o-", label=label)
    for ax, key, name in zip(axes, ("fid", "cas", "recall"), ("FID (feature net)", "CAS", "recall"),
                             strict=True):
        ax.axhline(res["real_baseline"][key], color="grey", ls="--", label="real test split")
        ax.set_xlabel("guidance scale")
        ax.set_title(name)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", default="runs/digits-edm")
    p.add_argument("--classifier", default="", help="noise-aware classifier (RUN/classifier.safetensors)")
    p.add_argument("--classifier-steps", type=int, default=3000)
    p.add_argument("--scales", type=lambda s: [float(v) for v in s.split(",")], default=[0.0, 1.0, 2.0, 4.0])
    p.add_argument("--sampler", default="heun")
    p.add_argument("--steps", type=int, default=18)
    p.add_argument("--n", type=int, default=0, help="samples per setting (0: the test split's size)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="benchmarks/results/guidance")
    args = p.parse_args()
    res = sweep(args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(res, indent=2) + "\n")
    write_markdown(res, out.with_suffix(".md"))
    plot(res, out.with_suffix(".png"))
    print(f"wrote {out}.json, .md and .png")


if __name__ == "__main__":
    main()
