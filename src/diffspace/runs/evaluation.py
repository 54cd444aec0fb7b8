"""Evaluating a continuous run: samples against held-out data (sliced W2 and MMD for vectors; FID, KID,
precision/recall and CAS on feature-net features for images), each beside its data-vs-data baseline,
and the PF-ODE NLL of the test split.

Under torchrun every rank helps draw the samples (whole chunks dealt as in `runs.sampling.generate`);
rank 0 alone trains or loads the feature net, computes the metrics and writes RUN/metrics.json, so the
feature net is trained once. The real-vs-real image baseline compares the test split with the train
split's statistics; the samples, as many as the test split, are compared with the same train
statistics, so both numbers carry the same finite-sample bias ([FID] arXiv 1706.08500).
"""

import json
import logging
from pathlib import Path

import torch
from torch import Tensor

from diffspace.data.quantized import DIGITS
from diffspace.eval.bits import bits_per_dim, nll_report
from diffspace.eval.featurenet import FEATURENET_MIN_ACCURACY, features, load_classifier, train_featurenet
from diffspace.eval.image_eval import balanced_labels, score_samples
from diffspace.eval.image_metrics import feature_stats
from diffspace.eval.metrics import baseline_ratio, vector_report
from diffspace.eval.plots import labelled_grid, scatter_2d
from diffspace.files import write_text
from diffspace.rng import Streams
from diffspace.runs.continuous import as_denoiser, build_path, load_data, to_data_units, to_model_units
from diffspace.runs.options import EvalOptions, Run, check_sample_count, check_steps
from diffspace.runs.sampling import (
    describe_plan,
    generate,
    guided_denoiser,
    plan,
    plan_nfe,
    sample_chunk,
    stored_plan,
)
from diffspace.samplers.grids import sampling_range
from diffspace.train.distributed import is_main
from diffspace.types import UserError

log = logging.getLogger("diffspace")


def _protocol(run: Run, opts: EvalOptions) -> dict:
    sc = run.cfg.sample
    steps = opts.steps or sc.steps
    check_steps(steps)
    protocol = {"step": run.step, "seed": opts.seed, "sampler": opts.sampler or sc.sampler, "steps": steps,
                "grid": opts.grid or sc.grid, "sampler_options": dict(opts.sampler_options),
                "sigma_range": list(sampling_range(build_path(run.cfg), opts.sigma_min, opts.sigma_max))}
    if protocol["grid"] == "optimized":  # why: the stored plan sets the range and the step rule
        entry = stored_plan(run, protocol["sampler"], steps)
        levels = entry["sigmas"]
        protocol["sigma_range"] = entry.get("range", [min(v for v in levels if v > 0), levels[0]])
        protocol["plan"] = describe_plan(f"{protocol['sampler']}:{steps}", entry)
        protocol["nfe"] = plan_nfe(entry, protocol["sampler"])
    return protocol


def nll_metrics(run: Run, data: dict, opts: EvalOptions) -> dict:
    """PF-ODE NLL of (part of) the test split; bits/dim and the DDPM bound on the 17-level digits grid."""
    cfg, n = run.cfg, opts.nll_n or 1000
    check_sample_count(nll_n=n)
    x = to_model_units(run.meta, data["x_test"][:n]).to(run.device)
    y = data.get("y_test")
    cond = {"class_labels": y[:n].to(run.device)} if y is not None and cfg.model.num_classes else None
    grid = DIGITS if cfg.data.name == "digits" else None
    report = nll_report(as_denoiser(cfg, run.module), build_path(cfg), x, grid=grid, cond=cond,
                        seed=opts.seed)
    if "data_std" in run.meta:  # change of variables: -log p(x) = -log p(z) + sum_d log std_d
        report["nll_nats"] += float(torch.tensor(run.meta["data_std"], dtype=torch.float64).log().sum())
        report["bits_per_dim"] = bits_per_dim(report["nll_nats"], x[0].numel())
    return {f"nll_{k}" if not k.startswith(("nll", "bound")) else k: v for k, v in report.items()}


