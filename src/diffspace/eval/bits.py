"""Bits per dimension, uniform dequantization and the NLL report of a continuous model.

The offset between a density's NLL of dequantized data and the NLL of the discrete data is derived
once, in docs/likelihood.md: data on the L-level grid of [low, high] has bins of width
delta = (high - low) / (L - 1); dequantizing with y = x + delta (u - 1/2), u ~ U[0, 1)^D gives

    -log P(x) <= E_u[-log p(y)] - D log delta                 (Jensen's inequality)

so the discrete NLL in bits/dim is the density's bits/dim plus log2(1 / delta): log2(127.5) = 6.994
for 256 levels on [-1, 1]. The DDPM bound's decoder ([DDPM] Eq. 13) uses the same bins, so both
numbers bound the same discrete NLL. Uniform dequantization as in [RNVP] arXiv 1605.08803;
[DDPM] arXiv 2006.11239v2.
"""

import math

import torch
from torch import Tensor

from diffspace.losses.vlb import ddpm_bound
from diffspace.paths.ddpm import DDPMDiscrete
from diffspace.samplers.likelihood import log_likelihood, per_example_draw
from diffspace.types import UserError

EXACT_DIVERGENCE_MAX_DIM = 16  # above this Hutchinson is cheaper than D backward passes per step


def bin_width(levels: int, low: float = -1.0, high: float = 1.0) -> float:
    """Spacing of the grid low + k (high - low) / (levels - 1), k = 0..levels-1."""
    return (high - low) / (levels - 1)


def dequantization_offset(dim: int, levels: int, low: float = -1.0, high: float = 1.0) -> float:
    """Nats to add to a density's NLL of dequantized data to bound the discrete NLL: -D log delta."""
    return -dim * math.log(bin_width(levels, low, high))


def dequantize(x: Tensor, levels: int, low: float = -1.0, high: float = 1.0, seed: int = 0,
               index_offset: int = 0) -> Tensor:
    """y = x + delta (u - 1/2), u ~ U[0, 1) seeded per example: each grid value fills its own bin."""
    u = per_example_draw(x.shape[0], lambda g: torch.rand(x.shape[1:], generator=g, dtype=torch.float64),
                         seed, index_offset, stream=1)
    return x + bin_width(levels, low, high) * (u.to(x) - 0.5)


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


def nll_per_example(denoiser, path, x: Tensor, *, levels: int | None = None,
                    divergence: str | None = None, batch_size: int = 1000, seed: int = 0,
                    index_offset: int = 0, cond: dict | None = None, **kwargs) -> tuple[Tensor, float]:
    """Per-example NLL in nats (N,) and the mean NFE per batch.

    With `levels`, x is data on that grid of [-1, 1]: it is dequantized and the offset added, so the
    value bounds the discrete NLL. `divergence` None picks exact for D <= 16, else Hutchinson. `cond`
    holds per-example conditioning (e.g. class_labels (N,)); kwargs go to `log_likelihood`.
    """
    dim = x[0].numel()
    if divergence is None:
        divergence = "exact" if dim <= EXACT_DIVERGENCE_MAX_DIM else "hutchinson"
    nlls, nfes = [], []
    for i, xb, cb in _batches(x, cond or {}, batch_size):
        if levels is not None:
            xb = dequantize(xb, levels, seed=seed, index_offset=index_offset + i)
        r = log_likelihood(denoiser, xb, path, divergence=divergence, seed=seed,
                           index_offset=index_offset + i, **kwargs, **cb)
        nlls.append(r.nll.detach())
        nfes.append(r.nfe)
    nll = torch.cat(nlls)
    if levels is not None:
        nll = nll + dequantization_offset(dim, levels)
    return nll, sum(nfes) / len(nfes)


def nll_report(denoiser, path, x: Tensor, *, levels: int | None = None,
               bound_path: DDPMDiscrete | None = None, bound_n_t: int | None = None,
               batch_size: int = 1000, seed: int = 0, cond: dict | None = None, **kwargs) -> dict:
    """What `diffspace eval RUN --nll` prints: PF-ODE NLL (nats, bits/dim, standard errors, NFE) and,
    for data on a `levels` grid, the DDPM bound in bits/dim beside it.

    The bound uses `bound_path`, by default `path` itself when it is DDPMDiscrete; any sigma-space
    Denoiser also defines a discrete-time model on another DDPMDiscrete schedule, so pass one to get
    the bound for models trained on other paths. Numbers are per example of x (one rank's shard under
    torchrun: gather `nll_per_example` outputs and call `summarize` to combine ranks). kwargs go to
    `nll_per_example` (divergence, rtol, atol, n_probes, ...).
    """
    if x.ndim < 2 or x.shape[0] == 0:
        raise UserError(f"nll_report needs a batch of examples (N, ...), got shape {tuple(x.shape)}")
    dim, cond = x[0].numel(), cond or {}
    nll, nfe = nll_per_example(denoiser, path, x, levels=levels, batch_size=batch_size, seed=seed,
                               cond=cond, **kwargs)
    report = {**summarize(nll, dim), "nfe": nfe}
    if levels is None:
        return report
    report["dequantization_offset_bits"] = bits_per_dim(dequantization_offset(dim, levels), dim)
    bound_path = path if bound_path is None and isinstance(path, DDPMDiscrete) else bound_path
    if bound_path is not None:
        g = torch.Generator().manual_seed(seed)
        b = torch.cat([ddpm_bound(denoiser, xb, bound_path, n_t=bound_n_t, levels=levels, generator=g, **cb)
                       for _, xb, cb in _batches(x, cond, batch_size)])
        summary = summarize(b, dim)  # bound_nats, bound_stderr, bound_bits_per_dim, ...
        report.update({"bound_" + k.removeprefix("nll_"): v for k, v in summary.items() if k != "n"})
    return report
