"""Evaluation artefacts a person can open: scores, figures and one self-contained `report.html`.

A run directory holds what is needed to rebuild its report without the model: `scores.csv` (name,
label, score per test image), `evaluation.json` (metrics, threshold, title), `metrics.jsonl`
(per-epoch training records) and `figures/examples_*.png` (image grids, which need the model and so
are only drawn at evaluation time). `build_run_report` and `build_benchmark_report` redraw the rest.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
import shlex
import zipfile
import zlib
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ..data.cifar10 import NAME as CIFAR10, TITLE as CIFAR10_TITLE
from ..errors import DataError
from ..files import TEXT_ENCODING, json_text, readable_name, say_if_not_utf8, write_text_atomic
from ..provenance import environment
from ..run_directory import EVALUATION, METRICS_LOG, RunDirectory, SweepDirectory, read_history
from ..models.base import RESIDUAL_NAME, SALIENCY_NAME, SALIENCY_SIGMA
from .metrics import auroc_interval, threshold_note
from .plots import histogram_figure, image_grid_figure, pr_figure, roc_figure, training_curves_figure
from .tables import (FEW_TEST_IMAGES, PROTOCOL_NOTES, WARNINGS_NOTE, benchmark_rows, commit_text, commits_note,
                     one_pass_note, shows_paper_numbers, summarise, table_notes, warning_source)

INTERVAL_RESAMPLES = 1000  # the AUROC interval's bootstrap resamples, stated beside it

# The fields of a metrics.jsonl record the report shows; a record without them (edited, or cut) is left out.
SHOWN_EPOCH_FIELDS = frozenset({"epoch", "losses", "val_loss", "images_per_second"})

EXAMPLE_GROUPS = {
    "most_anomalous": "Most anomalous (highest scores)",
    "least_anomalous": "Least anomalous (lowest scores)",
    "false_positives": "False positives (normal, above the threshold; worst first)",
    "false_negatives": "False negatives (abnormal, at or below the threshold; worst first)",
}


def select_examples(labels: np.ndarray, scores: np.ndarray, threshold: float | None,
                    k: int = 8) -> dict[str, np.ndarray]:
    """Indices per example group (see EXAMPLE_GROUPS); mistakes need a threshold."""
    order = np.argsort(-scores, kind="stable")
    groups = {"most_anomalous": order[:k], "least_anomalous": order[::-1][:k]}
    if threshold is not None:
        flagged = scores > threshold
        groups["false_positives"] = order[(flagged & (labels == 0))[order]][:k]
        groups["false_negatives"] = order[::-1][(~flagged & (labels == 1))[order[::-1]]][:k]
    return {name: np.array(index, dtype=np.int64) for name, index in groups.items()}  # dense copies


def write_scores(path: Path, names: Sequence[str], labels: np.ndarray, scores: np.ndarray,
                 threshold: float | None = None) -> None:
    """name, label (the truth: 0 normal, 1 abnormal), score per image; with a threshold also `flagged` (1 where
    the score is above it; `predict`'s CSV calls that column `label`, having no truth), so a spreadsheet user can
    count the mistakes without recomputing them."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    flags = [] if threshold is None else [["flagged"], *([int(s > threshold)] for s in scores)]
    writer.writerow(["name", "label", "score", *(flags[0] if flags else [])])
    writer.writerows([n, int(y), f"{s:.9g}", *(flags[i + 1] if flags else [])]
                     for i, (n, y, s) in enumerate(zip(names, labels, scores, strict=True)))
    write_text_atomic(path, buffer.getvalue())
    say_if_not_utf8(names, path)


def read_scores(path: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    """The names, labels (0 normal, 1 abnormal) and finite scores of a scores file; anything else, a file cut
    short or edited, is a DataError naming the file and the first bad row."""
    if not path.is_file():
        raise DataError(f"{path} is missing: the test's scores are needed to draw the report (rerun the test)")
    with path.open(newline="", **TEXT_ENCODING) as fh:
        rows = list(csv.DictReader(fh))
    names, labels, scores = [], [], []
    for line, row in enumerate(rows, start=2):
        try:
            label, score = int(row["label"]), float(row["score"])
            if label not in (0, 1) or not math.isfinite(score) or row["name"] is None:
                raise ValueError(f"label {row['label']}, score {row['score']}")
        except (KeyError, ValueError, TypeError) as err:
            raise DataError(f"{path} is not a scores file written by skipganomaly (line {line}: {err})") from None
        names.append(row["name"])
        labels.append(label)
        scores.append(score)
    return names, np.array(labels, dtype=np.int64), np.array(scores, dtype=np.float64)


def _check_scores(path: Path, labels: np.ndarray, scores: np.ndarray, metrics: Mapping[str, Any],
                  threshold: float | None) -> None:
    """The scores file must hold the scores the saved metrics were computed on: a file cut short or edited would
    otherwise draw curves that contradict the metrics table above them. Counts, AUROC and the number flagged are
    recomputed (the file's 9 significant digits may tie two scores, moving the AUROC by half a pair, or put a score
    that equals the threshold on its other side)."""
    expected = (metrics.get("n_normal"), metrics.get("n_abnormal"))
    n_normal, n_abnormal = int(np.sum(labels == 0)), int(np.sum(labels == 1))
    if None not in expected and tuple(expected) != (n_normal, n_abnormal):
        raise DataError(f"{path} holds {n_normal} normal and {n_abnormal} abnormal scores, but the metrics were "
                        f"computed on {expected[0]} and {expected[1]}: it was cut short or edited; rerun the test")
    saved = metrics.get("auroc")
    if isinstance(saved, (int, float)) and math.isfinite(saved) and n_normal and n_abnormal:
        from sklearn.metrics import roc_auc_score

        found = float(roc_auc_score(labels, scores))
        if abs(found - saved) > 1.0 / (n_normal * n_abnormal) + 1e-9:
            raise DataError(f"{path}'s scores give AUROC {found:.6f}, but the saved metrics say {saved:.6f}: the file "
                            "was edited; rerun the test")
    flagged = metrics.get("n_flagged")
    if threshold is not None and isinstance(flagged, int):
        found_flags = int(np.sum(scores > threshold))
        at_threshold = int(np.sum(np.isclose(scores, threshold, rtol=1e-8, atol=0.0)))
        if abs(found_flags - flagged) > at_threshold:
            raise DataError(f"{path} has {found_flags} scores above the threshold {threshold:.9g}, but the saved "
                            f"metrics flagged {flagged}: the file was edited; rerun the test")


def write_evaluation(
    run_dir: Path,
    title: str,
    images: Any,
    names: Sequence[str],
    labels: np.ndarray,
    scores: np.ndarray,
    metrics: Mapping[str, Any],
    threshold: float | None,
    reconstruct: Callable[[Any], np.ndarray],
    anomaly_maps: Callable[[Any], np.ndarray],
    example_names: tuple[str | None, str] = ("reconstruction", RESIDUAL_NAME),
    k: int = 8,
    per_folder: Mapping[str, Mapping[str, float]] | None = None,
    calibration: Mapping[str, Any] | None = None,
    warnings: Sequence[str] | None = None,
    settings: Mapping[str, Any] | None = None,
    model: Mapping[str, Any] | None = None,
) -> Path:
    """Write scores, evaluation.json, the example grids and the report; return the report's path.

    `images` are uint8 [N, C, H, W] at the model's size; `reconstruct` and `anomaly_maps` are the
    detector's methods (called on the few selected images only), `example_names` what they show
    (`Detector.example_names`: no output row where the first is None); `per_folder`: `metrics_per_folder`'s;
    `calibration`: what the threshold rests on (`threshold_note`); `warnings`: what the command warned about
    (`errors.warnings_said`; None: not collected, so the report says nothing either way); `settings`: the
    detector's (`DetectorSettings.as_dict()`, with the options in effect under `IN_EFFECT`), shown where no
    config.yaml of a training run lies beside; `model`: what a `test` of a checkpoint says of the detector it scored
    (its file, training images, who trained it).
    """
    run = RunDirectory(Path(run_dir))
    figures = run.figures
    write_scores(run.scores, names, labels, scores, threshold)
    evaluation = {"title": title, "metrics": dict(metrics), "threshold": threshold,
                  **({"per_folder": dict(per_folder)} if per_folder else {}),
                  **({"calibration": dict(calibration)} if calibration else {}),
                  **({"warnings": list(warnings)} if warnings is not None else {}),
                  **({"settings": dict(settings)} if settings else {}),
                  **({"model": dict(model)} if model else {}),
                  "examples": {"output": example_names[0], "map": example_names[1]},
                  "environment": environment()}
    write_text_atomic(run.evaluation, json_text(evaluation, indent=2) + "\n")
    groups = {}
    for group, index in select_examples(labels, scores, threshold, k).items():
        subset = images[index]
        shown = subset.permute(0, 2, 3, 1).numpy() / 255.0 if len(index) else np.zeros((0, 1, 1, 1))
        recon = None if example_names[0] is None else reconstruct(subset) if len(index) else shown
        maps = anomaly_maps(subset) if len(index) else shown[..., 0]
        groups[group] = (index, shown, recon, maps)
    # one colour scale for every grid, so the least anomalous images' maps look as calm as they are
    top = max((float(maps.max()) for *_, maps in groups.values() if maps.size), default=0.0) or 1.0
    for group, (index, shown, recon, maps) in groups.items():
        captions = [f"{'abn' if labels[i] else 'norm'} {scores[i]:.3g}\n{_in_folder(names[i])}{_short(names[i])}"
                    for i in index]
        image_grid_figure(shown, recon, maps, captions, figures / f"examples_{group}.png", EXAMPLE_GROUPS[group],
                          vmax=top, output_name=example_names[0] or "", map_name=example_names[1])
    return build_run_report(run_dir)


def _in_folder(name: str) -> str:
    """The folder line of a caption (MVTec AD's defect type: the same file name recurs in each), if any."""
    folder = Path(name).parent.name
    return f"{_short(folder)}/\n" if folder else ""


def _short(name: str, width: int = 18) -> str:
    """A file's name for a caption: its start and its end (where camera names put the frame number or
    time), the middle cut out; bytes that are not UTF-8 shown as U+FFFD."""
    base = readable_name(Path(name).name)
    if len(base) <= width:
        return base
    tail = (width - 1) // 2 + 1
    return base[:width - 1 - tail] + "…" + base[-tail:]


def build_run_report(run_dir: Path) -> Path:
    """(Re)draw a run's curves from its saved scores and records, and write report.html."""
    run_dir = Path(run_dir)
    run = RunDirectory(run_dir)
    figures = run.figures
    sections: list[str] = []
    evaluation = _read_json(run.evaluation)
    if evaluation is not None and not isinstance(evaluation, dict):
        raise DataError(f"{run.evaluation} is not an evaluation written by skipganomaly (a JSON object)")
    history = [r for r in read_history(run.metrics_log) if isinstance(r, dict) and SHOWN_EPOCH_FIELDS <= r.keys()]
    config: dict[str, Any] = {}
    made_by: dict[str, Any] = {}  # the command, code version and machine behind the files
    if run.config.exists():
        settings, fields_ = run.read_config()
        made_by = fields_.pop("environment", None) or {}
        in_effect = fields_.pop(IN_EFFECT, None)
        config = {**fields_, **_flat_settings(settings, in_effect)}
    elif isinstance(evaluation, dict) and isinstance(evaluation.get("settings"), dict):  # a `test` of a checkpoint
        settings = dict(evaluation["settings"])
        config = _flat_settings(settings, settings.pop(IN_EFFECT, None))
    if evaluation is None and not history:
        raise DataError(f"{run_dir} holds neither {EVALUATION} nor {METRICS_LOG}: nothing to report "
                        "(is it a run directory of `train` or `test`?)")
    title = (evaluation or {}).get("title") or f"training run {run_dir.name}"
    finished = evaluation is not None or run.metrics.exists() or not run.config.exists()
    if not finished:
        sections.append(f"<p><b>Unfinished run: {len(history)} of {config.get('epochs', '?')} epochs trained, no "
                        f"threshold and no test yet. <code>skipganomaly train --resume "
                        f"{html.escape(shlex.quote(str(run_dir)))}</code> continues it.</b></p>")
    result = evaluation if evaluation is not None else _read_json(run.metrics)
    said = result.get("warnings") if finished and isinstance(result, dict) else None
    if said:
        sections.append("<h2>Warnings while this ran</h2><p>What the command warned about; each can change what the "
                        "numbers below mean.</p><ul>" + "".join(f"<li>{html.escape(str(w))}</li>" for w in said)
                        + "</ul>")
    if evaluation is not None:
        names, labels, scores = read_scores(run.scores)
        threshold = evaluation.get("threshold")
        metrics = evaluation.get("metrics", {})
        _check_scores(run.scores, labels, scores, metrics, threshold)
        beside = {run.scores: "each test image's label and score (and flag at the threshold)",
                  run.evaluation: "these metrics as JSON",
                  run.calibration: "the held-out training images behind the threshold, with their scores"}
        sections.append("<p>Beside this page: " + "; ".join(f"<code>{path.name}</code>, {what}"
                                                          for path, what in beside.items() if path.exists()) + ".</p>")
        interval = _interval_rows(labels, scores)
        rows = [[k, "undefined" if v is None else v] for k, v in metrics.items()]  # null in JSON: undefined here
        sections.append("<h2>Metrics</h2>" + html_table(["metric", "value"], rows + interval)
                        + (f"<p>The interval resamples the normal and the abnormal test images separately "
                           f"({INTERVAL_RESAMPLES:,} times, seed 0): how far the AUROC could move on another test set "
                           "of the same sizes (a perfect separation resamples to a width of 0).</p>"
                           if interval else ""))
        calibration = evaluation.get("calibration")
        if calibration and threshold is not None:
            sections.append(f"<p>{html.escape(threshold_note(threshold, calibration))}</p>")
        per_folder = evaluation.get("per_folder") or {}
        if per_folder:
            sections.append("<h2>Per folder</h2><p>Each defect folder's images against all normal ones (AUROC), and "
                            "the share of each folder flagged at the threshold: the normal folder's is the false-alarm "
                            "rate, a defect folder's its recall.</p>"
                            + html_table(["folder", "label", "images", "flagged", "auroc"],
                                         [[readable_name(name) + "/", "abnormal" if row["label"] else "normal",
                                           row["n"], row["flagged"], row.get("auroc", "")]
                                          for name, row in per_folder.items()]))
        curves = {"test": (labels, scores)}
        figs = [roc_figure(curves, figures / "roc.png", threshold=threshold), pr_figure(curves, figures / "pr.png", threshold=threshold),
                histogram_figure(labels, scores, threshold, figures / "histogram.png")]
        sections.append("<h2>Curves and score distributions</h2>" + "".join(_img(f) for f in figs))
        grids = [figures / f"examples_{g}.png" for g in EXAMPLE_GROUPS if (figures / f"examples_{g}.png").exists()]
        if grids:
            sections.append(_examples_text(evaluation.get("examples")) + "".join(_img(g) for g in grids))
    resets = any(r.get("d_resets") for r in history)  # a column only where a discriminator was re-initialised
    if history:
        sections.append("<h2>Training</h2>" + _img(training_curves_figure(history, figures / "training.png"))
                        + html_table(["epoch", "val loss", "images/s", *(["D resets"] if resets else []),
                                      *sorted(history[0]["losses"])],
                                     [[r["epoch"], r["val_loss"], r["images_per_second"],
                                       *([r["d_resets"]] if resets else []),
                                       *(r["losses"][k] for k in sorted(history[0]["losses"]))] for r in history]))
    model = (evaluation or {}).get("model")
    if isinstance(model, dict) and model:
        sections.append("<h2>The detector evaluated</h2>" + html_table(["", "value"], [[k, v] for k, v in model.items()]))
    if config:
        sections.append("<h2>Settings</h2>" + html_table(["setting", "value"], [[k, v] for k, v in config.items()]))
    made_by = (evaluation or {}).get("environment") or made_by  # a test's own call, else the training's
    if made_by:
        sections.append("<h2>Made by</h2>" + html_table(["", "value"], [[k, v] for k, v in made_by.items()]))
    return write_page(run.report, title, sections)


def _test_sizes(cells: Sequence[Mapping[str, Any]], protocol: str, classes: Sequence[str]) -> str:
    """How many test images each column's AUROCs rest on (normal / abnormal, as the cells recorded them; a
    column's cells share one split per seed), so a reader can judge how far a number could move."""
    sizes: dict[str, set[tuple[int, int]]] = {}
    for cell in cells:
        if cell.get("protocol") == protocol and cell.get("test_images") is not None \
                and cell.get("test_abnormal") is not None:
            abnormal = int(cell["test_abnormal"])
            sizes.setdefault(str(cell["class"]), set()).add((int(cell["test_images"]) - abnormal, abnormal))
    shown = [f"{html.escape(c)} {' or '.join(f'{n}/{a}' for n, a in sorted(sizes[c]))}" for c in classes if c in sizes]
    return (f"<p>Test images behind each column (normal/abnormal): {'; '.join(shown)}. Each cell's F1, precision, "
            "recall and false-alarm rate at its threshold are in results.csv.</p>" if shown else "")


def _examples_text(names: Any) -> str:
    """The example grids' heading and what their rows show (`write_evaluation`'s `example_names`; an evaluation
    saved before they were kept gets the general wording)."""
    output, amap = (names.get("output"), names.get("map")) if isinstance(names, dict) else ("", "")
    if amap == SALIENCY_NAME:
        what = ("its anomaly map: where the score is sensitive (the absolute gradient of the score with respect to the "
                f"input, averaged over channels and smoothed by a Gaussian of {SALIENCY_SIGMA:g} px), which shows what "
                "the score looks at, not necessarily a defect, and is not on the score's scale")
    elif amap:
        what = f"its anomaly map, {html.escape(amap)} (a residual: where the model's output differs from the input)"
    else:
        what = ("its anomaly map (the residual of a reconstruction, otherwise the score's smoothed gradient; a model "
                "that rebuilds nothing shows the input again as its output)")
    shown = (f"what the model gives, <i>{html.escape(output)}</i>, and " if output else
             "" if amap else "what the model rebuilt, and ")
    return ("<h2>Examples: " + ("input, model output, anomaly map" if output or not amap else "input, anomaly map")
            + f"</h2><p>Each column is one image: its label and score above; below, {shown}{what}. One colour scale "
            "for every grid, shown beside each.</p>")


def _interval_rows(labels: np.ndarray, scores: np.ndarray) -> list[list[str]]:
    """The metrics table's AUROC-interval row: none without both labels; "not estimated" below FEW_TEST_IMAGES
    of either (no resampling done), else the bootstrap interval."""
    counts = {"normal": int(np.sum(labels == 0)), "abnormal": int(np.sum(labels == 1))}
    kind, fewest = min(counts.items(), key=lambda item: item[1])
    if fewest == 0:
        return []
    if fewest < FEW_TEST_IMAGES:
        value = f"not estimated: {fewest} {kind} test image{'s' if fewest != 1 else ''}, too few to resample"
    else:
        low, high = auroc_interval(scores, labels, resamples=INTERVAL_RESAMPLES, seed=0)
        value = f"{low:.4f} to {high:.4f}"
    return [["auroc, 95% bootstrap interval", value]]


IN_EFFECT = "model_options_in_effect"  # beside saved settings: every model option, defaults included


def _flat_settings(settings: Mapping[str, Any], in_effect: Any = None) -> dict[str, Any]:
    """A detector's settings as one table: its own and its training's, then each model option by name, those
    left at their defaults marked so (where `in_effect`, every option's value, was saved)."""
    given = settings.get("model_options") or {}
    defaults = {k: v for k, v in in_effect.items() if k not in given} if isinstance(in_effect, dict) else {}
    return {**{k: v for k, v in settings.items() if k != "model_options"},
            **{f"model option {k}": v for k, v in given.items()},
            **{f"model option {k} (default)": v for k, v in defaults.items()}}


def build_benchmark_report(bench_dir: Path) -> Path:
    """Per-protocol table (ours next to the paper's Table 1) and each model's ROC curves per class."""
    bench_dir = Path(bench_dir)
    folder = SweepDirectory(bench_dir)
    saved = _read_json(folder.results_json)
    if saved is None:
        raise DataError(f"{bench_dir} has no {folder.results_json.name}: not a benchmark output folder")
    cells, config = saved["cells"], saved["config"]
    summary = summarise(cells)
    env = saved.get("environment", {})
    sections = [f"<p>Command: <code>{html.escape(str(env.get('command', '?')))}</code>; git "
                f"{html.escape(commit_text(env))}; torch {html.escape(str(env.get('torch', '?')))}, "
                f"{env.get('threads', '?')} threads, {html.escape(str(env.get('cpu', '?')))}. "
                f"Epochs {config['epochs']}{one_pass_note(config['models'])}, batch {config['batch_size']}, "
                "train fraction "
                f"{config['train_fraction']}, test fraction {config['test_fraction']}, seeds "
                f"{', '.join(map(str, config['seeds']))}.</p>"
                "<p>Each cell: our AUROC"
                + (" (the paper's Table 1 in brackets)" if config.get("dataset", CIFAR10) == CIFAR10 else "") + ". "
                f"{html.escape(table_notes(summary))}</p>"]
    versions = commits_note(cells, env)
    if versions:
        sections.append(f"<p><b>{html.escape(versions)}</b></p>")
    missing = [f"{c['cell']} failed: {c['error']}" for c in saved.get("failed", [])] + \
        [f"{key} not run yet (the same command runs it)" for key in saved.get("unfinished", [])]
    if missing:
        sections.append(f"<p><b>Incomplete: {len(missing)} missing cell{'s' if len(missing) > 1 else ''} (- in the "
                        "tables); each mean is over the cells that finished.</b></p><ul>"
                        + "".join(f"<li><code>{html.escape(m)}</code></li>" for m in missing) + "</ul>")
    warned = [w for w in saved.get("warnings") or [] if isinstance(w, dict)]  # results.json of older versions: none
    if warned:
        sections.append(f"<p><b>Warnings</b> ({html.escape(WARNINGS_NOTE)}):</p><ul>"
                        + "".join(f"<li>{warning_source(w, lambda key: f'<code>{html.escape(key)}</code>')}: "
                                  f"{html.escape(str(w.get('warning')))}</li>" for w in warned) + "</ul>")
    figures = folder.figures
    dataset = config.get("dataset", CIFAR10)
    for protocol in config["protocols"]:
        header, rows = benchmark_rows(summary, config["models"], config["classes"], protocol,
                                      shows_paper_numbers(dataset, protocol))
        sections.append(f"<h2>Protocol: {html.escape(protocol)}</h2><p>{html.escape(PROTOCOL_NOTES[protocol])}</p>"
                        + html_table(header, rows) + _test_sizes(cells, protocol, config["classes"]))
        for model in config["models"]:
            curves, lacking = {}, []
            for cell in cells:
                if (cell["model"], cell["protocol"], cell["seed"]) != (model, protocol, config["seeds"][0]):
                    continue
                try:
                    with np.load(folder.cells / cell.get("scores_file", "-")) as data:
                        # under validate the curve is of the pseudo-anomaly scored while the class was removed
                        label = (f"{cell['class']} removed, {cell['pseudo_anomaly']} scored" if
                                 cell.get("pseudo_anomaly") else str(cell["class"]))
                        curves[label] = (data["labels"], data["scores"])
                except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error):  # missing, cut, not ours
                    lacking.append(str(cell["class"]))
            if curves:
                name = f"roc_{model.replace('+', 'p')}_{protocol}.png"
                sections.append(_img(roc_figure(curves, figures / name,
                                                f"{model}, {protocol} protocol, seed {config['seeds'][0]}")))
            if lacking or not curves:
                sections.append(f"<p>{html.escape(model)}: no readable saved test scores for "
                                f"{html.escape(', '.join(lacking)) if lacking else 'any class'}, so no ROC curve "
                                f"for {'them' if lacking else 'it'} (rerun those cells to draw them).</p>")
    title = str(saved.get("dataset_name", CIFAR10_TITLE if dataset == CIFAR10 else dataset))
    return write_page(folder.report, f"{title} leave-one-class-out benchmark", sections)


def build_report(directory: Path) -> Path:
    """Rebuild the report of a benchmark folder or of a train/test run directory."""
    directory = Path(directory)
    if directory.is_file():
        raise DataError(f"{directory} is a file; report takes the run or benchmark directory: skipganomaly report "
                        f"{shlex.quote(str(directory.parent))}")
    if not directory.is_dir():
        raise DataError(f"no such directory: {directory}")
    folder = SweepDirectory(directory)
    saved = _read_json(folder.results_json)
    if isinstance(saved, dict) and "cells" in saved:
        return build_benchmark_report(directory)
    runs = sorted(p.name for p in directory.iterdir() if RunDirectory(p).evaluation.is_file())
    if saved is not None and runs and not RunDirectory(directory).evaluation.exists():
        raise DataError(f"{directory} is a demo's output folder (one run per digit, each with its report): report "
                        f"takes one of them, e.g. skipganomaly report {shlex.quote(str(directory / runs[0]))}")
    return build_run_report(directory)


# --- HTML -----------------------------------------------------------------------------------------
def html_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    def cell(v: object) -> str:
        if isinstance(v, float):
            return "nan" if math.isnan(v) else f"{v:.6g}"  # 0.99996 is not shown as 1
        return html.escape(str(v))

    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _img(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<figure><img alt="{html.escape(path.stem)}" src="data:image/png;base64,{data}"></figure>'


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
figure { display: inline-block; margin: 0.5em; }
img { max-width: 100%; }
code { background: #f4f4f4; padding: 0 0.2em; }
"""

# Marks the page once every image has decoded, so a headless browser test can check what a reader sees.
_SELF_CHECK = """
window.addEventListener("load", function () {
  var shown = Array.prototype.filter.call(document.images, function (i) { return i.complete && i.naturalWidth > 0; });
  document.body.setAttribute("data-images-shown", String(shown.length));
});
"""


def write_page(path: Path, title: str, sections: Sequence[str]) -> Path:
    """One self-contained HTML file: inline style, images as data URIs, no network access."""
    page = (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>{''.join(sections)}"
            f"<script>{_SELF_CHECK}</script></body></html>\n")
    write_text_atomic(path, page)
    return path


def _read_json(path: Path) -> Any:
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise DataError(f"{path} is not valid JSON ({err})") from None
