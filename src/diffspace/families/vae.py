"""Variational autoencoders: Gaussian latents by reparameterization, categorical latents relaxed by
Gumbel-softmax, the ELBO and the importance-weighted bound, all in nats per example.

References: [VAE] arXiv 1312.6114v11, [IWAE] arXiv 1509.00519v4, [GS] arXiv 1611.01144v5,
[CONCRETE] arXiv 1611.00712v3.

With w(z) = p(x, z) / q(z | x) and z_1..z_k ~ q(z | x) independently,

    L_k = E[log (1/k) sum_i w(z_i)],    L_1 = ELBO = E_q[log p(x | z)] - KL(q(z | x) || p(z)),

and L_1 <= L_k <= L_{k+1} <= log p(x) ([IWAE] Sec. 3, Thm. 1). Training maximizes the ELBO with the
KL in closed form ([VAE] Eq. 10; for categorical latents with a uniform prior, the categorical KL);
the likelihood of a trained model is reported as -L_k with a large k.

Observation models: `GaussianObservation` for continuous data (a density, nats of R^D), and
`GridObservation`, a categorical over the levels of a data `Grid` (binary data: 2 levels), which is
a probability of the discrete data itself, the same quantity the autoregressive models give and the
dequantized flows bound (docs/likelihood.md).

Categorical latents ([GS] Eq. 2, [CONCRETE] Def. 1): y = softmax((log pi + g) / tau), g Gumbel noise
drawn in float64; straight-through ([GS] Sec. 2.2) uses the one-hot argmax forward and the relaxed
sample's gradient. The relaxation enters the reconstruction term only; with hard samples
(`log_weights`) the bounds are those of the discrete-latent model.
"""

import math
from typing import NamedTuple

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from diffspace import rng
from diffspace.data.quantized import Grid, check_grid
from diffspace.families.autoencoder import kl_divergence
from diffspace.families.categorical import grid_log_prob, grid_sample
from diffspace.nets.feedforward import feedforward

LOG_2PI = math.log(2 * math.pi)


class GaussianObservation(nn.Module):
    """p(x | z) = N(x; mean, diag exp(2 log_std)): the decoder gives the mean (B, prod(shape)), and
    log_std (one per dimension) is learned."""

    def __init__(self, shape: tuple[int, ...]):
        super().__init__()
        self.shape, self.outputs = tuple(shape), math.prod(shape)
        self.log_std = nn.Parameter(torch.zeros(self.outputs))

    def log_prob(self, out: Tensor, x: Tensor) -> Tensor:
        r = (x.flatten(1) - out) * torch.exp(-self.log_std)
        return -0.5 * (r**2).sum(1) - self.log_std.sum() - 0.5 * self.outputs * LOG_2PI

    def sample(self, out: Tensor, generator: rng.Generator | None) -> Tensor:
        x = out + self.log_std.exp() * rng.randn(tuple(out.shape), generator, out.dtype, out.device)
        return x.view(-1, *self.shape)


class GridObservation(nn.Module):
    """A categorical over the `grid.levels` values in each dimension: the decoder gives logits
    (B, prod(shape) * levels); log_prob is log P(x) of the discrete data."""

    def __init__(self, shape: tuple[int, ...], grid: Grid):
        super().__init__()
        self.shape, self.grid = tuple(shape), check_grid(grid)
        self.outputs = math.prod(shape) * grid.levels

    def log_prob(self, out: Tensor, x: Tensor) -> Tensor:
        return grid_log_prob(out.view(-1, *self.shape, self.grid.levels), x, self.grid)

    def sample(self, out: Tensor, generator: rng.Generator | None) -> Tensor:
        return grid_sample(out.view(-1, *self.shape, self.grid.levels), self.grid, generator)


Observation = GaussianObservation | GridObservation


def _coder(d_in: int, d_out: int, hidden: int, depth: int) -> nn.Module:
    """An MLP on the flattened input (images or vectors)."""
    return nn.Sequential(nn.Flatten(), feedforward(d_in, d_out, hidden, depth))


def _repeat(x: Tensor, k: int) -> Tensor:
    """(B, ...) -> (B * k, ...), each example k times in a row."""
    return x.repeat_interleave(k, dim=0)


