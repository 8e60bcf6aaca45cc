"""The 8-layer MZSR network with a global residual over the bicubic upscale.

Input and output are RGB batches (N, 3, H, W) in [0, 1] at the HR size: the LR image is
bicubic-upscaled first (pre-upsampling) and the network predicts the residual.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from mzsr.network import conv as conv_path

NUM_LAYERS = 8
WIDTH = 64
CHANNELS = 3
PARAMETER_COUNT = 225_091


class MZSRNet(nn.Module):
    """conv3x3(3->64) + ReLU, 6 x [conv3x3(64->64) + ReLU], conv3x3(64->3); output = x + net(x).

    `bias=False` gives ZSSR's original network (its convolutions have no biases).
    """

    def __init__(self, width: int = WIDTH, layers: int = NUM_LAYERS, channels: int = CHANNELS, bias: bool = True):
        super().__init__()
        sizes = [channels] + [width] * (layers - 1) + [channels]
        self.convs = nn.ModuleList(
            nn.Conv2d(cin, cout, kernel_size=3, stride=1, padding=1, bias=bias)
            for cin, cout in zip(sizes[:-1], sizes[1:])
        )

    def forward(self, x: torch.Tensor, grad_dtype: torch.dtype | None = None) -> torch.Tensor:
        """x + net(x); `grad_dtype` that of the gradients' convolutions on a CPU (mzsr.network.conv)."""
        h = conv_path.activation_layout(x)  # channels-last on a CPU
        weights, biases = [c.weight for c in self.convs], [c.bias for c in self.convs]
        return x + conv_path.network(h, weights, biases, grad_dtype)


@torch.no_grad()
def init_zssr_(model: MZSRNet, variance: float = 0.1) -> MZSRNet:
    """ZSSR's initialisation: weights ~ N(0, variance / (kh * kw * cin)), biases (if any) zero.

    Small on purpose: with residual learning the untrained net should stay close to the bicubic input.
    """
    for conv in model.convs:
        kh, kw = conv.kernel_size
        conv.weight.normal_(0.0, math.sqrt(variance / (kh * kw * conv.in_channels)))
        if conv.bias is not None:
            conv.bias.zero_()
    return model


# TF-1's truncated normal cuts at two standard deviations, which shrinks the spread by this factor;
# its variance_scaling_initializer divides the standard deviation by it to keep the variance it asks for.
_TRUNCATION_STD = 0.87962566103423978


@torch.no_grad()
def init_release_(model: MZSRNet) -> MZSRNet:
    """The release's initialisation (tf.variance_scaling_initializer() of TF-1: scale 1, fan_in, truncated
    normal): weights ~ N(0, 1 / (kh * kw * cin)) cut at two standard deviations, biases zero.
    PyTorch's default for a convolution (uniform, a third of that variance, biases not zero) differs."""
    for conv in model.convs:
        kh, kw = conv.kernel_size
        std = math.sqrt(1.0 / (kh * kw * conv.in_channels)) / _TRUNCATION_STD
        torch.nn.init.trunc_normal_(conv.weight, 0.0, std, -2 * std, 2 * std)
        if conv.bias is not None:
            conv.bias.zero_()
    return model
