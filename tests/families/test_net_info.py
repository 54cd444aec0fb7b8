"""Network info against hand counts: parameters, multiply-accumulates of linear, convolution and
attention layers, and receptive fields of known stacks by the recursion, by tracing, and by the support
of an input gradient."""

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from diffspace.nets.info import (
    chain,
    gradient_receptive_field,
    macs_per_sample,
    parameter_count,
    receptive_field,
    traced_layers,
)
from diffspace.nets.unet import Attention
from test_cli import cli


def test_parameters_and_macs_of_linear_and_conv():
    mlp = nn.Sequential(nn.Linear(3, 16), nn.SiLU(), nn.Linear(16, 5))
    assert parameter_count(mlp) == 3 * 16 + 16 + 16 * 5 + 5
    assert macs_per_sample(lambda: mlp(torch.randn(7, 3)), 7) == 3 * 16 + 16 * 5
    conv = nn.Conv2d(2, 4, 3, padding=1, stride=2)
    assert macs_per_sample(lambda: conv(torch.randn(3, 2, 8, 8)), 3) == 4 * 4 * 4 * (2 * 9)  # 4x4 outputs


def test_macs_of_attention():
    """UNet attention on C = 8 channels at 4x4 (L = 16): qkv and proj 1x1 convs, and QK^T, AV (L^2 C each)."""
    attn = Attention(8, heads=2)
    L, C = 16, 8
    expected = L * C * 3 * C + L * C * C + 2 * L * L * C
    assert macs_per_sample(lambda: attn(torch.randn(2, C, 4, 4)), 2) == expected


class _Stack(nn.Module):
    """3x3 convolutions (padding keeps the grid aligned) with optional functional 2x2 average pooling."""

    def __init__(self, specs):
        super().__init__()
        self.specs = specs
        self.convs = nn.ModuleList(nn.Conv2d(1, 1, 3, stride=s, dilation=d, padding=d) if k == 3 else None
                                   for k, s, d in specs)

    def forward(self, x):
        for conv, (k, s, _) in zip(self.convs, self.specs, strict=True):
            x = torch.tanh(conv(x)) if conv is not None else F.avg_pool2d(x, k, s)
        return x


STACKS = {  # (kernel, stride, dilation) per layer -> hand receptive field
    "strides 1,1,2": ([(3, 1, 1), (3, 1, 1), (3, 2, 1)], 3 + 2 + 2),
    "strides 1,2,1": ([(3, 1, 1), (3, 2, 1), (3, 1, 1)], 3 + 2 + 2 * 2),
    "strides 2,1,1": ([(3, 2, 1), (3, 1, 1), (3, 1, 1)], 3 + 2 * 2 + 2 * 2),
    "dilated": ([(3, 1, 1), (3, 2, 1), (3, 1, 2)], 3 + 2 + 2 * 2 * 2),
    "avg pool": ([(3, 1, 1), (2, 2, 1), (3, 1, 1)], 3 + 1 + 2 * 2),
}


@pytest.mark.parametrize("name", list(STACKS))
def test_receptive_field_recursion_trace_and_gradient_agree(name):
    specs, hand = STACKS[name]
    assert receptive_field(chain(*specs)) == hand
    torch.manual_seed(0)
    net = _Stack(specs).double()
    x = torch.randn(2, 1, 32, 32, dtype=torch.float64)
    traced = traced_layers(net, x)
    assert traced.layers == chain(*specs) and traced.global_ops == []
    assert receptive_field(traced.layers) == hand
    assert gradient_receptive_field(net, x) == (hand, hand)


def test_attention_and_group_norm_are_reported_as_global():
    net = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), Attention(8, heads=2))
    traced = traced_layers(net, torch.randn(1, 8, 8, 8))
    assert any("scaled_dot_product" in op or "softmax" in op for op in traced.global_ops)
    assert "native_group_norm" in traced.global_ops


def test_info_of_a_unet_run_reports_its_receptive_field(tmp_path):
    """`runs.network_info` and `diffspace info` on a UNet run: parameters of the module, MACs of one
    denoiser call, the recursion over the layers the call runs, and the gradient support (the whole 8x8
    digit: GroupNorm and attention see every pixel)."""
    from pathlib import Path

    from diffspace import runs
    from diffspace.runs.continuous import as_denoiser

    config = Path(__file__).resolve().parents[2] / "configs" / "digits-edm.toml"
    run = runs.train(config, ["train.steps=1", "model.unet.channels=8", f"run.dir={tmp_path / 'unet'}"])
    info = runs.network_info(run)
    assert info["parameters"] == parameter_count(run.module)
    x, sigma = torch.randn(1, 1, 8, 8), torch.ones(1)
    call = lambda v: as_denoiser(run.cfg, run.module)(v, sigma)
    assert info["macs_per_sample"] == macs_per_sample(lambda: call(x), 1) > 0
    assert info["receptive_field_px"] == receptive_field(traced_layers(call, x).layers) > 8
    assert info["gradient_support_px"] == [8, 8] and info["input_px"] == [8, 8]
    assert "native_group_norm" in info["global_ops"]
    res = cli("info", run.dir)
    assert res.returncode == 0, res.stderr
    assert f"receptive   {info['receptive_field_px']:g} px by the layer recursion" in res.stdout
    assert f"parameters  {info['parameters']:,}" in res.stdout
