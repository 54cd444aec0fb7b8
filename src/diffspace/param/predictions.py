"""What a network predicts, converted through one (x0, eps) hub. Identities (docs/design.md):

  eps      -> x0 = (x_t - sigma_t eps) / alpha_t
  v        =  alpha_t eps - sigma_t x0            [PD] Sec. 4 (Salimans & Ho)
           -> x0 = (alpha_t x_t - sigma_t v) / (alpha_t^2 + sigma_t^2)
  score    -> eps = -sigma_t score                [SDE] Eq. 7 (Tweedie)
  velocity u = d_alpha x0 + d_sigma eps           [FM] Eq. 20, [SI]
           -> with D = d_alpha sigma_t - d_sigma alpha_t: x0 = (sigma_t u - d_sigma x_t) / D,
              eps = (d_alpha x_t - alpha_t u) / D

Each coefficient is already broadcast against x_t (see diffspace.utils.bcast).
"""

import torch
from torch import Tensor

from diffspace.paths.base import Coeffs


def _x0_from_eps(x_t, eps, c: Coeffs):
    return torch.addcmul(x_t, c.sigma_t, eps, value=-1) / c.alpha_t


def _eps_from_x0(x_t, x0, c: Coeffs):
    return (x_t - c.alpha_t * x0) / c.sigma_t


def from_x0(x_t, pred, c):
    return pred, _eps_from_x0(x_t, pred, c)


def from_eps(x_t, pred, c):
    return _x0_from_eps(x_t, pred, c), pred


def from_v(x_t, pred, c):
    x0 = (c.alpha_t * x_t - c.sigma_t * pred) / (c.alpha_t**2 + c.sigma_t**2)
    return x0, _eps_from_x0(x_t, x0, c)


def from_score(x_t, pred, c):
    eps = -c.sigma_t * pred
    return _x0_from_eps(x_t, eps, c), eps


def from_velocity(x_t, pred, c):
    det = c.d_alpha_t * c.sigma_t - c.d_sigma_t * c.alpha_t
    return (c.sigma_t * pred - c.d_sigma_t * x_t) / det, (c.d_alpha_t * x_t - c.alpha_t * pred) / det


def to_x0(x0, eps, c):
    return x0


def to_eps(x0, eps, c):
    return eps


def to_v(x0, eps, c):
    return c.alpha_t * eps - c.sigma_t * x0


def to_score(x0, eps, c):
    return -eps / c.sigma_t


def to_velocity(x0, eps, c):
    return c.d_alpha_t * x0 + c.d_sigma_t * eps


# name -> (prediction -> (x0, eps), (x0, eps) -> prediction)
PREDICTIONS = {
    "x0": (from_x0, to_x0),
    "eps": (from_eps, to_eps),
    "v": (from_v, to_v),
    "score": (from_score, to_score),
    "velocity": (from_velocity, to_velocity),
}


# predictions whose conversion reads the path's derivatives d_alpha_t, d_sigma_t (others may pass None)
NEEDS_DERIVATIVES = frozenset({"velocity"})
# predictions whose x0 is x_t / alpha_t plus a multiple of the prediction: in EDM space x0 = x + c_out pred
SKIP_IS_ONE = frozenset({"eps", "score"})


def x0_eps(prediction: str, x_t: Tensor, pred: Tensor, c: Coeffs) -> tuple[Tensor, Tensor]:
    return PREDICTIONS[prediction][0](x_t, pred, c)


def target(prediction: str, x0: Tensor, eps: Tensor, c: Coeffs) -> Tensor:
    return PREDICTIONS[prediction][1](x0, eps, c)
