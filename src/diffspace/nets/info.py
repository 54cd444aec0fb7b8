"""What a network costs and what it sees: parameters, multiply-accumulates per sample, and the receptive
field of a convolutional net, by the layer recursion and by the support of an input gradient.

Multiply-accumulates are counted by torch.utils.flop_counter.FlopCounterMode (every matmul, linear,
convolution, einsum and scaled-dot-product attention, including functional calls that forward hooks on
modules would miss), MACs = FLOPs / 2; elementwise work is not counted.

Receptive field along one spatial axis (H), for a chain of layers with kernels k_l, strides s_l and
dilations d_l:

    RF_0 = 1,   RF_l = RF_{l-1} + (k_l - 1) d_l J_l,   J_l = s_1 ... s_{l-1}  (input pixels per step of
                                                                              layer l's input grid)

`traced_layers` records the convolutions and poolings a forward call runs, in order, through a
TorchDispatchMode (so functional pooling counts too), and measures J_l as (input side) / (side of
layer l's input), which also holds after upsampling (UNet decoders); summing along the call order
gives the field of the longest path when every layer with k > 1 lies on one chain (plain stacks,
UNets). Attention (a fused SDPA op or a softmax) and GroupNorm statistics mix the whole image; they
are listed in `global_ops` instead (the field is then the whole input). `gradient_receptive_field`
checks it empirically: the extent of the input pixels on which one central output pixel depends.
"""

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode


def parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@torch.no_grad()
def macs_per_sample(fn: Callable[[], object], batch: int) -> int:
    """Multiply-accumulates of one call fn() (a forward on a batch of `batch` examples), per example."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() // (2 * batch)


class ConvLayer(NamedTuple):
    kernel: int
    dilation: int = 1
    jump: float = 1.0  # input pixels per step of this layer's input grid


def chain(*layers: tuple[int, int, int]) -> list[ConvLayer]:
    """ConvLayers of a plain stack given as (kernel, stride, dilation): J_l = product of earlier strides."""
    out, jump = [], 1.0
    for kernel, stride, dilation in layers:
        out.append(ConvLayer(kernel, dilation, jump))
        jump *= stride
    return out


def receptive_field(layers: list[ConvLayer]) -> float:
    """RF_L by the recursion of the module docstring (input pixels along one axis)."""
    rf = 1.0
    for layer in layers:
        rf += (layer.kernel - 1) * layer.dilation * layer.jump
    return rf


# why: attention reaches dispatch as a fused SDPA op or, on some inputs, decomposed into matmuls and a
# softmax; in a convolutional net a softmax is attention's
_GLOBAL = ("scaled_dot_product", "_softmax", "native_group_norm")


class _Trace(TorchDispatchMode):
    """Records (kernel, dilation, input side) of convolutions and poolings, and global ops, along H."""

    def __init__(self):
        super().__init__()
        self.ops: list[tuple[int, int, int]] = []
        self.global_ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.__name__
        if name.startswith("convolution"):
            self.ops.append((args[1].shape[2], args[5][0], args[0].shape[2]))
        elif name.startswith(("avg_pool2d", "max_pool2d")):
            dilation = args[4][0] if name.startswith("max_pool2d") and len(args) > 4 else 1
            self.ops.append((args[1][0], dilation, args[0].shape[2]))
        elif any(g in name for g in _GLOBAL):
            self.global_ops.append(name.split(".")[0])
        return func(*args, **(kwargs or {}))


class Traced(NamedTuple):
    layers: list[ConvLayer]
    global_ops: list[str]  # ops that see the whole image (attention, GroupNorm statistics)


@torch.no_grad()
def traced_layers(fn: Callable[[Tensor], object], x: Tensor) -> Traced:
    """The convolution and pooling layers fn(x) runs on x (B, C, H, W), in call order, with measured J_l.
    Take H divisible by the net's total stride, so that the side ratios are the strides' products."""
    trace = _Trace()
    with trace:
        fn(x)
    layers = [ConvLayer(k, d, x.shape[2] / side) for k, d, side in trace.ops]
    return Traced(layers, sorted(set(trace.global_ops)))


def gradient_receptive_field(fn: Callable[[Tensor], Tensor], x: Tensor) -> tuple[int, int]:
    """(rows, columns) spanned by the input pixels with a nonzero gradient of fn(x)'s central output
    pixel (summed over channels and the batch); x (B, C, H, W) large enough not to clip the field.
    Use random weights and inputs (zero-initialized layers or dead ReLUs hide dependencies)."""
    x = x.detach().requires_grad_(True)
    out = fn(x)
    (g,) = torch.autograd.grad(out[:, :, out.shape[2] // 2, out.shape[3] // 2].sum(), x)
    rows, cols = torch.nonzero(g.abs().sum((0, 1)), as_tuple=True)
    return int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)
