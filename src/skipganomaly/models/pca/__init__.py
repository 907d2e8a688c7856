"""Raw-pixel PCA baseline (see README.md in this folder)."""

from .model import Pca

__all__ = ["Pca"]
