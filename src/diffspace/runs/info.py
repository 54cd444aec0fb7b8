"""What a run's network costs and sees (`diffspace info RUN`): parameters, multiply-accumulates per
example and, for a convolutional net whose output is an image of its input's size, the receptive field
by the layer recursion, checked by the support of an input gradient (nets/info.py).

Each task names the network call it measures (`Task.network`: a denoiser call, a flow's x -> z, a
VAE's ELBO term, a GAN's generator, an autoregressive model's pass over all positions); tasks that name
none get the parameter count alone.
"""

import torch

from diffspace.nets.info import (
    gradient_receptive_field,
    macs_per_sample,
    parameter_count,
    receptive_field,
    traced_layers,
)
from diffspace.runs.options import Run
from diffspace.runs.tasks import TASKS


def network_info(run: Run) -> dict:
    """{"parameters", and where the task names its network call: "macs_per_sample", "macs_of"; for an
    image-to-image call also "receptive_field_px" (the recursion along H), "gradient_support_px" (rows,
    columns of input pixels reaching the centre output pixel), "input_px" (H, W) and "global_ops"
    (attention, GroupNorm statistics: ops that see the whole image)}."""
    info = {"parameters": parameter_count(run.module)}
    network = TASKS[run.task].network
    if network is None:
        return info
    fn, x, what = network(run)
    info |= {"macs_per_sample": macs_per_sample(lambda: fn(x), len(x)), "macs_of": what}
    with torch.no_grad():
        out = fn(x)
    if x.ndim != 4 or out.ndim != 4 or out.shape[2:] != x.shape[2:]:
        return info
    traced = traced_layers(fn, x)
    probe = torch.randn(x.shape, generator=torch.Generator().manual_seed(0)).to(x)
    return info | {"receptive_field_px": receptive_field(traced.layers),
                   "gradient_support_px": list(gradient_receptive_field(fn, probe)),
                   "input_px": list(x.shape[2:]), "global_ops": traced.global_ops}
