"""Plain-text tables for results that people read in a terminal or a README."""

from __future__ import annotations

import math
from typing import Mapping, Sequence


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub-flavoured markdown table; floats get three decimals."""

    def cell(v: object) -> str:
        if isinstance(v, float):
            return "nan" if math.isnan(v) else f"{v:.3f}"
        return str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def per_class_table(results: Mapping[str, Mapping[str, float]], metrics: Sequence[str]) -> str:
    """Rows = classes, columns = metrics, plus a mean row."""
    rows: list[list[object]] = [[name, *(r[m] for m in metrics)] for name, r in results.items()]
    if results:
        rows.append(["mean", *(sum(r[m] for r in results.values()) / len(results) for m in metrics)])
    return markdown_table(["class", *metrics], rows)
