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