class GaussianVAE(nn.Module):
    """q(z | x) = N(mean, diag exp(logvar)) from encoder(x) -> (B, 2 latent_dim), p(z) = N(0, I),
    p(x | z) = observation(decoder(z)).

    forward(x (B, *S), eps (B, latent_dim)) -> ELBO per example (B,) with the closed-form KL;
    log_weights(x, eps (B, k, latent_dim)) -> log p(x, z_i) - log q(z_i | x), (B, k).
    """

    def __init__(self, encoder: nn.Module, decoder: nn.Module, observation: Observation, latent_dim: int):
        super().__init__()
        self.encoder, self.decoder, self.observation = encoder, decoder, observation
        self.latent_dim = latent_dim

    def noise(self, n: int, k: int, generator: rng.Generator | None) -> dict[str, Tensor]:
        p = next(self.parameters())
        return {"eps": rng.randn((n, k, self.latent_dim), generator, p.dtype, p.device)}

    def forward(self, x: Tensor, eps: Tensor) -> Tensor:
        mean, logvar = self.encoder(x).chunk(2, dim=1)
        z = mean + torch.exp(0.5 * logvar) * eps  # [VAE] Sec. 2.4, reparameterization
        return self.observation.log_prob(self.decoder(z), x) - kl_divergence(mean, logvar)  # [VAE] Eq. 10

    def log_weights(self, x: Tensor, eps: Tensor) -> Tensor:
        B, k, _ = eps.shape
        mean, logvar = self.encoder(x).chunk(2, dim=1)
        z = mean[:, None] + torch.exp(0.5 * logvar)[:, None] * eps  # (B, k, latent)
        log_q = -0.5 * (eps**2 + logvar[:, None] + LOG_2PI).sum(2)
        log_prior = -0.5 * (z**2 + LOG_2PI).sum(2)
        log_px = self.observation.log_prob(self.decoder(z.flatten(0, 1)), _repeat(x, k)).view(B, k)
        return log_px + log_prior - log_q

    @torch.no_grad()
    def sample(self, n: int, generator: rng.Generator | None) -> Tensor:
        p = next(self.parameters())
        z = rng.randn((n, self.latent_dim), generator, p.dtype, p.device)
        return self.observation.sample(self.decoder(z), generator)


def gumbel_softmax(logits: Tensor, gumbel: Tensor, tau: Tensor | float) -> Tensor:
    """[GS] Eq. 2: softmax((logits + g) / tau) over the last dim, computed in float64 (g is float64)
    and returned in the logits' dtype; tau a number or (B,)."""
    tau = torch.as_tensor(tau, dtype=torch.float64, device=logits.device)
    tau = tau.reshape(-1, *([1] * (logits.ndim - 1)))
    return torch.softmax((logits.double() + gumbel) / tau, dim=-1).to(logits.dtype)


def straight_through(y: Tensor) -> Tensor:
    """[GS] Sec. 2.2: the one-hot argmax of y in the forward pass, the gradient of y backward."""
    hard = F.one_hot(y.argmax(-1), y.shape[-1]).to(y.dtype)
    return hard - y.detach() + y


