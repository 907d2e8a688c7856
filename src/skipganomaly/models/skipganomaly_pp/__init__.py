"""Skip-GANomaly++ (see README.md in this folder)."""

from .model import SkipGanomalyPP, SkipGanomalyPPRotation
from .networks import ResUNetPPGenerator

__all__ = ["SkipGanomalyPP", "SkipGanomalyPPRotation", "ResUNetPPGenerator"]
