"""Plain-text tables for results that people read in a terminal or a README."""

from __future__ import annotations

import math
from collections import Counter
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ..data.cifar10 import NAME as CIFAR10
from .paper import TABLE_1


MARKDOWN_SPECIAL = "\\|<>*`"  # in a class or file name: a column break, HTML, emphasis, code


def markdown_text(text: object) -> str:
    """Text shown as it is in a markdown table cell: the characters that would split the row or turn into markup
    backslash-escaped (a class named `a|b` stays one column, `<b>` is not bold)."""
    return "".join(f"\\{c}" if c in MARKDOWN_SPECIAL else c for c in str(text))


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub-flavoured markdown table; floats get three decimals, text is shown as it is (`markdown_text`)."""

    def cell(v: object) -> str:
        if isinstance(v, float):
            return "nan" if math.isnan(v) else f"{v:.3f}"
        return markdown_text(v)

    lines = ["| " + " | ".join(map(markdown_text, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def per_class_table(results: Mapping[str, Mapping[str, float]], metrics: Sequence[str]) -> str:
    """Rows = classes, columns = metrics, plus a mean row."""
    rows: list[list[object]] = [[name, *(r[m] for m in metrics)] for name, r in results.items()]
    if results:
        rows.append(["mean", *(sum(r[m] for r in results.values()) / len(results) for m in metrics)])
    return markdown_table(["class", *metrics], rows)


def summarise(results: Sequence[Mapping[str, Any]]) -> dict[tuple[str, str, str], dict[str, Any]]:
    """Benchmark cells -> {(model, protocol, class): mean and sample standard deviation (ddof=1) of AUROC
    over seeds, the seed count (std is NaN for one seed), and the fewest normal or abnormal test images of any
    of its cells (`fewest`, None where cells do not record them)."""
    groups: dict[tuple[str, str, str], list[float]] = {}
    counts: dict[tuple[str, str, str], list[int]] = {}
    for r in results:
        key = (r["model"], r["protocol"], r["class"])
        groups.setdefault(key, []).append(r["auroc"])
        if r.get("test_images") is not None and r.get("test_abnormal") is not None:  # every protocol records them
            counts.setdefault(key, []).append(min(int(r["test_abnormal"]), int(r["test_images"]) - int(r["test_abnormal"])))
    return {k: {"mean": float(np.mean(v)), "std": float(np.std(v, ddof=1)) if len(v) > 1 else math.nan,
                "n": len(v), "fewest": min(counts[k]) if k in counts else None} for k, v in groups.items()}


# What a table of each benchmark protocol shows (table.md and the benchmark report say it under its heading).
HONEST, PAPER, VALIDATE = "honest", "paper", "validate"  # the benchmark's protocols, named once
PROTOCOL_NOTES = {
    HONEST: "eval-mode networks, shuffled test batches, last epoch, threshold from held-out training normals.",
    PAPER: "LEAKY, to compare with published numbers only, not an estimate of how a model does on new images: "
             "the reference evaluation (trained on all training normals; class-ordered test batches of 64, in "
             "train-mode BatchNorm for the models whose reference code does that, so each batch's statistics "
             "carry its label; best epoch chosen on the test set).",
    VALIDATE: "what settings are chosen on: the column's class is removed from the data before anything else; "
                "the next class in label order (moved on by the seed) is a pseudo-anomaly against the others, "
                "scored as honest scores. No number here depends on the column's class.",
}


def shows_paper_numbers(dataset: str, protocol: str) -> bool:
    """The paper's Table 1 goes beside CIFAR-10 cells of the protocols that score the real class."""
    return dataset == CIFAR10 and protocol != VALIDATE


STD_NOTE = ("Cells are AUROC (each cell's AUPRC, F1, precision, recall, false-alarm rate, threshold and test-set "
            "sizes are in results.csv). Over "
            "several seeds a cell is mean±std, std the sample standard deviation (ddof=1) over seeds; under "
            "validate each seed scores another pseudo-anomaly, so there it spreads over tasks, not only trainings. "
            "Elsewhere a seed retrains (weights, batch order, held-out normals) and scores the same test images (a "
            "test fraction below 1 is drawn again per seed; a folder of classes is split into training and test "
            "once): the std leaves out how far another draw of the test images would move the cell, which on a small "
            "test set can be several times larger.")
def one_pass_note(models: Sequence[str]) -> str:
    """After a table's epoch count: which of its models ignore it (fitted in one pass), and which are the raw-pixel
    baselines, so their rows are not read as trained models'."""
    from ..models import BASELINES, get_model_class, list_models

    closed = [m for m in models if m in list_models() and not get_model_class(m).trained_by_gradient]
    baselines = [f"{m} ({BASELINE_SCORES[m]})" for m in closed if m in BASELINES]
    if not closed:
        return ""
    return (f" ({', '.join(closed)}: fitted in one pass, whatever the epochs"
            + (f"; raw-pixel baseline{'s' if len(baselines) > 1 else ''}, yardsticks for the learned models: "
               f"{', '.join(baselines)}" if baselines else "") + ")")


BASELINE_SCORES = {"pca": "PCA reconstruction error", "knn": "mean distance to the k nearest training normals"}


FEW_TEST_IMAGES = 10  # a cell scored on fewer normal or abnormal test images than this is marked FEW_MARK
FEW_MARK = "†"
FEW_NOTE = (f"{FEW_MARK} marks a cell whose test set holds fewer than {FEW_TEST_IMAGES} normal or abnormal images: "
            "its AUROC can move by tenths with a few images more or less.")


def few(entry: Mapping[str, Any]) -> bool:
    """Whether a summarised cell rests on too few test images to read its AUROC to two decimals."""
    return entry.get("fewest") is not None and entry["fewest"] < FEW_TEST_IMAGES


def table_notes(summary: Mapping[tuple[str, str, str], Mapping[str, Any]]) -> str:
    """What the marks in a benchmark's tables mean: STD_NOTE, and FEW_NOTE where a cell carries FEW_MARK."""
    return STD_NOTE + (f" {FEW_NOTE}" if any(few(entry) for entry in summary.values()) else "")


def commit_text(env: Mapping[str, Any]) -> str:
    """The commit a benchmark call ran at, and the one at its end where the tree changed during it."""
    at_end = env.get("git_commit_at_end")
    return f"{env.get('git_commit', '?')}" + (f" (at start; {at_end} at the end)" if at_end else "")


def commits_note(cells: Sequence[Mapping[str, Any]], env: Mapping[str, Any] | None = None) -> str:
    """A line for a table's header when its cells did not all run at the version of the code of the call that
    wrote the table (`env`: its commit, and the one at its end where a commit was made during it; cells are
    reused across calls, and the code may change between them), or not at one committed version: which versions,
    with how many cells each."""
    counts = Counter(str(cell.get("git_commit", "unknown")) for cell in cells)
    dirty = any(commit.endswith("-dirty") for commit in counts)
    current = None if env is None else commit_text(env)
    ran = [] if env is None else [c for c in (env.get("git_commit"), env.get("git_commit_at_end")) if c]
    older = bool(ran) and any(commit not in ran for commit in counts)
    if len(counts) < 2 and not dirty and not older:
        return ""
    versions = ", ".join(f"{commit} ({n} cell{'s' if n > 1 else ''})" for commit, n in counts.most_common())
    return (f"Cells ran at {'several versions of the code' if len(counts) > 1 else 'one version'}: {versions}"
            + (f", reused from earlier calls (this table was written by a call at {current})" if older else "")
            + ("; -dirty: with uncommitted changes to the package, which no commit reproduces" if dirty else "") + ".")


def benchmark_rows(
    summary: Mapping[tuple[str, str, str], Mapping[str, float]], models: Sequence[str], classes: Sequence[str],
    protocol: str, paper: bool = True,
) -> tuple[list[str], list[list[object]]]:
    """Rows = models, columns = abnormal classes: `ours (paper)` (the paper's Table 1 where `paper` and
    it has the model), ours as mean±std over seeds when there are several (std: the sample standard
    deviation, ddof=1; `STD_NOTE` says so under a table). The mean column averages the classes that have
    our number, ours and the paper's alike (a mean over other columns would compare unlike things)."""
    table_1 = TABLE_1 if paper else {}
    header = ["model", *classes, "mean"]
    rows: list[list[object]] = []
    for model in models:
        cells, means, ran = [], [], []
        for cls in classes:
            s = summary.get((model, protocol, cls))
            reported = table_1.get(model, {}).get(cls)
            ref = f" ({reported:.3f})" if reported is not None else ""
            if s is None:
                cells.append("-" + ref)
                continue
            means.append(s["mean"])
            ran.append(cls)
            ours = f"{s['mean']:.3f}±{s['std']:.3f}" if s["n"] > 1 else f"{s['mean']:.3f}"
            cells.append(ours + (FEW_MARK if few(s) else "") + ref)
        reported = [table_1.get(model, {}).get(cls) for cls in ran or classes]
        paper_mean = sum(reported) / len(reported) if paper and reported and None not in reported else None
        ours_mean = f"{sum(means) / len(means):.3f}" if means else "-"
        cells.append(ours_mean + (f" ({paper_mean:.3f})" if paper_mean is not None else ""))
        rows.append([model, *cells])
    return header, rows


def benchmark_table(
    summary: Mapping[tuple[str, str, str], Mapping[str, float]], models: Sequence[str], classes: Sequence[str],
    protocol: str, paper: bool = True,
) -> str:
    """`benchmark_rows` as markdown."""
    return markdown_table(*benchmark_rows(summary, models, classes, protocol, paper))


WARNINGS_NOTE = "what the run warned about, each once; each can change what a number means"


def warning_source(warning: Mapping[str, Any], quote: Callable[[str], str] = lambda key: f"`{key}`") -> str:
    """Who said a warning of `benchmark_warnings`: 'reading the data', 'cell a' or '12 cells (a, b, c, ...)', each
    cell key passed through `quote` (markdown code by default)."""
    if warning.get("data"):
        return "reading the data"
    keys = [str(k) for k in warning.get("cells") or []]
    shown = ", ".join(map(quote, keys[:3])) + (", ..." if len(keys) > 3 else "")
    return f"cell {shown}" if len(keys) == 1 else f"{len(keys)} cells ({shown})"
