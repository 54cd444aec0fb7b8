"""UNet, DiT and the conv classifier: shapes, zero-initialized outputs, and every conditioning path."""

import pytest
import torch

from diffspace.nets.classifier import ConvClassifier
from diffspace.nets.dit import DiT
from diffspace.nets.unet import UNet

NETS = {
    "unet-digits": lambda k: UNet(1, 8, channels=16, channel_mults=(1, 2), num_res_blocks=1, num_classes=k),
    "unet-rgb": lambda k: UNet(3, 12, channels=16, channel_mults=(1, 2, 2), num_res_blocks=1,
                               attn_resolutions=(6, 3), heads=2, num_classes=k),
    "dit-p2": lambda k: DiT(1, 8, patch=2, hidden=32, depth=2, heads=4, num_classes=k),
    "dit-p4-rgb": lambda k: DiT(3, 12, patch=4, hidden=32, depth=1, heads=2, num_classes=k),
}


def _shape(name):
    return (1, 8, 8) if name in ("unet-digits", "dit-p2") else (3, 12, 12)


@pytest.mark.parametrize("name", NETS)
def test_fresh_net_outputs_zero(name):
    """Zero-init residual branches and heads: a fresh net outputs exactly 0 for any input."""
    net = NETS[name](10).eval()
    x = torch.randn(3, *_shape(name))
    out = net(x, torch.tensor([0.0, 500.0, 999.0]), torch.tensor([0, 3, 10]))
    assert torch.equal(out, torch.zeros_like(x))


@pytest.mark.parametrize("name", NETS)
def test_shapes_and_conditioning(name, randomize):
    torch.manual_seed(0)
    net = randomize(NETS[name](10))
    x = torch.randn(4, *_shape(name))
    nc = torch.tensor([10.0, 200.0, 600.0, 990.0])
    y = torch.tensor([1, 2, 3, 4])
    with torch.no_grad():
        out = net(x, nc, y)
        assert out.shape == x.shape and torch.isfinite(out).all()
        # the noise condition and the class label both change the output
        assert (net(x, nc + 100, y) - out).abs().max() > 1e-3
        assert (net(x, nc, (y + 1) % 10) - out).abs().max() > 1e-3
        # class_labels=None means the null class (index num_classes)
        torch.testing.assert_close(net(x, nc), net(x, nc, torch.full((4,), 10)))
        # no mixing across the batch: each example's output depends on itself only
        torch.testing.assert_close(net(x[1:2], nc[1:2], y[1:2]), out[1:2], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", NETS)
def test_unconditional_net_and_gradients(name, randomize):
    net = randomize(NETS[name](0)).train()
    x = torch.randn(2, *_shape(name))
    net(x, torch.tensor([1.0, 900.0])).square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())
    assert net.embed.classes is None


def test_bad_sizes():
    with pytest.raises(ValueError, match="divisible"):
        UNet(1, 10, channel_mults=(1, 2, 2))
    with pytest.raises(ValueError, match="resolution % patch"):
        DiT(1, 9, patch=2)


def test_conv_classifier_features_and_noise_condition(randomize):
    torch.manual_seed(0)
    clean = ConvClassifier(1, 10, width=8, feat_dim=16).eval()
    x = torch.randn(5, 1, 8, 8)
    assert clean(x).shape == (5, 10) and clean.features(x).shape == (5, 16)
    noisy = randomize(ConvClassifier(1, 10, width=8, feat_dim=16, noise_aware=True))
    a, b = noisy(x, torch.full((5,), 100.0)), noisy(x, torch.full((5,), 800.0))
    assert a.shape == (5, 10) and (a - b).abs().max() > 1e-3
