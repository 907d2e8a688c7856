"""Figures people judge a detector by: ROC and PR curves, score histograms, image grids, training curves.

Each function takes plain arrays and writes one PNG. Figures are built with matplotlib's object API
(`Figure`, no pyplot), so nothing depends on a display or on global plotting state.
"""

from __future__ import annotations

import logging
import re
import textwrap
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from ..errors import PACKAGE_LOGGER
from ..files import readable_name
from .metrics import evaluate_scores

if TYPE_CHECKING:
    from matplotlib.figure import Figure

Curves = Mapping[str, tuple[np.ndarray, np.ndarray]]  # name -> (labels, scores)


def _figure(figsize: tuple[float, float]) -> Figure:
    """A new figure. matplotlib (and scikit-learn below) are imported on first use, not with the package,
    so a training run does not carry them (a test checks it)."""
    from matplotlib.figure import Figure

    return Figure(figsize=figsize)


def _save(fig: Figure, path: Path) -> Path:
    from matplotlib.text import Text

    # tick labels are the formatter's (a log axis writes its powers in mathtext); every other text may hold names
    # from the file system (class folders, files), drawn as they are: not necessarily UTF-8, and a `$` is a
    # character, not the start of a formula
    ticks = {id(label) for ax in fig.axes for axis in (ax.xaxis, ax.yaxis)
             for tick in (*axis.get_major_ticks(), *axis.get_minor_ticks()) for label in (tick.label1, tick.label2)}
    for text in fig.findobj(Text):
        if id(text) not in ticks:
            text.set_text(readable_name(text.get_text()))
            text.set_parse_math(False)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(record=True) as caught:  # matplotlib says each missing glyph of each text
        warnings.simplefilter("always")
        fig.savefig(path, dpi=100, bbox_inches="tight")
    _say_missing_glyphs(caught, path)
    return path


_MISSING_SAID: set[str] = set()  # characters already said to be drawn as boxes, so a report says each once


def _say_missing_glyphs(caught: Sequence[warnings.WarningMessage], path: Path) -> None:
    """A character the figure font lacks (CJK in a file or class name) is drawn as a box: said once, with what keeps
    the names exact, instead of matplotlib's warning per glyph."""
    missing = {chr(int(m.group(1))) for w in caught if (m := re.match(r"Glyph (\d+) .*missing from", str(w.message)))}
    for w in caught:
        if not re.match(r"Glyph \d+ .*missing from", str(w.message)):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)  # anything else, as it was
    new = sorted(missing - _MISSING_SAID)
    if new:
        _MISSING_SAID.update(new)
        logging.getLogger(PACKAGE_LOGGER).warning(
            "the figures' font has no %s, drawn as boxes in %s (and any figure like it); the names stay exact in the "
            "report's text and the CSV files (a font with these characters, made matplotlib's default, draws them)",
            "".join(new), path.name)


def _two_classes(labels: np.ndarray) -> bool:
    return 0 < int(np.sum(labels)) < len(labels)


def _legend_or_note(ax: Any, loc: str) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc=loc, fontsize="small")
    else:
        ax.text(0.5, 0.5, "needs normal and abnormal images", ha="center", va="center", transform=ax.transAxes)


def roc_figure(curves: Curves, path: Path, title: str = "ROC", threshold: float | None = None) -> Path:
    """One ROC curve per entry, with its AUROC in the legend; the diagonal is chance. With `threshold`, each
    curve's operating point there (scores above it flagged) is marked."""
    from sklearn.metrics import auc, roc_curve

    fig = _figure((5, 5))
    ax = fig.add_subplot()
    for name, (labels, scores) in curves.items():
        if not _two_classes(labels):
            continue
        fpr, tpr, _ = roc_curve(labels, scores)
        line, = ax.plot(fpr, tpr, label=f"{name} (AUROC {auc(fpr, tpr):.3f})")
        if threshold is not None and np.isfinite(threshold):
            metrics = evaluate_scores(scores, labels, threshold)
            at = (metrics["false_alarm_rate"], metrics["recall"])
            ax.plot(*at, "o", color=line.get_color(),
                    label=f"at the threshold: {at[0]:.1%} false alarms, {at[1]:.1%} recall")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title=title, xlim=(0, 1), ylim=(0, 1.01))
    _legend_or_note(ax, "lower right")
    return _save(fig, path)


