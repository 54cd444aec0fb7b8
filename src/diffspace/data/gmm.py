"""An isotropic Gaussian mixture with its exact denoiser: ground truth for samplers and likelihoods.

For x = x0 + sigma * eps with x0 ~ sum_k w_k N(mu_k, s_k^2 I):
  p_sigma(x)   = sum_k w_k N(x; mu_k, (s_k^2 + sigma^2) I)
  E[x0 | x]    = sum_k r_k(x) (mu_k + s_k^2 / (s_k^2 + sigma^2) (x - mu_k)),  r_k = posterior weights.
"""

import math

import torch
from torch import Tensor

from diffspace.data.checks import check_count


class GaussianMixture:
    def __init__(self, means: Tensor, stds: Tensor, weights: Tensor | None = None):
        self.means = torch.as_tensor(means, dtype=torch.float64)  # (K, D)
        K = self.means.shape[0]
        self.stds = torch.as_tensor(stds, dtype=torch.float64).expand(K).clone()  # (K,)
        w = torch.full((K,), 1.0 / K, dtype=torch.float64) if weights is None else weights
        self.weights = torch.as_tensor(w, dtype=torch.float64) / torch.as_tensor(w).sum()

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """n draws, float64 (n, D); UserError unless n is an integer >= 1."""
        check_count(n, "GaussianMixture.sample")
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, dtype=torch.float64, generator=generator)
        return self.means[k] + self.stds[k, None] * z

    def _component_logp(self, x: Tensor, sigma: Tensor | float) -> tuple[Tensor, Tensor]:
        """log w_k N(x; mu_k, v_k I) of shape (B, K) and the variances v_k = s_k^2 + sigma^2 (B, K)."""
        sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).reshape(-1, 1)
        var = self.stds.to(x)[None] ** 2 + sigma**2
        # why: explicit squared distances, not cdist: forward-mode AD (the JVP of a MeanFlow target) works
        # through them, and they are exact where cdist's matmul path cancels digits
        d2 = ((x[:, None] - self.means.to(x)[None]) ** 2).sum(-1)
        logp = torch.log(self.weights.to(x)) - 0.5 * d2 / var - 0.5 * self.dim * torch.log(2 * math.pi * var)
        return logp, var

    def log_prob(self, x: Tensor, sigma: Tensor | float = 0.0) -> Tensor:
        """log p_sigma(x), the density of x0 + sigma eps."""
        return torch.logsumexp(self._component_logp(x, sigma)[0], dim=1)

    def denoiser(self, x: Tensor, sigma: Tensor, **cond) -> Tensor:
        """Exact E[x0 | x0 + sigma eps = x] for EDM-space x (B, D) and sigma (B,)."""
        logp, var = self._component_logp(x, sigma)
        r = torch.softmax(logp, dim=1)  # (B, K)
        mu = self.means.to(x)
        shrink = self.stds.to(x)[None] ** 2 / var  # (B, K)
        post = mu[None] + shrink[..., None] * (x[:, None] - mu[None])  # (B, K, D)
        return (r[..., None] * post).sum(1)

    def entropy(self, n: int = 200_000, seed: int = 0) -> float:
        """Differential entropy in nats, Monte Carlo over n draws (exact for K = 1); UserError unless n is
        an integer >= 1."""
        check_count(n, "GaussianMixture.entropy", "n, the number of Monte Carlo draws,")
        if len(self.weights) == 1:
            return 0.5 * self.dim * math.log(2 * math.pi * math.e * float(self.stds[0]) ** 2)
        x = self.sample(n, torch.Generator().manual_seed(seed))
        return float(-self.log_prob(x).mean())


def eight_gaussians_mixture(radius: float = 2.0, std: float = 0.1) -> GaussianMixture:
    """The 8-gaussians toy set as an exact mixture (used by tests and the sampler benchmark)."""
    ang = torch.arange(8, dtype=torch.float64) * (2 * math.pi / 8)
    return GaussianMixture(radius * torch.stack([ang.cos(), ang.sin()], 1), torch.tensor(std))
