"""Mode coverage of samples from a mixture of isotropic Gaussians with known means (8 gaussians).

A sample counts as "within n_std sigma" of the nearest mode when its distance to that mean is at
most n_std * std (for a 2-D Gaussian, 1 - exp(-n_std^2 / 2) of its own mass: 98.9 % at 3 sigma). A mode
is covered when at least `min_share` of its fair share N / K of all samples falls within it. This is
the "high-quality samples / modes captured" count of the mode-collapse literature, with the
threshold stated rather than a fixed sample count.
"""

import torch
from torch import Tensor


def mode_coverage(samples: Tensor, means: Tensor, std: float, n_std: float = 3.0,
                  min_share: float = 0.25) -> dict:
    """samples (N, D), means (K, D): fraction within n_std * std of a mode, modes covered, counts per mode."""
    d = torch.cdist(samples.double(), means.double())  # (N, K)
    dist, nearest = d.min(1)
    within = dist <= n_std * std
    counts = torch.bincount(nearest[within], minlength=len(means))
    covered = counts >= min_share * len(samples) / len(means)
    return {"within_fraction": float(within.double().mean()), "modes_covered": int(covered.sum()),
            "modes": len(means), "counts": counts.tolist()}