def pr_figure(curves: Curves, path: Path, title: str = "Precision-recall", threshold: float | None = None) -> Path:
    """One precision-recall curve per entry, drawn as the step function whose area is its AUPRC: the
    average precision, as `evaluate_scores` reports it (trapezoids over the curve would give another
    value for the same scores). The dotted line is the abnormal share. With `threshold`, each curve's operating
    point there is marked, as on the ROC (none where nothing is flagged: precision is undefined)."""
    from sklearn.metrics import average_precision_score, precision_recall_curve

    fig = _figure((5, 5))
    ax = fig.add_subplot()
    for name, (labels, scores) in curves.items():
        if not _two_classes(labels):
            continue
        precision, recall, _ = precision_recall_curve(labels, scores)
        ap = average_precision_score(labels, scores)
        line, = ax.plot(recall, precision, drawstyle="steps-post", label=f"{name} (AUPRC {ap:.3f})")
        if threshold is not None and np.isfinite(threshold):
            metrics = evaluate_scores(scores, labels, threshold)
            if np.isfinite(metrics["precision"]):
                ax.plot(metrics["recall"], metrics["precision"], "o", color=line.get_color(),
                        label=f"at the threshold: {metrics['precision']:.1%} precision, {metrics['recall']:.1%} recall")
        ax.axhline(float(np.mean(labels)), color="grey", linestyle=":", linewidth=1,
                   label=f"chance: the abnormal share, {float(np.mean(labels)):.3f}")
    ax.set(xlabel="recall", ylabel="precision", title=title, xlim=(0, 1), ylim=(0, 1.01))
    _legend_or_note(ax, "lower left")
    return _save(fig, path)


def histogram_figure(labels: np.ndarray, scores: np.ndarray, threshold: float | None, path: Path,
                     title: str = "Scores") -> Path:
    """Normal and abnormal score histograms on shared bins, with the calibrated threshold."""
    fig = _figure((6, 4))
    ax = fig.add_subplot()
    finite = scores[np.isfinite(scores)]
    edges = np.histogram_bin_edges(finite if finite.size else np.zeros(1), bins=50)
    for value, name, colour in ((0, "normal", "tab:blue"), (1, "abnormal", "tab:red")):
        part = scores[labels == value]
        if part.size:
            ax.hist(part, bins=edges, alpha=0.55, color=colour, label=f"{name} ({part.size})")
    if threshold is not None and np.isfinite(threshold):
        ax.axvline(threshold, color="black", linestyle="--", label=f"threshold {threshold:.6g}")
    ax.set(xlabel="anomaly score (higher = more anomalous)", ylabel="images", title=title)
    ax.yaxis.get_major_locator().set_params(integer=True)  # counts of images: no 2.5 ticks
    ax.legend(fontsize="small")
    return _save(fig, path)


def overlay(image: np.ndarray, amap: np.ndarray, alpha: float = 0.5, vmax: float | None = None) -> np.ndarray:
    """A heat map of `amap` [H, W] blended over `image` [H, W, C] in [0, 1]; returns RGB floats in [0, 1].

    `vmax` fixes the colour scale (e.g. across a grid), so equal colours mean equal residuals.
    """
    from matplotlib import colormaps

    rgb = np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image
    top = float(vmax if vmax is not None else amap.max())
    heat = colormaps["inferno"](np.clip(amap / top, 0.0, 1.0) if top > 0 else np.zeros_like(amap))[..., :3]
    return np.clip((1.0 - alpha) * rgb + alpha * heat, 0.0, 1.0)