def _vectors(run: Run, opts: EvalOptions, data: dict, protocol: dict) -> dict | None:
    n = opts.n or run.cfg.eval.n
    check_sample_count(n=n)
    fn, sigmas = plan(run, protocol["sampler"], protocol["steps"], protocol["grid"], opts.sampler_options,
                      opts.sigma_min, opts.sigma_max)
    guided = guided_denoiser(run, opts.guidance)  # UserError for --cfg on an unconditional run
    x = generate(guided, tuple(run.meta["data_shape"]), n, sigmas, fn, opts.seed, run.device)
    if x is None:  # not rank 0: metrics are computed once, there
        return None
    x = to_data_units(run.meta, x)  # metrics in the data's own units
    x_test = data["x_test"][:n]
    metrics = {**protocol, "n": n, **vector_report(x, x_test, data["x_train"])}
    if x.ndim == 2 and x.shape[1] >= 2:
        title = (f"{run.cfg.data.name}, {protocol['sampler']} {protocol['steps']} steps, {protocol['grid']} "
                 f"grid: sw2 {metrics['sw2']:.4f} (data {metrics['sw2_data_baseline']:.4f})")
        scatter_2d(x, x_test, run.dir / "samples.png", title)
    return metrics


def featurenet_for(run: Run, path: str | None = None) -> tuple:
    """The feature net at `path`, else RUN/featurenet.safetensors, trained there (offline) if absent."""
    p = Path(path) if path else run.dir / "featurenet.safetensors"
    if not p.exists():
        if path:
            raise UserError(f"feature net not found: {p} (train one with `diffspace train-featurenet`)")
        d = run.cfg.data
        log.info("training the feature net for %s into %s (%d steps, eval.featurenet_steps)", d.name, p,
                 run.cfg.eval.featurenet_steps)
        p.with_suffix(".json").unlink(missing_ok=True)  # why: a stale RUN/featurenet.json is diffspace's own
        train_featurenet(d.name, p, steps=run.cfg.eval.featurenet_steps, seed=run.cfg.run.seed,
                         path=d.file or None, size=d.image_size, fit=d.image_fit)
    net, meta = load_classifier(p, "featurenet")
    log.info("feature net %s: test accuracy %.3f on %s", p, meta["test_accuracy"], meta["data"])
    return net, meta


def featurenet_warning(meta: dict) -> str | None:
    """Why metrics on this feature net's features are not to be trusted (test accuracy below
    FEATURENET_MIN_ACCURACY: its features then separate the data poorly, and FID/KID/precision/recall
    and CAS computed on them say little), or None."""
    acc = meta["test_accuracy"]
    if acc >= FEATURENET_MIN_ACCURACY:
        return None
    return (f"UNRELIABLE: the feature net's test accuracy is {acc:.3f} < {FEATURENET_MIN_ACCURACY} "
            f"({meta['data']}); FID, KID, precision/recall and CAS on its features say little (train it "
            "longer: eval.featurenet_steps, or `diffspace train-featurenet --steps`)")


