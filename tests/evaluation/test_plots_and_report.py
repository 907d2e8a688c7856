"""Figures are written and show something; reports are self-contained and rebuild from saved scores."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from skipganomaly.errors import DataError
from skipganomaly.evaluation.metrics import evaluate_scores
from skipganomaly.evaluation.plots import (
    histogram_figure,
    image_grid_figure,
    overlay,
    pr_figure,
    roc_figure,
    save_overlays,
    training_curves_figure,
)
from skipganomaly.evaluation.report import (
    build_report,
    build_run_report,
    read_history,
    read_scores,
    select_examples,
    write_evaluation,
    write_scores,
)

RNG = np.random.default_rng(0)
LABELS = np.array([0] * 30 + [1] * 20)
SCORES = np.concatenate([RNG.normal(0, 1, 30), RNG.normal(1.5, 1, 20)])
METRICS = evaluate_scores(SCORES, LABELS, 0.7)  # what a test run at threshold 0.7 saves with these scores


def _is_picture(path: Path) -> None:
    """A readable PNG that is not one flat colour (an empty axes still draws a frame, so also check size)."""
    assert path.stat().st_size > 2000, path
    with Image.open(path) as img:
        pixels = np.asarray(img.convert("L"))
    assert pixels.std() > 5, path


def test_curve_and_histogram_figures(tmp_path: Path) -> None:
    curves = {"a": (LABELS, SCORES), "b": (LABELS, -SCORES)}
    for path in (roc_figure(curves, tmp_path / "roc.png"), pr_figure(curves, tmp_path / "pr.png"),
                 histogram_figure(LABELS, SCORES, 0.7, tmp_path / "hist.png")):
        _is_picture(path)


def test_figures_survive_one_class_and_non_finite_scores(tmp_path: Path) -> None:
    ones = np.ones(5, dtype=np.int64)
    _is_picture(roc_figure({"x": (ones, np.arange(5.0))}, tmp_path / "roc.png"))
    _is_picture(histogram_figure(LABELS, np.where(LABELS == 1, np.inf, SCORES), None, tmp_path / "h.png"))


def test_training_curves_figure(tmp_path: Path) -> None:
    history = [{"epoch": e, "losses": {"g_adv": 1.0 / e, "g_con": 0.3 / e, "d_loss": 0.5}, "val_loss": 0.2 / e}
               for e in (1, 2, 3)]
    _is_picture(training_curves_figure(history, tmp_path / "t.png"))


def test_overlay_is_the_input_where_the_map_is_zero() -> None:
    image = np.full((4, 4, 1), 0.5)
    amap = np.zeros((4, 4))
    amap[0, 0] = 1.0
    out = overlay(image, amap, alpha=0.5)
    assert out.shape == (4, 4, 3)
    black = overlay(image, np.zeros((4, 4)), alpha=0.5)  # inferno(0) is black: the input at half brightness
    np.testing.assert_allclose(black, 0.25, atol=0.01)
    assert out[0, 0].sum() > out[1, 1].sum()  # the hot pixel is brighter


def test_image_grid_and_overlay_files(tmp_path: Path) -> None:
    inputs = RNG.uniform(0, 1, (3, 32, 32, 3))
    maps = RNG.uniform(0, 1, (3, 32, 32))
    _is_picture(image_grid_figure(inputs, inputs[::-1], maps, ["a", "b", "c"], tmp_path / "g.png", "grid"))
    assert image_grid_figure(inputs[:0], inputs[:0], maps[:0], [], tmp_path / "e.png", "none").exists()
    images = torch.from_numpy((inputs * 255).astype(np.uint8)).permute(0, 3, 1, 2)
    paths = save_overlays(tmp_path / "maps", images, ["x/a.png", "y/a.png", "b.jpg"], maps)
    assert [Path(p).name for p in paths] == ["0001_a.png", "0002_a.png", "0003_b.png"]


def test_names_with_dollar_signs_are_drawn_as_they_are(tmp_path: Path) -> None:
    """`$` is legal in file and class names: it is drawn, not read as a formula (an unmatched one crashed the
    report); the log axis of the training curves keeps its mathtext powers."""
    inputs = RNG.uniform(0, 1, (2, 16, 16, 1))
    _is_picture(image_grid_figure(inputs, inputs, inputs[..., 0], ["x$\\q$.png", "cost $5 to $10.png"],
                                  tmp_path / "g.png", "grid of $"))
    _is_picture(roc_figure({"x$^^$": (LABELS, SCORES)}, tmp_path / "roc.png", title="a$b"))
    _is_picture(histogram_figure(LABELS, SCORES, 0.7, tmp_path / "h.png", title="$x"))
    history = [{"epoch": e, "losses": {"l$": 10.0 ** -e}, "val_loss": 0.2 / e} for e in (1, 2, 3)]
    _is_picture(training_curves_figure(history, tmp_path / "t.png"))


def test_a_model_that_rebuilds_nothing_gets_no_output_row_and_its_map_is_called_a_saliency(tmp_path: Path) -> None:
    """The grids and the text say what they show: no 'reconstruction' row for a model whose output is its input,
    and a saliency map is called one (it shows where the score looks, not a residual)."""
    from skipganomaly.models.base import SALIENCY_NAME

    calls = []
    page = write_evaluation(tmp_path / "run", "toy", torch.zeros((50, 1, 32, 32), dtype=torch.uint8),
                            [f"img{i}.png" for i in range(50)], LABELS, SCORES, METRICS, 0.7,
                            reconstruct=lambda x: calls.append(len(x)) or x.permute(0, 2, 3, 1).numpy() / 255.0,
                            anomaly_maps=lambda x: x.float().mean(1).numpy(),
                            example_names=(None, SALIENCY_NAME)).read_text()
    assert not calls and "Examples: input, anomaly map" in page and "where the score is sensitive" in page
    assert json.loads((tmp_path / "run" / "evaluation.json").read_text())["examples"] == {"output": None,
                                                                                        "map": SALIENCY_NAME}
    with Image.open(tmp_path / "run" / "figures" / "examples_most_anomalous.png") as two_rows:
        height = two_rows.height
    page = _evaluation(tmp_path / "three").read_text()
    with Image.open(tmp_path / "three" / "figures" / "examples_most_anomalous.png") as three_rows:
        assert three_rows.height > 1.2 * height
    assert "Examples: input, model output, anomaly map" in page


def test_a_character_the_font_lacks_is_said_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A CJK class name is drawn as boxes by the default font: one warning for the report, not one per glyph and
    figure, nor none at all."""
    import logging

    with caplog.at_level(logging.WARNING, logger="skipganomaly"):
        roc_figure({"龘 class": (LABELS, SCORES)}, tmp_path / "a.png")
        roc_figure({"龘 class": (LABELS, SCORES)}, tmp_path / "b.png")
    assert caplog.text.count("the figures' font has no 龘, drawn as boxes in a.png") == 1
    assert "b.png" not in caplog.text


