"""The paper's Table 1: per-class CIFAR-10 AUROC as published (spec section H)."""

from __future__ import annotations

from ..data.cifar10 import PAPER_ORDER

# One row per model, its values in PAPER_ORDER (the paper's column order)
_ROWS = {
    "egbad": (0.383, 0.514, 0.555, 0.413, 0.448, 0.374, 0.353, 0.526, 0.577, 0.481),
    "anogan": (0.411, 0.492, 0.511, 0.567, 0.399, 0.335, 0.321, 0.399, 0.516, 0.393),
    "ganomaly": (0.510, 0.631, 0.617, 0.616, 0.587, 0.593, 0.683, 0.605, 0.633, 0.628),
    "skipganomaly": (0.448, 0.953, 0.907, 0.659, 0.607, 0.602, 0.931, 0.788, 0.797, 0.615),
    "skipganomaly++": (0.819, 0.891, 0.892, 0.998, 0.907, 0.998, 0.999, 0.832, 0.984, 0.818),
}

TABLE_1: dict[str, dict[str, float]] = {m: dict(zip(PAPER_ORDER, v, strict=True)) for m, v in _ROWS.items()}
