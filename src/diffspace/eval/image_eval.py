"""Scores of image samples on feature-net features: FID against reference statistics, KID and
precision/recall against reference features, and the classification accuracy of class-conditional
samples (CAS). [FID] arXiv 1706.08500, [KID] arXiv 1801.01401, [PR] arXiv 1904.06991.
"""

import torch
from torch import Tensor

from diffspace.eval.featurenet import features, predict
from diffspace.eval.image_metrics import feature_stats, frechet_distance, kid, precision_recall
from diffspace.eval.metrics import bootstrap_se


def balanced_labels(n: int, num_classes: int) -> Tensor:
    """0, 1, .., K-1, 0, 1, .. for n samples."""
    return torch.arange(n) % num_classes


def score_samples(net, x: Tensor, labels: Tensor | None, ref_stats, ref_feats: Tensor) -> dict:
    """FID against the reference statistics (with its bootstrap standard error over the scored images),
    KID and precision/recall against reference features, CAS."""
    f = features(net, x)
    fid = lambda feats: frechet_distance(*ref_stats, *feature_stats(feats))
    out = {"fid": fid(f), "fid_se": bootstrap_se(fid, f),
           "kid": kid(ref_feats, f, subset_size=min(500, len(f)))[0]}
    out["precision"], out["recall"] = precision_recall(ref_feats, f)
    if labels is not None:
        out["cas"] = float((predict(net, x) == labels).double().mean())
    return out


def image_report(net, x: Tensor, data: dict, labels: Tensor | None = None) -> dict:
    """Scores of images x (N, C, H, W) on `net`'s features against the training split's (data: x_train,
    x_test, y_test), beside the real baseline (the test split scored the same way) and their ratio."""
    ref_feats = features(net, data["x_train"])
    ref_stats = feature_stats(ref_feats)
    base = score_samples(net, data["x_test"], data["y_test"], ref_stats, ref_feats)
    out = {**{f"{k}_real_baseline": base[k] for k in ("fid", "kid", "precision", "recall")},
           "fid_real_baseline_se": base["fid_se"], **score_samples(net, x, labels, ref_stats, ref_feats)}
    out["fid_ratio"] = out["fid"] / out["fid_real_baseline"]
    return out