def test_select_examples_picks_the_right_images() -> None:
    labels = np.array([0, 0, 0, 1, 1, 1])
    scores = np.array([0.1, 0.9, 0.5, 0.2, 0.8, 0.4])
    groups = select_examples(labels, scores, threshold=0.45, k=2)
    assert list(groups["most_anomalous"]) == [1, 4]
    assert list(groups["least_anomalous"]) == [0, 3]
    assert list(groups["false_positives"]) == [1, 2]  # normals above 0.45, highest first
    assert list(groups["false_negatives"]) == [3, 5]  # abnormals at or below 0.45, lowest first
    assert "false_positives" not in select_examples(labels, scores, threshold=None)


def test_scores_file_round_trip_with_awkward_names(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Commas, quotes and non-ASCII names round-trip; a name that is not UTF-8 keeps its bytes, with a warning that
    UTF-8 readers refuse the file."""
    names = ["a,b.png", 'q"uote.png', "ünïcode.png"]
    write_scores(tmp_path / "s.csv", names, np.array([0, 1, 0]), np.array([0.5, 1e-9, 3.0]))
    got_names, labels, scores = read_scores(tmp_path / "s.csv")
    assert got_names == names and list(labels) == [0, 1, 0]
    np.testing.assert_allclose(scores, [0.5, 1e-9, 3.0])
    write_scores(tmp_path / "t.csv", names, np.array([0, 1, 0]), np.array([0.5, 1e-9, 3.0]), threshold=0.5)
    assert [row.split(",")[-1] for row in (tmp_path / "t.csv").read_text().splitlines()[1:]] == ["0", "0", "1"]
    assert read_scores(tmp_path / "t.csv")[0] == names  # the flag column is extra to the reader
    assert "not valid UTF-8" not in caplog.text
    odd = [*names[:2], b"bad\xffname.png".decode("utf-8", "surrogateescape")]
    write_scores(tmp_path / "u.csv", odd, np.array([0, 1, 0]), np.array([0.5, 1e-9, 3.0]))
    assert read_scores(tmp_path / "u.csv")[0] == odd
    assert f"1 file names are not valid UTF-8; {tmp_path / 'u.csv'} keeps their bytes" in caplog.text


def test_history_ignores_a_half_written_last_line(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text(json.dumps({"epoch": 1}) + "\n" + '{"epoch": 2, "los')
    assert read_history(path) == [{"epoch": 1}]


def _evaluation(run: Path) -> Path:
    images = torch.from_numpy((RNG.uniform(0, 255, (50, 3, 32, 32))).astype(np.uint8))
    return write_evaluation(
        run, "toy", images, [f"img{i}.png" for i in range(50)], LABELS, SCORES, METRICS, 0.7,
        reconstruct=lambda x: x.permute(0, 2, 3, 1).numpy() / 255.0,
        anomaly_maps=lambda x: x.float().mean(1).numpy() / 255.0,
    )


def test_run_report_is_self_contained_and_rebuilds(tmp_path: Path) -> None:
    run = tmp_path / "run"
    report = _evaluation(run)
    page = report.read_text()
    assert "<table>" in page and "auroc" in page
    assert "Beside this page: <code>scores.csv</code>, each test image's label and score (and flag" in page
    assert page.count("data:image/png;base64,") == 7
    assert "http://" not in page and "https://" not in page  # nothing to fetch
    (run / "figures" / "histogram.png").unlink()
    report.unlink()
    assert build_report(run) == report and report.exists()
    assert (run / "figures" / "histogram.png").exists()


def test_report_of_a_folder_without_results_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="nothing to report"):
        build_run_report(tmp_path)
    with pytest.raises(DataError, match="no such directory"):
        build_report(tmp_path / "missing")


def _benchmark_folder(root: Path) -> Path:
    """A benchmark output folder as `skipganomaly benchmark` writes it: results.json and cells with scores."""
    cells = []
    (root / "cells").mkdir(parents=True)
    for protocol in ("honest", "paper"):
        for cls, shift in (("ship", 1.5), ("bird", 0.2)):
            name = f"skipganomalypp__{cls}__seed0__{protocol}.scores.npz"
            scores = np.concatenate([RNG.normal(0, 1, 30), RNG.normal(shift, 1, 20)])
            np.savez_compressed(root / "cells" / name, labels=LABELS.astype(np.int8), scores=scores.astype(np.float32))
            cells.append({"model": "skipganomaly++", "class": cls, "seed": 0, "protocol": protocol,
                          "auroc": 0.8 if cls == "ship" else 0.55, "scores_file": name, "test_images": 50,
                          "test_abnormal": 20})
    config = {"models": ["skipganomaly++"], "classes": ["ship", "bird"], "seeds": [0], "protocols": ["honest", "paper"],
              "epochs": 1, "batch_size": 64, "train_fraction": 0.05, "test_fraction": 0.1}
    (root / "results.json").write_text(json.dumps({"config": config, "environment": {"command": "skipganomaly x"},
                                                   "cells": cells}))
    return root


def test_benchmark_report_has_the_paper_table_and_roc_curves(tmp_path: Path) -> None:
    report = build_report(_benchmark_folder(tmp_path / "bench"))
    page = report.read_text()
    assert "0.800 (0.998)" in page and "0.550 (0.819)" in page  # ours (paper's Table 1): ship, bird
    assert page.count("Test images behind each column (normal/abnormal): ship 30/20; bird 30/20.") == 2
    assert page.count("data:image/png;base64,") == 2  # one ROC figure per protocol, a curve per class
    for protocol in ("honest", "paper"):
        _is_picture(tmp_path / "bench" / "figures" / f"roc_skipganomalypp_{protocol}.png")


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.skipif(_chromium() is None, reason="no chromium on this machine (.ci/run installs Debian's chromium; "
                                                "apt-get install chromium to run this test)")
@pytest.mark.parametrize("kind", ["run", "benchmark"])
def test_report_renders_in_headless_chromium(kind: str, tmp_path: Path) -> None:
    """Load a report in a real browser: no console errors, the table is there, images decoded."""
    if kind == "run":
        report, images, text = _evaluation(tmp_path / "run"), 7, "auroc"
    else:
        report, images, text = build_report(_benchmark_folder(tmp_path / "bench")), 2, "(0.998)"
    result = subprocess.run(
        [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-extensions", "--no-first-run", "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'p'}",
         "--enable-logging=stderr", "--v=0", "--virtual-time-budget=5000", "--dump-dom", report.as_uri()],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    dom = result.stdout
    console = [line for line in result.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    assert not console, console
    assert "<table>" in dom and text in dom
    assert f'data-images-shown="{images}"' in dom, dom[-500:]


@pytest.mark.parametrize("resets", [0, 2])
def test_the_training_table_has_a_d_resets_column_only_where_d_was_reset(tmp_path: Path, resets: int) -> None:
    records = [{"epoch": e, "val_loss": 1.0 / e, "images_per_second": 10.0, "d_resets": resets if e == 2 else 0,
                "losses": {"ce": 1.0}} for e in (1, 2)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    page = build_run_report(tmp_path).read_text()
    assert ("D resets" in page) == bool(resets)


def test_a_damaged_scores_or_evaluation_file_is_one_data_error(tmp_path: Path) -> None:
    """A scores file cut short, with a missing column, a non-finite score or a label other than 0/1, and an
    evaluation.json that is not an object: each a DataError naming the file, never a traceback or a report whose
    curves contradict its metrics table."""
    run = tmp_path / "run"
    write_evaluation(run, "toy", torch.zeros((50, 3, 32, 32), dtype=torch.uint8), [f"img{i}.png" for i in range(50)],
                     LABELS, SCORES, METRICS, 0.7,
                     reconstruct=lambda x: x.permute(0, 2, 3, 1).numpy() / 255.0,
                     anomaly_maps=lambda x: x.float().mean(1).numpy())
    scores = run / "scores.csv"
    whole = scores.read_text().splitlines()
    damaged = {"cut short": whole[:40], "no score column": [",".join(line.split(",")[:2] + line.split(",")[3:]) for line in whole],
               "nan score": [*whole[:5], "x.png,0,nan", *whole[6:]], "label 2": [*whole[:5], "x.png,2,0.5", *whole[6:]],
               "cut in a row": [*whole[:5], "x.png", *whole[6:]],
               "a score edited": [*whole[:3], "img2.png,0,99", *whole[4:]],  # AUROC and the number flagged change
               "a score moved past the threshold": [*whole[:1], f"img0.png,0,{SCORES[0] + 5:.9g}", *whole[2:]]}
    for what, lines in damaged.items():
        scores.write_text("\n".join(lines) + "\n")
        with pytest.raises(DataError, match="scores.csv") as raised:
            build_report(run)
        assert "\n" not in str(raised.value), what
    scores.write_text("\n".join(whole) + "\n")
    build_report(run)
    (run / "evaluation.json").write_text("[1, 2]")
    with pytest.raises(DataError, match="not an evaluation"):
        build_report(run)


def test_the_report_says_where_the_threshold_came_from_and_what_was_warned(tmp_path: Path) -> None:
    """A reader of the report alone learns what the threshold rests on and sees the command's warnings."""
    run = tmp_path / "run"
    page = write_evaluation(run, "toy", torch.zeros((50, 3, 32, 32), dtype=torch.uint8),
                            [f"scratch/img{i}.png" for i in range(50)], LABELS, SCORES, METRICS, 0.7,
                            reconstruct=lambda x: x.permute(0, 2, 3, 1).numpy() / 255.0,
                            anomaly_maps=lambda x: x.float().mean(1).numpy(),
                            calibration={"n_val_images": 4, "val_fraction": 0.05, "contamination": 0.05},
                            warnings=["3 of the 50 test images are also training images"]).read_text()
    assert "from the scores of 4 training normals held out" in page and "1/5 (20.0%)" in page
    assert "Warnings while this ran" in page and "3 of the 50 test images are also training images" in page
    assert "Warnings while" not in _evaluation(tmp_path / "quiet").read_text()
    undefined = write_evaluation(tmp_path / "one", "toy", torch.zeros((2, 3, 32, 32), dtype=torch.uint8), ["a", "b"],
                                 np.array([0, 0]), np.array([0.1, 0.2]), evaluate_scores([0.1, 0.2], [0, 0], 0.7), 0.7,
                                 reconstruct=lambda x: x.permute(0, 2, 3, 1).numpy() / 255.0,
                                 anomaly_maps=lambda x: x.float().mean(1).numpy()).read_text()
    assert "<td>auroc</td><td>undefined</td>" in undefined and "<td>recall</td><td>undefined</td>" in undefined
    small = write_evaluation(tmp_path / "small", "toy", torch.zeros((7, 3, 32, 32), dtype=torch.uint8), list("abcdefg"),
                             np.array([0, 0, 0, 0, 0, 1, 1]), np.arange(7.0), {"auroc": 1.0}, 4.5,
                             reconstruct=lambda x: x.permute(0, 2, 3, 1).numpy() / 255.0,
                             anomaly_maps=lambda x: x.float().mean(1).numpy()).read_text()
    assert "not estimated: 2 abnormal test images, too few to resample" in small  # not "1.0000 to 1.0000"


def test_the_report_of_an_unfinished_run_says_how_to_resume_it(tmp_path: Path) -> None:
    from skipganomaly.run_directory import RunDirectory

    run = RunDirectory(tmp_path / "run")
    run.root.mkdir()
    run.write_config({"model": "pca", "epochs": 20}, command="train")
    record = {"epoch": 1, "losses": {"g": 1.0}, "val_loss": 0.5, "d_resets": 0, "seconds": 1.0, "images_per_second": 9}
    run.metrics_log.write_text(json.dumps(record) + "\n" + json.dumps({"epoch": 2}) + "\n")  # an edited record: left out
    page = build_report(run.root).read_text()
    assert "Unfinished run: 1 of 20 epochs trained" in page and "skipganomaly train --resume" in page
    run.write_metrics({"threshold": 1.0})
    assert "Unfinished" not in build_report(run.root).read_text()
    run.metrics.write_text("[1]")  # not ours: no warnings section, no traceback
    assert "Warnings while" not in build_report(run.root).read_text()


def test_report_on_a_demo_folder_or_a_benchmark_without_scores_says_what_it_is(tmp_path: Path) -> None:
    demo = tmp_path / "demo"
    _evaluation(demo / "digit3")
    (demo / "results.json").write_text(json.dumps({"digit 3": {"auroc": 0.9}}))
    with pytest.raises(DataError, match="a demo's output folder .* skipganomaly report .*digit3"):
        build_report(demo)
    bench = _benchmark_folder(tmp_path / "bench")
    next((bench / "cells").glob("*ship*honest*")).write_bytes(b"cut")
    next((bench / "cells").glob("*bird*honest*")).write_bytes(b"")  # a full disk's empty file
    page = build_report(bench).read_text()
    assert "no readable saved test scores for ship, bird" in page
    shutil.rmtree(bench / "cells")
    assert "no readable saved test scores for ship, bird, so no ROC curve" in build_report(bench).read_text()


def test_the_roc_figure_marks_the_operating_point_at_the_threshold(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The reader sees where the detector works on its curves: the false-alarm rate, precision and recall at the
    threshold."""
    from skipganomaly.evaluation import plots

    drawn = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: drawn.append(fig) or path)
    labels, scores = np.array([0, 0, 0, 0, 1, 1]), np.array([0.1, 0.2, 0.3, 0.9, 0.5, 0.8])
    plots.roc_figure({"test": (labels, scores)}, tmp_path / "roc.png", threshold=0.4)
    points = [line for line in drawn[0].axes[0].get_lines() if line.get_marker() == "o"]
    assert len(points) == 1 and (points[0].get_xdata()[0], points[0].get_ydata()[0]) == (0.25, 1.0)
    assert "25.0% false alarms, 100.0% recall" in points[0].get_label()
    plots.pr_figure({"test": (labels, scores)}, tmp_path / "pr.png", threshold=0.4)  # and on the PR curve
    points = [line for line in drawn[1].axes[0].get_lines() if line.get_marker() == "o"]
    assert len(points) == 1 and (points[0].get_xdata()[0], points[0].get_ydata()[0]) == (1.0, 2 / 3)
    assert "66.7% precision, 100.0% recall" in points[0].get_label()


def test_every_example_grid_of_a_report_shares_one_colour_scale(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The least anomalous images' maps are drawn on the most anomalous ones' scale, so they look as calm as they are."""
    from skipganomaly.evaluation import report

    scales = []
    monkeypatch.setattr(report, "image_grid_figure", lambda *a, vmax=None, **k: scales.append(vmax) or a[4])
    images = torch.arange(50, dtype=torch.uint8)[:, None, None, None].expand(50, 3, 32, 32).contiguous()
    write_evaluation(tmp_path / "run", "toy", images, [f"i{i}.png" for i in range(50)], LABELS, np.arange(50.0),
                     evaluate_scores(np.arange(50.0), LABELS, 25.0), 25.0, reconstruct=lambda x: x.permute(0, 2, 3, 1).numpy(),
                     anomaly_maps=lambda x: x.float().mean(1).numpy())  # image i's map is i everywhere
    assert scales == [49.0] * 4  # the most anomalous image's, also for the grid of the least anomalous (0..7)


def test_a_file_written_in_place_is_the_old_one_or_the_whole_new_one_never_a_part(tmp_path: Path) -> None:
    """A write that fails half-way (a full disk, an interrupt) leaves the earlier file as it was and no temporary
    file beside it."""
    from skipganomaly.files import replacing, write_text_atomic

    path = tmp_path / "results.json"
    write_text_atomic(path, "old")
    with pytest.raises(OSError):
        with replacing(path) as tmp:
            tmp.write_text("half of the ne")
            raise OSError(28, "No space left on device")
    assert path.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]
    write_text_atomic(path, "new")
    assert path.read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]
    (tmp_path / "taken").mkdir()
    for target in (tmp_path / "taken", path / "under_a_file.json"):  # the error names the file asked for
        with pytest.raises(OSError) as raised:
            write_text_atomic(target, "x")
        assert raised.value.filename == str(target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json", "taken"] and not any((tmp_path / "taken").iterdir())


def test_a_validate_curve_is_named_by_the_class_it_scored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Under validate the column's class is removed and the next one scored: the ROC legend names both."""
    import skipganomaly.evaluation.report as report_module

    root = _benchmark_folder(tmp_path / "bench")
    saved = json.loads((root / "results.json").read_text())
    for cell in saved["cells"]:
        if cell["protocol"] == "paper":
            cell.update(protocol="validate", pseudo_anomaly="bird" if cell["class"] == "ship" else "cat")
    saved["config"]["protocols"] = ["honest", "validate"]
    (root / "results.json").write_text(json.dumps(saved))
    drawn: dict[str, list[str]] = {}
    real = report_module.roc_figure
    monkeypatch.setattr(report_module, "roc_figure", lambda curves, path, *a, **k: (
        drawn.setdefault(path.name, list(curves)), real(curves, path, *a, **k))[1])
    build_report(root)
    assert drawn["roc_skipganomalypp_validate.png"] == ["ship removed, bird scored", "bird removed, cat scored"]
    assert drawn["roc_skipganomalypp_honest.png"] == ["ship", "bird"]


def test_report_tables_keep_six_significant_digits() -> None:
    """A near-perfect AUROC is not shown as a perfect 1, nor a threshold of 3.19958 as 3.2."""
    from skipganomaly.evaluation.report import html_table

    table = html_table(["metric", "value"], [["auroc", 0.99996], ["threshold", 3.1995812], ["n", 7]])
    assert "<td>0.99996</td>" in table and "<td>3.19958</td>" in table and "<td>7</td>" in table
