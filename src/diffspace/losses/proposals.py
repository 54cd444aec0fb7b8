"""Where training draws noise levels: t-space proposals (then sigma = path.sigma(t)) and the
sigma-space log-normal of [EDM]. Each takes a batch size and a torch.Generator; `table_t` also takes
the discrete-time path whose integer timesteps it draws."""

import torch
from torch import Tensor

from diffspace import rng
from diffspace.paths.ddpm import DDPMDiscrete
from diffspace.types import UserError


def uniform_t(n: int, g: torch.Generator, t_min: float = 0.0, t_max: float = 1.0) -> Tensor:
    return t_min + (t_max - t_min) * torch.rand(n, generator=g, dtype=torch.float64)


def stratified_t(n: int, g: torch.Generator, t_min: float = 0.0, t_max: float = 1.0) -> Tensor:
    """One shared uniform offset, spread over n strata ([VDM] App. I "low-discrepancy sampler"):
    lower-variance loss estimates; each t is still marginally uniform."""
    u = (torch.rand(1, generator=g, dtype=torch.float64) + torch.arange(n, dtype=torch.float64) / n) % 1.0
    return t_min + (t_max - t_min) * u


def logit_normal_t(n: int, g: torch.Generator, t_min: float = 0.0, t_max: float = 1.0,
                   mean: float = 0.0, std: float = 1.0) -> Tensor:
    """[SD3] Eq. 19: t = sigmoid(N(mean, std^2)), mapped into [t_min, t_max]."""
    u = torch.sigmoid(mean + std * torch.randn(n, generator=g, dtype=torch.float64))
    return t_min + (t_max - t_min) * u


def lognormal_sigma(n: int, g: torch.Generator, p_mean: float = -1.2, p_std: float = 1.2) -> Tensor:
    """[EDM] Table 1: ln sigma ~ N(P_mean, P_std^2) with P_mean = -1.2, P_std = 1.2."""
    return torch.exp(p_mean + p_std * torch.randn(n, generator=g, dtype=torch.float64))


def table_t(n: int, generator: rng.Generator, path: DDPMDiscrete) -> Tensor:
    """[DDPM] Alg. 1 line 3: integer timesteps k ~ U{0..T-1} of a discrete-time table, as the times
    t = path.t_from_timestep(k) (float64, exactly the table's points), shape (n,).

    Raises UserError for a path without a table."""
    if not isinstance(path, DDPMDiscrete):
        raise UserError(f"proposal 'table' draws the integer timesteps of a 'ddpm' path, got {path!r}")
    k = rng.randint(path.T, (n,), generator)
    return path.t_from_timestep(k.double())


T_PROPOSALS = {"uniform": uniform_t, "stratified": stratified_t, "logit_normal": logit_normal_t}
SIGMA_PROPOSALS = {"lognormal": lognormal_sigma}
