"""Skip-GANomaly (Akcay et al., 2019): a pix2pix U-Net generator in the shared Skip-GANomaly scheme
(spec section F1)."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..base import check_positive, check_power_of_two
from ..registry import register
from ..skip_family import SkipFamilyModel


class UNetLevel(nn.Module):
    """One U-Net level: down conv, the inner levels, up conv, and the skip concatenation.

    As in pix2pix, the LeakyReLU before a down conv acts in place on the level's input, so the skip
    carries the *activated* tensor (the outermost level has no activation and no skip).
    """

    def __init__(self, outer: int, inner: int, in_channels: int | None = None, sub: "UNetLevel | None" = None,
                 outermost: bool = False) -> None:
        super().__init__()
        self.outermost = outermost
        innermost = sub is None
        down: list[nn.Module] = [nn.Conv2d(in_channels or outer, inner, 4, 2, 1, bias=False)]
        if not (outermost or innermost):
            down.append(nn.BatchNorm2d(inner))
        self.down = nn.Sequential(*down)
        self.sub = sub
        up_in = inner if innermost else inner * 2
        if outermost:
            self.up = nn.Sequential(nn.ReLU(), nn.ConvTranspose2d(up_in, outer, 4, 2, 1), nn.Tanh())
        else:
            self.up = nn.Sequential(nn.ReLU(), nn.ConvTranspose2d(up_in, outer, 4, 2, 1, bias=False),
                                    nn.BatchNorm2d(outer))

    def forward(self, x: Tensor) -> Tensor:
        if self.outermost:
            return self.up(self.sub(self.down(x)))
        skip = F.leaky_relu(x, 0.2)
        inner = self.down(skip)
        y = self.up(inner if self.sub is None else self.sub(inner))
        return torch.cat([skip, y], dim=1)


def unet_generator(in_channels: int, image_size: int, ngf: int = 64) -> UNetLevel:
    """log2(image_size) levels, down to 1x1; at 3x32x32 and ngf 64: 16,659,075 parameters."""
    levels = int(math.log2(image_size))
    level = UNetLevel(ngf * 8, ngf * 8)
    for _ in range(levels - 5):
        level = UNetLevel(ngf * 8, ngf * 8, sub=level)
    for mult in (4, 2, 1):
        level = UNetLevel(ngf * mult, ngf * mult * 2, sub=level)
    return UNetLevel(in_channels, ngf, in_channels, sub=level, outermost=True)


@register("skipganomaly")
class SkipGanomaly(SkipFamilyModel):
    """U-Net generator with BN and a tanh output; losses, D and score shared with Skip-GANomaly++."""

    def __init__(self, in_channels: int = 3, image_size: int = 32, ngf: int = 64, **loss_options: Any) -> None:
        check_power_of_two("skipganomaly", image_size)
        check_positive("skipganomaly", ngf=ngf)
        self.ngf = ngf
        super().__init__(in_channels, image_size, **loss_options)

    def build_generator(self) -> nn.Module:
        return unet_generator(self.in_channels, self.image_size, self.ngf)
