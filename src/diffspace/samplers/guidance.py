"""Guidance as Denoiser wrappers, so that every sampler can use it.

[CFG] arXiv 2207.12598 (classifier-free guidance), [CG] arXiv 2105.05233 (classifier guidance),
[GINT] arXiv 2404.07724 (Kynkäänniemi et al. 2024, guidance applied only in a limited sigma interval).

Scales are stated so that 0 and 1 are the natural end points: CFG with w = 0 is the unconditional
denoiser and w = 1 the conditional one ([CFG]'s w is our w - 1); classifier guidance with s = 0 is the
plain denoiser.
"""

from collections.abc import Callable

import torch
from torch import Tensor, nn

from diffspace.param.wrappers import first_param, to_net_dtype
from diffspace.types import Denoiser
from diffspace.utils import bcast, shared_level

Cond = dict[str, Tensor]


def null_class(null_label: int) -> Callable[[Cond], Cond]:
    """The null condition of a class-conditional denoiser: every label replaced by `null_label`."""
    return lambda cond: {**cond, "class_labels": torch.full_like(cond["class_labels"], null_label)}


def null_caption(cond: Cond) -> Cond:
    """The null condition of a text-conditioned denoiser: the null caption, an all-False text_mask (the
    token features and pooled vector are then ignored, see nets/cross_attention.py)."""
    return {**cond, "text_mask": torch.zeros_like(cond["text_mask"])}


class ClassifierFreeGuidance:
    """D_w(x, sigma, c) = D(x, sigma, null(c)) + w (D(x, sigma, c) - D(x, sigma, null(c))).

    [CFG] Eq. 6 mixes eps predictions; with x_t fixed, x0 is affine in eps with coefficients summing to 1,
    so the same mixture holds for x0_hat. The condition c is the keyword arguments of the call (class
    labels, text features); `null(c)` gives the dropped condition the model was trained with
    (`null_class(K)`, `null_caption`). A call without condition (every value None) is the plain
    denoiser. With `sigma_interval` = (lo, hi) the scale w applies only for lo < sigma <= hi and the
    conditional denoiser (w = 1) is used elsewhere [GINT]. Both branches run as one batch of 2B.
    """

    def __init__(self, denoiser: Denoiser, scale: float, null: Callable[[Cond], Cond],
                 sigma_interval: tuple[float, float] | None = None):
        self.denoiser, self.scale, self.null = denoiser, scale, null
        self.sigma_interval = sigma_interval

    def __call__(self, x: Tensor, sigma: Tensor, **cond) -> Tensor:
        cond = {k: v for k, v in cond.items() if v is not None}
        if not cond:  # nothing to guide towards
            return self.denoiser(x, sigma)
        null = self.null(cond)
        both_cond = {k: torch.cat([v, null[k]]) for k, v in cond.items()}
        s = shared_level(sigma)  # why: a level shared by the batch stays one (stride-0) for both halves
        both_sigma = s.expand(2 * len(x)) if len(s) == 1 else torch.cat([sigma, sigma])
        d_cond, d_uncond = self.denoiser(torch.cat([x, x]), both_sigma, **both_cond).chunk(2)
        w = torch.full_like(s, self.scale)
        if self.sigma_interval is not None:
            lo, hi = self.sigma_interval
            w = torch.where((s > lo) & (s <= hi), w, torch.ones_like(w))
        return d_uncond + bcast(w, x) * (d_cond - d_uncond)


class EDMClassifier(nn.Module):
    """A noise-aware classifier net seen in EDM space: logits(x, sigma) = net(c_in x, 250 ln sigma).

    The input scaling c_in = 1 / sqrt(sigma^2 + sigma_data^2) and noise condition follow [EDM] Table 1,
    so one classifier serves denoisers trained on any path (all meet in EDM space). x may be of another
    floating dtype than the net (float64 sampling around a float32 classifier): the net then runs in its
    own dtype and the logits come back in x's (as the denoiser wrappers of param/wrappers.py).
    """

    def __init__(self, net: nn.Module, sigma_data: float = 0.5):
        super().__init__()
        self.net, self.sigma_data = net, sigma_data
        self._net_param = first_param(net)  # its dtype is the network's (`to_net_dtype`)

    def forward(self, x: Tensor, sigma: Tensor) -> Tensor:
        s = shared_level(sigma)
        c_in = 1 / torch.sqrt(bcast(s, x) ** 2 + self.sigma_data**2)
        net, x_in, c_noise, (known, p) = self.net, c_in * x, 250.0 * torch.log(s), self._net_param
        if known is not net or (p is not None and p.dtype is not x.dtype):
            x_in, c_noise = to_net_dtype(self, net, x_in, c_noise)
        logits = net(x_in, c_noise)
        # why not always in x's dtype: under bf16 autocast the logits stay bf16 (see ClassifierGuidance)
        return logits if x_in.dtype is x.dtype else logits.to(x.dtype)


class ClassifierGuidance:
    """D_s(x, sigma, y) = D(x, sigma) + s sigma^2 grad_x log p(y | x, sigma); classifier(x, sigma) -> logits.

    [CG] Alg. 1 adds s * grad log p(y | x_t) to the score; in EDM space the score is (D - x) / sigma^2,
    so the guided denoiser moves by s sigma^2 times the classifier's gradient. `class_labels` go to the
    classifier only: the denoiser is called without them (a class-conditional net then uses its null class),
    unless `conditional` (the labels then also condition the denoiser, e.g. one with [CFG]).
    """

    def __init__(self, denoiser: Denoiser, classifier: Callable[[Tensor, Tensor], Tensor], scale: float,
                 conditional: bool = False):
        self.denoiser, self.classifier, self.scale = denoiser, classifier, scale
        self.conditional = conditional

    def __call__(self, x: Tensor, sigma: Tensor, class_labels: Tensor | None = None, **cond) -> Tensor:
        labels = {"class_labels": class_labels} if self.conditional else {}
        x0_hat = self.denoiser(x, sigma, **labels, **cond)
        if class_labels is None or self.scale == 0:
            return x0_hat
        with torch.enable_grad():  # samplers usually run under no_grad
            x_in = x.detach().requires_grad_(True)
            logits = self.classifier(x_in, sigma)
            # why: a bf16 softmax under autocast loses the small gradients; compute it in >= float32
            logp = torch.log_softmax(logits, dim=1, dtype=torch.promote_types(logits.dtype, torch.float32))
            picked = logp.gather(1, class_labels[:, None]).sum()
            grad = torch.autograd.grad(picked, x_in)[0]
        return x0_hat + self.scale * bcast(sigma, x) ** 2 * grad.to(x.dtype)
