"""Per-example losses (B,), weightings on the x0 MSE, and noise-level proposals."""

from diffspace.losses.denoising import denoising_loss, flow_matching_loss
from diffspace.losses.proposals import SIGMA_PROPOSALS, T_PROPOSALS
from diffspace.losses.weighting import WEIGHTINGS

__all__ = ["denoising_loss", "flow_matching_loss", "WEIGHTINGS", "T_PROPOSALS", "SIGMA_PROPOSALS"]
