"""Masked (absorbing) diffusion: the SUBS parameterization, the continuous-time NELBO (MDLM, LLaDA) with
its time and mask-count estimators, block diffusion (BD3-LM) and the autoregressive cross-entropy.

Every loss returns the per-example NELBO (or NLL) in nats per token, shape (B,); summed over the L
tokens it is a bound on -log p(x0). References: [MDLM] arXiv 2406.07524v2, [LLADA] arXiv 2502.09992v3,
[BD3] arXiv 2503.09573v2.
"""

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffspace.discrete.attention import bd3_train_mask, causal_mask, time_input
from diffspace.discrete.processes import Absorbing
from diffspace.losses.proposals import T_PROPOSALS


def subs(logits: Tensor, x_t: Tensor, mask_id: int) -> Tensor:
    """[MDLM] Sec. 3.2.3 SUBS: zero probability on the mask token, and an unmasked token is copied
    ("carry-over unmasking"). Returns log-probabilities of p(x0 | x_t), (B, L, V)."""
    logits = logits.clone()
    logits[..., mask_id] = -torch.inf
    logp = logits.log_softmax(-1)
    clean = x_t != mask_id
    keep = torch.full_like(logp, -torch.inf).scatter_(-1, x_t[..., None], 0.0)
    return torch.where(clean[..., None], keep, logp)


def masked_nelbo(logp: Tensor, x0: Tensor, x_t: Tensor, weight: Tensor, mask_id: int) -> Tensor:
    """[MDLM] Eq. 10 integrand: sum over masked tokens of -alpha'/(1-alpha) * -log p(x0 | x_t),
    divided by L. weight (B,) or (B, L)."""
    nll = -logp.gather(-1, x0[..., None])[..., 0]
    w = weight.reshape(len(x0), -1).to(nll.dtype)
    # why: a clean token adds nothing, also at t = 0 where the weight is infinite (not inf * 0 = nan)
    return torch.where(x_t == mask_id, w * nll, 0.0).mean(dim=1)


def draw_noise(n: int, seq_len: int, g: torch.Generator, t_min: float = 1e-3, proposal: str = "stratified",
               t_per_seq: int = 1) -> dict[str, Tensor]:
    """All the randomness of a masked-diffusion loss: t (n, t_per_seq) in [t_min, 1] drawn by a
    T_PROPOSALS entry ("stratified": [MDLM] Sec. 3.5.1 antithetic sampling; "uniform": i.i.d. as in
    [LLADA]), and mask uniforms u (n, seq_len)."""
    t = T_PROPOSALS[proposal](n * t_per_seq, g, t_min, 1.0).view(n, t_per_seq)
    return {"t": t, "u": torch.rand(n, seq_len, generator=g, dtype=torch.float64)}


def draw_mask_counts(n: int, seq_len: int, g: torch.Generator, block: int,
                     proposal: str = "stratified") -> dict[str, Tensor]:
    """The t-free form of the same NELBO, for networks that do not see t.

    Such a network sees only which tokens are masked, so t can be integrated out: for a block of n
    tokens with k of them masked, the Beta integral of 1/t * C(n,k) t^k (1-t)^(n-k) over t is 1/k,
    hence NELBO = sum_k 1/k E[sum over the k masked of -log p] = E_{k ~ U{1..n}}[n/k sum ...]
    ([GUMBEL64] Sec. 3, arXiv 2409.02908v3: masked diffusion is time-agnostic; the order-agnostic
    bound of Hoogeboom et al. 2022, arXiv 2110.02037). Drawing the count k and a uniformly random set
    of k positions removes the binomial noise of the count, and the blocks with nothing masked, from
    the estimate. Returned as t = k / n and uniforms u = (rank + 1/2) / n, which the linear schedule
    (alpha_t = 1 - t, weight 1/t = n/k) turns into exactly those k masks: t (n, L / block), u (n, L).

    k = floor(r n) + 1 for a masked fraction r drawn by `proposal`: "stratified" or "uniform" give the
    NELBO itself; "logit_normal" favours middling fractions, a biased training objective that
    trains faster (bell-shaped time sampling, Hong et al. 2026, arXiv 2605.13026)."""
    per_seq = seq_len // block
    r = T_PROPOSALS[proposal](n * per_seq, g)
    k = (r * block).floor().clamp(max=block - 1) + 1
    k = k[torch.randperm(n * per_seq, generator=g)].view(n, per_seq)  # why: strata are drawn in order
    rank = torch.rand(n, per_seq, block, generator=g).argsort(-1).argsort(-1)
    return {"t": k / block, "u": ((rank + 0.5) / block).view(n, seq_len).double()}


def masked_denoiser(net: nn.Module, mask_id: int, time_cond: bool) -> Callable[[Tensor, Tensor], Tensor]:
    """A DiscreteDenoiser: log p(x0 | x_t) under SUBS from a network's logits."""
    def denoise(x_t: Tensor, t: Tensor) -> Tensor:
        return subs(net(x_t, time_input(t, time_cond)), x_t, mask_id)
    return denoise


def mdlm_loss(net: nn.Module, x0: Tensor, t: Tensor, u: Tensor, process: Absorbing,
              time_cond: bool = False) -> Tensor:
    """MDLM's NELBO, nats per token (B,), at times t (B,) with mask uniforms u (B, L). With the linear
    schedule, no time conditioning and i.i.d. t it is LLaDA's loss ([LLADA] Eq. 3: weight 1/t on masked
    tokens, normalized by L)."""
    t = t.reshape(len(x0))
    x_t = process.corrupt(x0, t, u)
    logp = masked_denoiser(net, process.mask_id, time_cond)(x_t, t)
    return masked_nelbo(logp, x0, x_t, process.weight(t), process.mask_id)


def bd3_loss(net: nn.Module, x0: Tensor, t: Tensor, u: Tensor, process: Absorbing, block: int,
             time_cond: bool = False) -> Tensor:
    """[BD3] Eq. 7: one t per block (t has shape (B, L / block)), each noisy block denoised given the
    clean blocks before it, all in one pass over [x_t, x0] with the mask of Sec. 3.2. block = 1 is AR,
    block = L is MDLM."""
    B, L = x0.shape
    t_tok = t.repeat_interleave(block, dim=1)  # (B, L)
    x_t = process.corrupt(x0, t_tok, u)
    pos = torch.arange(L, device=x0.device).repeat(2)
    nc = time_input(torch.cat([t_tok, torch.zeros_like(t_tok)], dim=1), time_cond)
    logits = net(torch.cat([x_t, x0], dim=1), nc, pos=pos, mask=bd3_train_mask(L, block, x0.device), n_out=L)
    logp = subs(logits, x_t, process.mask_id)
    return masked_nelbo(logp, x0, x_t, process.weight(t_tok), process.mask_id)


def ar_inputs(x0: Tensor, start_id: int) -> Tensor:
    """Shift right behind a start token (the mask id, which never occurs in data), so that all L tokens
    are predicted, as the diffusion bounds do."""
    return torch.cat([torch.full_like(x0[:, :1], start_id), x0[:, :-1]], dim=1)


def ar_loss(net: nn.Module, x0: Tensor, start_id: int) -> Tensor:
    """Exact autoregressive NLL, nats per token (B,)."""
    logits = net(ar_inputs(x0, start_id), mask=causal_mask(x0.shape[1], x0.device))
    return F.cross_entropy(logits.transpose(1, 2), x0, reduction="none").mean(dim=1)
