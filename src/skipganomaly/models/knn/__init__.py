"""Raw-pixel k-nearest-neighbour baseline (see README.md in this folder)."""

from .model import Knn

__all__ = ["Knn"]
