"""GANomaly (see README.md in this folder)."""

from .model import Ganomaly

__all__ = ["Ganomaly"]
