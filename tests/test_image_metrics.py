"""Fréchet distance, KID and precision/recall against closed forms and independent computations."""

import numpy as np
import pytest
import scipy.linalg
import torch

from diffspace.eval.image_metrics import (
    feature_stats,
    fid_from_features,
    frechet_distance,
    kid,
    mmd2_unbiased,
    precision_recall,
)
from diffspace.types import UserError


def _random_cov(rng, d):
    a = rng.standard_normal((d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


def test_frechet_closed_form_commuting():
    """Covariances diagonal in one shared basis: d^2 = |dmu|^2 + sum (sqrt(a_i) - sqrt(b_i))^2."""
    rng = np.random.default_rng(0)
    d = 6
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    a, b = rng.uniform(0.1, 3, d), rng.uniform(0.1, 3, d)
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    got = frechet_distance(torch.tensor(mu1), torch.tensor(q @ np.diag(a) @ q.T),
                           torch.tensor(mu2), torch.tensor(q @ np.diag(b) @ q.T))
    want = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert got == pytest.approx(want, rel=1e-10, abs=1e-10)


@pytest.mark.parametrize("seed", range(5))
def test_frechet_matches_scipy_sqrtm_noncommuting(seed):
    """The eigendecomposition route equals tr sqrtm(C1 C2) computed by scipy, to 1e-8."""
    rng = np.random.default_rng(seed)
    d = 12
    c1, c2 = _random_cov(rng, d), _random_cov(rng, d)
    assert np.abs(c1 @ c2 - c2 @ c1).max() > 0.1  # really non-commuting
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    covmean = scipy.linalg.sqrtm(c1 @ c2).real
    want = ((mu1 - mu2) ** 2).sum() + np.trace(c1) + np.trace(c2) - 2 * np.trace(covmean)
    got = frechet_distance(*(torch.tensor(a) for a in (mu1, c1, mu2, c2)))
    assert abs(got - want) < 1e-8


def test_frechet_zero_for_same_stats_and_symmetric():
    rng = np.random.default_rng(1)
    c1, c2 = torch.tensor(_random_cov(rng, 5)), torch.tensor(_random_cov(rng, 5))
    mu1, mu2 = torch.randn(5, dtype=torch.float64), torch.randn(5, dtype=torch.float64)
    assert abs(frechet_distance(mu1, c1, mu1, c1)) < 1e-10
    assert frechet_distance(mu1, c1, mu2, c2) == pytest.approx(frechet_distance(mu2, c2, mu1, c1), rel=1e-10)


def test_feature_stats_float64_and_fid_from_features():
    f = torch.randn(200, 4, dtype=torch.float64)
    mu, cov = feature_stats(f)
    assert mu.dtype == torch.float64 and cov.shape == (4, 4)
    np.testing.assert_allclose(cov.numpy(), np.cov(f.double().numpy().T), rtol=1e-12)
    assert fid_from_features(f, f) == pytest.approx(0.0, abs=1e-9)
    assert fid_from_features(f, f + 1.0) == pytest.approx(4.0, rel=1e-9)  # a pure mean shift of 1 per dim


def test_mmd2_unbiased_formula_against_loops():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(7, 3, generator=g, dtype=torch.float64)
    y = torch.randn(5, 3, generator=g, dtype=torch.float64)
    k = lambda a, b: (float(a @ b) / 3 + 1) ** 3
    m, n = len(x), len(y)
    want = (sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
            + sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
            - 2 * sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n))
    assert mmd2_unbiased(x, y) == pytest.approx(want, rel=1e-12)


def test_kid_unbiased_on_identically_distributed_sets():
    """Over many independent pairs from one distribution, the mean KID is 0 within its standard error,
    while the biased V-statistic (diagonals kept) is clearly positive."""
    g = torch.Generator().manual_seed(0)
    vals, biased = [], []
    for _ in range(300):
        x, y = torch.randn(2, 20, 4, generator=g, dtype=torch.float64)
        vals.append(mmd2_unbiased(x, y))
        kxx, kyy, kxy = ((a @ b.T / 4 + 1) ** 3 for a, b in ((x, x), (y, y), (x, y)))
        biased.append(float(kxx.mean() + kyy.mean() - 2 * kxy.mean()))
    se = np.std(vals) / np.sqrt(len(vals))
    assert abs(np.mean(vals)) < 3 * se
    assert np.mean(biased) > 10 * se


def test_kid_separates_shifted_sets():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(400, 8, generator=g), torch.randn(400, 8, generator=g)
    same, _ = kid(a, b, subsets=5, subset_size=200)
    shifted, _ = kid(a, b + 0.5, subsets=5, subset_size=200)
    assert shifted > 0.05 and abs(same) < 0.2 * shifted


def test_precision_recall_identical_disjoint_and_partial():
    g = torch.Generator().manual_seed(0)
    real = torch.randn(300, 2, generator=g)
    assert precision_recall(real, real) == (1.0, 1.0)
    assert precision_recall(real, real + 100.0) == (0.0, 0.0)
    # fakes covering only the half-plane x > 0: high precision, recall near the covered half
    half = real[real[:, 0] > 0]
    p, r = precision_recall(real, half)
    assert p == 1.0 and 0.35 < r < 0.75


def test_metric_input_errors():
    with pytest.raises(UserError, match="features must be"):
        feature_stats(torch.randn(10))
    with pytest.raises(UserError, match="more than k"):
        precision_recall(torch.randn(3, 2), torch.randn(3, 2), k=3)
