"""Procedural 2-D data sets. Each is a function (n, generator) -> float32 tensor (n, 2); UserError unless
n is an integer >= 1.

Scales are fixed so every set has roughly unit-to-2 spread; `checkerboard` is exactly uniform on
8 unit squares in [-2, 2]^2 (differential entropy log 8), so likelihoods can be checked exactly, and
`checkerboard_denoiser` is its exact denoiser E[x0 | x0 + sigma eps = x], the ground truth for
samplers and trained networks on it.
"""

import math
from numbers import Integral

import torch
from torch import Tensor

from diffspace.data.checks import check_count
from diffspace.data.gmm import eight_gaussians_mixture
from diffspace.rng import MAX_SEED
from diffspace.types import UserError


def checkerboard(n: int, g: torch.Generator) -> Tensor:
    """Uniform on the 8 black cells of a 4 x 4 board of unit cells covering [-2, 2]^2."""
    check_count(n, "checkerboard")
    x1 = torch.rand(n, generator=g, dtype=torch.float64) * 4 - 2
    x2 = torch.rand(n, generator=g, dtype=torch.float64) - torch.randint(0, 2, (n,), generator=g) * 2
    x2 = x2 + (torch.floor(x1) % 2)
    return torch.stack([x1, x2], 1).float()


# lower-left corners of the 8 unit cells of `checkerboard` (cells (i, j) with i + j even)
CHECKERBOARD_CELLS = torch.tensor([[-2, -2], [-2, 0], [-1, -1], [-1, 1], [0, -2], [0, 0], [1, -1], [1, 1]],
                                  dtype=torch.float64)


def _log_ndtr_diff(a: Tensor, b: Tensor) -> Tensor:
    """log(Phi(b) - Phi(a)) for a < b elementwise."""
    # why: Phi(b) - Phi(a) loses all digits when both lie in the upper tail; reflect those
    upper = a > 0
    a, b = torch.where(upper, -b, a), torch.where(upper, -a, b)
    log_a, log_b = torch.special.log_ndtr(a), torch.special.log_ndtr(b)
    return log_b + torch.log(-torch.expm1(log_a - log_b))


def checkerboard_denoiser(x: Tensor, sigma: Tensor, **cond) -> Tensor:
    """Exact E[x0 | x0 + sigma eps = x] for `checkerboard`, x (B, 2) in EDM space, sigma (B,) or (1,).

    Given the cell, each coordinate's posterior is N(x, sigma^2) truncated to [c, c + 1], with mean
    x + sigma (phi(a) - phi(b)) / (Phi(b) - Phi(a)), a = (c - x) / sigma, b = (c + 1 - x) / sigma; the
    cells weigh by their mass prod_d (Phi(b_d) - Phi(a_d)). Computed in float64, returned in x's dtype."""
    y = x.double()[:, None, :]  # (B, 1, 2)
    s = sigma.double().reshape(-1, 1, 1)
    corners = CHECKERBOARD_CELLS.to(y.device)
    a, b = (corners - y) / s, (corners + 1 - y) / s  # (B, 8, 2)
    log_mass = _log_ndtr_diff(a, b)
    log_norm = log_mass + 0.5 * math.log(2 * math.pi)  # log(sqrt(2 pi) (Phi(b) - Phi(a)))
    mean = y + s * (torch.exp(-0.5 * a**2 - log_norm) - torch.exp(-0.5 * b**2 - log_norm))
    weight = torch.softmax(log_mass.sum(2), dim=1)  # (B, 8) posterior probability of each cell
    return (weight[..., None] * mean).sum(1).to(x.dtype)


def eight_gaussians(n: int, g: torch.Generator) -> Tensor:
    check_count(n, "eight_gaussians")
    return eight_gaussians_mixture().sample(n, g).float()


def moons(n: int, g: torch.Generator) -> Tensor:
    check_count(n, "moons")
    half = n // 2
    a = torch.rand(n, generator=g, dtype=torch.float64) * math.pi
    upper = torch.stack([a.cos(), a.sin()], 1)[:half]
    lower = torch.stack([1 - a.cos(), 0.5 - a.sin()], 1)[half:]
    x = torch.cat([upper, lower]) + 0.05 * torch.randn(n, 2, generator=g, dtype=torch.float64)
    return (2 * (x - torch.tensor([0.5, 0.25], dtype=torch.float64))).float()


def swiss_roll(n: int, g: torch.Generator) -> Tensor:
    check_count(n, "swiss_roll")
    s = 1.5 * math.pi * (1 + 2 * torch.rand(n, generator=g, dtype=torch.float64))
    x = torch.stack([s * s.cos(), s * s.sin()], 1) / 5
    return (x + 0.05 * torch.randn(n, 2, generator=g, dtype=torch.float64)).float()


def rings(n: int, g: torch.Generator) -> Tensor:
    """Four concentric circles of radii 0.5, 1, 1.5, 2 with small radial noise."""
    check_count(n, "rings")
    r = 0.5 * (1 + torch.randint(0, 4, (n,), generator=g)).double()
    a = torch.rand(n, generator=g, dtype=torch.float64) * 2 * math.pi
    x = r[:, None] * torch.stack([a.cos(), a.sin()], 1)
    return (x + 0.04 * torch.randn(n, 2, generator=g, dtype=torch.float64)).float()


def pinwheel(n: int, g: torch.Generator, arms: int = 5) -> Tensor:
    """Gaussian blobs sheared into spiral arms (UserError unless `arms` is an integer >= 1, too)."""
    check_count(n, "pinwheel")
    check_count(arms, "pinwheel", "arms")
    k = torch.randint(0, arms, (n,), generator=g).double()
    f = torch.randn(n, 2, generator=g, dtype=torch.float64)
    f = f * torch.tensor([0.3, 0.05]) + torch.tensor([1.0, 0.0])
    ang = 2 * math.pi * k / arms + 0.25 * torch.exp(f[:, 0])
    c, s = ang.cos(), ang.sin()
    rot = torch.stack([torch.stack([c, -s], 1), torch.stack([s, c], 1)], 1)
    return (2 * torch.einsum("nij,nj->ni", rot, f)).float()


TOY_SETS = {"checkerboard": checkerboard, "8gaussians": eight_gaussians, "moons": moons,
            "swissroll": swiss_roll, "rings": rings, "pinwheel": pinwheel}

# different seeds keep the held-out split disjoint from training data
_SPLIT_OFFSET = {"train": 0, "test": 1_000_003}


def make_toy(name: str, n: int, seed: int = 0, split: str = "train") -> Tensor:
    """n points of toy set `name` (float32, (n, 2)); `split="test"` gives the held-out split.

    UserError for an unknown `name` or `split`, an `n` that is not an integer >= 1, or a `seed` that is
    not an integer in 0..MAX_SEED (the seeds torch's generators take)."""
    if name not in TOY_SETS:
        raise UserError(f"unknown toy data set {name!r}; choose one of {', '.join(TOY_SETS)}")
    check_count(n, f"make_toy({name!r})")
    if split not in _SPLIT_OFFSET:
        raise UserError(f"make_toy: split must be one of {', '.join(_SPLIT_OFFSET)}, got {split!r}")
    if isinstance(seed, bool) or not isinstance(seed, Integral) or not 0 <= seed <= MAX_SEED:
        raise UserError(f"make_toy: seed must be an integer in 0..{MAX_SEED}, got {seed!r}")
    g = torch.Generator().manual_seed(int(seed) + _SPLIT_OFFSET[split])
    return TOY_SETS[name](int(n), g)
