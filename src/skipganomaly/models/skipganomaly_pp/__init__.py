"""Skip-GANomaly++ (see README.md in this folder)."""

from .model import SkipGanomalyPP
from .networks import ResUNetPPGenerator

__all__ = ["SkipGanomalyPP", "ResUNetPPGenerator"]
