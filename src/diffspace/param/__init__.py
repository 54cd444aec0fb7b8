"""Predictions, their conversions through (x0, eps), EDM preconditioning and contract adapters; the few-step
parameterizations (a two-time average-velocity map, the consistency function)."""

from diffspace.param.maps import ConsistencyPrecond, InstantVelocity, MapDenoiser, NetAverageVelocity
from diffspace.param.predictions import PREDICTIONS, target, x0_eps
from diffspace.param.wrappers import (
    DenoiserFromVelocity,
    EDMPrecond,
    NetDenoiser,
    NetVelocity,
    VelocityFromDenoiser,
)

__all__ = ["PREDICTIONS", "target", "x0_eps", "NetDenoiser", "EDMPrecond", "VelocityFromDenoiser",
           "DenoiserFromVelocity", "NetVelocity", "NetAverageVelocity", "InstantVelocity", "MapDenoiser",
           "ConsistencyPrecond"]
