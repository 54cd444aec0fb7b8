"""diffspace's UNet and DiT as a diffusers model, so that an exported run loads with diffusers' own
`from_pretrained` and runs in its pipelines and scheduler loops.

diffspace's UNet is not diffusers' `UNet2DModel` (its residual blocks project the noise embedding without
a SiLU first, and its group counts, attention and skip layout differ), so no weight mapping onto
UNet2DModel reproduces it. An export is instead the same network under diffusers' `ModelMixin` and
`ConfigMixin`: `config.json` names the architecture and its arguments, `diffusion_pytorch_model.safetensors`
holds the weights (keys `net.*`), and forward follows diffusers' calling convention:
forward(sample (B, C, H, W), timestep (), (1,) or (B,), class_labels (B,) | None) -> UNet2DOutput.
`timestep * timestep_scale` is the network's noise condition (scale 1 for a DDPM table and for flow
matching, whose diffusers timesteps are diffspace's; 1000 for EDM, whose scheduler passes ln(sigma) / 4
where diffspace passes 250 ln(sigma)). No class labels means the null class.

diffusers is an optional extra: this module imports without it. The class is built on first access to
`DiffspaceNet` (a module `__getattr__`, PEP 562), which is also how diffusers' pipeline loader finds it
(`model_index.json` names this module; import it before `DiffusionPipeline.from_pretrained`).
"""

import functools

import torch

from diffspace.nets.dit import DiT
from diffspace.nets.unet import UNet
from diffspace.types import UserError

ARCHITECTURES = {"unet": UNet, "dit": DiT}
EXTRA = "diffusers is not installed; install the extra: pip install 'diffspace[diffusers]'"


def _diffusers():
    try:
        import diffusers
    except ImportError:
        raise UserError(EXTRA) from None
    return diffusers


@functools.cache
def diffusers_net_class() -> type:
    """The `DiffspaceNet` class (a diffusers ModelMixin); UserError naming the extra without diffusers."""
    diffusers = _diffusers()
    from diffusers.configuration_utils import register_to_config
    from diffusers.models.unets.unet_2d import UNet2DOutput

    class DiffspaceNet(diffusers.ModelMixin, diffusers.ConfigMixin):
        """A diffspace UNet or DiT (`architecture`) as a diffusers model; see the module docstring."""

        config_name = "config.json"

        @register_to_config
        def __init__(self, architecture: str = "unet", in_channels: int = 3, sample_size: int = 32,
                     net_config: dict | None = None, num_classes: int = 0, timestep_scale: float = 1.0):
            super().__init__()
            if architecture not in ARCHITECTURES:
                raise ValueError(f"architecture {architecture!r} is not one of {', '.join(ARCHITECTURES)}")
            self.net = ARCHITECTURES[architecture](in_channels, sample_size, num_classes=num_classes,
                                                   **(net_config or {}))

        def forward(self, sample: torch.Tensor, timestep, class_labels: torch.Tensor | None = None,
                    return_dict: bool = True):
            t = torch.as_tensor(timestep, device=sample.device).reshape(-1).to(sample.dtype)
            out = self.net(sample, t * self.config.timestep_scale, class_labels)
            return UNet2DOutput(sample=out) if return_dict else (out,)

    DiffspaceNet.__module__, DiffspaceNet.__qualname__ = __name__, "DiffspaceNet"
    return DiffspaceNet


def __getattr__(name: str):
    # why: diffusers' loader resolves `model_index.json`'s ["diffspace.nets.diffusers_model", "DiffspaceNet"]
    # by getattr on this module, and recognises a model by getattr(module, "ModelMixin") as its base
    if name == "DiffspaceNet":
        return diffusers_net_class()
    if name in ("ModelMixin", "ConfigMixin"):
        return getattr(_diffusers(), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
