"""Predictions, their conversions through (x0, eps), EDM preconditioning and contract adapters."""

from diffspace.param.predictions import PREDICTIONS, target, x0_eps
from diffspace.param.wrappers import (
    DenoiserFromVelocity,
    EDMPrecond,
    NetDenoiser,
    NetVelocity,
    VelocityFromDenoiser,
)

__all__ = ["PREDICTIONS", "target", "x0_eps", "NetDenoiser", "EDMPrecond", "VelocityFromDenoiser",
           "DenoiserFromVelocity", "NetVelocity"]