def annealed_temperature(step: int, tau0: float = 1.0, rate: float = 1e-4, tau_min: float = 0.5,
                         every: int = 500) -> float:
    """[GS] Sec. 4: tau = max(tau_min, tau0 exp(-rate t)) with t the training step, updated every
    `every` steps (the paper: tau0 = 1, tau_min = 0.5, rate 1e-5 or 1e-4, every 500 or 1000)."""
    return max(tau_min, tau0 * math.exp(-rate * every * (step // every)))


class GumbelSoftmaxVAE(nn.Module):
    """n_latents categorical latents of n_classes each, q(z | x) = Cat(softmax(encoder(x))) with
    encoder(x) -> (B, n_latents * n_classes) logits, uniform prior, p(x | z) = observation(decoder(z))
    with the decoder fed the (relaxed) one-hot codes flattened, (B, n_latents * n_classes).

    forward(x, gumbel (B, N, K) float64, tau (B,) or number) -> relaxed ELBO per example (B,);
    log_weights(x, gumbel (B, k, N, K)) -> log p(x, z_i) - log q(z_i | x) of hard draws z_i, (B, k).
    `straight_through` switches the training sample to [GS]'s straight-through estimator.
    """

    def __init__(self, encoder: nn.Module, decoder: nn.Module, observation: Observation, n_latents: int,
                 n_classes: int, straight_through: bool = False):
        super().__init__()
        self.encoder, self.decoder, self.observation = encoder, decoder, observation
        self.n_latents, self.n_classes, self.straight_through = n_latents, n_classes, straight_through

    def _logits(self, x: Tensor) -> Tensor:
        return self.encoder(x).view(-1, self.n_latents, self.n_classes)  # (B, N, K)

    def noise(self, n: int, k: int, generator: rng.Generator | None) -> dict[str, Tensor]:
        p = next(self.parameters())
        return {"gumbel": rng.gumbel((n, k, self.n_latents, self.n_classes), generator, p.device)}

    def forward(self, x: Tensor, gumbel: Tensor, tau: Tensor | float) -> Tensor:
        logits = self._logits(x)
        y = gumbel_softmax(logits, gumbel, tau)
        y = straight_through(y) if self.straight_through else y
        log_q = F.log_softmax(logits, dim=-1)
        kl = (log_q.exp() * (log_q + math.log(self.n_classes))).sum((1, 2))  # KL(q || uniform)
        return self.observation.log_prob(self.decoder(y.flatten(1)), x) - kl

    def log_weights(self, x: Tensor, gumbel: Tensor) -> Tensor:
        B, k = gumbel.shape[:2]
        log_q = F.log_softmax(self._logits(x), dim=-1)[:, None]  # (B, 1, N, K)
        idx = (log_q.double() + gumbel).argmax(-1, keepdim=True)  # [GS] Eq. 1, hard draws (B, k, N, 1)
        log_qz = log_q.expand(-1, k, -1, -1).gather(-1, idx).sum((2, 3))
        z = F.one_hot(idx[..., 0], self.n_classes).to(log_q.dtype).flatten(2)  # (B, k, N K)
        log_px = self.observation.log_prob(self.decoder(z.flatten(0, 1)), _repeat(x, k)).view(B, k)
        return log_px - self.n_latents * math.log(self.n_classes) - log_qz

    @torch.no_grad()
    def sample(self, n: int, generator: rng.Generator | None) -> Tensor:
        p = next(self.parameters())
        idx = rng.randint(self.n_classes, (n, self.n_latents), generator, p.device)
        z = F.one_hot(idx, self.n_classes).to(p.dtype).flatten(1)
        return self.observation.sample(self.decoder(z), generator)


def vae_loss(model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
    """The training loop's loss: -ELBO per example (B,) in nats; batch holds x and the model's noise
    (eps, or gumbel and tau), all drawn by the batch function."""
    return -model(**batch)


class Bound(NamedTuple):
    value: Tensor  # (B,) nats, the estimate of L_k (a lower bound of log p(x) in expectation)
    stderr: Tensor  # (B,) its Monte Carlo standard error; nan for k = 1


def importance_weighted_bound(log_w: Tensor) -> Bound:
    """L_k = log (1/k) sum_i w_i from log weights (B, k) ([IWAE] Sec. 3), with the delta-method standard
    error sqrt((k sum_i wn_i^2 - 1) / (k - 1)) of log mean(w), wn = w / sum w (the relative spread of
    the weights over sqrt(k))."""
    k = log_w.shape[1]
    value = torch.logsumexp(log_w, dim=1) - math.log(k)
    if k == 1:
        return Bound(value, torch.full_like(value, math.nan))
    wn = torch.softmax(log_w, dim=1)
    return Bound(value, ((k * (wn**2).sum(1) - 1) / (k - 1)).clamp(min=0).sqrt())


@torch.no_grad()
def vae_bound(model: GaussianVAE | GumbelSoftmaxVAE, x: Tensor, k: int,
              generator: rng.Generator | None) -> Bound:
    """-L_k is the reported NLL bound: k importance samples per example of x (B, *S)."""
    return importance_weighted_bound(model.log_weights(x, **model.noise(x.shape[0], k, generator)))


def gaussian_vae(shape: tuple[int, ...], observation: Observation, latent_dim: int = 8, hidden: int = 256,
                 depth: int = 2) -> GaussianVAE:
    """MLP encoder and decoder on the flattened data of `shape`."""
    encoder = _coder(math.prod(shape), 2 * latent_dim, hidden, depth)
    decoder = feedforward(latent_dim, observation.outputs, hidden, depth)
    return GaussianVAE(encoder, decoder, observation, latent_dim)


def gumbel_softmax_vae(shape: tuple[int, ...], observation: Observation, n_latents: int = 16,
                       n_classes: int = 8, hidden: int = 256, depth: int = 2,
                       straight_through: bool = False) -> GumbelSoftmaxVAE:
    D, code = math.prod(shape), n_latents * n_classes
    decoder = feedforward(code, observation.outputs, hidden, depth)
    return GumbelSoftmaxVAE(_coder(D, code, hidden, depth), decoder, observation, n_latents, n_classes,
                            straight_through)