def image_grid_figure(inputs: np.ndarray, reconstructions: np.ndarray | None, maps: np.ndarray,
                      captions: Sequence[str], path: Path, title: str, vmax: float | None = None,
                      output_name: str = "reconstruction", map_name: str = "anomaly map") -> Path:
    """Columns = images; rows = input, the model's output (`output_name`; no row where `reconstructions` is None: a
    model that rebuilds nothing), anomaly-map overlay (`map_name` on its colour bar). Images [N, H, W, C] in [0, 1].

    The overlays share one colour scale (`vmax`, default the largest of these maps; a report gives all its grids
    one), drawn as a colour bar, so a brighter map is a larger value of the same quantity.
    """
    n = len(inputs)
    fig = _figure((max(1.4 * n, 3.0), 4.6 if reconstructions is not None else 3.3))
    if n == 0:
        fig.text(0.5, 0.5, f"{title}: no images", ha="center", va="center")
        return _save(fig, path)
    vmax = vmax if vmax is not None else float(maps.max()) or 1.0
    rows = (("input", inputs),
            *(((output_name, np.clip(reconstructions, 0, 1)),) if reconstructions is not None else ()),
            ("anomaly map", np.stack([overlay(i, m, vmax=vmax) for i, m in zip(inputs, maps, strict=True)])))
    height, width = inputs.shape[1:3]
    gap = max(2, width // 8)  # white between the images of a row
    axes = fig.subplots(len(rows), 1, squeeze=False)[:, 0]  # one picture per row: far faster than one per image
    for ax, (name, images) in zip(axes, rows):
        tiles = np.repeat(images, 3, axis=-1) if images.shape[-1] == 1 else images
        mosaic = np.ones((height, n * width + (n - 1) * gap, 3))
        for c in range(n):
            mosaic[:, c * (width + gap):c * (width + gap) + width] = tiles[c]
        ax.imshow(mosaic, vmin=0, vmax=1)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_ylabel("\n".join(textwrap.wrap(name, 16)), fontsize="small")
        for spine in ax.spines.values():
            spine.set_visible(False)
    for c, caption in enumerate(captions):
        axes[0].text(c * (width + gap) + width / 2, -height * 0.04, caption, ha="center", va="bottom",
                     fontsize="x-small")
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    fig.subplots_adjust(right=0.9, top=0.8)  # room for the captions (up to three lines) and the colour bar
    row = axes[-1].get_position()
    fig.colorbar(ScalarMappable(Normalize(0.0, vmax), "inferno"), cax=fig.add_axes((0.915, row.y0, 0.012, row.height)),
                 label=map_name.replace(", ", ",\n"))
    fig.suptitle(title)
    return _save(fig, path)


def training_curves_figure(history: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """Per-epoch mean loss terms (left; log scale when all are positive) and validation loss (right)."""
    fig = _figure((10, 4))
    left, right = fig.subplots(1, 2)
    epochs = [int(r["epoch"]) for r in history]
    names = sorted({k for r in history for k in r["losses"]})
    values = {n: np.array([r["losses"].get(n, np.nan) for r in history], dtype=float) for n in names}
    for name, series in values.items():
        left.plot(epochs, series, marker="o", label=name)
    if values and all(np.all(v[np.isfinite(v)] > 0) for v in values.values()):
        left.set_yscale("log")
    left.set(xlabel="epoch", ylabel="mean per step", title="training losses")
    if values:
        left.legend(fontsize="small")
    else:  # a model fitted in closed form has no training steps
        left.text(0.5, 0.5, "fitted in closed form:\nno training steps", ha="center", va="center",
                  transform=left.transAxes)
    # None: a value that was not a number when written (a closed-form model has no validation loss)
    right.plot(epochs, np.array([r["val_loss"] for r in history], dtype=float), marker="o", color="black")
    right.set(xlabel="epoch", ylabel="mean over held-out normals", title="validation loss (the model's own)")
    from matplotlib.ticker import MaxNLocator

    for ax in (left, right):  # epochs are whole: a few are each a tick, many get whole-number ticks
        if len(epochs) <= 12:
            ax.set_xticks(sorted(set(epochs)))
            ax.set_xlim(min(epochs, default=1) - 0.5, max(epochs, default=1) + 0.5)
        else:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.subplots_adjust(wspace=0.3)  # the right panel's label clear of the left panel
    return _save(fig, path)


MAP_NAME_BYTES = 150  # of an image's name (UTF-8) in its map's file name: a legal 250-byte name plus the number is not


def save_overlays(out_dir: Path, images: Any, names: Sequence[str], maps: np.ndarray, min_size: int = 128,
                  vmax: float | None = None) -> list[str]:
    """One PNG per image, input beside its anomaly-map overlay, enlarged to at least `min_size` pixels.

    Images are uint8 [N, C, H, W]. Files are numbered (0001_name.png) so equal names from different
    folders do not overwrite each other; returns the written paths. The colour scale is shared by all
    images of the call, so equal colours mean equal residuals: 0 to `vmax` (values above it in full colour),
    by default the largest value of these maps.
    """
    from PIL import Image

    out_dir.mkdir(parents=True, exist_ok=True)
    vmax = vmax if vmax is not None and vmax > 0 else float(maps.max()) or 1.0
    scale = max(1, -(-min_size // images.shape[-1]))
    written = []
    for i, (image, amap, name) in enumerate(zip(images, maps, names, strict=True)):
        rgb = image.permute(1, 2, 0).numpy() / 255.0
        rgb3 = np.repeat(rgb, 3, axis=-1) if rgb.shape[-1] == 1 else rgb
        pair = np.concatenate([rgb3, overlay(rgb, amap, vmax=vmax)], axis=1)
        picture = Image.fromarray((pair * 255).round().astype(np.uint8))
        picture = picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)
        stem = Path(name).stem
        while len(stem.encode("utf-8", "surrogateescape")) > MAP_NAME_BYTES:  # whole characters, counted in bytes
            stem = stem[:-1]
        path = out_dir / f"{i + 1:04d}_{stem}.png"
        picture.save(path)
        written.append(str(path))
    return written