def _images(run: Run, opts: EvalOptions, data: dict, protocol: dict) -> dict | None:
    n = opts.n or len(data["x_test"])
    check_sample_count(n=n)
    K, w = run.cfg.model.num_classes, 1.0 if opts.guidance is None else opts.guidance
    fn, sigmas = plan(run, protocol["sampler"], protocol["steps"], protocol["grid"], opts.sampler_options,
                      opts.sigma_min, opts.sigma_max)
    labels = balanced_labels(n, K) if K > 0 else None
    shape = tuple(run.meta["data_shape"])
    guided, cond = guided_denoiser(run, w), None if labels is None else {"class_labels": labels}
    x = generate(guided, shape, n, sigmas, fn, opts.seed, run.device, cond)
    plain = None
    if K > 0 and w != 1.0:
        plain = generate(guided_denoiser(run, None), shape, n, sigmas, fn, opts.seed, run.device, cond)
    if x is None:  # not rank 0: it only helped sample
        return None
    x, plain = x.clamp(-1, 1), None if plain is None else plain.clamp(-1, 1)
    net, meta = featurenet_for(run, opts.featurenet)
    ref_feats = features(net, data["x_train"])
    ref_stats = feature_stats(ref_feats)
    base = score_samples(net, data["x_test"], data["y_test"], ref_stats, ref_feats)
    metrics = {**protocol, "n": n, "cfg": w, "featurenet": meta["data"],
               "featurenet_test_accuracy": meta["test_accuracy"],
               **{f"{k}_real_baseline": base[k] for k in ("fid", "kid", "precision", "recall")},
               "fid_real_baseline_se": base["fid_se"],
               **score_samples(net, x, labels, ref_stats, ref_feats)}
    if K > 0:
        p = metrics if plain is None else score_samples(net, plain, labels, ref_stats, ref_feats)
        metrics |= {"cas_nocfg": p["cas"], "fid_nocfg": p["fid"]}
    metrics["fid_ratio"] = baseline_ratio(metrics["fid"], metrics["fid_real_baseline"], "fid")
    warning = featurenet_warning(meta)
    if warning:  # why: kept but marked, in metrics.json, on the console and in the report
        metrics["featurenet_warning"] = warning
        log.warning(warning)
    save_pictures(guided, shape, K, sigmas, fn, opts.seed, run.dir, run.device,
                  title=f"{run.cfg.data.name}, step {run.step}, {protocol['sampler']} {protocol['steps']} "
                        f"steps, {protocol['grid']} grid" + (f", cfg {w:g}" if K > 0 else ""))
    return metrics


def save_pictures(denoiser, shape, num_classes: int, sigmas: Tensor, fn, seed: int,
                  out_dir: Path, device, per_row: int = 10, title: str = "") -> None:
    """samples.png (one row per class, labelled, or a square of unconditional samples) and denoising.png
    (rows: a few samples; columns: x0_hat along the sampler's steps, labelled with the step's sigma);
    `title` heads both."""
    rows = num_classes if num_classes > 0 else per_row
    labels = torch.arange(rows).repeat_interleave(per_row) if num_classes > 0 else None
    cond = lambda lab: {} if lab is None else {"class_labels": lab.to(device)}
    x = sample_chunk(denoiser, shape, Streams(seed, rows * per_row), sigmas, fn, device, **cond(labels))
    labelled_grid(x.clamp(-1, 1), Path(out_dir) / "samples.png", per_row, title,
                  [f"class {k}" for k in range(rows)] if num_classes > 0 else None)
    frames, levels, few = [], [], min(rows, 10)

    def keep_frame(i, s, x_, x0):
        frames.append(x0.clamp(-1, 1).cpu())
        levels.append(float(s))

    sample_chunk(denoiser, shape, Streams(seed + 1, few), sigmas, fn, device, callback=keep_frame,
                 **cond(None if labels is None else labels[::per_row][:few]))
    keep = sorted({round(j) for j in torch.linspace(0, len(frames) - 1, min(len(frames), 12)).tolist()})
    strip = torch.stack([frames[j] for j in keep], dim=1).flatten(0, 1)  # (few x columns, C, H, W)
    labelled_grid(strip, Path(out_dir) / "denoising.png", len(keep), f"x0_hat along the steps ({title})",
                  None, [f"σ={levels[j]:.3g}" for j in keep])


def evaluate(run: Run, opts: EvalOptions) -> dict:
    """Metrics of the run's samples (and with opts.nll its test NLL); rank 0 writes RUN/metrics.json and
    the pictures. Returns the metrics ({} on other torchrun ranks)."""
    protocol = _protocol(run, opts)
    data = load_data(run.cfg)
    metrics = (_images if run.cfg.images else _vectors)(run, opts, data, protocol)
    if metrics is None:
        return {}
    if opts.nll:
        metrics |= nll_metrics(run, data, opts)
    if is_main():
        write_text(run.dir / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    return metrics
