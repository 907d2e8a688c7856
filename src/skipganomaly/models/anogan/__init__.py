"""AnoGAN (see README.md in this folder)."""

from .model import AnoGan

__all__ = ["AnoGan"]
