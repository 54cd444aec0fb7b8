"""Honest likelihoods and sample statistics for token models.

Bits per character: exact for AR (the chain rule), an upper bound for diffusion (the NELBO, estimated
by Monte Carlo over t and masks, reported with its standard error). Generative perplexity of samples
under an AR model is reported together with unigram and n-gram entropy of the samples, since low
perplexity alone is reached by repetitive text ([GUMBEL64] arXiv 2409.02908v3 Sec. 4).
"""

import math
from collections import Counter

import torch
from torch import Tensor, nn

from diffspace.discrete.masked import ar_loss


def mean_stderr(values: Tensor) -> tuple[float, float]:
    v = values.double().flatten()
    return float(v.mean()), float(v.std() / math.sqrt(len(v))) if len(v) > 1 else 0.0


def bits_report(nats_per_token: Tensor, chars_per_token: float, exact: bool) -> dict:
    """Bits per character and per-token perplexity from per-example nats/token values."""
    m, se = mean_stderr(nats_per_token)
    per_char = 1 / (math.log(2) * chars_per_token)
    return {"bits_per_char": m * per_char, "bits_per_char_stderr": se * per_char,
            "ppl_token": math.exp(m), "bound": "exact" if exact else "NELBO (upper bound)"}


@torch.no_grad()
def ar_nll(net: nn.Module, chunks: Tensor, start_id: int, batch: int = 64) -> Tensor:
    """Exact NLL (nats per token) of each chunk (N, L) under an AR model."""
    dev = next(net.parameters()).device
    return torch.cat([ar_loss(net, c.to(dev), start_id).cpu() for c in chunks.split(batch)])


def ngram_entropy(seqs: Tensor, n: int) -> float:
    """Entropy in bits of the pooled n-gram distribution of sequences (B, L)."""
    grams = seqs.unfold(1, n, 1).reshape(-1, n)
    counts = torch.tensor(list(Counter(map(tuple, grams.tolist())).values()), dtype=torch.float64)
    p = counts / counts.sum()
    return float(-(p * p.log2()).sum())


def entropy_report(seqs: Tensor, ns: tuple[int, ...] = (1, 2, 3)) -> dict:
    return {f"entropy_{n}gram_bits": ngram_entropy(seqs, n) for n in ns}


@torch.no_grad()
def gen_perplexity(ar_net: nn.Module, samples: Tensor, start_id: int) -> float:
    """exp(mean NLL per token) of samples (B, L) under an AR model."""
    return math.exp(float(ar_nll(ar_net, samples, start_id).mean()))


def sample_report(samples: Tensor, data: Tensor, ar_net: nn.Module | None, start_id: int) -> dict:
    """n-gram entropies of samples (B, L) next to those of data chunks (N, L), and with an AR model the
    generative perplexity of both."""
    out = {f"sample_{k}": v for k, v in entropy_report(samples).items()}
    out |= {f"data_{k}": v for k, v in entropy_report(data).items()}
    if ar_net is not None:
        out["gen_ppl"] = gen_perplexity(ar_net, samples, start_id)
        out["data_gen_ppl"] = gen_perplexity(ar_net, data, start_id)
    return out
