"""Noise schedules of discrete processes: alpha_t = P(token still clean), 1 at t = 0 (data), and its
t-derivative. The processes (`discrete/processes.py`) turn them into corruptions and NELBO weights;
SEDD's total noise is sigma_bar(t) = -log alpha_t ([SEDD] Sec. 3, arXiv 2310.16834v3).
"""

import math

import torch
from torch import Tensor

from diffspace.types import UserError


class Schedule:
    name = "schedule"

    def alpha(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def d_alpha(self, t: Tensor) -> Tensor:
        raise NotImplementedError


class Linear(Schedule):
    """alpha_t = 1 - t; weight 1/t ([LLADA] Eq. 3, arXiv 2502.09992v3)."""

    name = "linear"

    def alpha(self, t):
        return 1 - t

    def d_alpha(self, t):
        return -torch.ones_like(t)


class Cosine(Schedule):
    """alpha_t = 1 - cos(pi/2 (1 - t)) = 1 - sin(pi t / 2) ([MD4] Table 4, arXiv 2406.04329v4)."""

    name = "cosine"

    def alpha(self, t):
        return 1 - torch.sin(0.5 * math.pi * t)

    def d_alpha(self, t):
        return -0.5 * math.pi * torch.cos(0.5 * math.pi * t)


class LogLinear(Schedule):
    """sigma_bar(t) = -log(1 - (1 - eps) t), i.e. alpha_t = 1 - (1 - eps) t ([MDLM] Sec. 3.5, arXiv
    2406.07524v2; [SEDD] App. C.1); eps = 1e-3 keeps sigma_bar finite at t = 1 for SEDD."""

    name = "loglinear"

    def __init__(self, eps: float = 1e-3):
        self.eps = eps

    def alpha(self, t):
        return 1 - (1 - self.eps) * t

    def d_alpha(self, t):
        return -(1 - self.eps) * torch.ones_like(t)


SCHEDULES = {"linear": Linear, "cosine": Cosine, "loglinear": LogLinear}


def make_schedule(name: str) -> Schedule:
    if name not in SCHEDULES:
        raise UserError(f"unknown discrete schedule {name!r} (expected one of {', '.join(SCHEDULES)})")
    return SCHEDULES[name]()
