"""Skip-GANomaly++ generator: a ResUNet++ with a stem, three residual encoders, an ASPP bridge,
three attention decoders and an ASPP head (spec section A, layer for layer)."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..layers import PointwiseConv

DEFAULT_WIDTHS = (16, 32, 64, 128, 256)


class SqueezeExcite(nn.Module):
    """Channel gating with reduction 8 and bias-free linear layers, as in the reference."""

    def __init__(self, channels: int, reduction: int = 8) -> None:
        super().__init__()
        hidden = max(channels // reduction, 1)
        self.fc = nn.Sequential(
            nn.Linear(channels, hidden, bias=False),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, channels, bias=False),
            nn.Sigmoid(),
        )

    def forward(self, x: Tensor) -> Tensor:
        gate = self.fc(x.mean(dim=(2, 3)))
        return x * gate[:, :, None, None]


class Stem(nn.Module):
    """Conv-BN-ReLU-Conv plus a 1x1 projection shortcut; no activation after the sum."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.main = nn.Sequential(
            nn.Conv2d(cin, cout, 3, stride, 1),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, 1, 1),
        )
        self.shortcut = nn.Sequential(PointwiseConv(cin, cout, stride), nn.BatchNorm2d(cout))
        self.se = SqueezeExcite(cout)

    def forward(self, x: Tensor) -> Tensor:
        return self.se(self.main(x) + self.shortcut(x))


class ResidualUnit(nn.Module):
    """Pre-activation residual unit with an always-projecting shortcut and squeeze-excitation."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.main = nn.Sequential(
            nn.BatchNorm2d(cin),
            nn.ReLU(inplace=True),
            nn.Conv2d(cin, cout, 3, stride, 1),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, 1, 1),
        )
        self.shortcut = nn.Sequential(PointwiseConv(cin, cout, stride), nn.BatchNorm2d(cout))
        self.se = SqueezeExcite(cout)

    def forward(self, x: Tensor) -> Tensor:
        return self.se(self.main(x) + self.shortcut(x))


class DilatedConv3x3(nn.Conv2d):
    """3x3 conv with dilation d and padding d.

    When d reaches past the whole map (d >= H and d >= W) every off-centre tap reads zero padding,
    so the result equals a 1x1 conv with the centre weights. That cheap form is computed instead;
    the parameters stay 3x3 so checkpoints and counts match the reference.
    """

    def __init__(self, cin: int, cout: int, dilation: int) -> None:
        super().__init__(cin, cout, 3, 1, padding=dilation, dilation=dilation)

    def forward(self, x: Tensor) -> Tensor:
        d = self.dilation[0]
        if d >= x.shape[-2] and d >= x.shape[-1]:
            return F.conv2d(x, self.weight[:, :, 1:2, 1:2], self.bias)
        return super().forward(x)


class ASPP(nn.Module):
    """Four dilated 3x3 conv + BN branches (rates 1, 6, 12, 18), summed, then a 1x1 conv."""

    def __init__(self, cin: int, cout: int, rates: Sequence[int] = (1, 6, 12, 18)) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            nn.Sequential(DilatedConv3x3(cin, cout, r), nn.BatchNorm2d(cout)) for r in rates
        )
        self.project = nn.Conv2d(cout, cout, 1)

    def forward(self, x: Tensor) -> Tensor:
        out = self.branches[0](x)
        for branch in self.branches[1:]:
            out = out + branch(x)
        return self.project(out)


class AttentionGate(nn.Module):
    """Gate the decoder input x (C_x at H) with the encoder skip g (C_g at 2H); unbounded, no sigmoid."""

    def __init__(self, c_g: int, c_x: int) -> None:
        super().__init__()
        self.g_path = nn.Sequential(
            nn.BatchNorm2d(c_g), nn.ReLU(inplace=True), nn.Conv2d(c_g, c_x, 3, 1, 1), nn.MaxPool2d(2)
        )
        self.x_path = nn.Sequential(nn.BatchNorm2d(c_x), nn.ReLU(inplace=True), nn.Conv2d(c_x, c_x, 3, 1, 1))
        self.gate = nn.Sequential(nn.BatchNorm2d(c_x), nn.ReLU(inplace=True), nn.Conv2d(c_x, c_x, 3, 1, 1))

    def forward(self, g: Tensor, x: Tensor) -> Tensor:
        return self.gate(self.g_path(g) + self.x_path(x)) * x


class Decoder(nn.Module):
    """Attention, nearest x2 upsampling, concatenation with the skip, then a residual unit."""

    def __init__(self, c_g: int, c_x: int, cout: int) -> None:
        super().__init__()
        self.attention = AttentionGate(c_g, c_x)
        self.residual = ResidualUnit(c_x + c_g, cout)

    def forward(self, g: Tensor, x: Tensor) -> Tensor:
        y = F.interpolate(self.attention(g, x), scale_factor=2, mode="nearest")
        return self.residual(torch.cat([y, g], dim=1))


class ResUNetPPGenerator(nn.Module):
    """Image-to-image generator; the output is linear (no tanh), as in the reference."""

    def __init__(self, in_channels: int = 3, widths: Sequence[int] = DEFAULT_WIDTHS) -> None:
        super().__init__()
        if len(widths) != 5:
            raise ValueError(f"widths needs 5 entries (stem, 3 encoders, bridge), got {tuple(widths)}")
        w0, w1, w2, w3, w4 = widths
        self.stem = Stem(in_channels, w0)
        self.enc1 = ResidualUnit(w0, w1, 2)
        self.enc2 = ResidualUnit(w1, w2, 2)
        self.enc3 = ResidualUnit(w2, w3, 2)
        self.bridge = ASPP(w3, w4)
        self.dec1 = Decoder(w2, w4, w3)
        self.dec2 = Decoder(w1, w3, w2)
        self.dec3 = Decoder(w0, w2, w1)
        self.head = ASPP(w1, w0)
        self.out = nn.Conv2d(w0, in_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        c1 = self.stem(x)
        c2 = self.enc1(c1)
        c3 = self.enc2(c2)
        c4 = self.enc3(c3)
        y = self.bridge(c4)
        y = self.dec1(c3, y)
        y = self.dec2(c2, y)
        y = self.dec3(c1, y)
        return self.out(self.head(y))
