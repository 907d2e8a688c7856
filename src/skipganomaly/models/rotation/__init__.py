"""Transformation-prediction detector (see README.md in this folder)."""

from .model import RotationNet

__all__ = ["RotationNet"]
