"""The command line end to end on a tiny generated folder, and its one-line errors."""

from __future__ import annotations

import csv
import json
import logging
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from skipganomaly.cli import main
from skipganomaly.detector import DEFAULT_MODEL
from skipganomaly.errors import ConfigError
from skipganomaly.evaluation.metrics import evaluate_scores
from skipganomaly.models import list_models
from skipganomaly.workflows import predict_files
from tests.conftest import fast

# The paper's model, small: its run directory holds the most (a loss per phase, reconstructions).
SMALL = ["--model", "skipganomaly++", "--model-arg", "widths=[8,8,16,16,32]", "--no-progress", "--device", "cpu"]
# The default model (no --model), small.
SMALL_DEFAULT = ["--model-arg", "widths=[8,16,32]", "--no-progress", "--device", "cpu"]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from tests.conftest import noise_images, smooth_images, write_images

    root = tmp_path_factory.mktemp("data")
    write_images(root / "train", smooth_images(40, seed=0))
    write_images(root / "test" / "normal", smooth_images(8, seed=5))
    write_images(root / "test" / "abnormal", noise_images(8))
    run = root / "run"
    code = main(["train", "--data", str(root), "--test", str(root / "test"), "--out", str(run),
                 "--epochs", "2", "--batch-size", "8", "--lr", "1e-3", *SMALL])
    assert code == 0
    return root, run


def test_a_run_names_the_held_out_images_behind_its_threshold(trained_run: tuple[Path, Path]) -> None:
    """calibration.csv: each held-out training image with its own score, highest first, so an odd one that set
    the threshold (a grayscale scan among RGB ones) can be found; the detector keeps the same scores."""
    from skipganomaly import Detector
    from skipganomaly.evaluation.report import read_scores

    root, run = trained_run
    names, labels, scores = read_scores(run / "calibration.csv")
    det = Detector.load(run, device="cpu")
    assert len(names) == det.n_val_images_ == 2 and not labels.any() and list(scores) == sorted(scores, reverse=True)
    assert all(Path(name).parent == root / "train" for name in names)
    assert np.allclose(det.decision_function(names), scores, rtol=1e-6)  # each name is the image of its score
    assert sorted(scores) == pytest.approx(sorted(det.val_scores_)) and det.threshold_ == pytest.approx(max(scores))


def test_test_warns_of_training_files_and_its_report_lists_the_warnings(trained_run: tuple[Path, Path],
                                                                         tmp_path: Path,
                                                                         caplog: pytest.LogCaptureFixture) -> None:
    """`test` of a run on a folder holding copies of its training files warns as `train --test` does, and the
    report keeps what the command warned about and where the threshold came from (2 held-out images)."""
    import shutil

    from tests.conftest import noise_images, smooth_images, write_images

    root, run = trained_run
    leak = tmp_path / "leak"
    (leak / "normal").mkdir(parents=True)
    for path in sorted((root / "train").iterdir())[:3]:
        shutil.copy(path, leak / "normal" / path.name)
    write_images(leak / "normal", smooth_images(3, seed=9), prefix="new")
    write_images(leak / "abnormal", noise_images(3))
    broken = root / "train" / "zz-broken.png"
    broken.symlink_to(tmp_path / "gone.png")  # the training folder's own listing lines are not this test's
    try:
        with caplog.at_level(logging.WARNING, logger="skipganomaly"):
            assert main(["test", "--checkpoint", str(run), "--data", str(leak), "--report-dir", str(tmp_path / "r"),
                         "--no-progress"]) == 0
    finally:
        broken.unlink()
    assert "3 of the 9 test images (3 normal, 0 abnormal) are files of the training folder" in caplog.text
    evaluation = json.loads((tmp_path / "r" / "evaluation.json").read_text())
    assert any("files of the training folder" in w for w in evaluation["warnings"])
    assert not any("broken link" in w for w in evaluation["warnings"]) and "broken link" not in caplog.text
    assert evaluation["calibration"]["n_val_images"] == 2 and evaluation["environment"]["skipganomaly"]
    page = (tmp_path / "r" / "report.html").read_text()
    assert "Warnings while this ran" in page and "from the scores of 2 training normals" in page
    assert "<td>model</td><td>skipganomaly++</td>" in page and "<td>epochs</td><td>2</td>" in page  # its settings
    assert "auroc, 95% bootstrap interval" in page
    assert any("held-out" in w for w in json.loads((run / "metrics.json").read_text())["warnings"])


def test_train_writes_a_complete_run_directory(trained_run: tuple[Path, Path]) -> None:
    _, run = trained_run
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["settings"]["model"] == "skipganomaly++" and config["settings"]["epochs"] == 2
    assert config["train_images"] == 40 and config["data"] is not None and config["processes"] == 1
    from skipganomaly.provenance import git_commit

    made_by = config["environment"]  # what a reader of the numbers needs: the command, the code, the machine
    assert made_by["git_commit"] == git_commit() and made_by["torch"] == torch.__version__
    assert json.loads((run / "evaluation.json").read_text())["environment"]["git_commit"] == git_commit()
    losses = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in losses] == [1, 2]
    assert {"g_adv", "g_con", "g_lat", "d_loss"} <= set(losses[0]["losses"])
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test"]["auroc"] > 0.9  # noise against smooth normals: a flipped score or swapped labels fail
    assert (run / "model.pt").stat().st_size > 0
    page = (run / "report.html").read_text()
    assert "<table>" in page and page.count("data:image/png;base64,") == 8  # roc, pr, hist, 4 grids, training
    assert "<h2>Made by</h2>" in page and git_commit() in page
    for name in ("roc", "pr", "histogram", "training", "examples_most_anomalous", "examples_false_positives"):
        assert (run / "figures" / f"{name}.png").stat().st_size > 1000, name
    scores = list(csv.DictReader((run / "scores.csv").open()))
    assert len(scores) == 16 and {r["label"] for r in scores} == {"0", "1"}


def test_report_command_rebuilds_from_saved_scores(trained_run: tuple[Path, Path], tmp_path: Path) -> None:
    _, run = trained_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    (copy / "model.pt").unlink()  # no model needed
    (copy / "report.html").unlink()
    (copy / "figures" / "roc.png").unlink()
    assert main(["report", str(copy)]) == 0
    assert (copy / "figures" / "roc.png").stat().st_size > 1000
    assert (copy / "report.html").read_text().count("data:image/png;base64,") == 8


