"""Skip-GANomaly (see README.md in this folder)."""

from .model import SkipGanomaly, unet_generator

__all__ = ["SkipGanomaly", "unet_generator"]
