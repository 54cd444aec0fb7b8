"""Sample-quality metrics for low-dimensional data. Each is reported beside its data-vs-data baseline
(held-out vs train) so that a number means something, and with a bootstrap standard error
(`bootstrap_se`; B. Efron and R. Tibshirani, An Introduction to the Bootstrap, 1993, Ch. 6) so that
two numbers from small samples can be told apart or not."""

from collections.abc import Callable

import torch
from torch import Tensor

from diffspace.types import UserError

BOOTSTRAP_REPS = 20  # why: a standard error within about 16 % (1 / sqrt(2 (B - 1))) is enough to read it


def sliced_w2(a: Tensor, b: Tensor, n_proj: int = 512, seed: int = 0) -> float:
    """Sliced Wasserstein-2: sqrt of the mean over fixed random directions of the squared 1-D W2.

    1-D W2 between empirical measures is computed on matched quantiles (sizes may differ).
    Directions are seeded so that two calls compare like with like.
    """
    a, b = a.double().flatten(1), b.double().flatten(1)
    dirs = torch.randn(a.shape[1], n_proj, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    dirs = dirs / dirs.norm(dim=0, keepdim=True)
    # why: sorting each projection as a contiguous row is about 4x faster than sorting columns in place
    pa, pb = ((v @ dirs).T.contiguous().sort(1).values.T for v in (a, b))
    m = max(len(a), len(b))
    q = (torch.arange(m, dtype=torch.float64) + 0.5) / m
    qa = torch.quantile(pa, q, dim=0, interpolation="nearest") if len(a) != m else pa
    qb = torch.quantile(pb, q, dim=0, interpolation="nearest") if len(b) != m else pb
    return float(((qa - qb) ** 2).mean().sqrt())


def mmd_rbf(a: Tensor, b: Tensor, bandwidth: float | None = None, max_n: int = 4000) -> float:
    """Unbiased squared MMD with an RBF kernel ([KID]-style U-statistic); bandwidth by the median
    heuristic on the pooled sample unless given. At most `max_n` points of each set are used."""
    a, b = a.double().flatten(1)[:max_n], b.double().flatten(1)[:max_n]
    pooled = torch.cat([a, b])
    d2 = torch.cdist(pooled, pooled) ** 2
    if bandwidth is None:  # why: points that all coincide have no positive distance; any bandwidth gives 0
        positive = d2[d2 > 0]
        bandwidth = float(positive.median().sqrt()) if len(positive) else 1.0
    k = torch.exp(-d2 / (2 * bandwidth**2))
    n, m = len(a), len(b)
    kaa, kbb, kab = k[:n, :n], k[n:, n:], k[:n, n:]
    return float((kaa.sum() - kaa.trace()) / (n * (n - 1)) + (kbb.sum() - kbb.trace()) / (m * (m - 1))
                 - 2 * kab.mean())


def bootstrap_se(stat: Callable[..., float], *sets: Tensor, reps: int = BOOTSTRAP_REPS,
                 seed: int = 0) -> float:
    """Bootstrap standard error of stat(*sets): the standard deviation of stat over `reps` draws of each
    set resampled with replacement to its own size (seeded, so a rerun gives the same number)."""
    g = torch.Generator().manual_seed(seed)
    values = [stat(*(s[torch.randint(len(s), (len(s),), generator=g)] for s in sets)) for _ in range(reps)]
    return float(torch.tensor(values, dtype=torch.float64).std())


def baseline_ratio(value: float, baseline: float, name: str) -> float:
    """value / baseline; UserError for a baseline of 0, where the ratio is undefined (held-out data that
    equal the reference, e.g. constant data)."""
    if baseline == 0:
        raise UserError(f"the data baseline of {name} is 0 (the held-out points match the reference "
                        f"exactly: constant data?), so {name}_ratio is undefined")
    return value / baseline


def vector_report(x: Tensor, x_test: Tensor, x_train: Tensor) -> dict:
    """Samples x (N, D) against held-out x_test: sliced W2 and MMD, each beside the baseline of as many
    training points as test points (a fixed seeded subset) against x_test, with bootstrap errors."""
    base = x_train[torch.randperm(len(x_train), generator=torch.Generator().manual_seed(1))[: len(x_test)]]
    out = {"sw2": sliced_w2(x, x_test), "sw2_data_baseline": sliced_w2(base, x_test),
           "mmd": mmd_rbf(x, x_test), "mmd_data_baseline": mmd_rbf(base, x_test)}
    out["sw2_ratio"] = baseline_ratio(out["sw2"], out["sw2_data_baseline"], "sw2")
    out["sw2_se"] = bootstrap_se(sliced_w2, x, x_test)
    out["sw2_data_baseline_se"] = bootstrap_se(sliced_w2, base, x_test)
    return out
