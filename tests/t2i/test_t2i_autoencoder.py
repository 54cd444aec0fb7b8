"""The KL autoencoder: the KL term against torch.distributions' closed form and a Monte-Carlo estimate,
the objective as written, the latent scale factor, latent shapes and PSNR."""

import math

import pytest
import torch
from torch.distributions import Normal
from torch.distributions import kl_divergence as torch_kl

from diffspace.families.autoencoder import autoencoder_loss, kl_divergence, latent_scale, posterior, psnr
from diffspace.nets.autoencoder import KLAutoencoder


def test_kl_term_equals_the_closed_form():
    g = torch.Generator().manual_seed(0)
    mean = torch.randn(3, 4, 2, 2, generator=g, dtype=torch.float64)
    logvar = torch.randn(3, 4, 2, 2, generator=g, dtype=torch.float64)
    expected = torch_kl(Normal(mean, (0.5 * logvar).exp()), Normal(0.0, 1.0)).flatten(1).sum(1)
    torch.testing.assert_close(kl_divergence(mean, logvar), expected, rtol=1e-12, atol=1e-12)
    assert kl_divergence(torch.zeros(2, 5), torch.zeros(2, 5)).tolist() == [0.0, 0.0]


def test_kl_term_equals_a_monte_carlo_estimate():
    """E_q[log q(z) - log p(z)] over 400k draws, within 4 standard errors."""
    mean = torch.tensor([[0.5, -1.0, 2.0]], dtype=torch.float64)
    logvar = torch.tensor([[-1.0, 0.3, 0.0]], dtype=torch.float64)
    q, p = Normal(mean, (0.5 * logvar).exp()), Normal(0.0, 1.0)
    eps = torch.randn(400_000, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    z = mean + (0.5 * logvar).exp() * eps
    terms = (q.log_prob(z) - p.log_prob(z)).sum(1)
    se = terms.std().item() / math.sqrt(len(terms))
    assert abs(terms.mean().item() - kl_divergence(mean, logvar).item()) < 4 * se


def test_objective_is_reconstruction_plus_weighted_kl():
    torch.manual_seed(0)
    ae = KLAutoencoder(3, widths=(8, 8, 8))
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    mean, logvar = ae.encode(x)
    eps = torch.randn(mean.shape, generator=torch.Generator().manual_seed(3))
    loss = autoencoder_loss(ae, x, 0.5, eps)
    rec = (ae.decode(mean + (0.5 * logvar).exp() * eps) - x).square().flatten(1).sum(1)
    torch.testing.assert_close(loss, rec + 0.5 * kl_divergence(mean, logvar))


def test_latent_shapes_and_scale_factor():
    torch.manual_seed(0)
    ae = KLAutoencoder(3, latent_channels=4, widths=(8, 8, 8))
    x = torch.rand(40, 3, 32, 32) * 2 - 1
    mean, logvar = ae.encode(x)
    assert mean.shape == logvar.shape == (40, 4, 8, 8) and ae.decode(mean).shape == x.shape
    assert ae.encode(x[:, :, :16, :16])[0].shape == (40, 4, 4, 4)
    mean, logvar = posterior(ae, x, batch=16)
    with torch.no_grad():
        torch.testing.assert_close((mean, logvar), ae.encode(x), rtol=1e-5, atol=1e-6)  # batching is exact
    assert (mean.double() * latent_scale(mean)).std().item() == pytest.approx(1.0, rel=1e-12)
    with pytest.raises(ValueError, match="divisible"):
        ae.encode(x[:, :, :18, :18])


def test_psnr():
    x = torch.rand(3, 3, 8, 8) * 1.6 - 0.8
    assert psnr(x, x + 0.1).tolist() == pytest.approx([10 * math.log10(4 / 0.01)] * 3, rel=1e-5)
    # values out of range are clamped first: an estimate of 5 where the image is 1 errs by 0
    assert psnr(torch.ones(1, 1, 2, 2), torch.full((1, 1, 2, 2), 5.0)).isinf().all()
