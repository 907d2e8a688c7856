"""Layers shared by several models' networks."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

# oneDNN's strided 1x1 backward-weights kernel blocks input channels by 8 (AVX2) or 16 (AVX-512).
POINTWISE_SAFE_CHANNELS = 16


class PointwiseConv(nn.Conv2d):
    """A 1x1 convolution, strided or not: the same parameters, state-dict keys and maps as
    `nn.Conv2d(cin, cout, 1, stride, bias=bias)`. With a stride and fewer than 16 input channels, the
    input is subsampled first and the convolution runs at stride 1.

    Why: oneDNN's strided 1x1 backward-weights kernel writes past its workspace on AVX2 and AVX-512 CPUs
    when the input is channels-last (as `training.device` lays it out) and has fewer input channels than
    the kernel's block (8 on AVX2, 16 on AVX-512): wrong weight gradients, a hang, or heap corruption
    (uxlfoundation/oneDNN#6035; reproduced with torch 2.13.0 on an AVX2-only CPU at 3 and 4 input
    channels: a hang at 2 threads, `free(): invalid next size` at 1). A 1x1 convolution at stride 1
    does not use that kernel. Wider inputs keep the strided kernel: the subsampled path costs a copy
    each way (about 1.5x the time of this layer)."""

    def __init__(self, cin: int, cout: int, stride: int = 1, bias: bool = True) -> None:
        super().__init__(cin, cout, 1, stride, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        sy, sx = self.stride
        if (sy == 1 and sx == 1) or self.in_channels >= POINTWISE_SAFE_CHANNELS:
            return super().forward(x)
        return F.conv2d(x[:, :, ::sy, ::sx], self.weight, self.bias)
