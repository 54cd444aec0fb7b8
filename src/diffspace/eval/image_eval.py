"""Evaluation of image runs: FID / KID / precision-recall on feature-net features beside the
real-vs-real baseline, classification accuracy of class-conditional samples (CAS) with and without
classifier-free guidance, and pictures (sample grid, denoising strip).

The real-vs-real baseline compares the test split with the train split's statistics; the model's
samples, as many as the test split, are compared with the same train statistics, so both numbers
carry the same finite-sample bias ([FID] arXiv 1706.08500).
"""

from pathlib import Path

import torch
from torch import Tensor

from diffspace.data.images import load_image_data
from diffspace.eval.featurenet import features, load_classifier, predict, train_featurenet
from diffspace.eval.image_metrics import feature_stats, frechet_distance, kid, precision_recall
from diffspace.eval.pictures import save_grid, save_trajectory
from diffspace.rng import Streams
from diffspace.samplers.guidance import ClassifierFreeGuidance
from diffspace.types import UserError


def image_data(cfg) -> dict:
    """The registry entry for image data names: train/test tensors and labels from config [data]."""
    d = cfg.data
    path = d.file or None
    x, y = load_image_data(d.name, "train", cfg.run.seed, path, d.image_size)
    xt, yt = load_image_data(d.name, "test", cfg.run.seed, path, d.image_size)
    return {"x_train": x, "y_train": y, "x_test": xt, "y_test": yt}


@torch.no_grad()
def sample_images(denoiser, shape: tuple[int, ...], labels: Tensor | None, sigmas: Tensor, fn,
                  seed: int, n: int | None = None, batch: int = 500, callback=None,
                  device: torch.device | str = "cpu") -> Tensor:
    """Samples for `labels` (or n unconditional ones) with sampler function `fn`; every draw of sample i
    (initial noise and sampler noise) depends only on (seed, i)."""
    n = len(labels) if labels is not None else n
    parts = []
    for lo in range(0, n, batch):
        m = min(batch, n - lo)
        g = Streams(seed, m, lo)
        x = (g.randn((m, *shape), torch.float64) * sigmas[0]).float().to(device)
        cond = {} if labels is None else {"class_labels": labels[lo:lo + m].to(device)}
        parts.append(fn(denoiser, x, sigmas.to(device), generator=g, callback=callback, **cond).cpu())
    return torch.cat(parts).clamp(-1, 1)


def featurenet_for(run, path: str = "") -> tuple:
    """The feature net named by `path`, else RUN/featurenet.safetensors, trained there (offline) if absent."""
    p = Path(path) if path else run.dir / "featurenet.safetensors"
    if not p.exists():
        if path:
            raise UserError(f"feature net not found: {p} (train one with `diffspace train-featurenet`)")
        d = run.cfg.data
        print(f"training the feature net for {d.name} into {p}")
        train_featurenet(d.name, p, seed=run.cfg.run.seed, path=d.file or None, size=d.image_size)
    return load_classifier(p, "featurenet")


def balanced_labels(n: int, num_classes: int) -> Tensor:
    return torch.arange(n) % num_classes


def score_samples(net, x: Tensor, labels: Tensor | None, ref_stats, ref_feats: Tensor) -> dict:
    """FID against the reference statistics, KID and precision/recall against reference features, CAS."""
    f = features(net, x)
    out = {"fid": frechet_distance(*ref_stats, *feature_stats(f)),
           "kid": kid(ref_feats, f, subset_size=min(500, len(f)))[0]}
    out["precision"], out["recall"] = precision_recall(ref_feats, f)
    if labels is not None:
        out["cas"] = float((predict(net, x) == labels).double().mean())
    return out


def eval_images(run, args) -> dict:
    """`diffspace eval RUN --cfg W`: metrics of samples with CFG scale W and unguided, plus pictures."""
    from diffspace.cli.continuous import as_denoiser
    from diffspace.cli.continuous_run import run_sigmas, sampler_fn

    cfg, device = run.cfg, getattr(args, "device_obj", "cpu")
    data = image_data(cfg)
    net, meta = featurenet_for(run, getattr(args, "featurenet", "") or "")
    ref_feats = features(net, data["x_train"])
    ref_stats = feature_stats(ref_feats)
    base = score_samples(net, data["x_test"], data["y_test"], ref_stats, ref_feats)
    sampler, steps = args.sampler or cfg.sample.sampler, args.steps or cfg.sample.steps
    sigmas, fn = run_sigmas(run, args.grid or cfg.sample.grid, steps, sampler), sampler_fn(sampler)
    n = args.n or len(data["x_test"])
    den, K = as_denoiser(cfg, run.module), cfg.model.num_classes
    labels = balanced_labels(n, K) if K > 0 else None
    shape = tuple(data["x_train"].shape[1:])
    metrics = {"step": run.step, "n": n, "sampler": sampler, "steps": steps, "featurenet": meta["data"],
               "featurenet_test_accuracy": meta["test_accuracy"], "fid_real_baseline": base["fid"],
               "kid_real_baseline": base["kid"], "precision_real_baseline": base["precision"],
               "recall_real_baseline": base["recall"]}
    w = getattr(args, "cfg", None)
    w = 1.0 if w is None else w
    guided = ClassifierFreeGuidance(den, w, K) if K > 0 else den
    x = sample_images(guided, shape, labels, sigmas, fn, args.seed, n=n, device=device)
    metrics |= {"cfg": w, **score_samples(net, x, labels, ref_stats, ref_feats)}
    if K > 0:
        x1 = x if w == 1.0 else sample_images(den, shape, labels, sigmas, fn, args.seed, device=device)
        plain = score_samples(net, x1, labels, ref_stats, ref_feats)
        metrics |= {"cas_nocfg": plain["cas"], "fid_nocfg": plain["fid"]}
    metrics["fid_ratio"] = metrics["fid"] / metrics["fid_real_baseline"]
    save_pictures(guided, shape, K, sigmas, fn, args.seed, run.dir, device)
    return metrics


def save_pictures(denoiser, shape, num_classes: int, sigmas: Tensor, fn, seed: int,
                  out_dir: Path, device="cpu", per_row: int = 10) -> None:
    """samples.png (one row per class, or a square of unconditional samples) and denoising.png
    (rows: a few samples; columns: x0_hat along the sampler's steps)."""
    rows = num_classes if num_classes > 0 else per_row
    labels = torch.arange(rows).repeat_interleave(per_row) if num_classes > 0 else None
    x = sample_images(denoiser, shape, labels, sigmas, fn, seed, n=rows * per_row, device=device)
    save_grid(x, Path(out_dir) / "samples.png", ncols=per_row)
    frames = []
    few = labels[::per_row][: min(rows, 10)] if labels is not None else None
    sample_images(denoiser, shape, few, sigmas, fn, seed + 1, n=min(rows, 10), device=device,
                  callback=lambda i, s, x_, x0: frames.append(x0.clamp(-1, 1).cpu()))
    keep = sorted({round(j) for j in torch.linspace(0, len(frames) - 1, min(len(frames), 12)).tolist()})
    save_trajectory([frames[j] for j in keep], Path(out_dir) / "denoising.png")
