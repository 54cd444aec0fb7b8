"""Bits per dimension, the dequantization offset and the NLL report: the one path every likelihood in
diffspace takes (diffusion's PF-ODE and DDPM bound, flows, VAEs, autoregressive models).

The offset between a density's NLL of dequantized data and the NLL of the discrete data is derived
once, in docs/likelihood.md: data on a `Grid` (L levels of [low, high], bins of width delta) are
dequantized by `Grid.dequantize`, y = x + delta (u - 1/2), u ~ U[0, 1)^D, and

    -log P(x) <= E_u[-log p(y)] - D log delta                 (Jensen's inequality)

so the discrete NLL in bits/dim is the density's bits/dim plus log2(1 / delta): log2(127.5) = 6.994
for 256 levels on [-1, 1]. The DDPM bound's decoder ([DDPM] Eq. 13) uses the same bins, so both
numbers bound the same discrete NLL. Uniform dequantization as in [RNVP] arXiv 1605.08803;
[DDPM] arXiv 2006.11239v2.
"""

import math
from collections.abc import Callable

import torch
from torch import Tensor

from diffspace.data.quantized import Grid
from diffspace.losses.vlb import ddpm_bound
from diffspace.paths.ddpm import DDPMDiscrete
from diffspace.rng import Streams
from diffspace.samplers.likelihood import log_likelihood
from diffspace.types import UserError

EXACT_DIVERGENCE_MAX_DIM = 16  # above this Hutchinson is cheaper than D backward passes per step
DEQUANTIZATION_STREAM = 1  # the rng stream of evaluation dequantization (Hutchinson probes use 0)


def dequantization_offset(dim: int, grid: Grid) -> float:
    """Nats to add to a density's NLL of dequantized data to bound the discrete NLL: -D log delta."""
    return -dim * math.log(grid.delta)


def dequantized_nll(density_nll: Callable[[Tensor], Tensor], x: Tensor, grid: Grid, seed: int = 0,
                    index_offset: int = 0) -> Tensor:
    """The bound on -log P(x) (B,) nats of grid data x (B, ...) with global indices index_offset.. :
    density_nll (B,) of x dequantized with each example's own stream (seed, DEQUANTIZATION_STREAM,
    index), plus the offset. One draw of u per example, so the value is a one-sample estimate of the
    bound; sharded or re-batched evaluation gives the same numbers."""
    y = grid.dequantize(x, Streams(seed, x.shape[0], index_offset, DEQUANTIZATION_STREAM))
    return density_nll(y) + dequantization_offset(x[0].numel(), grid)


def bits_per_dim(nll_nats: Tensor | float, dim: int) -> Tensor | float:
    return nll_nats / (dim * math.log(2))


def summarize(nll_nats: Tensor, dim: int) -> dict:
    """Mean, standard error over examples, and bits/dim of per-example NLLs in nats."""
    n = nll_nats.numel()
    stderr = float(nll_nats.std()) / math.sqrt(n) if n > 1 else float("nan")
    mean = float(nll_nats.mean())
    return {"nll_nats": mean, "nll_stderr": stderr, "bits_per_dim": bits_per_dim(mean, dim),
            "bits_per_dim_stderr": bits_per_dim(stderr, dim), "n": n}


def _batches(x: Tensor, cond: dict, batch_size: int):
    """(start, x slice, cond slice) over the examples; cond holds per-example tensors (e.g. labels)."""
    for i in range(0, x.shape[0], batch_size):
        yield i, x[i:i + batch_size], {k: v[i:i + batch_size] for k, v in cond.items()}


def nll_per_example(denoiser, path, x: Tensor, *, grid: Grid | None = None,
                    divergence: str | None = None, batch_size: int = 1000, seed: int = 0,
                    index_offset: int = 0, cond: dict | None = None, **kwargs) -> tuple[Tensor, float]:
    """Per-example PF-ODE NLL in nats (N,) and the mean NFE per batch.

    With `grid`, x is data on that grid: the value is `dequantized_nll`, a bound on the discrete NLL.
    `divergence` None picks exact for D <= 16, else Hutchinson. `cond` holds per-example conditioning
    (e.g. class_labels (N,)); kwargs go to `log_likelihood`.
    """
    if divergence is None:
        divergence = "exact" if x[0].numel() <= EXACT_DIVERGENCE_MAX_DIM else "hutchinson"
    nlls, nfes = [], []
    for i, xb, cb in _batches(x, cond or {}, batch_size):
        def density_nll(y: Tensor, i: int = i, cb: dict = cb) -> Tensor:
            r = log_likelihood(denoiser, y, path, divergence=divergence, seed=seed,
                               index_offset=index_offset + i, **kwargs, **cb)
            nfes.append(r.nfe)
            return r.nll.detach()

        nlls.append(density_nll(xb) if grid is None else
                    dequantized_nll(density_nll, xb, grid, seed, index_offset + i))
    return torch.cat(nlls), sum(nfes) / len(nfes)


def nll_report(denoiser, path, x: Tensor, *, grid: Grid | None = None,
               bound_path: DDPMDiscrete | None = None, bound_n_t: int | None = None,
               batch_size: int = 1000, seed: int = 0, cond: dict | None = None, **kwargs) -> dict:
    """What `diffspace eval RUN --nll` prints: PF-ODE NLL (nats, bits/dim, standard errors, NFE) and,
    for data on a `grid`, the DDPM bound in bits/dim beside it.

    The bound uses `bound_path`, by default `path` itself when it is DDPMDiscrete; any sigma-space
    Denoiser also defines a discrete-time model on another DDPMDiscrete schedule, so pass one to get
    the bound for models trained on other paths. Numbers are per example of x (one rank's shard under
    torchrun: gather `nll_per_example` outputs and call `summarize` to combine ranks). kwargs go to
    `nll_per_example` (divergence, rtol, atol, n_probes, ...).
    """
    if x.ndim < 2 or x.shape[0] == 0:
        raise UserError(f"nll_report needs a batch of examples (N, ...), got shape {tuple(x.shape)}")
    dim, cond = x[0].numel(), cond or {}
    nll, nfe = nll_per_example(denoiser, path, x, grid=grid, batch_size=batch_size, seed=seed,
                               cond=cond, **kwargs)
    report = {**summarize(nll, dim), "nfe": nfe}
    if grid is None:
        return report
    report["dequantization_offset_bits"] = bits_per_dim(dequantization_offset(dim, grid), dim)
    bound_path = path if bound_path is None and isinstance(path, DDPMDiscrete) else bound_path
    if bound_path is not None and (grid.low, grid.high) == (-1.0, 1.0):  # the DDPM decoder's bins
        g = torch.Generator().manual_seed(seed)
        b = torch.cat([ddpm_bound(denoiser, xb, bound_path, n_t=bound_n_t, levels=grid.levels, generator=g,
                                  **cb) for _, xb, cb in _batches(x, cond, batch_size)])
        summary = summarize(b, dim)  # bound_nats, bound_stderr, bound_bits_per_dim, ...
        report.update({"bound_" + k.removeprefix("nll_"): v for k, v in summary.items() if k != "n"})
    return report
