"""Distances between sets of image features: Fréchet distance, KID, precision/recall.

[FID] arXiv 1706.08500 (Fréchet distance of Gaussians fitted to features), [KID] arXiv 1801.01401
(unbiased MMD^2 with a cubic polynomial kernel), [PR] arXiv 1904.06991 (k-NN manifold precision/recall).
The features come from eval/featurenet.py; these functions take (N, D) arrays or tensors of features.
"""

import numpy as np
import torch
from torch import Tensor

from diffspace.types import UserError


def _as64(feats) -> Tensor:
    f = torch.as_tensor(np.asarray(feats) if not isinstance(feats, Tensor) else feats).double().cpu()
    if f.ndim != 2 or len(f) < 2:
        raise UserError(f"features must be an (N, D) array with N >= 2, got shape {tuple(f.shape)}")
    return f


def feature_stats(feats) -> tuple[Tensor, Tensor]:
    """Mean (D,) and unbiased covariance (D, D) in float64."""
    f = _as64(feats)
    return f.mean(0), torch.cov(f.T).reshape(f.shape[1], f.shape[1])


def _sqrt_psd(c: Tensor) -> Tensor:
    """Symmetric square root of a PSD matrix through its eigendecomposition (negative round-off clipped)."""
    w, v = torch.linalg.eigh(c)
    return (v * w.clamp(min=0).sqrt()) @ v.T


def frechet_distance(mu1: Tensor, cov1: Tensor, mu2: Tensor, cov2: Tensor) -> float:
    """[FID] d^2 = |mu1 - mu2|^2 + tr(C1 + C2 - 2 (C1 C2)^(1/2)), in float64.

    tr (C1 C2)^(1/2) = tr (C1^(1/2) C2 C1^(1/2))^(1/2): the second matrix is symmetric PSD and similar
    to C1 C2, so its eigenvalues are real and >= 0 and no complex square root is needed.
    """
    mu1, cov1, mu2, cov2 = (torch.as_tensor(a).double() for a in (mu1, cov1, mu2, cov2))
    s1 = _sqrt_psd(cov1)
    m = s1 @ cov2 @ s1
    tr_sqrt = torch.linalg.eigvalsh((m + m.T) / 2).clamp(min=0).sqrt().sum()
    return float(((mu1 - mu2) ** 2).sum() + cov1.trace() + cov2.trace() - 2 * tr_sqrt)


def fid_from_features(feats_a, feats_b) -> float:
    return frechet_distance(*feature_stats(feats_a), *feature_stats(feats_b))


def mmd2_unbiased(x: Tensor, y: Tensor) -> float:
    """[KID] unbiased MMD^2 with k(a, b) = (a.b / D + 1)^3; within-set means exclude the diagonal."""
    d = x.shape[1]
    kxx, kyy, kxy = ((a @ b.T / d + 1) ** 3 for a, b in ((x, x), (y, y), (x, y)))
    m, n = len(x), len(y)
    within_x = (kxx.sum() - kxx.diagonal().sum()) / (m * (m - 1))
    within_y = (kyy.sum() - kyy.diagonal().sum()) / (n * (n - 1))
    return float(within_x + within_y - 2 * kxy.mean())


def kid(feats_a, feats_b, subsets: int = 10, subset_size: int = 500, seed: int = 0) -> tuple[float, float]:
    """[KID] mean and standard deviation of the unbiased MMD^2 over random subsets (without replacement)."""
    a, b = _as64(feats_a), _as64(feats_b)
    size = min(subset_size, len(a), len(b))
    g = torch.Generator().manual_seed(seed)
    vals = [mmd2_unbiased(a[torch.randperm(len(a), generator=g)[:size]],
                          b[torch.randperm(len(b), generator=g)[:size]]) for _ in range(subsets)]
    return float(np.mean(vals)), float(np.std(vals))


def _knn_radii(f: Tensor, k: int) -> Tensor:
    """Distance of each point to its k-th nearest neighbour in the same set (itself excluded)."""
    return torch.cdist(f, f).kthvalue(k + 1, dim=1).values


def _coverage(ref: Tensor, radii: Tensor, query: Tensor) -> float:
    """Fraction of query points inside at least one k-NN ball of the reference set ([PR] Eq. 1-2)."""
    return float((torch.cdist(query, ref) <= radii[None]).any(dim=1).double().mean())


def precision_recall(real, fake, k: int = 3) -> tuple[float, float]:
    """[PR] precision: fakes on the real manifold; recall: reals on the fake manifold (k = 3 as in [PR])."""
    r, f = _as64(real), _as64(fake)
    if k >= min(len(r), len(f)):
        raise UserError(f"precision/recall needs more than k={k} points per set")
    return _coverage(r, _knn_radii(r, k), f), _coverage(f, _knn_radii(f, k), r)
