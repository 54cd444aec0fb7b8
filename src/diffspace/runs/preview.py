"""The picture of samples a continuous run shows in TensorBoard while it trains (train.tensorboard):
the `preview` hook of its TrainSetup (see train/loop.py), drawn from the EMA module at every checkpoint
with the run's [sample] sampler and steps and fixed noise (seed 0), so pictures of successive
checkpoints compare like with like."""

from collections.abc import Callable

import torch
from torch import Tensor, nn

from diffspace.eval.plots import scatter_picture
from diffspace.rng import Streams
from diffspace.runs.continuous import ContinuousConfig, as_denoiser, build_path, to_data_units
from diffspace.runs.sampling import sample_chunk, sampler_fn
from diffspace.samplers.grids import GRIDS, sampling_range

PER_ROW = 8  # images per row (per class for a class-conditional run)
ROWS = 8
POINTS = 2000  # vector runs: points in the scatter


def preview(cfg: ContinuousConfig, meta: dict, device: torch.device) -> Callable[[nn.Module], Tensor]:
    """module -> images (N, C, H, W) in [-1, 1]: ROWS x PER_ROW samples (row k of class k for up to ROWS
    classes) for image data, a scatter of POINTS samples (first two coordinates, the data's units) for
    vectors. An "optimized" [sample] grid, fitted after training, is replaced by karras."""
    sc, shape, K = cfg.sample, tuple(meta["data_shape"]), cfg.model.num_classes
    path = build_path(cfg)
    grid = sc.grid if sc.grid in GRIDS else "karras"
    sigmas = GRIDS[grid](sc.steps, *sampling_range(path), path=path)
    fn = sampler_fn(sc.sampler)
    images = len(shape) == 3
    n = ROWS * PER_ROW if images else POINTS
    cond = {}
    if K > 0:
        rows = torch.arange(min(K, ROWS)).repeat_interleave(PER_ROW) if images else torch.arange(n) % K
        cond, n = {"class_labels": rows.to(device)}, len(rows)

    @torch.no_grad()
    def draw(module: nn.Module) -> Tensor:
        x = sample_chunk(as_denoiser(cfg, module), shape, Streams(0, n), sigmas, fn, device, **cond)
        if images:
            return x.clamp(-1, 1)
        return scatter_picture(to_data_units(meta, x), f"{cfg.sample.sampler}, {sc.steps} steps")

    return draw
