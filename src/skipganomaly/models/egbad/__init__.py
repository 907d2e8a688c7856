"""EGBAD (see README.md in this folder)."""

from .model import Egbad

__all__ = ["Egbad"]
