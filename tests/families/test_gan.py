"""GANs in the project's one training loop: the single loss gives each player the gradient of its own
objective only (checked against the two objectives computed apart), the mode-coverage metric is right on
exact samples, and a tiny training on 8 gaussians covers every mode with >= 90 % of samples within 3 sigma."""

import math

import pytest
import torch
from torch.nn import functional as F

from diffspace.data.gmm import eight_gaussians_mixture
from diffspace.data.toy import make_toy
from diffspace.eval.modes import mode_coverage
from diffspace.families.gan import conv_gan, gan_loss, hinge, mlp_gan, nonsaturating
from diffspace.train.loop import TrainConfig, Trainer, TrainSetup


def _grads(loss, params):
    return torch.autograd.grad(loss, params, allow_unused=True, retain_graph=True)


@pytest.mark.parametrize("objective", [nonsaturating, hinge])
@pytest.mark.parametrize("images", [False, True])
def test_each_player_gets_the_gradient_of_its_own_objective(objective, images):
    torch.manual_seed(0)
    if images:  # the convolutional discriminator (GroupNorm) through functional_call
        gan = conv_gan((1, 8, 8), 3, hidden=16, width=8, objective=objective, r1_gamma=0.5).double()
        x = torch.rand(8, 1, 8, 8, dtype=torch.float64) * 2 - 1
    else:
        gan = mlp_gan(2, latent_dim=3, hidden=16, depth=2, objective=objective, r1_gamma=0.5).double()
        x = torch.randn(32, 2, dtype=torch.float64)
    z = torch.randn(len(x), 3, dtype=torch.float64)
    G, D = list(gan.generator.parameters()), list(gan.discriminator.parameters())
    total = gan_loss(gan, {"x": x, "z": z}).mean()
    # the two objectives computed apart, every gradient live
    xr = x.clone().requires_grad_(True)
    d_real, d_fake = gan.discriminator(xr)[:, 0], gan.discriminator(gan.generator(z))[:, 0]
    (r,) = torch.autograd.grad(d_real.sum(), xr, create_graph=True)
    r1 = 0.25 * r.flatten(1).square().sum(1)
    if objective is nonsaturating:
        loss_d = F.softplus(-d_real) + F.softplus(d_fake) + r1
        loss_g = F.softplus(-d_fake)
    else:
        loss_d = F.relu(1 - d_real) + F.relu(1 + d_fake) + r1
        loss_g = -d_fake
    for got, want in zip(_grads(total, D), _grads(loss_d.mean(), D), strict=True):
        assert torch.allclose(got, want, rtol=0, atol=1e-12)
    for got, want in zip(_grads(total, G), _grads(loss_g.mean(), G), strict=True):
        assert torch.allclose(got, want, rtol=0, atol=1e-12)


def test_conv_gan_shapes():
    gan = conv_gan((1, 8, 8))
    x = gan.sample(5, torch.Generator().manual_seed(0))
    assert x.shape == (5, 1, 8, 8) and x.abs().max() <= 1
    assert gan_loss(gan, {"x": x, **gan.noise(5, torch.Generator())}).shape == (5,)


def test_mode_coverage_of_exact_samples():
    gm = eight_gaussians_mixture()
    x = gm.sample(20_000, torch.Generator().manual_seed(0))
    r = mode_coverage(x, gm.means, 0.1)
    expected = 1 - math.exp(-4.5)  # P(|N(0, s^2 I_2)| <= 3 s)
    assert abs(r["within_fraction"] - expected) < 4 * math.sqrt(expected * (1 - expected) / 20_000)
    assert r["modes_covered"] == 8
    half = mode_coverage(x[(x[:, 0] > 0.5)], gm.means, 0.1)  # only the three modes with x > 0.5
    assert half["modes_covered"] == 3


@pytest.mark.slow
def test_gan_covers_the_eight_gaussians(tmp_path):
    """The loop's own Trainer and train_step (one AdamW over G and D, one loss), 8000 steps: about
    27 CPU-seconds, 0.909 / 0.919 / 0.913 of the samples within 3 sigma for torch seeds 0 / 1 / 2.

    why train.betas = (0.5, 0.999): GANs want Adam's beta1 = 0.5; with the default beta1 = 0.9 the same
    training reached all 8 modes but only 83 % of samples within 3 sigma (86 % with r1_gamma = 0.1)."""
    torch.manual_seed(0)
    data = make_toy("8gaussians", 20_000)
    gan = mlp_gan(2)

    def batch(g, n):
        return {"x": data[torch.randint(len(data), (n,), generator=g)], **gan.noise(n, g)}

    cfg = TrainConfig(steps=8000, batch_size=256, lr=1e-3, warmup_steps=50, ema_halflife_steps=100.0,
                      grad_clip=0.0, log_every=10**9, ckpt_every=10**9, betas=[0.5, 0.999])
    tr = Trainer(TrainSetup(gan, batch, gan_loss), cfg, tmp_path, {}, seed=0)
    while tr.step < cfg.steps:
        tr.train_step()
    gm = eight_gaussians_mixture()
    for model in (tr.model, tr.ema.module):
        r = mode_coverage(model.sample(4000, torch.Generator().manual_seed(1)), gm.means, 0.1)
        print(r)
        assert r["modes_covered"] == 8 and r["within_fraction"] >= 0.9, r