def test_test_command(trained_run: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    """A `test` report names the detector it scored (its file by full path and digest, what it was trained on and
    by what) and every model option in effect, those at their defaults marked so; so does a training run's."""
    import hashlib
    import subprocess

    root, run = trained_run
    out = root / "test_metrics.json"
    report_dir = root / "test_report"
    assert main(["test", "--checkpoint", str(run / "model.pt"), "--data", str(root / "test"),
                 "--out", str(out), "--report-dir", str(report_dir), "--no-progress", "--device", "cpu"]) == 0
    metrics = json.loads(out.read_text())
    assert metrics["n_normal"] == 8 and metrics["n_abnormal"] == 8
    assert "auroc=" in capsys.readouterr().out
    evaluation = json.loads((report_dir / "evaluation.json").read_text())
    assert evaluation["metrics"]["auroc"] == pytest.approx(metrics["auroc"])
    page = (report_dir / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 7  # no training curves for a test run
    digest = hashlib.sha256((run / "model.pt").read_bytes()).hexdigest()[:16]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert f"<td>checkpoint</td><td>{run.resolve() / 'model.pt'}</td>" in page and digest in page
    assert "<td>train_images</td><td>38</td>" in page and "<td>trained by: git_commit</td>" in page
    assert commit in evaluation["model"]["trained by: git_commit"]
    assert "<td>model option score (default)</td><td>paper</td>" in page
    assert "<td>model option widths</td><td>[8, 8, 16, 16, 32]</td>" in page  # given (SMALL), not a default
    assert "<td>model option score (default)</td><td>paper</td>" in (run / "report.html").read_text()


def test_predict_command_writes_csv(trained_run: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    """A row per file given, in order; an unreadable one keeps its row with no score, and the exit code says
    that not every file was scored (an inspected part must not vanish from the log)."""
    root, run = trained_run
    out = root / "pred.csv"
    broken = root / "test" / "abnormal" / "broken.png"
    broken.write_text("garbage")
    try:
        assert main(["predict", "--checkpoint", str(run / "model.pt"), str(root / "test"),
                     str(root / "train" / "img_000.png"), "--out", str(out), "--no-progress",
                     "--save-maps", str(root / "maps")]) == 1
    finally:
        broken.unlink()
    assert "1 of the inputs could not be scored" in capsys.readouterr().err
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 18 and rows[-1]["path"] == str(root / "train" / "img_000.png")
    [unread] = [r for r in rows if r["path"] == str(broken)]
    assert unread["score"] == unread["label"] == unread["map"] == ""
    rows.remove(unread)  # 16 test images + 1 file
    assert {r["label"] for r in rows} <= {"0", "1"}
    assert all(float(r["score"]) >= 0 for r in rows)
    maps = [Path(r["map"]) for r in rows]
    assert len(set(maps)) == 17 and all(m.parent == root / "maps" for m in maps)
    with Image.open(maps[0]) as picture:  # input beside overlay, enlarged to >= 128 px high
        assert picture.size == (256, 128) and picture.mode == "RGB"
    # one file, unreadable: its row, unscored, and exit 1 (not an error without a CSV)
    assert main(["predict", "--checkpoint", str(run), str(root / "test" / "abnormal" / "img_000.png") + ".gone",
                 "--out", str(out)]) == 2  # a file that does not exist is a mistyped name: an error
    broken.write_text("garbage")
    try:
        assert main(["predict", "--checkpoint", str(run), str(broken), "--out", str(out), "--no-progress"]) == 1
        from skipganomaly import Detector

        cut = f"{Detector.load(run).threshold_:.8g}"  # the cut the labels were made at, on every row
        assert list(csv.DictReader(out.open())) == [{"path": str(broken), "score": "", "label": "", "threshold": cut}]
        assert main(["predict", "--checkpoint", str(run), str(broken), "--out", str(out), "--no-progress",
                     "--save-maps", str(root / "no-maps")]) == 1  # the map column stays, empty
        assert list(csv.DictReader(out.open())) == [{"path": str(broken), "score": "", "label": "", "threshold": cut,
                                                     "map": ""}]
    finally:
        broken.unlink()
    with np.load(root / "maps" / "maps.npz") as saved:  # the maps as numbers, rows as the CSV's scored rows
        assert saved["paths"].tolist() == [r["path"] for r in rows]
        expected = Detector.load(run, device="cpu").anomaly_maps([r["path"] for r in rows])
        assert saved["maps"].dtype == np.float32 and np.allclose(saved["maps"], expected, atol=1e-6)


def test_predict_keeps_a_row_for_what_it_could_not_reach(trained_run: tuple[Path, Path], tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    """A subfolder that cannot be opened (permissions) is named and gets a row, not skipped in silence; a path
    that does not exist among others gets its row; so does an empty folder among others, with a warning: the other
    scores are written, and the exit code says that not everything was scored."""
    import os

    root, run = trained_run
    line = tmp_path / "line"
    shutil.copytree(root / "test", line)
    closed = line / "abnormal"
    (tmp_path / "empty").mkdir()
    real_scandir = os.scandir

    def scandir(path):  # type: ignore[no-untyped-def]
        if Path(path) in (closed, tmp_path / "locked"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    out = tmp_path / "p.csv"
    with caplog.at_level(logging.WARNING, logger="skipganomaly"):
        assert main(["predict", "--checkpoint", str(run), str(line), str(tmp_path / "gone.png"), str(tmp_path / "empty"),
                     "--out", str(out), "--no-progress"]) == 1
    assert f"could not open 1 folder in {line}, so its images are not read: {closed} (Permission denied)" in caplog.text
    assert f"1 input does not exist, it is kept as a row with no score: {tmp_path / 'gone.png'}" in caplog.text
    assert f"folder is empty: {tmp_path / 'empty'}; the other inputs are scored (it gets a row" in caplog.text
    rows = list(csv.DictReader(out.open()))
    assert [r["path"] for r in rows if not r["score"]] == [str(tmp_path / "gone.png"), str(closed),
                                                           str(tmp_path / "empty")]
    assert len(rows) == 11 and all(Path(r["path"]).parent == line / "normal" for r in rows[:8])
    (tmp_path / "locked").mkdir()  # an input folder that cannot be opened: its row, and exit 1, as a subfolder's
    assert main(["predict", "--checkpoint", str(run), str(line / "normal"), str(tmp_path / "locked"), "--out", str(out),
                 "--no-progress"]) == 1
    assert [r["path"] for r in csv.DictReader(out.open()) if not r["score"]] == [str(tmp_path / "locked")]


def test_predict_takes_a_threshold_and_refuses_to_write_over_an_image(trained_run: tuple[Path, Path], tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """--threshold sets the label's cut (the scores stay); --out naming an image, or an input, is refused before any
    work; a file name as long as the system allows still gets its map (the map's name is cut, not the call)."""
    root, run = trained_run
    files = sorted((root / "test" / "normal").glob("*.png"))[:3]
    out = tmp_path / "p.csv"
    long_names = [tmp_path / ("x" * 250 + ".png"), tmp_path / ("検" * 83 + ".png")]  # 254 and 253 bytes: legal; their
    for long_name in long_names:  # maps' names, numbered, would not be
        shutil.copy(files[0], long_name)
    assert main(["predict", "--checkpoint", str(run), *map(str, files), *map(str, long_names), "--out", str(out),
                 "--no-progress", "--save-maps", str(tmp_path / "maps")]) == 0
    stored = list(csv.DictReader(out.open()))
    assert all(Path(r["map"]).is_file() and r["score"] == stored[0]["score"] for r in stored[-2:])
    scores = [float(r["score"]) for r in stored]
    for cut, labels in ((min(scores) - 1, {"1"}), (max(scores) + 1, {"0"})):
        assert main(["predict", "--checkpoint", str(run), *map(str, files), "--out", str(out), "--no-progress",
                     "--threshold", repr(cut)]) == 0
        rows = list(csv.DictReader(out.open()))
        assert {r["label"] for r in rows} == labels and [float(r["score"]) for r in rows] == scores[:3]
        assert {r["threshold"] for r in rows} == {f"{cut:.8g}"}
    assert f"flagged above the given threshold {max(scores) + 1:g}" in capsys.readouterr().out
    for bad in (str(files[1]), str(tmp_path / "new.png")):
        before = files[1].read_bytes()
        assert main(["predict", "--checkpoint", str(run), *map(str, files), "--out", bad, "--no-progress"]) == 2
        assert files[1].read_bytes() == before and not (tmp_path / "new.png").exists()
    err = capsys.readouterr().err
    assert "is one of the inputs" in err and "has an image file extension" in err


def test_a_map_is_drawn_alike_whatever_is_scored_beside_it(trained_run: tuple[Path, Path], tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """The overlays' colour scale comes from the run's held-out normal images, not from the call: a good part
    scored alone is drawn as it is beside a defect (a per-call scale drew it in full colour alone). A copied
    checkpoint, without its run, falls back to the call's scale and says so."""
    root, run = trained_run
    good, defect = sorted((root / "test" / "normal").glob("*.png"))[0], sorted((root / "test" / "abnormal").glob("*.png"))[0]
    drawn = []
    for name, inputs in (("alone", [good]), ("beside", [good, defect])):
        assert main(["predict", "--checkpoint", str(run), *map(str, inputs), "--out", str(tmp_path / "p.csv"),
                     "--no-progress", "--save-maps", str(tmp_path / name)]) == 0
        drawn.append(np.asarray(Image.open(sorted((tmp_path / name).glob("0001_*.png"))[0])))
    assert "full colour: map values above" in capsys.readouterr().out
    np.testing.assert_array_equal(drawn[0], drawn[1])
    shutil.copy(run / "model.pt", tmp_path / "copy.pt")
    assert main(["predict", "--checkpoint", str(tmp_path / "copy.pt"), str(good), "--out", str(tmp_path / "p.csv"),
                 "--no-progress", "--save-maps", str(tmp_path / "copied")]) == 0
    assert "colour scale: this call's largest map value" in capsys.readouterr().out


def test_the_maps_colour_scale_is_found_from_any_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """A run trained with a relative --data keeps its held-out images' absolute paths in calibration.csv, so predict
    finds the colour scale they fix from another current folder too, without a warning per image."""
    from skipganomaly.evaluation.report import read_scores
    from tests.conftest import smooth_images, write_images

    write_images(tmp_path / "train", smooth_images(30, seed=0))
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--model", "knn", "--data", "train", "--out", "run", "--no-progress", "--device", "cpu"]) == 0
    assert all(Path(name).is_absolute() for name in read_scores(tmp_path / "run" / "calibration.csv")[0])
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    capsys.readouterr()
    assert main(["predict", "--checkpoint", str(tmp_path / "run"), str(tmp_path / "train" / "img_000.png"), "--out",
                 "p.csv", "--no-progress", "--save-maps", "maps"]) == 0
    out, err = capsys.readouterr()
    assert "full colour: map values above" in out and "skipping" not in err


def test_several_defect_folders_get_a_line_each(trained_run: tuple[Path, Path], tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """MVTec AD's test/good beside several defect folders: beside the pooled metrics, each folder's recall (the
    normal one's false alarms) and each defect's AUROC against the normals, so a missed defect type shows."""
    from sklearn.metrics import roc_auc_score
    from tests.conftest import noise_images, smooth_images, write_images

    root, run = trained_run
    data = tmp_path / "bottle"
    write_images(data / "test" / "good", smooth_images(8, seed=7))
    write_images(data / "test" / "scratch", noise_images(6))
    write_images(data / "test" / "hole", smooth_images(5, seed=8))  # looks normal: the missed defect type
    write_images(data / "ground_truth" / "scratch", noise_images(6, seed=3), prefix="mask")
    report = tmp_path / "report"
    assert main(["test", "--checkpoint", str(run), "--data", str(data), "--report-dir", str(report),
                 "--out", str(tmp_path / "m.json"), "--no-progress", "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    evaluation = json.loads((report / "evaluation.json").read_text())
    per_folder, threshold = evaluation["per_folder"], evaluation["threshold"]
    assert list(per_folder) == ["good", "hole", "scratch"] and json.loads((tmp_path / "m.json").read_text())["per_folder"] == per_folder
    rows = list(csv.DictReader((report / "scores.csv").open()))
    score = {name: np.array([float(r["score"]) for r in rows if Path(r["name"]).parent.name == name])
             for name in per_folder}
    for name, row in per_folder.items():
        assert row["n"] == len(score[name]) and row["flagged"] == pytest.approx(np.mean(score[name] > threshold))
        if name != "good":
            expected = roc_auc_score([0] * len(score["good"]) + [1] * len(score[name]), np.r_[score["good"], score[name]])
            assert row["auroc"] == pytest.approx(expected)
            assert f"  {name}/: n={row['n']} auroc={row['auroc']:.4f}" in printed
    assert per_folder["scratch"]["auroc"] > per_folder["hole"]["auroc"] and "  good/: n=8 false alarms=" in printed
    assert "Per folder" in (report / "report.html").read_text()


def test_test_images_that_are_training_images_are_warned_about(tmp_path: Path,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    """`train --test` with test images that are copies of training images (a test folder given as training data,
    or copied into it): the metrics would be optimistic, and the warning names the copies."""
    import logging

    from tests.conftest import noise_images, smooth_images, write_images

    train = write_images(tmp_path / "train", smooth_images(30, seed=0))
    write_images(tmp_path / "test" / "normal", smooth_images(4, seed=5))
    write_images(tmp_path / "test" / "abnormal", noise_images(4))
    command = ["train", "--model", "pca", "--data", str(tmp_path / "train"), "--test", str(tmp_path / "test"),
               "--no-progress", "--device", "cpu"]
    with caplog.at_level(logging.WARNING, logger="skipganomaly"):
        assert main([*command, "--out", str(tmp_path / "clean")]) == 0
    assert "also training images" not in caplog.text
    for path in train[:2]:
        shutil.copy(path, tmp_path / "test" / "normal" / f"copy_{path.name}")
    with caplog.at_level(logging.WARNING, logger="skipganomaly"):
        assert main([*command, "--out", str(tmp_path / "leaky")]) == 0
    assert "2 of the 10 test images (2 normal, 0 abnormal) are also training images" in caplog.text
    assert "copy_img_000.png, copy_img_001.png" in caplog.text


def test_mvtec_masks_give_pixel_metrics(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """With MVTec AD's ground_truth/ masks beside test/, `test` adds the pixel AUROC and AUPRC of the anomaly maps
    (normal images: all-zero masks); a defect image without a mask is left out with a warning; a test folder
    without masks gets no pixel metrics."""
    import logging

    from sklearn.metrics import roc_auc_score
    from skipganomaly import Detector
    from tests.conftest import smooth_images, write_images

    rng = np.random.default_rng(0)
    write_images(tmp_path / "bottle" / "train" / "good", smooth_images(40, seed=0))
    write_images(tmp_path / "bottle" / "test" / "good", smooth_images(6, seed=5))
    spotted, masks = smooth_images(6, seed=6), np.zeros((6, 32, 32, 1), np.uint8)
    for i, (y, x) in enumerate(rng.integers(2, 22, (6, 2))):  # a noisy square, each at its own place
        spotted[i, y:y + 8, x:x + 8] = rng.integers(0, 255, (8, 8, 3))
        masks[i, y:y + 8, x:x + 8] = 255
    spots = write_images(tmp_path / "bottle" / "test" / "spot", spotted)
    (tmp_path / "bottle" / "ground_truth" / "spot").mkdir(parents=True)
    for path, mask in zip(spots[:5], masks[:5]):  # the sixth has no mask
        Image.fromarray(mask[..., 0]).save(tmp_path / "bottle" / "ground_truth" / "spot" / f"{path.stem}_mask.png")
    run = tmp_path / "run"
    assert main(["train", "--model", "pca", "--data", str(tmp_path / "bottle"), "--out", str(run), "--no-progress",
                 "--device", "cpu"]) == 0
    for data in (tmp_path / "bottle", tmp_path / "bottle" / "test"):  # the data set's root, or its test/ folder
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="skipganomaly"):
            assert main(["test", "--checkpoint", str(run), "--data", str(data), "--out", str(tmp_path / "m.json"),
                         "--no-report", "--no-progress", "--device", "cpu"]) == 0
        metrics = json.loads((tmp_path / "m.json").read_text())
        assert "1 abnormal test images have no mask" in caplog.text and "against 5 masks" in caplog.text
        det = Detector.load(run, device="cpu")
        normal = sorted((tmp_path / "bottle" / "test" / "good").iterdir())
        maps = det.anomaly_maps(normal + spots[:5])
        truth = np.concatenate([np.zeros((6, 32, 32)), masks[:5, ..., 0] > 0])
        assert metrics["pixel_auroc"] == pytest.approx(roc_auc_score(truth.ravel(), maps.ravel()))
        assert metrics["pixel_auroc"] > 0.8  # the squares, where the maps are bright
        assert (metrics["pixel_images"], metrics["pixel_masks"], metrics["n_abnormal"]) == (11, 5, 6)  # what they cover
    for mask in (tmp_path / "bottle" / "ground_truth" / "spot").iterdir():  # masks that mark nothing: said so
        Image.fromarray(np.zeros((32, 32), np.uint8)).save(mask)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="skipganomaly"):
        assert main(["test", "--checkpoint", str(run), "--data", str(tmp_path / "bottle"), "--no-report",
                     "--no-progress", "--device", "cpu"]) == 0
    assert "no mask in" in caplog.text and "marks a defect pixel" in caplog.text
    shutil.rmtree(tmp_path / "bottle" / "ground_truth")
    assert main(["test", "--checkpoint", str(run), "--data", str(tmp_path / "bottle"), "--out", str(tmp_path / "m.json"),
                 "--no-report", "--no-progress", "--device", "cpu"]) == 0
    assert "pixel_auroc" not in json.loads((tmp_path / "m.json").read_text())


def test_a_second_test_keeps_the_first_ones_report(trained_run: tuple[Path, Path], tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """Without --report-dir, each `test` writes to the first of runs/test, runs/test2, ... that holds no
    evaluation (as `train` does with its runs), so comparing two checkpoints does not lose the first report."""
    root, run = trained_run
    monkeypatch.chdir(tmp_path)
    args = ["test", "--checkpoint", str(run), "--data", str(root / "test"), "--no-progress", "--device", "cpu"]
    assert main(args) == 0 and main(args) == 0
    assert (tmp_path / "runs" / "test" / "report.html").is_file() and (tmp_path / "runs" / "test2" / "report.html").is_file()
    assert main([*args, "--no-report"]) == 0 and not (tmp_path / "runs" / "test3").exists()
    assert main([*args, "--no-report", "--report-dir", "x"]) == 2
    assert "not both" in capsys.readouterr().err


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "skipganomaly", *args], capture_output=True, text=True, timeout=120)


def test_help_through_the_module_entry_point() -> None:
    result = _run("train", "--help")
    assert result.returncode == 0 and "usage:" in result.stdout


@pytest.mark.parametrize("command", ["test", "predict", "demo"])
def test_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main([command, "--help"])
    assert exited.value.code == 0 and "usage:" in capsys.readouterr().out


def test_errors_are_one_line(tmp_path: Path, trained_run: tuple[Path, Path], capsys: pytest.CaptureFixture) -> None:
    """In-process (main() catches what the command line would print; an uncaught exception fails the test
    as a traceback would); the subprocess path is covered by the other tests of this file."""
    _, run = trained_run
    (tmp_path / "empty").mkdir()
    (tmp_path / "junk.pt").write_bytes(b"\x00" * 100)
    out = ["--out", str(tmp_path / "out")]  # never the default ./runs, should a check come after the first write
    report, csv_out = ["--report-dir", str(tmp_path / "report")], ["--out", str(tmp_path / "scores.csv")]
    cases = [
        ["train", "--data", str(tmp_path / "missing"), "--no-progress", *out],
        ["train", "--data", str(tmp_path / "empty"), "--no-progress", *out],
        ["train", "--data", str(run), "--image-size", "36", "--no-progress", *out],
        ["test", "--checkpoint", str(tmp_path / "junk.pt"), "--data", str(tmp_path), *report],
        ["test", "--checkpoint", str(run / "model.pt"), "--data", str(tmp_path / "empty"), *report],
        ["predict", "--checkpoint", str(run / "model.pt"), str(tmp_path / "nothing.png"), *csv_out],
        ["demo", "--digits", "12"],
        ["report", str(tmp_path / "empty")],
        ["predict", "--checkpoint", str(run / "model.pt"), str(run), "--save-maps", str(tmp_path / "junk.pt"),
         *csv_out],
        ["test", "--checkpoint", str(run / "model.pt"), "--data", str(tmp_path), "--report-dir",
         str(tmp_path / "junk.pt")],
        ["report", str(tmp_path / "missing")],
        ["bench-speed", "--models", "ganomaly", "--device", "tpu"],
        ["train", "--data", str(run), "--device", "mps" if not torch.backends.mps.is_available() else "tpu", *out],
        ["train", "--data", str(run), "--val-fraction", "0", "--no-progress", *out],
        ["train", "--data", str(run), "--val-fraction", "1.5", "--no-progress", *out],
        ["benchmark", "--data", str(tmp_path / "empty"), "--data-dir", str(tmp_path), *out],  # which one?
        ["train", "--resume", str(run), *out],  # continued elsewhere? no: said, not ignored
        ["train", "--resume", str(run), "--overwrite"],
    ]
    for args in cases:
        code = main(list(args))
        err = capsys.readouterr().err
        assert code == 2, (args, err)
        assert "Traceback" not in err
        lines = [line for line in err.splitlines() if line.startswith("error:")]
        assert len(lines) == 1, (args, err)
        if "--val-fraction" in args:  # one message for both sides, not the library's [0, 1) and then "above 0"
            assert "must be above 0 and below 1" in err, err
        if "--data-dir" in args:
            assert "give one (--data-dir is where CIFAR-10 is" in err, err
        if "--resume" in args:
            assert "continues that run in its own folder" in err or "give one of them" in err, err


@pytest.mark.parametrize("args", [["bench-speed", "--threads", "0"], ["bench-speed", "--repeats", "x"],
                                  ["bench-speed", "--steps", "-1"], ["bench-speed", "--score-batch", "0"],
                                  ["demo", "--max-train", "-5"], ["benchmark", "--workers", "0"]])
def test_counts_must_be_positive_integers(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """A zero or negative count is a usage error naming the flag, before any work (it was a traceback
    deep in the benchmark, or a silently wrong slice). In-process: argparse's exit is the usage error; any
    other exception would fail the test as the traceback it would print."""
    with pytest.raises(SystemExit) as exited:
        main(list(args))
    assert exited.value.code == 2
    assert f"argument {args[1]}: expected a positive integer" in capsys.readouterr().err


@pytest.mark.parametrize("native, flags, expected", [
    (True, [], True), (False, [], False), (True, ["--no-amp"], False), (False, ["--amp"], True),
    (True, ["--amp"], True), (True, ["--model", "skipganomaly++"], False),  # other models: float32 unless told
    (False, ["--model", "skipganomaly++", "--amp"], True)])
def test_demo_autocasts_the_default_model_in_bf16_where_the_cpu_computes_it_natively_unless_told(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path, native: bool,
        flags: list[str], expected: bool) -> None:
    import skipganomaly.cli as cli
    seen: list[bool] = []
    probed: list[str] = []
    monkeypatch.setattr(cli, "native_bf16", lambda device: probed.append(device.type) or native)
    monkeypatch.setattr(cli, "run_demo", lambda settings, *a, **k: seen.append(settings.training.amp) or True)
    assert main(["demo", "--out", str(tmp_path), *SMALL_DEFAULT, *flags]) == 0
    assert seen == [expected]
    assert probed in ([], ["cpu"])  # the probe asks about the device the demo runs on
    assert f"bf16 autocast {'on' if expected else 'off'}" in capsys.readouterr().out


@pytest.mark.parametrize("probes, expected", [((False, False), False), ((True, False), True), ((False, True), True)])
def test_native_bf16_reads_the_cpu_instructions_and_is_off_on_gpus(
        monkeypatch: pytest.MonkeyPatch, probes: tuple[bool, bool], expected: bool) -> None:
    from skipganomaly.training.device import native_bf16
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: probes[0], raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: probes[1], raising=False)
    assert native_bf16(torch.device("cpu")) is expected
    assert native_bf16(torch.device("cuda")) is False and native_bf16(torch.device("mps")) is False


def test_native_bf16_is_off_where_torch_has_no_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    from skipganomaly.training.device import native_bf16
    for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        monkeypatch.delattr(torch.cpu, name, raising=False)
    assert native_bf16(torch.device("cpu")) is False


def test_demo_minimal_gives_aucs_in_unit_interval(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    assert main(["demo", "--digits", "3", "--epochs", "1", "--max-train", "64", "--out", str(out), *SMALL_DEFAULT]) == 0
    from skipganomaly.training.device import native_bf16
    table = (out / "table.md").read_text()
    assert f"{DEFAULT_MODEL} auroc" in table  # the demo trains the default model
    assert ("bf16 autocast" if native_bf16(torch.device("cpu")) else "float32") in table  # and says in what precision
    results = json.loads((out / "results.json").read_text())
    # The digits have no known answer after one epoch; the table's AUROC must be the one its saved
    # per-image scores and labels give, and the labels must mark exactly the digit-3 images abnormal.
    rows = list(csv.DictReader((out / "digit3" / "scores.csv").open()))
    labels = [int(r["label"]) for r in rows]
    assert sum(labels) == 183  # scikit-learn's digits hold 183 threes
    assert results["digit 3"]["auroc"] == pytest.approx(
        evaluate_scores([float(r["score"]) for r in rows], labels, 0.0)["auroc"])
    table = (out / "table.md").read_text()
    assert "| mean |" in table and "| pca auroc | knn auroc |" in table
    # Raw-pixel kNN is above chance even from 64 training images (0.67 measured for digit 3; 0.87 from 200).
    assert results["baselines"]["knn"]["digit 3"] > 0.6
    assert 0.0 <= results["baselines"]["pca"]["digit 3"] <= 1.0
    assert results["environment"]["command"] and results["settings"]["epochs"] == 1 and results["max_train"] == 64
    assert (out / "digit3" / "report.html").read_text().count("data:image/png;base64,") == 8
    for name in ("knn", "pca"):  # the baselines' columns can be checked from their saved scores
        rows = list(csv.DictReader((out / "digit3" / f"{name}_scores.csv").open()))
        assert results["baselines"][name]["digit 3"] == pytest.approx(
            evaluate_scores([float(r["score"]) for r in rows], [int(r["label"]) for r in rows], 0.0)["auroc"])
    # the table says what changes its numbers: the training images' cap, batch, lr; and the thresholds' warnings
    assert "at most 64 training normals per digit (--max-train)" in table and ", batch 32, lr 0.001," in table
    assert "Warnings while it ran" in table and "digit 3: threshold_ rests on 3 held-out normal images" in table
    assert results["digit 3"]["warnings"]
    assert "warnings" not in json.loads((out / "digit3" / "evaluation.json").read_text())["metrics"]  # not a metric


def test_a_second_demo_into_the_same_folder_replaces_the_first_with_a_word(tmp_path: Path,
                                                                           caplog: pytest.LogCaptureFixture) -> None:
    out = tmp_path / "demo"
    fast_demo = ["demo", "--epochs", "1", "--max-train", "40", "--out", str(out), "--model", "pca", "--baselines",
                 "none", "--no-progress", "--device", "cpu"]
    assert main([*fast_demo, "--digits", "0,3"]) == 0 and (out / "digit3" / "model.pt").exists()
    (out / "digit3" / "notes.txt").write_text("mine")  # a file of the user's is kept, with its folder
    (out / "digits-mine").mkdir()
    (out / "digits-mine" / "model.pt").write_bytes(b"a run of the user's: not a demo digit's")
    with caplog.at_level(logging.WARNING, logger="skipganomaly"):
        assert main([*fast_demo, "--digits", "0"]) == 0
    assert "holds an earlier demo (digit0, digit3): replaced by this one" in caplog.text
    assert not (out / "digit3" / "model.pt").exists() and (out / "digit3" / "notes.txt").exists()
    assert list(json.loads((out / "results.json").read_text()))[0] == "digit 0"
    assert "digit 3" not in (out / "table.md").read_text()
    bench = tmp_path / "bench"
    bench.mkdir()
    (bench / "results.json").write_text(json.dumps({"cells": [], "config": {}}))  # a benchmark's: never removed
    assert main([*(arg if arg != str(out) else str(bench) for arg in fast_demo), "--digits", "0"]) == 2
    assert json.loads((bench / "results.json").read_text()) == {"cells": [], "config": {}}
    assert (out / "digits-mine" / "model.pt").exists()


def test_an_interrupted_demo_continues_where_it_stopped_and_ends_as_an_uninterrupted_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        caplog: pytest.LogCaptureFixture) -> None:
    from skipganomaly.interrupts import INTERRUPTED_EXIT
    from skipganomaly.run_directory import EpochLog
    demo = ["demo", "--digits", "0,3", "--epochs", "2", "--max-train", "60", *SMALL_DEFAULT]
    assert main([*demo, "--out", str(tmp_path / "whole")]) == 0
    whole = json.loads((tmp_path / "whole" / "results.json").read_text())

    out = tmp_path / "demo"
    calls = []
    log_epoch = EpochLog.__call__

    def stop_in_digit_3(self: EpochLog, record: object) -> None:  # Ctrl-C after digit 3's first epoch
        log_epoch(self, record)
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(EpochLog, "__call__", stop_in_digit_3)
    assert main([*demo, "--out", str(out)]) == INTERRUPTED_EXIT
    assert (f"interrupted; kept in {out} (finished: 0; the last complete epoch of digit3); the same command continues "
            "from there") in capsys.readouterr().err
    from skipganomaly.workflows import demo_kept
    assert demo_kept(tmp_path / "nothing") == "no digit had finished an epoch; run the same command again"
    monkeypatch.setattr(EpochLog, "__call__", log_epoch)
    digit0 = (out / "digit0" / "model.pt").stat().st_mtime_ns

    assert main([*demo, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "digit 0 finished and kept" in printed and f"continuing {out / 'digit3'} after epoch 1" in printed
    assert "over 2 calls" in (out / "table.md").read_text()
    assert (out / "digit0" / "model.pt").stat().st_mtime_ns == digit0  # not trained again
    assert [r["epoch"] for r in map(json.loads, (out / "digit3" / "metrics.jsonl").read_text().splitlines())] == [1, 2]
    continued = json.loads((out / "results.json").read_text())
    for key in ("digit 0", "digit 3", "baselines"):  # the resumed digit trained on exactly as without the stop
        assert continued[key] == whole[key]
    assert len(continued["earlier_environments"]) == 1

    # other settings: the unfinished demo is not continued but replaced, with a word (each stopped at its first epoch)
    monkeypatch.setattr(EpochLog, "__call__", stop_in_digit_3)
    calls[:] = [1, 1]
    assert main([*demo, "--out", str(out), "--seed", "1"]) == INTERRUPTED_EXIT
    calls[:] = [1, 1]
    capsys.readouterr()
    with caplog.at_level(logging.WARNING, logger="skipganomaly"):
        assert main([*demo, "--out", str(out)]) == INTERRUPTED_EXIT
    assert "holds an earlier demo, unfinished, of other settings, digits or code (digit0)" in caplog.text
    assert "continuing" not in capsys.readouterr().out
    assert json.loads((out / "results.json").read_text())["settings"]["seed"] == 0


# GANomaly's score compares two latent codes, not pixels: after one epoch on 40 images it does not yet
# rank noise above the smooth normals (AUROC 0.19-0.5 measured), so for it only finiteness is checked.
# The rotation models' default scores compare feature maps with the training normals' (`map`), which
# places noise far from smooth images after one epoch; their orientation scores (`ce`, `rotation`) read
# orientation, which a centred disc hardly has (0.33 measured), and are tested on oriented images in tests/models.
RANKS_NOISE_HIGHER_AFTER_ONE_EPOCH = set(list_models()) - {"ganomaly"}


@pytest.mark.parametrize("name", list_models())
def test_train_every_model_from_the_cli(name: str, image_root: Path) -> None:
    options = [arg for key, value in fast(name).items() for arg in ("--model-arg", f"{key}={value}")]
    run = image_root / f"run-{name}"
    assert main(["train", "--model", name, "--data", str(image_root), "--test", str(image_root / "test"),
                 "--out", str(run), "--epochs", "1", "--batch-size", "8", "--no-progress", "--device", "cpu",
                 *options]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    if name in RANKS_NOISE_HIGHER_AFTER_ONE_EPOCH:
        assert metrics["test"]["auroc"] > 0.9, metrics["test"]
    else:
        assert math.isfinite(metrics["test"]["auroc"])
    assert yaml.safe_load((run / "config.yaml").read_text())["settings"]["model"] == name
    _assert_strict_json(run)


def _assert_strict_json(folder: Path) -> None:
    """Every JSON file under `folder` parses where NaN and Infinity are not JSON (JavaScript, jq, Go)."""
    def refuse(constant: str) -> None:
        raise AssertionError(f"{constant} is not JSON")

    files = [*folder.rglob("*.json"), *folder.rglob("*.jsonl")]
    assert files
    for path in files:
        for line in path.read_text().splitlines() if path.suffix == ".jsonl" else [path.read_text()]:
            json.loads(line, parse_constant=refuse)


def test_train_with_amp_from_the_cli(image_root: Path) -> None:
    """--amp reaches the detector (bf16 autocast on the CPU), is recorded in config.yaml, and the run
    still produces finite test metrics."""
    run = image_root / "run-amp"  # narrow: bf16 is emulated, and slow, on CPUs without bf16 arithmetic
    assert main(["train", "--data", str(image_root), "--test", str(image_root / "test"), "--out", str(run),
                 "--epochs", "1", "--batch-size", "8", "--amp", *SMALL]) == 0
    assert yaml.safe_load((run / "config.yaml").read_text())["settings"]["amp"] is True
    assert json.loads((run / "metrics.json").read_text())["test"]["auroc"] > 0.9


def test_low_memory_switch_sets_the_allocator_in_its_own_process() -> None:
    code = ("import sys; from skipganomaly.training.memory import reduce_heap_fragmentation; "
            "sys.exit(0 if reduce_heap_fragmentation() else 3)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    if result.returncode == 3:
        pytest.skip("no glibc mallopt on this platform")
    assert result.returncode == 0, result.stderr
    assert _run("--low-memory", "demo", "--help").returncode == 0


def test_tensorboard_logging(image_root: Path) -> None:
    pytest.importorskip("tensorboard", reason="tensorboard is in the test extra; pip install -e '.[test]'")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = image_root / "tb-run"
    assert main(["train", "--data", str(image_root), "--out", str(run), "--epochs", "2", "--batch-size", "8",
                 "--tensorboard", *SMALL]) == 0
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    tags = events.Tags()["scalars"]
    assert {"loss/g_con", "loss/d_loss", "validation/loss"} <= set(tags)
    assert [e.step for e in events.Scalars("loss/g_con")] == [1, 2]


def test_tensorboard_missing_is_a_clear_error(image_root: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if tensorboard were not installed
    assert main(["train", "--data", str(image_root), "--out", str(image_root / "r"), "--tensorboard", *SMALL]) == 2
    assert "pip install tensorboard" in capsys.readouterr().err


def test_an_interrupt_says_what_is_kept_and_how_to_continue(tmp_path: Path) -> None:
    import argparse

    from skipganomaly.cli import _how_to_continue, program

    run = tmp_path / "my runs"  # the printed command must survive copy and paste into a shell
    run.mkdir()
    train = argparse.Namespace(command="train", resume=None, out=run)
    assert "nothing to resume" in _how_to_continue(train)
    (run / "model.state.pt").write_bytes(b"")
    assert f"{program()} train --resume '{run}'" in _how_to_continue(train)
    resumed = argparse.Namespace(command="train", resume=run, out=Path("runs/train"))
    assert f"--resume '{run}'" in _how_to_continue(resumed)
    assert "no cell had finished" in _how_to_continue(argparse.Namespace(command="benchmark", out=tmp_path))
    assert "run the same command again" in _how_to_continue(argparse.Namespace(command="predict", out=tmp_path))
    from skipganomaly.scored_parts import partial_file

    csv_out = tmp_path / "p.csv"  # an earlier call's kept parts: not this call's, which stopped before scoring
    partial_file(csv_out).write_text('{"identity": {}}\n{"kept": ["a.png"]}\n')
    later = argparse.Namespace(command="predict", out=csv_out, started=partial_file(csv_out).stat().st_mtime + 1)
    assert "run the same command again" in _how_to_continue(later)
    later.started -= 2
    assert "1 finished part (1 image read) kept in" in _how_to_continue(later)
    assert _how_to_continue(argparse.Namespace(command="report")) is None


def test_the_suggested_command_is_the_one_that_ran(monkeypatch: pytest.MonkeyPatch) -> None:
    """`python -m skipganomaly` users may not have `skipganomaly` on PATH: a hint repeats how they ran it."""
    from skipganomaly.cli import program

    monkeypatch.setattr(sys, "argv", ["/venv/bin/skipganomaly", "train"])
    assert program() == "skipganomaly"
    monkeypatch.setattr(sys, "argv", ["/src/skipganomaly/__main__.py", "train"])
    assert program() == f"{sys.executable} -m skipganomaly"


def test_sigterm_stops_a_command_as_ctrl_c_does_with_the_resume_hint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """A scheduler's or container's stop (SIGTERM) gets the Ctrl-C treatment: the command stops where it stands,
    says what is kept and how to continue, and exits 143 as a terminated process does."""
    import os
    import signal
    import time

    from skipganomaly import cli

    def train_then_get_terminated(args: object) -> int:
        (tmp_path / "run" / "model.state.pt").parent.mkdir()
        (tmp_path / "run" / "model.state.pt").write_bytes(b"")
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(30)  # the handler interrupts this at once
        raise AssertionError("SIGTERM did not stop the command")

    monkeypatch.setattr(cli, "cmd_train", train_then_get_terminated)
    previous = signal.getsignal(signal.SIGTERM)
    assert main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "run")]) == 143
    assert f"terminated; the last complete epoch is kept; continue with: {cli.program()} train --resume" in \
        capsys.readouterr().err
    assert signal.getsignal(signal.SIGTERM) == previous  # the handler is the command's only


@pytest.mark.parametrize("error", [torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
                                   RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 8"),
                                   MemoryError()])
def test_out_of_memory_is_one_line_with_advice(error: BaseException, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    import skipganomaly.cli as cli

    def fail(args: object) -> int:
        raise error

    monkeypatch.setattr(cli, "cmd_train", fail)
    assert main(["train", "--data", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: out of memory") and "--batch-size" in err and len(err.splitlines()) == 1


def test_other_runtime_errors_still_raise(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import skipganomaly.cli as cli

    def fail(args: object) -> int:
        raise RuntimeError("a bug")

    monkeypatch.setattr(cli, "cmd_train", fail)
    with pytest.raises(RuntimeError, match="a bug"):
        main(["train", "--data", str(tmp_path)])


def test_a_bug_exits_apart_from_a_partial_failure(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """The command prints a bug's traceback and exits 70, not Python's 1, which means "some files unscored" to a
    script driving predict; what `main` returns is the command's exit code."""
    import skipganomaly.cli as cli

    def fail(args: object) -> int:
        raise RuntimeError("a bug")

    monkeypatch.setattr(cli, "cmd_predict", fail)
    monkeypatch.setattr(sys, "argv", ["skipganomaly", "predict", "--checkpoint", str(tmp_path), str(tmp_path)])
    with pytest.raises(SystemExit) as exited:
        cli.run()
    assert exited.value.code == 70
    err = capsys.readouterr().err
    assert "Traceback" in err and "RuntimeError: a bug" in err and "error: an unexpected failure, a bug in" in err
    monkeypatch.setattr(cli, "main", lambda: 3)
    with pytest.raises(SystemExit) as exited:
        cli.run()
    assert exited.value.code == 3


def test_unwritable_output_is_one_line(tmp_path: Path, trained_run: tuple[Path, Path]) -> None:
    """An output path under a file (or a full disk) is the machine's problem: one line naming the path."""
    _, run = trained_run
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result = _run("predict", "--checkpoint", str(run / "model.pt"), str(run), "--out", str(blocker / "scores.csv"),
                  "--no-progress")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and str(blocker) in last


def _own_npz(path: Path, names: tuple[str, ...] = ("a", "b", "noise", "c")) -> Path:
    """Four classes: 'noise' is uniform noise, the others smooth images (a known answer); 28x28 grayscale, as
    MedMNIST, so every protocol must resize them to the model's 32."""
    from tests.conftest import noise_images, smooth_images

    arrays = {}
    for part, n, seed in (("train", 12, 0), ("test", 4, 50)):
        images, labels = [], []
        for c, name in enumerate(names):
            make = noise_images if name == "noise" else smooth_images
            images.append(make(n, size=28, channels=1, seed=seed + c)[..., 0])  # (N, H, W) grayscale
            labels.append(np.full((n, 1), c))
        arrays[f"{part}_images"], arrays[f"{part}_labels"] = np.concatenate(images), np.concatenate(labels)
    np.savez(path, label_names=np.array(names), **arrays)
    return path


def test_benchmark_on_your_own_npz(tmp_path: Path) -> None:
    data = _own_npz(tmp_path / "mine.npz")
    out = tmp_path / "bench"
    assert main(["benchmark", "--data", str(data), "--models", "knn,pca", "--normal-labels", "a,b,c",
                 "--protocol", "both", "--epochs", "1", "--batch-size", "8", "--no-progress", "--device", "cpu",
                 "--out", str(out)]) == 0
    cells = json.loads((out / "results.json").read_text())["cells"]
    assert [(c["model"], c["class"], c["protocol"]) for c in cells] == [
        ("knn", "noise", "honest"), ("knn", "noise", "paper"), ("pca", "noise", "honest"), ("pca", "noise", "paper")]
    assert all(c["auroc"] > 0.9 for c in cells)
    assert all(c["settings"]["dataset"].startswith("mine.npz:") for c in cells)
    # A paper cell holds out no normals, so it has no validation loss: null in its history, not NaN (not JSON).
    assert [r["val_loss"] for c in cells if c["protocol"] == "paper" for r in c["history"]] == [None, None]
    _assert_strict_json(out)
    table = (out / "table.md").read_text()
    assert table.startswith("# mine leave-one-class-out AUROC") and "(0." not in table  # no paper numbers
    # Leave-one-class-out over the classes, and the validate protocol: b left out, 'noise' is its pseudo-anomaly.
    out2 = tmp_path / "bench2"
    assert main(["benchmark", "--data", str(data), "--models", "knn", "--baselines", "none", "--classes", "b",
                 "--protocol", "honest,validate", "--epochs", "1", "--no-progress", "--device", "cpu", "--out",
                 str(out2)]) == 0
    cells = json.loads((out2 / "results.json").read_text())["cells"]
    assert [(c["protocol"], c.get("pseudo_anomaly")) for c in cells] == [("honest", None), ("validate", "noise")]
    assert cells[1]["auroc"] > 0.9


def test_what_reading_the_data_warned_about_is_listed_beside_the_tables(tmp_path: Path) -> None:
    """A copy of a training image among the test images inflates a benchmark's number: said when the data are read,
    and kept in table.md, results.json and report.html (a terminal's lines are gone once it closes)."""
    data = _own_npz(tmp_path / "mine.npz")
    with np.load(data) as saved:
        arrays = dict(saved)
    arrays["test_images"][1] = arrays["train_images"][0]
    np.savez(data, **arrays)
    out = tmp_path / "bench"
    assert main(["benchmark", "--data", str(data), "--models", "knn", "--baselines", "none", "--normal-labels",
                 "a,b,c", "--no-progress", "--device", "cpu", "--out", str(out)]) == 0
    said = "mine.npz: 1 image is an exact copy of another (the same pixels as read; e.g. test_images[1] = train_images[0])"
    assert f"- reading the data: {said}" in (out / "table.md").read_text()
    assert (out / "table.md").read_text().count("is an exact copy") == 1  # not again as each cell's, reading it again
    warned = json.loads((out / "results.json").read_text())["warnings"]
    assert [w for w in warned if w["data"]] == [{"warning": next(w["warning"] for w in warned if said in w["warning"]),
                                               "data": True, "cells": []}]
    assert f"<li>reading the data: {said}" in (out / "report.html").read_text()


def test_an_option_without_model_goes_to_the_models_not_the_baselines(tmp_path: Path) -> None:
    """`--models knn --model-arg k=3`: the knn of --models takes k=3; pca, a baseline here, has no k and takes
    nothing (it would be a 'no option' error); a baseline takes an option named for it."""
    data = _own_npz(tmp_path / "mine.npz")
    out = tmp_path / "bench"
    base = ["benchmark", "--data", str(data), "--normal-labels", "a,b,c", "--no-progress", "--device", "cpu",
            "--out", str(out)]
    assert main([*base, "--models", "rotation", "--baselines", "pca", "--model-arg", "widths=[8,16,32]",
                 "--model-arg", "pca:explained_variance=0.9", "--epochs", "1"]) == 0
    cells = {c["model"]: c for c in json.loads((out / "results.json").read_text())["cells"]}
    assert cells["rotation"]["model_options"]["widths"] == [8, 16, 32]
    assert cells["pca"]["model_options"]["explained_variance"] == 0.9
    assert main([*base, "--models", "none", "--baselines", "pca", "--model-arg", "explained_variance=0.8"]) == 2


def test_a_train_fraction_too_small_for_the_threshold_is_one_line_before_training(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """36 normals at --train-fraction 0.1 are 3 images: too few to hold out the threshold's and train on the
    rest. Said once, naming the flag, with exit 2 (bad input), not by each cell after loading with exit 1."""
    data = _own_npz(tmp_path / "mine.npz")
    out = tmp_path / "bench"
    assert main(["benchmark", "--data", str(data), "--models", "knn", "--normal-labels", "a,b,c", "--train-fraction",
                 "0.1", "--no-progress", "--device", "cpu", "--out", str(out)]) == 2
    assert ("task 'noise' (honest, seed 0) trains on a, b, c: 3 training images at --train-fraction 0.1: 3 images are "
            "too few" in capsys.readouterr().err)
    assert not (out / "cells").exists()
    # at the whole training part, the advice is another: the protocol that leaves two classes out, or more images
    assert main(["benchmark", "--data", str(data), "--models", "knn", "--classes", "a", "--protocol", "validate",
                 "--no-progress", "--device", "cpu", "--out", str(out), "--val-fraction", "0.9"]) == 2
    err = capsys.readouterr().err
    assert "(validate, seed 0) trains on" in err and "give those classes more images, or leave validate out" in err


def test_benchmark_stopped_by_its_time_limit_exits_3_until_it_is_complete(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch,
                                                                           capsys: pytest.CaptureFixture[str]) -> None:
    """A script looping on `benchmark --time-limit` must tell "run me again" from "done" and from an error."""
    from skipganomaly import sweep

    data = _own_npz(tmp_path / "mine.npz")
    clock = {"now": 0.0}

    def tick() -> float:  # every reading of the clock is 6 s later: the second cell would end past 20 s
        clock["now"] += 6.0
        return clock["now"]

    monkeypatch.setattr(sweep, "_now", tick)
    command = ["benchmark", "--data", str(data), "--models", "knn,pca", "--normal-labels", "a,b,c", "--protocol",
               "honest", "--no-progress", "--device", "cpu", "--out", str(tmp_path / "bench")]
    assert main([*command, "--time-limit", "20"]) == 3
    results = json.loads((tmp_path / "bench" / "results.json").read_text())
    assert len(results["cells"]) == 1 and results["unfinished"] == ["pca__noise__seed0__honest"]
    clock["now"] = 1e6  # long past a new limit before the first cell: that cell still runs, so each call progresses
    assert main([*command, "--time-limit", "1"]) == 0
    assert "past the time limit: a call always finishes the first cell it starts" in capsys.readouterr().err
    assert main(command) == 0  # nothing left: the command says it is complete
    assert json.loads((tmp_path / "bench" / "results.json").read_text())["complete"] is True


def test_benchmark_on_a_folder_per_class(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A folder is decoded once for all cells (one warning about its bad file, not one per cell), and the
    decoded copy is removed at the end."""
    from tests.conftest import noise_images, smooth_images, write_images

    write_images(tmp_path / "imgs" / "good", smooth_images(20, seed=0))
    write_images(tmp_path / "imgs" / "scratch", noise_images(10))
    (tmp_path / "imgs" / "good" / "broken.png").write_text("not an image")
    out = tmp_path / "bench"
    with caplog.at_level("WARNING", logger="skipganomaly"):
        assert main(["benchmark", "--data", str(tmp_path / "imgs"), "--models", "knn,pca", "--normal-labels", "good",
                     "--epochs", "1", "--no-progress", "--device", "cpu", "--out", str(out)]) == 0
    cells = json.loads((out / "results.json").read_text())["cells"]
    assert [c["class"] for c in cells] == ["scratch", "scratch"] and all(c["auroc"] > 0.9 for c in cells)
    assert cells[0]["test_images"] == 4 + 10  # 20% of the normals, and every abnormal image
    assert caplog.text.count("; skipped") == 1 and "broken.png" in caplog.text
    assert not (out / "decoded-images.pt").exists()


def test_own_data_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    good = _own_npz(tmp_path / "good.npz")
    with np.load(good) as archive:
        arrays = {k: archive[k] for k in archive.files}
    arrays["label_names"] = np.array(["a", "b", "noise", "c", "empty"])  # 'empty' names no image
    np.savez(good, **arrays)
    np.savez(tmp_path / "nokey.npz", **{k: v for k, v in arrays.items() if k != "test_images"})
    np.savez(tmp_path / "short.npz", **{**arrays, "train_labels": arrays["train_labels"][:3]})
    base = ["benchmark", "--models", "knn", "--no-progress", "--out", str(tmp_path / "o")]
    cases = [
        ["--data", str(tmp_path / "nokey.npz")],  # a missing key
        ["--data", str(tmp_path / "short.npz")],  # labels that do not match the images
        ["--data", str(good), "--classes", "empty"],  # a class with no images
        ["--data", str(good), "--classes", "zebra"],  # an unknown label name
        ["--data", str(good), "--normal-labels", "zebra"],
        ["--data", str(tmp_path / "missing.npz")],
    ]
    for args in cases:  # in-process, as in test_errors_are_one_line
        code = main([*base, *args])
        err = capsys.readouterr().err
        assert code == 2, (args, err)
        assert "Traceback" not in err
        lines = [line for line in err.splitlines() if line.startswith("error:")]
        assert len(lines) == 1, (args, err)


def test_a_new_run_never_mixes_with_an_old_one(trained_run: tuple[Path, Path], tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """An --out that holds a run is refused (its files untouched); --overwrite removes that run's files
    (the old test scores and figures too) and keeps anything else; without --out, runs/train, runs/train2, ..."""
    root, trained = trained_run
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    (run / "notes.txt").write_text("mine")
    before = (run / "model.pt").read_bytes()
    args = ["train", "--data", str(root / "train"), "--epochs", "1", "--batch-size", "8", *SMALL]
    assert main([*args, "--out", str(run)]) == 2
    assert "already holds a run; continue it with --resume" in capsys.readouterr().err
    assert (run / "model.pt").read_bytes() == before
    # --overwrite with data that are refused (a test folder as training data): the old run stays as it was
    assert main([*args[:2], str(root / "test"), *args[3:], "--out", str(run), "--overwrite"]) == 2
    assert "holds abnormal/ with images" in capsys.readouterr().err and (run / "model.pt").read_bytes() == before
    from tests.conftest import smooth_images, write_images

    write_images(tmp_path / "one", smooth_images(1))  # too few images: also refused before the old run is removed
    assert main([*args[:2], str(tmp_path / "one"), *args[3:], "--out", str(run), "--overwrite"]) == 2
    assert "too few" in capsys.readouterr().err and (run / "model.pt").read_bytes() == before
    assert main([*args, "--out", str(run), "--overwrite"]) == 0
    assert (run / "model.pt").read_bytes() != before and (run / "notes.txt").read_text() == "mine"
    assert not (run / "scores.csv").exists() and not (run / "evaluation.json").exists()
    assert not (run / "figures" / "examples_most_anomalous.png").exists()
    monkeypatch.chdir(tmp_path)
    assert main(args) == 0 and main(args) == 0
    assert (tmp_path / "runs" / "train" / "model.pt").exists() and (tmp_path / "runs" / "train2" / "model.pt").exists()


def test_training_folders_that_would_learn_anomalies_or_the_run_itself_are_refused(
        trained_run: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    root, _ = trained_run
    assert main(["train", "--data", str(root / "test"), "--out", str(root / "x"), *SMALL]) == 2
    assert f"holds abnormal/ with images: training reads every image below the folder, so those would be learnt as " \
        f"normal; give the folder of normal images only (e.g. {root / 'test' / 'normal'})" in capsys.readouterr().err
    assert main(["train", "--data", str(root / "train"), "--out", str(root / "train" / "run"), *SMALL]) == 2
    assert "is inside --data" in capsys.readouterr().err
    assert not (root / "x").exists() and not (root / "train" / "run").exists()


def test_report_given_a_file_names_the_folder_to_give(trained_run: tuple[Path, Path],
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    _, run = trained_run
    assert main(["report", str(run / "model.pt")]) == 2
    assert f"report takes the run or benchmark directory: skipganomaly report {run}" in capsys.readouterr().err


def test_a_start_that_failed_before_its_first_epoch_does_not_block_the_corrected_command(
        trained_run: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root, _ = trained_run
    run = tmp_path / "run"
    args = ["train", "--data", str(root / "train"), "--out", str(run), "--epochs", "1", "--batch-size", "8",
            *SMALL_DEFAULT]
    assert main([*args, "--model-arg", "k=500"]) == 2  # refused before the first epoch
    assert "needs at least 501 training images" in capsys.readouterr().err
    assert main(args) == 0
    assert len([line for line in (run / "metrics.jsonl").read_text().splitlines() if line]) == 1


def test_predict_scores_each_file_once_and_keeps_its_maps_apart(trained_run: tuple[Path, Path], tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """A file given twice (alone and in its folder) is one row; --save-maps must be new or empty and
    outside the inputs; --out must be a file; test --report-dir must not be a training run."""
    root, run = trained_run
    out = tmp_path / "p.csv"
    normal = root / "test" / "normal"
    one = sorted(normal.iterdir())[0]
    assert main(["predict", "--checkpoint", str(run), str(one), str(normal), "--out", str(out), "--no-progress"]) == 0
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 8 and rows[0]["path"] == str(one)
    (tmp_path / "maps").mkdir()
    (tmp_path / "maps" / "old.png").write_bytes(b"")
    cases = {("--save-maps", str(tmp_path / "maps")): "is not empty",
             ("--save-maps", str(normal / "maps")): "is inside the input folder",
             ("--out", str(tmp_path)): "is a folder; give the CSV file"}
    for extra, message in cases.items():
        args = ["predict", "--checkpoint", str(run), str(normal), "--out", str(out), "--no-progress", *extra]
        assert main(args) == 2 and message in capsys.readouterr().err
    assert not (normal / "maps").exists()
    with pytest.raises(ConfigError, match="is not empty"):  # the library call checks its maps folder as the CLI does
        predict_files(run, [normal], out, tmp_path / "maps", progress=False)
    assert main(["test", "--checkpoint", str(run), "--data", str(root / "test"), "--report-dir", str(run)]) == 2
    assert "holds a training run" in capsys.readouterr().err


def test_what_a_model_cannot_take_fails_before_any_data_is_read(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    """An image size or fraction that cannot work is one line before loading, not an error per cell or a
    run directory left behind."""
    bench = ["benchmark", "--data", str(tmp_path / "nowhere.npz"), "--out", str(tmp_path / "b"), "--no-progress"]
    cases = {("--models", "ganomaly", "--image-size", "48"): "power of two",
             ("--models", "knn", "--train-fraction", "1.5"): "--train-fraction must be above 0 and at most 1",
             ("--models", "knn", "--protocol", "leaky"): "unknown protocol",
             ("--models", "rotation", "--model-arg", "widths=[]"): "widths",
             ("--models", "knn", "--val-fraction", "0"): "the honest protocol takes its threshold from held-out",
             ("--models", "knn", "--protocol", "paper", "--patience", "2"): "paper protocol trains on every training"}
    for extra, message in cases.items():
        assert main([*bench, *extra]) == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "b").exists()
    (tmp_path / "afile").write_text("")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "model.pt").write_bytes(b"")  # a training run's folder
    for out, message in ((tmp_path / "afile", "is a file, not a folder"), (tmp_path / "run", "holds a training run")):
        assert main([*bench[:-3], "--out", str(out), "--models", "knn"]) == 2 and message in capsys.readouterr().err
    assert main(["train", "--data", str(tmp_path / "nowhere"), "--model", "ganomaly", "--image-size", "48",
                 "--out", str(tmp_path / "t")]) == 2
    assert "power of two" in capsys.readouterr().err and not (tmp_path / "t").exists()


def test_repeated_seeds_classes_and_models_run_once(tmp_path: Path) -> None:
    """`--seeds 0,0` is one seed, not a fake mean±std of one cell counted twice."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (90, 8, 8), dtype=np.uint8)
    data = tmp_path / "d.npz"
    np.savez(data, train_images=images, train_labels=np.arange(90) % 3, test_images=images,
             test_labels=np.arange(90) % 3)
    out = tmp_path / "b"
    assert main(["benchmark", "--data", str(data), "--models", "knn,knn", "--baselines", "knn", "--classes", "0,0",
                 "--seeds", "0,0", "--no-progress", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert len(results["cells"]) == 1 and results["config"]["seeds"] == [0]


def test_file_names_that_are_not_utf8_are_scored_reported_and_written_as_on_disk(image_root: Path) -> None:
    """Latin-1 names (Windows zips, Samba shares) are lone surrogates to Python: the CSVs keep their bytes
    (so the path written opens the file), the report shows them readably, and nothing crashes half-way."""
    import os

    odd = os.fsencode(image_root / "test" / "abnormal") + b"/latin1_\xe9.png"
    try:
        os.rename(next((image_root / "test" / "abnormal").iterdir()), odd)
    except OSError:
        pytest.skip("this file system takes UTF-8 names only")
    run = image_root / "run"
    assert main(["train", "--model", "pca", "--data", str(image_root), "--test", str(image_root / "test"),
                 "--out", str(run), "--no-progress", "--device", "cpu"]) == 0
    assert b"latin1_\xe9.png" in (run / "scores.csv").read_bytes()
    assert (run / "report.html").is_file()
    from skipganomaly.evaluation.report import _short  # the examples' captions, drawn into the figures

    assert _short(os.fsdecode(odd)) == "latin1_\ufffd.png"
    out = image_root / "scores.csv"
    assert main(["predict", "--checkpoint", str(run), str(image_root / "test"), "--out", str(out)]) == 0
    rows = out.read_bytes().splitlines()
    assert len(rows) == 17 and any(row.startswith(odd + b",") for row in rows)
    assert main(["report", str(run)]) == 0


def test_a_darker_12_bit_image_predicted_alone_is_flagged(tmp_path: Path) -> None:
    """`train` records the bit depth of its 12-bit training files, and `predict` reads a single file at it: a
    4x darker image (a failed lamp) is not brightened by its own scale into a normal-looking one."""
    from tests.data.test_images import _twelve_bit

    (tmp_path / "train").mkdir()
    for i in range(40):
        _twelve_bit(tmp_path / "train" / f"{i}.png", seed=i)
    dark = _twelve_bit(tmp_path / "dark.png", 0.25)
    run = tmp_path / "run"
    assert main(["train", "--model", "pca", "--channels", "1", "--data", str(tmp_path / "train"), "--out", str(run),
                 "--val-fraction", "0.5", "--no-progress", "--device", "cpu"]) == 0
    out = tmp_path / "scores.csv"
    assert main(["predict", "--checkpoint", str(run), str(dark), "--out", str(out)]) == 0
    assert next(csv.DictReader(out.open()))["label"] == "1"


def test_an_interrupted_predict_leaves_nothing_that_blocks_the_same_command(image_root: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C while the maps are written: no half-filled --save-maps folder (which the rerun would refuse as not
    empty), no CSV; the same command then completes."""
    from skipganomaly import workflows

    run = image_root / "run"
    assert main(["train", "--model", "pca", "--data", str(image_root), "--out", str(run), "--no-progress",
                 "--device", "cpu"]) == 0
    real = workflows.save_overlays

    def interrupted(folder, images, names, maps, **kw):  # type: ignore[no-untyped-def]
        real(folder, images[:3], names[:3], maps[:3], **kw)  # some maps are on disk when the user presses Ctrl-C
        raise KeyboardInterrupt

    monkeypatch.setattr(workflows, "save_overlays", interrupted)
    command = ["predict", "--checkpoint", str(run), str(image_root / "test"), "--out", str(image_root / "s.csv"),
               "--save-maps", str(image_root / "maps"), "--no-progress"]
    assert main(command) == 130
    assert not (image_root / "maps").exists() and not (image_root / "s.csv").exists()
    assert not [p for p in image_root.iterdir() if p.name.startswith(".")]
    monkeypatch.setattr(workflows, "save_overlays", real)
    assert main(command) == 0 and len(list((image_root / "maps").glob("*.png"))) == 16
    assert (image_root / "maps" / "maps.npz").is_file()
    rows = list(csv.DictReader((image_root / "s.csv").open()))
    assert all(Path(r["map"]).is_file() and Path(r["map"]).parent == image_root / "maps" for r in rows)


def test_a_second_sigterm_during_the_clean_up_of_a_nested_stop_is_ignored() -> None:
    """The CLI's handler around a sweep's: once the inner one fired, the outer clean-up (printing what is kept)
    must not be cut short by a second SIGTERM; the outermost block then restores the original handler."""
    import signal

    from skipganomaly.interrupts import Terminated, sigterm_as_interrupt

    original = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Terminated):
        with sigterm_as_interrupt():
            try:
                with sigterm_as_interrupt():
                    signal.raise_signal(signal.SIGTERM)
            except Terminated:
                assert signal.getsignal(signal.SIGTERM) == signal.SIG_IGN
                signal.raise_signal(signal.SIGTERM)  # ignored: the clean-up goes on
                raise
    assert signal.getsignal(signal.SIGTERM) == original


def test_a_benchmark_whose_every_cell_failed_exits_1_as_one_with_some_failed(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """1 is "cells failed" (the same command retries them), 2 is bad input: a sweep where all failed is the former."""
    from skipganomaly import sweep
    from skipganomaly.training import TrainingError

    def fail(*args: object, **kwargs: object) -> None:
        raise TrainingError("the loss became NaN at epoch 1")

    monkeypatch.setattr(sweep, "run_cell", fail)
    data = _own_npz(tmp_path / "mine.npz")
    assert main(["benchmark", "--data", str(data), "--models", "knn", "--normal-labels", "a,b,c", "--protocol",
                 "honest", "--no-progress", "--device", "cpu", "--out", str(tmp_path / "bench")]) == 1


def test_a_class_folder_named_in_latin_1_is_benchmarked_and_reported(tmp_path: Path) -> None:
    import os

    from tests.conftest import noise_images, smooth_images, write_images

    data = tmp_path / "classes"
    for name, images in ((b"a", smooth_images(12, seed=1)), (b"b", smooth_images(12, seed=2)),
                         (b"caf\xe9", noise_images(12))):
        folder = os.fsencode(data) + b"/" + name
        try:
            os.makedirs(folder)
        except OSError:
            pytest.skip("this file system takes UTF-8 names only")
        write_images(Path(os.fsdecode(folder)), images)
    out = tmp_path / "bench"
    assert main(["benchmark", "--data", str(data), "--models", "knn", "--protocol", "honest", "--no-progress",
                 "--device", "cpu", "--out", str(out)]) == 0
    assert (out / "report.html").is_file() and b"caf\xe9" in (out / "results.csv").read_bytes()


def test_printed_metrics_never_show_a_nonzero_value_as_zero() -> None:
    from skipganomaly.workflows import format_metrics

    line = format_metrics({"auroc": 0.96504, "threshold": 1.42585e-05, "precision": float("nan"), "n_normal": 30})
    assert line == "auroc=0.9650 threshold=1.426e-05 precision=nan n_normal=30"


def test_a_checkpoint_without_its_held_out_count_still_tests_and_reports(tmp_path: Path) -> None:
    """Early checkpoints did not record n_val_images: the report then says nothing about the threshold's origin
    rather than failing."""
    from skipganomaly import Detector
    from skipganomaly.workflows import calibration

    det = Detector.load(Path(__file__).parent / "fixtures" / "run-v1", device="cpu")
    assert calibration(det) == {"n_val_images": 5, "val_fraction": 0.2, "contamination": 0.05}
    det.n_val_images_ = None
    assert calibration(det) is None


def test_a_paper_only_benchmark_needs_no_held_out_images(tmp_path: Path) -> None:
    """The paper protocol trains on every image: --val-fraction 0 is its setting, not an error of the honest one's."""
    data = _own_npz(tmp_path / "mine.npz")
    assert main(["benchmark", "--data", str(data), "--models", "pca", "--classes", "a", "--protocol", "paper",
                 "--val-fraction", "0", "--no-progress", "--device", "cpu", "--out", str(tmp_path / "b")]) == 0


def test_tables_say_which_models_fit_in_one_pass_and_which_are_the_raw_pixel_baselines() -> None:
    from skipganomaly.evaluation.tables import one_pass_note
    assert one_pass_note(["skipganomaly", "knn"]) == (
        " (knn: fitted in one pass, whatever the epochs; raw-pixel baseline, yardsticks for the learned models: knn "
        "(mean distance to the k nearest training normals))")
    assert "pca (PCA reconstruction error), knn" in one_pass_note(["rotation", "pca", "knn"])
    assert one_pass_note(["rotation"]) == ""


def test_protocol_lists_take_both_anywhere_and_an_interrupted_benchmark_says_what_was_kept(tmp_path: Path) -> None:
    import argparse

    from skipganomaly.cli import _how_to_continue, _protocols
    assert _protocols("both,validate") == ["honest", "paper", "validate"]
    assert _protocols("validate, both, honest") == ["validate", "honest", "paper"]
    with pytest.raises(ConfigError, match="unknown protocol 'bogus'"):
        _protocols("both,bogus")
    args = argparse.Namespace(command="benchmark", out=tmp_path / "bench")
    assert _how_to_continue(args) == "no cell had finished; the same command starts again"
    (tmp_path / "bench" / "cells").mkdir(parents=True)
    (tmp_path / "bench" / "cells" / "knn__a__seed0__honest.json").write_text("{}")
    assert _how_to_continue(args).startswith(f"finished cells are kept in {tmp_path / 'bench'}")


def test_predict_reads_a_large_folder_in_parts_with_the_same_rows_and_each_warning_once(
        trained_run: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """Without maps, predict reads and scores the images a part at a time (memory bounded whatever the folder's
    size): the CSV is the one a single pass writes, and the warnings about the set are said once for all of it."""
    import skipganomaly.workflows as workflows
    from tests.conftest import noise_images, smooth_images, write_images

    _, run = trained_run
    folder = tmp_path / "parts"
    write_images(folder, np.concatenate([smooth_images(5, seed=3), noise_images(4)]))
    (folder / "img_002.png").write_bytes(b"not an image")  # unreadable, in the first part
    Image.fromarray(np.zeros((32, 96, 3), np.uint8)).save(folder / "strip.png")  # shaped unlike the training files
    whole, parts = tmp_path / "whole.csv", tmp_path / "parts.csv"
    assert main(["predict", "--checkpoint", str(run), str(folder), "--out", str(whole), "--no-progress"]) == 1
    monkeypatch.setattr(workflows, "PREDICT_PART_BYTES", 3 * 3 * 32 * 32)  # 3 images a part: 4 parts
    read, parts_read = workflows.read_image_files, []
    monkeypatch.setattr(workflows, "read_image_files", lambda paths, *a, **k: (parts_read.append(len(paths)),
                                                                               read(paths, *a, **k))[1])
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="skipganomaly"):
        assert main(["predict", "--checkpoint", str(run), str(folder), "--out", str(parts), "--no-progress"]) == 1
    assert parts_read == [3, 3, 3, 1]
    assert parts.read_text() == whole.read_text() and len(parts.read_text().splitlines()) == 1 + 10
    assert caplog.text.count("shaped unlike the training images") == 1
    assert caplog.text.count("skipped 1 of 10 image files that could not be read") == 1


def test_an_interrupted_predict_keeps_its_finished_parts_and_the_same_command_continues(
        trained_run: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Ctrl-C during predict keeps the parts scored so far (and says so); the same command reads only the rest and
    writes the CSV an uninterrupted call writes, then removes what it kept; another threshold keeps the scores, a
    file replaced in between (or another checkpoint) scores everything again."""
    import skipganomaly.workflows as workflows
    from skipganomaly.interrupts import INTERRUPTED_EXIT
    from skipganomaly.scored_parts import partial_file
    from tests.conftest import noise_images, smooth_images, write_images

    _, run = trained_run
    folder = tmp_path / "many"
    write_images(folder, np.concatenate([smooth_images(5, seed=3), noise_images(5)]))
    whole, out = tmp_path / "whole.csv", tmp_path / "out.csv"
    assert main(["predict", "--checkpoint", str(run), str(folder), "--out", str(whole), "--no-progress"]) == 0
    monkeypatch.setattr(workflows, "PREDICT_PART_IMAGES", 3)  # 4 parts
    read, parts_read = workflows.read_image_files, []

    def reading(paths: list[Path], *args: object, **kwargs: object) -> object:
        if stop_at is not None and len(parts_read) == stop_at:
            raise KeyboardInterrupt
        parts_read.append(len(paths))
        return read(paths, *args, **kwargs)

    monkeypatch.setattr(workflows, "read_image_files", reading)
    command = ["predict", "--checkpoint", str(run), str(folder), "--out", str(out), "--no-progress"]
    stop_at: int | None = 2
    capsys.readouterr()
    assert main(command) == INTERRUPTED_EXIT
    assert f"interrupted; 2 finished parts (6 images read) kept in {partial_file(out)}; the same command continues" \
           in capsys.readouterr().err
    assert not out.exists() and partial_file(out).exists()
    stop_at, parts_read[:] = None, []
    assert main(command) == 0
    assert parts_read == [3, 1]  # only the parts the interrupted call had not finished
    assert out.read_text() == whole.read_text() and not partial_file(out).exists()
    stop_at, parts_read[:] = 1, []
    assert main(command) == INTERRUPTED_EXIT
    stop_at = None
    assert main([*command, "--threshold", "0.5"]) == 0  # another cut labels the same scores: they are kept
    assert parts_read == [3, 3, 3, 1] and not partial_file(out).exists()
    stop_at, parts_read[:] = 1, []
    assert main(command) == INTERRUPTED_EXIT
    stop_at = None
    shutil.copy2(folder / "img_009.png", folder / "img_000.png")  # replaced, its old times kept (cp -p): scored again
    assert main(command) == 0
    assert parts_read == [3, 3, 3, 3, 1] and not partial_file(out).exists()


def test_an_out_path_that_would_destroy_a_file_or_cannot_be_written_is_refused_before_any_work(
        trained_run: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`--out` of predict, test and train: a run's checkpoint or config, a checkpoint under any name, an image, a
    folder, or a path under a file are each one line, exit 2, with the file untouched; so are a run or report folder
    inside the test folder (the next test would score its figures as a class)."""
    root, run = trained_run
    model = (run / "model.pt").read_bytes()
    image = root / "test" / "normal" / "img_000.png"
    renamed = tmp_path / "detector.bin"
    renamed.write_bytes(model)
    (tmp_path / "afile").write_text("x")
    predict = ["predict", "--checkpoint", str(run), str(root / "test"), "--no-progress", "--out"]
    test = ["test", "--checkpoint", str(run), "--data", str(root / "test"), "--no-report", "--no-progress", "--out"]
    for command, out, said in ((predict, run / "model.pt", "is the model.pt of the run in"),
                               (predict, run / "config.yaml", "is the config.yaml of the run in"),
                               (predict, renamed, "is a detector checkpoint (a PyTorch file)"),
                               (test, image, "has an image file extension"),
                               (test, run / "model.pt", "is the model.pt of the run in"),
                               (test, root, "is a folder"),
                               (test, tmp_path / "afile" / "m.json", "afile is a file, not a folder"),
                               (["train", "--data", str(root / "train"), "--no-progress", "--out"], tmp_path / "afile",
                                "is a file, not a folder"),
                               (["train", "--data", str(root / "train"), "--test", str(root / "test"), "--no-progress",
                                 "--out"], root / "test" / "run", "is inside the test folder"),
                               (["train", "--data", str(root / "train"), "--no-progress", "--out"], root / "test" / "normal",
                                "holds image files (img_000.png, img_001.png, img_002.png ...), not results"),
                               (["demo", "--no-progress", "--out"], root / "test" / "normal", "holds image files"),
                               (["demo", "--no-progress", "--out"], run / "model.pt", "is a file, not a folder"),
                               (test[:-3] + ["--no-progress", "--report-dir"], root / "test" / "report",
                                "is inside the test folder")):
        capsys.readouterr()
        assert main([*command, str(out)]) == 2, out
        err = capsys.readouterr().err
        assert said in err and err.count("\n") == 1, err
    assert (run / "model.pt").read_bytes() == model == renamed.read_bytes() and image.stat().st_size > 100


def test_predict_gives_a_link_its_own_row(trained_run: tuple[Path, Path], tmp_path: Path) -> None:
    """A folder with a file and a link to it: two rows, each scored alike (the file's row was dropped as 'given
    more than once'); the same file given alone and in its folder is still one row."""
    from tests.conftest import smooth_images, write_images

    _, run = trained_run
    [image] = write_images(tmp_path / "in", smooth_images(1, seed=4))
    (tmp_path / "in" / "link.png").symlink_to(image)
    out = tmp_path / "p.csv"
    assert main(["predict", "--checkpoint", str(run), str(tmp_path / "in"), str(image), "--out", str(out),
                 "--no-progress"]) == 0
    rows = list(csv.DictReader(out.open()))
    assert [Path(r["path"]).name for r in rows] == ["img_000.png", "link.png"] and rows[0]["score"] == rows[1]["score"]


def test_small_slips_get_messages_that_say_what_to_do(trained_run: tuple[Path, Path], tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """--no-progress is accepted by every command (scripts pass it to all); the training state given as the
    checkpoint names the detector beside it; a file given as a test folder is called a file."""
    root, run = trained_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    assert main(["report", str(copy), "--no-progress"]) == 0
    assert main(["export", "--checkpoint", str(copy), "--out", str(tmp_path / "m.onnx"), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["predict", "--checkpoint", str(copy / "model.state.pt"), str(root / "test"), "--out",
                 str(tmp_path / "p.csv"), "--no-progress"]) == 2
    assert f"but a training state, read by --resume; give the detector beside it, {copy / 'model.pt'}" in \
        capsys.readouterr().err
    assert main(["test", "--checkpoint", str(copy), "--data", str(root / "test" / "normal" / "img_000.png"),
                 "--no-report", "--no-progress"]) == 2
    assert "img_000.png is a file, not a folder" in capsys.readouterr().err
    from skipganomaly import Detector

    unfinished = Detector.load(copy)
    unfinished.threshold_ = None  # as a run stopped before its last epoch leaves it
    unfinished.save(copy / "model.pt")
    assert main(["test", "--checkpoint", str(copy / "model.pt"), "--data", str(root / "test"), "--no-report",
                 "--no-progress"]) == 2
    assert f"train --resume {copy}` finishes it" in capsys.readouterr().err


def test_the_small_rules_of_outputs_and_inputs(tmp_path: Path) -> None:
    """A run's clear() removes the baselines' score files only (a user's *_scores.csv stays); `a/../b.png` is one
    input; any zip that torch did not write (a spreadsheet) is not taken for a checkpoint."""
    import zipfile

    from skipganomaly.cli import _torch_file
    from skipganomaly.run_directory import RunDirectory
    from skipganomaly.workflows import _input_files

    run = RunDirectory(tmp_path / "run")
    run.root.mkdir()
    for name in ("pca_scores.csv", "knn_scores.csv", "customer_scores.csv", "config.yaml"):
        (run.root / name).write_text("x")
    run.clear()
    assert sorted(p.name for p in run.root.iterdir()) == ["customer_scores.csv"]
    (tmp_path / "a").mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "b.png")
    paths, _ = _input_files([tmp_path / "b.png", tmp_path / "a" / ".." / "b.png"])
    assert paths == [tmp_path / "b.png"]
    with zipfile.ZipFile(tmp_path / "sheet.xlsx", "w") as sheet:
        sheet.writestr("xl/workbook.xml", "<workbook/>")
    torch.save({"w": torch.zeros(1)}, tmp_path / "m.bin")
    assert not _torch_file(tmp_path / "sheet.xlsx") and _torch_file(tmp_path / "m.bin")
