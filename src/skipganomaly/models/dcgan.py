"""DCGAN building blocks shared by GANomaly, EGBAD and AnoGAN (spec sections F2-F4).

Each halves (or doubles) the spatial size per layer between the image and a 4x4 map, so they need
an image size that is a power of two (32, 64, 128, ...).
"""

from __future__ import annotations

from torch import nn



def encoder_pyramid(in_channels: int, image_size: int, width: int, first_bn: bool = False) -> tuple[nn.Sequential, int]:
    """Stride-2 4x4 convs from the image down to a 4x4 map, doubling the width each time.

    The first conv has no BN unless `first_bn`; the others are conv-BN-LeakyReLU(0.2), all bias-free.
    Returns the layers and the final width.
    """
    layers: list[nn.Module] = [nn.Conv2d(in_channels, width, 4, 2, 1, bias=False)]
    if first_bn:
        layers.append(nn.BatchNorm2d(width))
    layers.append(nn.LeakyReLU(0.2, inplace=True))
    size = image_size // 2
    while size > 4:
        layers += [nn.Conv2d(width, width * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(width * 2),
                   nn.LeakyReLU(0.2, inplace=True)]
        width, size = width * 2, size // 2
    return nn.Sequential(*layers), width


def encoder(in_channels: int, image_size: int, width: int, nz: int, first_bn: bool = False) -> nn.Sequential:
    """Encoder pyramid followed by a 4x4 valid conv to an nz x 1 x 1 code."""
    body, top = encoder_pyramid(in_channels, image_size, width, first_bn)
    return nn.Sequential(*body, nn.Conv2d(top, nz, 4, 1, 0, bias=False))


def decoder(nz: int, out_channels: int, image_size: int, width: int) -> nn.Sequential:
    """Transposed-conv pyramid from an nz x 1 x 1 code to a tanh image; `width` is the last hidden width."""
    top, size = width, 4
    while size < image_size // 2:
        top, size = top * 2, size * 2
    layers: list[nn.Module] = [nn.ConvTranspose2d(nz, top, 4, 1, 0, bias=False), nn.BatchNorm2d(top), nn.ReLU(True)]
    size = 4
    while size < image_size // 2:
        layers += [nn.ConvTranspose2d(top, top // 2, 4, 2, 1, bias=False), nn.BatchNorm2d(top // 2), nn.ReLU(True)]
        top, size = top // 2, size * 2
    layers += [nn.ConvTranspose2d(top, out_channels, 4, 2, 1, bias=False), nn.Tanh()]
    return nn.Sequential(*layers)
