"""Continuous Gaussian paths and the DDPM discrete-time schedule; `make_path(name, **kw)` builds one."""

from diffspace.paths.base import Coeffs, GaussianPath
from diffspace.paths.ddpm import DDPMDiscrete, DDPMZeroTerminalSNR
from diffspace.paths.gaussian import EDM, VE, LinearFlow, SubVP, VPCosine, VPLinear

PATHS = {cls.name: cls for cls in (VPLinear, VPCosine, SubVP, VE, EDM, LinearFlow, DDPMDiscrete,
                                 DDPMZeroTerminalSNR)}

__all__ = ["Coeffs", "GaussianPath", "PATHS", "VPLinear", "VPCosine", "SubVP", "VE", "EDM", "LinearFlow",
           "DDPMDiscrete", "DDPMZeroTerminalSNR"]
