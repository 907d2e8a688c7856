"""Benchmark sweeps: cells written as they finish, resumable, both protocols, tables."""

from __future__ import annotations

import csv
import itertools
import json
import logging
import multiprocessing
import re
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from skipganomaly import sweep as benchmark
from skipganomaly import detector as detector_module
from skipganomaly.detector import DetectorSettings, model_option_names
from tests.conftest import find_real_cifar10
from skipganomaly.sweep import SweepConfig, run_sweep
from skipganomaly.data.cifar10 import Cifar10, leave_one_class_out
from skipganomaly.errors import ConfigError
from skipganomaly.evaluation import benchmark_table
from skipganomaly.evaluation.metrics import evaluate_scores
from skipganomaly.evaluation.tables import summarise
from skipganomaly.models import create, list_models
from skipganomaly.provenance import git_commit
from skipganomaly.training import EpochRecord, TrainingError, batched_apply
from tests.conftest import SMALL_WIDTHS, blob_images, noise_images, smooth_images


def _toy_cifar() -> Cifar10:
    """Class 8 ('ship') is noise, the other classes smooth images: a known answer (honest AUROC > 0.9)."""
    def part(n_per_class: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = [], []
        for c in range(10):
            arr = noise_images(n_per_class, seed=seed + c) if c == 8 else smooth_images(n_per_class, seed=seed + c)
            images.append(torch.from_numpy(arr).permute(0, 3, 1, 2))
            labels.append(torch.full((n_per_class,), c))
        return torch.cat(images).contiguous(), torch.cat(labels)

    train_x, train_y = part(6, 0)
    test_x, test_y = part(2, 100)
    return Cifar10(train_x, train_y, test_x, test_y)


def _config(**kw: object) -> SweepConfig:
    """A sweep config; keyword arguments that are detector settings (epochs, lr, amp, ...) go to its settings."""
    sweep_fields = {"models", "classes", "seeds", "protocols", "model_options", "train_fraction", "test_fraction",
                    "dataset"}
    base = dict(models=["skipganomaly++"], classes=["ship"], seeds=[0], protocols=["honest", "paper"],
                model_options={"skipganomaly++": {"widths": SMALL_WIDTHS}})
    settings = {"epochs": 2, "batch_size": 16, "device": "cpu", "progress": False}
    settings.update({k: v for k, v in kw.items() if k not in sweep_fields})
    base.update({k: v for k, v in kw.items() if k in sweep_fields})
    return SweepConfig(**base, settings=DetectorSettings.from_params(**settings))  # type: ignore[arg-type]


def test_sweep_writes_each_cell_and_resumes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = _toy_cifar()
    results = run_sweep(lambda: data, _config(), tmp_path).results
    cells = sorted(p.name for p in (tmp_path / "cells").iterdir())
    assert [re.sub(r"__[0-9a-f]{10}\.", "__HASH.", name) for name in cells] == [
        "skipganomalypp__ship__seed0__honest__HASH.json", "skipganomalypp__ship__seed0__honest__HASH.scores.npz",
        "skipganomalypp__ship__seed0__paper__HASH.json", "skipganomalypp__ship__seed0__paper__HASH.scores.npz"]
    for result in results:  # the saved scores are the ones behind each cell's AUROC (paper: the chosen epoch's)
        with np.load(tmp_path / "cells" / result["scores_file"]) as saved:
            assert len(saved["scores"]) == result["test_images"]
            metrics = evaluate_scores(saved["scores"], saved["labels"], 0.0)
            assert (metrics["auroc"], metrics["auprc"]) == pytest.approx((result["auroc"], result["auprc"]))
        assert result["git_commit"] == git_commit()
    honest, paper = results
    # Noise against smooth images: the direction is known, so a flipped score sign, swapped labels or a
    # wrong un-shuffling permutation (scores landing on random labels) fails here.
    assert honest["auroc"] > 0.9 and paper["auroc"] > 0.9
    # Honest: 5% of the 54 training normals held out for the threshold; paper: trained on all of them.
    assert (honest["train_images"], honest["val_images"]) == (51, 3)
    assert (paper["train_images"], paper["val_images"]) == (54, 0)
    from skipganomaly.provenance import command_line, cpu_model
    assert (honest["cpu"], honest["command"]) == (cpu_model(), command_line())  # each cell's own machine and call
    assert honest["test_images"] == 18 + 6 + 2 and honest["selected_epoch"] == 2
    assert len(paper["auroc_per_epoch"]) == 2
    assert paper["auroc"] == max(paper["auroc_per_epoch"])
    # every option recorded, defaults included; the reference's detach_latent and the given widths among them
    assert {k: paper["model_options"][k] for k in ("detach_latent", "widths")} == {"detach_latent": True,
                                                                                   "widths": SMALL_WIDTHS}
    assert set(paper["model_options"]) == set(model_option_names("skipganomaly++"))

    def must_not_run(*args: object, **kwargs: object) -> None:
        raise AssertionError("a finished cell was run again")

    monkeypatch.setattr(benchmark, "run_cell", must_not_run)
    again = run_sweep(lambda: data, _config(), tmp_path).results
    assert [r["auroc"] for r in again] == [r["auroc"] for r in results]


def _no_training(model, train_images, val_images, config, on_epoch_end, train_index, **_):  # type: ignore[no-untyped-def]
    """Stands in for the training loop: one epoch that changes nothing, announced as the loop does."""
    _no_training.trained_on = len(train_index)  # type: ignore[attr-defined]
    record = EpochRecord(1, {}, float("nan"), 0, 0.0, 0.0)
    on_epoch_end(record)
    return [record]


def test_honest_scores_go_back_to_their_own_images(monkeypatch: pytest.MonkeyPatch) -> None:
    """The honest cell scores a shuffled test set; each score must come back to its image's place
    (a wrong inverse permutation puts scores on other images' labels, and this fails)."""
    data = _toy_cifar()
    test = leave_one_class_out(data, "ship", 1.0, 1.0, 0).test
    position = {bytes(img.numpy()): i for i, img in enumerate(test)}
    assert len(position) == len(test)
    seen: list[list[int]] = []

    def identity_scores(self, images, batch_size=None):  # type: ignore[no-untyped-def]
        seen.append([position[bytes(img.numpy())] for img in torch.as_tensor(images)])
        return np.array(seen[-1], dtype=np.float64)

    monkeypatch.setattr(detector_module, "train", _no_training)
    monkeypatch.setattr(detector_module.Detector, "decision_function", identity_scores)
    _, _, scores = benchmark.run_cell(lambda: data, "egbad", "ship", 0, "honest", _config(models=["egbad"]))
    assert seen[0] != list(range(len(test)))  # the test set was scored shuffled
    assert scores.tolist() == list(range(len(test)))  # and every score is back at its image


def _fake_run_cell(load, model, cls, seed, protocol, config, deadline=None):  # type: ignore[no-untyped-def]
    """A cell without training: what run_cell returns, for testing which cells a sweep (re)runs."""
    _fake_run_cell.calls += 1  # type: ignore[attr-defined]
    result = {"model": model, "class": cls, "seed": seed, "protocol": protocol, "auroc": 0.5,
              "settings": benchmark.cell_settings(model, cls, seed, protocol, config)}
    return result, np.array([0, 1]), np.array([0.0, 1.0])


def test_progress_bar_fills_by_expected_work_not_by_cells(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A raw-pixel baseline's cell takes seconds and a trained model's minutes: the bar (and so its estimate of
    the time left) advances by the cells' expected work, in training epochs, and names the cells done."""
    frames: list[tuple[float, float, str]] = []

    class Recorder:
        def __init__(self, total: float, initial: float = 0, **_: object) -> None:
            self.total, self.n, self.postfix = total, initial, ""

        def set_postfix_str(self, text: str, refresh: bool = True) -> None:
            self.postfix = text

        def update(self, n: float = 1) -> None:
            self.n += n
            frames.append((self.total, self.n, self.postfix))

        def close(self) -> None:
            pass

    import tqdm.auto
    monkeypatch.setattr(tqdm.auto, "tqdm", Recorder)
    _fake_run_cell.calls = 0  # type: ignore[attr-defined]
    monkeypatch.setattr(benchmark, "run_cell", _fake_run_cell)
    config = _config(models=["pca", "skipganomaly++"], protocols=["honest"], epochs=4)
    assert benchmark.cell_work("pca", config) == benchmark.CLOSED_FORM_WORK
    assert benchmark.cell_work("skipganomaly++", config) == 4
    run_sweep(lambda: None, config, tmp_path)
    work = benchmark.CLOSED_FORM_WORK
    assert frames == [(work + 4, pytest.approx(work), "1/2 cells"), (work + 4, pytest.approx(work + 4), "2/2 cells")]
    frames.clear()  # resumed with a second class: the finished cells' work is where the bar starts
    run_sweep(lambda: None, _config(models=["pca", "skipganomaly++"], protocols=["honest"], epochs=4,
                                    classes=["ship", "cat"]), tmp_path)
    assert _fake_run_cell.calls == 4  # type: ignore[attr-defined]
    assert frames[-1] == (2 * (work + 4), pytest.approx(2 * (work + 4)), "4/4 cells")
    assert frames[0][1:] == (pytest.approx(work + 4 + work), "3/4 cells")


@pytest.mark.parametrize("change", [dict(epochs=1), dict(amp=True), dict(batch_size=8), dict(train_fraction=0.5),
                                    dict(test_fraction=0.5),
                                    dict(model_options={"skipganomaly++": {"detach_latent": True}}),
                                    dict(model_options={"skipganomaly++": {"widths": [8, 8, 16, 16, 16]}})])
def test_a_cell_saved_with_other_settings_is_rerun(change: dict[str, object], tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    _fake_run_cell.calls = 0  # type: ignore[attr-defined]
    monkeypatch.setattr(benchmark, "run_cell", _fake_run_cell)
    run_sweep(lambda: None, _config(protocols=["honest"]), tmp_path)
    run_sweep(lambda: None, _config(protocols=["honest"]), tmp_path)
    assert _fake_run_cell.calls == 1  # type: ignore[attr-defined]  # same settings: reused
    with caplog.at_level("INFO", logger="skipganomaly"):
        rerun = run_sweep(lambda: None, _config(protocols=["honest"], **change), tmp_path).results
    assert _fake_run_cell.calls == 2  # type: ignore[attr-defined]
    assert rerun[0]["settings"] == benchmark.cell_settings("skipganomaly++", "ship", 0, "honest",
                                                           _config(protocols=["honest"], **change))
    assert len(list((tmp_path / "cells").glob("*.json"))) == 2  # the other settings' cell is kept, not overwritten
    differing = next(iter(change)) if next(iter(change)) != "model_options" else "model_options"
    assert f"other settings ({differing})" in caplog.text


@pytest.mark.parametrize("model", ["pca", "knn"])
def test_a_closed_form_cell_is_reused_when_only_training_settings_change(model: str, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Epochs, batch, optimiser and schedule do not touch a raw-pixel baseline's scores: a benchmark rerun
    with other values must not recompute its cells, while a setting it does read (the seed) still does."""
    _fake_run_cell.calls = 0  # type: ignore[attr-defined]
    monkeypatch.setattr(benchmark, "run_cell", _fake_run_cell)
    run_sweep(lambda: None, _config(models=[model], protocols=["honest"]), tmp_path)
    for change in (dict(epochs=7), dict(lr=1e-3), dict(batch_size=8), dict(lr_schedule="cosine"), dict(patience=2),
                   dict(beta1=0.9)):
        run_sweep(lambda: None, _config(models=[model], protocols=["honest"], **change), tmp_path)
    assert _fake_run_cell.calls == 1  # type: ignore[attr-defined]
    run_sweep(lambda: None, _config(models=[model], protocols=["honest"], amp=True), tmp_path)
    assert _fake_run_cell.calls == 2  # type: ignore[attr-defined]
    gradient_only = {f.name for f in detector_module.setting_fields() if f.metadata["gradient_only"]}
    assert gradient_only == {"epochs", "batch_size", "lr", "lr_schedule", "beta1", "beta2", "d_reset_threshold",
                             "patience"}
    assert gradient_only <= set(benchmark.cell_settings("rotation", "ship", 0, "honest", _config()))


def test_device_and_threads_do_not_change_the_cell_key() -> None:
    assert benchmark.cell_settings("egbad", "ship", 0, "paper", _config(device="cpu")) == \
        benchmark.cell_settings("egbad", "ship", 0, "paper", _config(device="auto"))


# What each reference scores its test set with: the PyTorch references never call eval(), the
# TensorFlow ones (EGBAD, AnoGAN) score with is_training=False (spec sections C, F).
REFERENCE_TRAIN_MODE = {"skipganomaly++": True, "skipganomaly++rot": True, "skipganomaly": True, "ganomaly": True, "egbad": False,
                        "anogan": False, "pca": False, "knn": False, "rotation": False}


def test_every_model_says_how_its_reference_scores() -> None:
    """The paper's models as their references do; any other model (no reference code) in eval mode."""
    assert {name: benchmark.get_model_class(name).reference_scores_in_train_mode for name in list_models()} == \
        {name: REFERENCE_TRAIN_MODE.get(name, False) for name in list_models()}


@pytest.mark.parametrize("name", list_models())
def test_a_paper_cell_applies_its_models_reference_quirks(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without training: the model is built with its reference options, trained on every training
    normal, and the class-ordered test set is scored in batches of 64 in the reference's mode."""
    built: dict[str, object] = {}
    scored: list[tuple[int, bool, torch.Tensor]] = []

    def spy_create(model_name: str, **kwargs: object) -> torch.nn.Module:
        built.update(kwargs)
        return create(model_name, **kwargs)

    def position_scores(fn, model, images, batch_size, device, amp=False, train_mode=False):  # type: ignore[no-untyped-def]
        scored.append((batch_size, train_mode, images))
        return torch.arange(len(images), dtype=torch.float32)  # AUROC 1 only if normals come first

    monkeypatch.setattr(detector_module, "create", spy_create)
    monkeypatch.setattr(detector_module, "train", _no_training)
    monkeypatch.setattr(benchmark, "batched_apply", position_scores)
    data = _toy_cifar()
    result, labels, _ = benchmark.run_cell(lambda: data, name, "ship", 0, "paper", _config(models=[name]))
    reference = benchmark.get_model_class(name).reference_options()
    assert {k: built[k] for k in reference} == reference
    assert _no_training.trained_on == 54 and result["train_images"] == 54  # type: ignore[attr-defined] and result["val_images"] == 0
    assert [(b, mode) for b, mode, _ in scored] == [(64, REFERENCE_TRAIN_MODE.get(name, False))]
    assert labels.tolist() == [0] * 18 + [1] * 8 and result["auroc"] == 1.0


def _three_epochs(model, train_images, val_images, config, on_epoch_end, **_):  # type: ignore[no-untyped-def]
    records = [EpochRecord(e, {}, float("nan"), 0, 0.0, 0.0) for e in (1, 2, 3)]
    for record in records:
        on_epoch_end(record)
    return records


def test_paper_cell_keeps_the_first_of_tied_best_epochs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Epochs 2 and 3 tie on the best AUROC with different scores: the cell names epoch 2 and its
    saved scores are epoch 2's (one rule, as the reference keeps the first)."""
    epoch_scores = [np.r_[np.ones(18), np.zeros(8)],  # epoch 1: AUROC 0
                    np.r_[np.zeros(18), np.ones(8)],  # epoch 2: AUROC 1
                    np.r_[np.zeros(18), 2 * np.ones(8)]]  # epoch 3: AUROC 1, other scores
    calls = iter(epoch_scores)

    def next_epoch_scores(fn, model, images, batch_size, device, amp=False, train_mode=False):  # type: ignore[no-untyped-def]
        return torch.from_numpy(next(calls))

    monkeypatch.setattr(benchmark, "batched_apply", next_epoch_scores)
    monkeypatch.setattr(detector_module, "train", _three_epochs)
    data = _toy_cifar()
    result, _, scores = benchmark.run_cell(lambda: data, "egbad", "ship", 0, "paper", _config(models=["egbad"],
                                                                                                epochs=3))
    assert result["auroc_per_epoch"] == [0.0, 1.0, 1.0] and result["selected_epoch"] == 2
    assert np.array_equal(scores, epoch_scores[1])


def test_train_mode_scoring_depends_on_the_batch_and_restores_state() -> None:
    model = create("ganomaly")
    images = torch.from_numpy(blob_images(8)).permute(0, 3, 1, 2).contiguous()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    full = batched_apply(model.score, model, images, 8, torch.device("cpu"), train_mode=True)
    halves = batched_apply(model.score, model, images, 4, torch.device("cpu"), train_mode=True)
    assert not torch.allclose(full, halves)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_unknown_protocol_and_model_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="protocol"):
        _config(protocols=["cheating"])
    with pytest.raises(ConfigError, match="unknown model"):
        _config(models=["nope"])


def test_table_shows_ours_and_the_paper() -> None:
    results = [{"model": "skipganomaly++", "class": "ship", "protocol": "honest", "auroc": a} for a in (0.4, 0.6)]
    table = benchmark_table(summarise(results), ["skipganomaly++"], ["ship", "bird"], "honest")
    assert "0.500±0.141 (0.998)" in table and "- (0.819)" in table  # sample std (ddof=1): sqrt(0.02)
    # the mean column: the paper's over the same columns as ours (ship: bird has no number of ours), not all ten
    assert table.rstrip().endswith("| 0.500 (0.998) |")
    both = benchmark_table(summarise(results + [{**results[0], "class": "bird", "auroc": 0.7}]), ["skipganomaly++"],
                           ["ship", "bird"], "honest")
    assert both.rstrip().endswith("| 0.600 (0.908) |")


def test_a_cell_resting_on_few_test_images_is_marked_and_the_note_says_why() -> None:
    """One abnormal image behind an AUROC (a class of two images) is not a number to read to three decimals."""
    from skipganomaly.evaluation.tables import FEW_MARK, table_notes

    cells = [{"model": "pca", "class": "lonely", "protocol": p, "auroc": 0.261, "test_images": 41, "test_abnormal": 1}
             for p in ("honest", "paper")]  # a paper cell records no n_normal/n_abnormal, but these counts
    cells += [{"model": "pca", "class": "line", "protocol": "honest", "auroc": 0.9, "test_images": 70,
               "test_abnormal": 30}, {"model": "knn", "class": "line", "protocol": "honest", "auroc": 0.8}]
    summary = summarise(cells)
    table = benchmark_table(summary, ["pca", "knn"], ["lonely", "line"], "honest", paper=False)
    assert f"| 0.261{FEW_MARK} | 0.900 |" in table and f"0.800{FEW_MARK}" not in table
    assert f"0.261{FEW_MARK}" in benchmark_table(summary, ["pca"], ["lonely"], "paper", paper=False)
    assert "fewer than 10 normal or abnormal images" in table_notes(summary)
    assert "fewer than" not in table_notes(summarise(cells[2:]))


def test_cli_benchmark_on_real_cifar(tmp_path: Path) -> None:
    from skipganomaly.cli import main
    from tests.data.test_cifar10 import REAL

    if not (REAL / "cifar-10-batches-py").is_dir() and os.environ.get("CI") != "true":  # CI has it: fail there
        pytest.skip(f"real CIFAR-10 not found at {REAL}/cifar-10-batches-py")
    out = tmp_path / "bench"
    assert main(["benchmark", "--data-dir", str(REAL), "--models", "ganomaly", "--classes", "ship",
                 "--protocol", "both", "--epochs", "1", "--train-fraction", "0.004", "--test-fraction", "0.01",
                 "--out", str(out), "--no-progress", "--device", "cpu"]) == 0
    saved = json.loads((out / "results.json").read_text())
    assert {c["protocol"] for c in saved["cells"]} == {"honest", "paper"}
    assert [c["model"] for c in saved["cells"]] == ["ganomaly"] * 2 + ["pca"] * 2 + ["knn"] * 2  # the baselines too
    assert saved["environment"]["torch"] == torch.__version__
    assert "ganomaly" in (out / "table.md").read_text()
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert list(rows[0])[:4] == ["model", "class", "seed", "protocol"] and "false_alarm_rate" in rows[0]
    assert all(row["false_alarm_rate"] != "" for row in rows if row["protocol"] == "honest")
    page = (out / "report.html").read_text()
    assert "0.616)" in page  # GANomaly's ship AUROC in the paper's Table 1, beside ours
    assert page.count("data:image/png;base64,") == 6  # one ROC figure per model and protocol


def _toy_or_crash() -> Cifar10:
    """The toy set, except in the process of an EGBAD cell, which dies as if killed for memory."""
    if "egbad" in multiprocessing.current_process().name:
        os.kill(os.getpid(), signal.SIGKILL)
    return _toy_cifar()


def _slow_cifar() -> Cifar10:
    """The toy set, after writing this worker's pid where SLOW_CIFAR_PIDS says and sleeping a minute."""
    Path(os.environ["SLOW_CIFAR_PIDS"], str(os.getpid())).touch()
    time.sleep(60)
    return _toy_cifar()


def test_a_terminated_sweep_stops_its_worker_processes(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    pids.mkdir()
    code = ("from pathlib import Path; from skipganomaly.sweep import run_sweep; "
            "from tests.test_benchmark import _config, _slow_cifar; "
            f"run_sweep(_slow_cifar, _config(models=['knn', 'pca'], protocols=['honest']), Path({str(tmp_path)!r}), "
            "workers=2)")
    sweep = subprocess.Popen([sys.executable, "-c", code], env={**os.environ, "SLOW_CIFAR_PIDS": str(pids)},
                             cwd=Path(__file__).resolve().parents[1], stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while len(list(pids.iterdir())) < 2 and time.monotonic() < deadline and sweep.poll() is None:
            time.sleep(0.2)
        workers = [int(p.name) for p in pids.iterdir()]
        if len(workers) != 2:
            sweep.kill()
            raise AssertionError(f"the workers did not start: {sweep.communicate()[1][-2000:]}")
        sweep.send_signal(signal.SIGTERM)
        sweep.communicate(timeout=30)
    finally:
        if sweep.poll() is None:
            sweep.kill()
    time.sleep(0.5)
    mark = f"SLOW_CIFAR_PIDS={pids}".encode()  # in this sweep's workers' environment only: pids are reused

    def ours(pid: int) -> bool:
        try:
            return mark in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:  # gone
            return False

    alive = [pid for pid in workers if ours(pid)]
    for pid in alive:  # do not leave them running if the test fails
        os.kill(pid, signal.SIGKILL)
    assert not alive, "worker processes outlived the terminated sweep"


def test_parallel_workers_match_sequential_and_a_crash_loses_one_cell(tmp_path: Path) -> None:
    config = _config(models=["ganomaly", "egbad"], classes=["ship", "cat"], protocols=["honest"], epochs=1)
    threads = torch.get_num_threads()  # 2, or 1 in a pytest-xdist worker
    torch.set_num_threads(max(1, threads // 2))  # what each of the 2 workers gets from this process
    try:
        sequential = run_sweep(_toy_cifar, _config(models=["ganomaly"], classes=["ship", "cat"], protocols=["honest"],
                                                   epochs=1),
                               tmp_path / "seq").results
    finally:
        torch.set_num_threads(threads)
    outcome = run_sweep(_toy_or_crash, config, tmp_path / "par", workers=2)
    assert sorted(key for key, _ in outcome.failures) == ["egbad__cat__seed0__honest", "egbad__ship__seed0__honest"]
    assert all("exit code -9" in why for _, why in outcome.failures)
    assert [(r["class"], r["auroc"]) for r in outcome.results] == [(r["class"], r["auroc"]) for r in sequential]
    # each cell records its own warnings, in a worker process or not, however often the console was spared them
    assert [r["warnings"] for r in outcome.results] == [r["warnings"] for r in sequential]
    assert all(any("threshold_ rests on" in w for w in r["warnings"]) for r in sequential)
    assert sorted(p.name.rsplit("__", 1)[0] for p in (tmp_path / "par" / "cells").glob("*.json")) == [
        "ganomaly__cat__seed0__honest", "ganomaly__ship__seed0__honest"]


def _make_cat_cells_fail(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every cell of class 'cat' fails as a NaN loss would; the others run."""
    real = benchmark.run_cell

    def nan_for_cat(load, model, cls, *rest, **kw):  # type: ignore[no-untyped-def]
        if cls == "cat":
            raise TrainingError("loss g_con is not finite at epoch 1, step 1")
        return real(load, model, cls, *rest, **kw)

    monkeypatch.setattr(benchmark, "run_cell", nan_for_cat)


def test_a_failing_cell_does_not_stop_a_sequential_sweep(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _make_cat_cells_fail(monkeypatch)
    data = _toy_cifar()
    outcome = run_sweep(lambda: data, _config(models=["ganomaly"], classes=["cat", "ship"], protocols=["honest"],
                                              epochs=1), tmp_path)
    assert [r["class"] for r in outcome.results] == ["ship"]
    assert outcome.failures == [("ganomaly__cat__seed0__honest", "loss g_con is not finite at epoch 1, step 1")]


def test_validate_never_shows_the_test_class_to_the_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every image that reaches the detector (training, threshold, test) is recorded: none is a ship."""
    data = _toy_cifar()
    ships = torch.cat([data.train_images[data.train_labels == 8], data.test_images[data.test_labels == 8]])
    ship_bytes = {img.numpy().tobytes() for img in ships}
    seen: list[torch.Tensor] = []
    real = detector_module.read_images

    def record(images, image_size, in_channels, aligned=True, bit_depth=None, **kw):  # type: ignore[no-untyped-def]
        out = real(images, image_size, in_channels, aligned, bit_depth, **kw)
        seen.append(out[0])
        return out

    monkeypatch.setattr(detector_module, "read_images", record)
    result, labels, _ = benchmark.run_cell(lambda: data, "knn", "ship", 0, "validate", _config(models=["knn"]))
    assert seen and sum(len(t) for t in seen) > 0
    assert not any(img.numpy().tobytes() in ship_bytes for t in seen for img in t)
    assert result["pseudo_anomaly"] == "truck" and result["class"] == "ship"
    # Eight normal classes of 6 training images; the truck images (6 train + 2 test) are the abnormal part.
    assert result["train_images"] + result["val_images"] == 48 and int(labels.sum()) == 8


def test_validate_scores_the_pseudo_anomaly(tmp_path: Path) -> None:
    """Horse left out: the next class, ship (noise in the toy data), is the pseudo-anomaly, a known answer."""
    data = _toy_cifar()
    results = run_sweep(lambda: data, _config(models=["knn", "pca"], classes=["horse"], protocols=["validate"]),
                        tmp_path).results
    assert [r["pseudo_anomaly"] for r in results] == ["ship", "ship"]
    assert all(r["auroc"] > 0.9 for r in results), [r["auroc"] for r in results]


@pytest.mark.parametrize("name", ["pca", "knn"])
def test_baselines_run_both_protocols(name: str, tmp_path: Path) -> None:
    data = _toy_cifar()
    results = run_sweep(lambda: data, _config(models=[name]), tmp_path).results
    assert [r["protocol"] for r in results] == ["honest", "paper"]
    assert all(r["auroc"] > 0.9 for r in results)
    assert results[1]["train_images"] == 54 and results[1]["auroc_per_epoch"] == [results[1]["auroc"]]


def test_a_cell_saved_before_a_setting_existed_counts_it_at_its_default(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    data = _toy_cifar()
    config = _config(models=["knn"], protocols=["honest"])
    first = run_sweep(lambda: data, config, tmp_path).results
    cell = tmp_path / "cells" / first[0]["scores_file"].replace(".scores.npz", ".json")
    saved = json.loads(cell.read_text())
    for name in ("amp", "contamination", "val_fraction"):  # as if the cell was written before these existed
        del saved["settings"][name]
    cell.write_text(json.dumps(saved))
    files = sorted((tmp_path / "cells").iterdir())
    again = run_sweep(lambda: data, config, tmp_path).results
    assert sorted((tmp_path / "cells").iterdir()) == files and again[0]["train_seconds"] == first[0]["train_seconds"]
    for options in ({}, None):  # recorded as given only (none given), or not at all: the defaults, so reused
        if options is None:
            del saved["settings"]["model_options"]
        else:
            saved["settings"]["model_options"] = options
        cell.write_text(json.dumps(saved))
        assert run_sweep(lambda: data, config, tmp_path).results[0]["train_seconds"] == first[0]["train_seconds"]
        assert sorted((tmp_path / "cells").iterdir()) == files
    other = run_sweep(lambda: data, _config(models=["knn"], protocols=["honest"], amp=True), tmp_path).results
    assert len(list((tmp_path / "cells").glob("*.json"))) == 2 and other[0]["settings"]["amp"] is True


def test_the_learning_rate_reaches_the_detector(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, float] = {}

    def fit(self: detector_module.Detector, images: object, **kw: object) -> None:
        seen["lr"] = self.train_config.lr
        raise RuntimeError("stop after construction")

    monkeypatch.setattr(detector_module.Detector, "fit", fit)
    with pytest.raises(RuntimeError, match="stop after construction"):
        benchmark.run_cell(_toy_cifar, "rotation", "ship", 0, "honest", _config(lr=1e-3))
    assert seen["lr"] == 1e-3


def test_no_cell_starts_after_the_time_limit_and_a_rerun_continues(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    data = _toy_cifar()
    config = _config(models=["knn", "pca"], classes=["ship", "cat"], protocols=["honest"], epochs=1)
    clock = {"now": 0.0}
    real_run = benchmark._run_and_write
    started: list[str] = []

    def run_and_move_the_clock(load, cell, *args, **kw):  # type: ignore[no-untyped-def]
        started.append(benchmark.cell_key(*cell))
        real_run(load, cell, *args, **kw)
        clock["now"] += 30.0  # each cell seems to take 30 s

    monkeypatch.setattr(benchmark, "_now", lambda: clock["now"])
    monkeypatch.setattr(benchmark, "_run_and_write", run_and_move_the_clock)
    outcome = run_sweep(lambda: data, config, tmp_path, deadline=50.0)
    # knn/ship ends at 30 s; knn/cat would end at 60 s by the longest cell so far (30 s), after the limit: not started
    assert started == ["knn__ship__seed0__honest"] and [r["model"] for r in outcome.results] == ["knn"]
    assert outcome.unfinished == ["knn__cat__seed0__honest", "pca__ship__seed0__honest", "pca__cat__seed0__honest"]
    assert not outcome.failures
    # the next call knows from the saved cell how long a cell takes (say 40 s): after its first cell (30 s of its 65),
    # no other starts, where 30 s of this call alone would start one it can only stop unsaved
    [saved] = (tmp_path / "cells").glob("knn__ship__*.json")
    saved.write_text(json.dumps({**json.loads(saved.read_text()), "train_seconds": 40.0}))
    clock["now"], started[:] = 0.0, []
    run_sweep(lambda: data, config, tmp_path, deadline=65.0)
    assert started == ["knn__cat__seed0__honest"]
    monkeypatch.setattr(benchmark, "_run_and_write", real_run)
    again = run_sweep(lambda: data, config, tmp_path, deadline=1e9)  # the same call, later: the rest runs
    assert len(again.results) == 4 and not again.unfinished
    assert again.results[0]["train_seconds"] == 40.0  # knn/ship reused, not rerun


def test_a_running_cell_stops_at_an_epoch_end_past_the_time_limit(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    data = _toy_cifar()
    config = _config(models=["knn", "skipganomaly++"], protocols=["paper"], epochs=3)
    epochs_seen = _spy_on_gan_epochs(monkeypatch)
    monkeypatch.setattr(benchmark, "_now", lambda: 100.0 if epochs_seen else 0.0)  # past it after epoch 1
    outcome = run_sweep(lambda: data, config, tmp_path, deadline=50.0)
    # knn's cell, the first of the call, ends before the limit; the GAN's stops after epoch 1, unsaved
    assert epochs_seen == [1] and outcome.unfinished == ["skipganomalypp__ship__seed0__paper"]
    assert [r["model"] for r in outcome.results] == ["knn"]
    assert not list((tmp_path / "cells").glob("skipganomalypp*"))  # a stopped cell is not saved
    with pytest.raises(SystemExit) as stopped:  # in a worker process the same stop is exit code DEADLINE_EXIT
        benchmark._cell_process(lambda: data, ("skipganomaly++", "ship", 0, "paper"), config, tmp_path / "cells", 1,
                                "cpu", 50.0)
    assert stopped.value.code == benchmark.DEADLINE_EXIT and epochs_seen == [1, 1]
    epochs_seen.clear()  # the clock is before the limit again at the start
    last = run_sweep(lambda: data, _config(models=["skipganomaly++"], protocols=["paper"], epochs=1), tmp_path,
                     deadline=50.0)  # past the limit only at its last epoch: the cell ends and is saved
    assert epochs_seen == [1] and len(last.results) == 1 and not last.unfinished


def _spy_on_gan_epochs(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The epochs the GAN cells of a sweep end, as they end."""
    epochs_seen: list[int] = []
    real_fit = detector_module.Detector.fit

    def fit(self, images, **kw):  # type: ignore[no-untyped-def]
        inner = kw["on_epoch_end"]

        def spy(record):  # type: ignore[no-untyped-def]
            if self.settings.model == "skipganomaly++":
                epochs_seen.append(record.epoch)
            inner(record)
        return real_fit(self, images, **{**kw, "on_epoch_end": spy})

    monkeypatch.setattr(detector_module.Detector, "fit", fit)
    return epochs_seen


def test_a_time_limit_shorter_than_one_cell_still_finishes_the_first_cell(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch,
                                                                           caplog: pytest.LogCaptureFixture) -> None:
    """Each call makes progress: the first cell it starts runs to its end past the limit (saved, with a warning
    saying so), where stopping it would lose it on every call of a `while exit code is 3` loop."""
    data = _toy_cifar()
    config = _config(models=["skipganomaly++"], classes=["ship", "cat"], protocols=["paper"], epochs=2)
    epochs_seen = _spy_on_gan_epochs(monkeypatch)
    monkeypatch.setattr(benchmark, "_now", lambda: 100.0 if epochs_seen else 0.0)  # past it after epoch 1
    with caplog.at_level(logging.WARNING, logger="skipganomaly"):
        outcome = run_sweep(lambda: data, config, tmp_path, deadline=50.0)
    assert epochs_seen == [1, 2] and [r["class"] for r in outcome.results] == ["ship"]
    assert outcome.unfinished == ["skipganomalypp__cat__seed0__paper"]  # not started: past the limit
    assert "ran 50 s past the time limit: a call always finishes the first cell it starts" in caplog.text


def test_worker_processes_start_no_cell_after_the_time_limit_but_the_first(tmp_path: Path) -> None:
    """Long past the limit before any cell starts: the first cell of the call still runs (each call makes
    progress), to its end and saved; no other starts."""
    outcome = run_sweep(_toy_cifar, _config(models=["knn", "pca"], protocols=["honest"], epochs=1), tmp_path,
                        workers=2, deadline=1.0)
    assert outcome.unfinished == ["pca__ship__seed0__honest"] and [r["model"] for r in outcome.results] == ["knn"]
    again = run_sweep(_toy_cifar, _config(models=["knn", "pca"], protocols=["honest"], epochs=1), tmp_path,
                      deadline=1.0)  # sequential, as long past: the next call runs the next cell
    assert not again.unfinished and [r["model"] for r in again.results] == ["knn", "pca"]


@pytest.mark.skipif(not (find_real_cifar10() / "cifar-10-batches-py").is_dir() and os.environ.get("CI") != "true",
                    reason="needs the real CIFAR-10")
def test_the_gpu_sweep_script_packs_its_cells_and_continues_from_committed_ones(tmp_path: Path) -> None:
    """benchmarks/gpu_table1.sh on the CPU with tiny fractions: it checks its data, packs every finished cell
    into OUT/cells.tar, and a second run that starts from those cells (as committed) runs none again."""
    script = Path(__file__).parents[1] / "benchmarks" / "gpu_table1.sh"
    env = {**os.environ, "DATA_DIR": str(find_real_cifar10()), "DEVICE": "cpu", "WORKERS": "2", "TIME_LIMIT": "300",
           "PY": sys.executable, "MODELS": "knn,pca", "PROTOCOLS": "honest", "PACK_EVERY": "1",
           "PRESET_ARGS": "--train-fraction 0.01 --test-fraction 0.01 --classes ship", "WORK": str(tmp_path / "w1"),
           "OUT": str(tmp_path / "out1"), "RESULTS": str(tmp_path / "none")}
    missing = subprocess.run(["bash", str(script), "run"], env={**env, "DATA_DIR": str(tmp_path / "nowhere")},
                             capture_output=True, text=True)
    assert missing.returncode == 2 and "CIFAR-10 is not complete" in missing.stdout
    first = subprocess.run(["bash", str(script), "run"], env=env, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stdout + first.stderr
    with tarfile.open(tmp_path / "out1" / "cells.tar") as tar:
        names = sorted(n for n in tar.getnames() if n.endswith(".json"))
        assert len(names) == 2
        tar.extractall(tmp_path / "committed", filter="data")
    assert (tmp_path / "out1" / "table.md").is_file() and "\n2 cells in" in first.stdout
    second = subprocess.run(["bash", str(script), "run"], env={**env, "WORK": str(tmp_path / "w2"),
                            "OUT": str(tmp_path / "out2"), "RESULTS": str(tmp_path / "committed")},
                            capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "committed cells copied in: 2" in second.stdout
    with tarfile.open(tmp_path / "out2" / "cells.tar") as tar:
        assert sorted(n for n in tar.getnames() if n.endswith(".json")) == names
        for name in names:  # the same bytes (train_seconds included): nothing was run again
            assert tar.extractfile(name).read() == (tmp_path / "committed" / name).read_bytes()


def test_the_gpu_sweep_script_moves_cifar10_in_three_parts_byte_for_byte(tmp_path: Path) -> None:
    script = Path(__file__).parents[1] / "benchmarks" / "gpu_table1.sh"
    source = tmp_path / "src"
    source.mkdir()
    names = ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch",
             "batches.meta"]
    for i, name in enumerate(names):
        (source / name).write_bytes(os.urandom(1000 + i))
    env = {**os.environ, "DEVDATA": str(tmp_path / "dev")}
    packed = subprocess.run(["bash", str(script), "pack", str(source)], env=env, capture_output=True, text=True)
    assert packed.returncode == 0, packed.stderr  # needs xz, as the device and Debian have
    assert sorted(p.name for p in (tmp_path / "dev" / "a").iterdir()) == ["data_batch_1.xz", "data_batch_2.xz"]
    for part in "abc":
        assert subprocess.run(["bash", str(script), "unpack", part], env=env, capture_output=True).returncode == 0
    for name in names:
        assert (tmp_path / "dev" / "cifar-10-batches-py" / name).read_bytes() == (source / name).read_bytes()


def test_the_recorded_command_can_be_pasted_into_a_shell(monkeypatch: pytest.MonkeyPatch) -> None:
    from skipganomaly.provenance import environment

    monkeypatch.setattr(sys, "argv", ["skipganomaly", "benchmark", "--out", "my runs", "--model-arg", "k=5"])
    assert environment()["command"] == "skipganomaly benchmark --out 'my runs' --model-arg k=5"
    assert environment()["cwd"] == os.getcwd()  # where its relative paths lie
    monkeypatch.setattr(sys, "argv", ["/src/skipganomaly/__main__.py", "benchmark", "--out", "b"])  # python -m
    assert environment()["command"] == f"{sys.executable} -m skipganomaly benchmark --out b"
    monkeypatch.setattr(sys, "argv", ["/home/me/compare.py", "--fast"])  # a script that calls the package
    assert environment()["command"] == f"{sys.executable} /home/me/compare.py --fast"


def test_a_table_whose_cells_ran_at_several_versions_of_the_code_says_so(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Cells are reused across calls while the code changes: the header names each version behind the cells
    (and an uncommitted tree), not only the version of the last call."""
    from skipganomaly import provenance

    def at(commit: str) -> None:  # the code that runs the cells and writes the table
        monkeypatch.setattr(benchmark, "git_commit", lambda: commit)
        monkeypatch.setattr(provenance, "git_commit", lambda: commit)

    data = _toy_cifar()
    at("abc1234")
    benchmark.run_benchmark(lambda: data, _config(models=["knn"], protocols=["honest"]), tmp_path, "toy")
    assert "Cells ran at" not in (tmp_path / "table.md").read_text()  # one committed version: nothing to say
    at("fff0000")  # every cell reused, the code changed since
    benchmark.run_benchmark(lambda: data, _config(models=["knn"], protocols=["honest"]), tmp_path, "toy")
    reused = ("Cells ran at one version: abc1234 (1 cell), reused from earlier calls (this table was written by a "
              "call at fff0000).")
    assert reused in (tmp_path / "table.md").read_text() and reused in (tmp_path / "report.html").read_text()
    at("def5678-dirty")
    benchmark.run_benchmark(lambda: data, _config(models=["knn", "pca"], protocols=["honest"]), tmp_path, "toy")
    note = ("Cells ran at several versions of the code: abc1234 (1 cell), def5678-dirty (1 cell), reused from "
            "earlier calls (this table was written by a call at def5678-dirty); -dirty: with uncommitted changes to "
            "the package, which no commit reproduces.")
    assert note in (tmp_path / "table.md").read_text() and note in (tmp_path / "report.html").read_text()


def test_a_table_of_several_abnormal_classes_at_once_is_not_called_leave_one_class_out(tmp_path: Path) -> None:
    data = _toy_cifar()
    benchmark.run_benchmark(lambda: data, _config(models=["knn"], classes=["ship+cat"], protocols=["honest"]),
                            tmp_path, "toy")
    assert (tmp_path / "table.md").read_text().startswith("# toy abnormal classes (each column's) against the others")
    benchmark.run_benchmark(lambda: data, _config(models=["knn"], classes=["ship"], protocols=["honest"]),
                            tmp_path / "one", "toy")
    assert (tmp_path / "one" / "table.md").read_text().startswith("# toy leave-one-class-out AUROC")


def test_a_warning_every_cell_repeats_is_printed_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Each cell holds out 3 normals for its threshold, too few: said once for the sweep, not once per cell; after
    the sweep, warnings are printed as before."""
    import logging

    data = _toy_cifar()
    with caplog.at_level(logging.WARNING, logger="skipganomaly"):
        benchmark.run_benchmark(lambda: data, _config(models=["knn", "pca"], classes=["ship", "cat"],
                                                      protocols=["honest"]), tmp_path, "toy")
        assert caplog.text.count("threshold_ rests on 3 held-out normal images") == 1
        detector_module.Detector("knn", image_size=32, progress=False).fit(smooth_images(60))
        assert caplog.text.count("threshold_ rests on 3 held-out normal images") == 2
    # printed once, but kept with every cell that said it, and listed beside the tables
    warned = json.loads((tmp_path / "results.json").read_text())["warnings"]
    threshold = [w for w in warned if "threshold_ rests on 3 held-out normal images" in w["warning"]]
    assert len(threshold) == 1 and sorted(threshold[0]["cells"]) == [
        f"{m}__{c}__seed0__honest" for m in ("knn", "pca") for c in ("cat", "ship")]
    assert "4 cells (`knn__ship__seed0__honest`, `knn__cat__seed0__honest`, `pca__ship__seed0__honest`, ...): " \
        "threshold_ rests on 3" in (tmp_path / "table.md").read_text()
    assert "4 cells (<code>knn__ship__seed0__honest</code>" in (tmp_path / "report.html").read_text()


def test_failed_cells_are_named_in_table_and_results(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A table whose mean silently leaves a class out misleads: the failed cell and its error are named."""
    _make_cat_cells_fail(monkeypatch)
    data = _toy_cifar()
    config = _config(models=["knn"], classes=["cat", "ship"], protocols=["honest"], epochs=1)
    benchmark.run_benchmark(lambda: data, config, tmp_path, "toy")
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["complete"] is False
    assert results["failed"] == [{"cell": "knn__cat__seed0__honest",
                                  "error": "loss g_con is not finite at epoch 1, step 1"}]
    table = (tmp_path / "table.md").read_text()
    assert "Incomplete: 1 cell is missing" in table and "`knn__cat__seed0__honest` failed: loss g_con" in table
    page = (tmp_path / "report.html").read_text()
    assert "Incomplete: 1 missing cell" in page and "knn__cat__seed0__honest failed: loss g_con" in page


@pytest.mark.parametrize("model", ["rotation", "skipganomaly++rot"])
def test_the_paper_protocol_scores_feature_bank_models_after_every_epoch(tmp_path: Path, model: str,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A score that needs statistics of the training images gets them fitted on each epoch's network
    before that epoch is scored (they were fitted only after the last, so every cell failed)."""
    options = {"rotation": {"widths": [8, 16, 32]}, "skipganomaly++rot": {"widths": SMALL_WIDTHS, "score": "map"}}
    data = _toy_cifar()
    fitted_on: list[float] = []  # a weight of each network the bank is fitted on: one per epoch, each another

    def spy(model: torch.nn.Module, *args: object, **kwargs: object) -> None:
        fitted_on.append(float(next(model.parameters()).detach().sum()))
        real_fit_statistics(model, *args, **kwargs)

    real_fit_statistics = benchmark.fit_statistics
    monkeypatch.setattr(benchmark, "fit_statistics", spy)
    outcome = run_sweep(lambda: data, _config(models=[model], protocols=["paper"], model_options=options), tmp_path)
    assert not outcome.failures
    [result] = outcome.results
    assert len(result["auroc_per_epoch"]) == 2 and result["auroc"] == max(result["auroc_per_epoch"])
    assert len(fitted_on) == 2 and fitted_on[0] != fitted_on[1]


def test_a_saved_cell_of_a_class_named_with_glob_characters_is_found(tmp_path: Path) -> None:
    """`zero[0]` in a file name is a pattern to glob: unescaped, the finished cell is never found again."""
    cell = ("knn", "zero[0]*?", 0, "honest")
    path = tmp_path / f"{benchmark.cell_key(*cell)}__abc.json"
    path.write_text(json.dumps({"model": "knn"}))
    assert benchmark._saved_cells(tmp_path, cell) == [(path, {"model": "knn"})]


def test_an_interrupted_benchmark_writes_the_tables_of_what_finished(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C (or SIGTERM) in the second cell: the first's numbers are in table.md, results.json and the
    report, the second is named as not run yet, and the interrupt still stops the command."""
    data = _toy_cifar()
    real_run = benchmark._run_and_write

    def stop_at_pca(load, cell, *args, **kw):  # type: ignore[no-untyped-def]
        if cell[0] == "pca":
            raise KeyboardInterrupt
        real_run(load, cell, *args, **kw)

    monkeypatch.setattr(benchmark, "_run_and_write", stop_at_pca)
    with pytest.raises(KeyboardInterrupt):
        benchmark.run_benchmark(lambda: data, _config(models=["knn", "pca"], protocols=["honest"]), tmp_path, "toy")
    saved = json.loads((tmp_path / "results.json").read_text())
    assert [c["model"] for c in saved["cells"]] == ["knn"] and saved["complete"] is False
    assert saved["unfinished"] == ["pca__ship__seed0__honest"]
    table = (tmp_path / "table.md").read_text()
    assert "`pca__ship__seed0__honest` not run yet (the same command runs it)" in table and "| knn |" in table
    assert "pca__ship__seed0__honest not run yet" in (tmp_path / "report.html").read_text()


def test_a_cell_run_before_a_model_default_changed_is_run_again(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A cell records every option of its model, defaults included: when the code's default changes (knn's k
    5 -> 7 here), the same command runs the cell again instead of showing the old number under the new code."""
    from skipganomaly.models.knn.model import Knn

    data = _toy_cifar()
    config = _config(models=["knn"], protocols=["honest"])
    first = run_sweep(lambda: data, config, tmp_path).results
    assert first[0]["settings"]["model_options"] == {"k": 5}
    assert run_sweep(lambda: data, config, tmp_path).results == first  # nothing changed: reused
    real = Knn.param_defaults.__func__  # type: ignore[attr-defined]
    monkeypatch.setattr(Knn, "param_defaults", classmethod(lambda cls: {**real(cls), "k": 7}))
    again = run_sweep(lambda: data, config, tmp_path).results
    assert again[0]["settings"]["model_options"] == {"k": 7}
    assert len(list((tmp_path / "cells").glob("knn__*.json"))) == 2  # run again, the old cell kept beside it


def test_a_second_interrupt_does_not_cut_the_tables_of_the_first_in_half(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """While the tables of what finished are written after a Ctrl-C, another Ctrl-C (or SIGTERM) is held off."""
    data = _toy_cifar()
    real_run, real_write = benchmark._run_and_write, benchmark._write_summaries

    def stop_at_pca(load, cell, *args, **kw):  # type: ignore[no-untyped-def]
        if cell[0] == "pca":
            raise KeyboardInterrupt
        real_run(load, cell, *args, **kw)

    def write_under_fire(*args, **kw):  # type: ignore[no-untyped-def]
        os.kill(os.getpid(), signal.SIGINT)  # ignored while the tables are written
        return real_write(*args, **kw)

    monkeypatch.setattr(benchmark, "_run_and_write", stop_at_pca)
    monkeypatch.setattr(benchmark, "_write_summaries", write_under_fire)
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        benchmark.run_benchmark(lambda: data, _config(models=["knn", "pca"], protocols=["honest"]), tmp_path, "toy")
    assert (tmp_path / "report.html").is_file() and "| knn |" in (tmp_path / "table.md").read_text()
    assert signal.getsignal(signal.SIGINT) is before  # restored after


def test_a_commit_made_during_a_sweep_is_named_beside_the_one_it_started_at(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from skipganomaly import provenance

    data = _toy_cifar()
    # the call's start, then its end (each fit records one too; the cell reads its own below)
    commits = itertools.chain(["abc1234"], itertools.repeat("def5678"))
    monkeypatch.setattr(provenance, "git_commit", lambda: next(commits))
    monkeypatch.setattr(benchmark, "git_commit", lambda: "abc1234")
    benchmark.run_benchmark(lambda: data, _config(models=["knn"], protocols=["honest"]), tmp_path, "toy")
    table = (tmp_path / "table.md").read_text()
    assert "git abc1234 (at start; def5678 at the end)" in table and "Cells ran at" not in table
    assert "abc1234 (at start; def5678 at the end)" in (tmp_path / "report.html").read_text()
    commits = itertools.chain(["abc1234"], itertools.repeat("def5678"))  # again, a cell running at the end's commit
    monkeypatch.setattr(benchmark, "git_commit", lambda: "def5678")
    benchmark.run_benchmark(lambda: data, _config(models=["knn", "pca"], protocols=["honest"]), tmp_path, "toy")
    table = (tmp_path / "table.md").read_text()
    assert "abc1234 (1 cell), def5678 (1 cell)." in table and "reused from earlier calls" not in table


def test_markdown_tables_show_names_as_they_are() -> None:
    """A class named `a|b` stays one column and `<b>` is not markup: the header and every row have as many cells as
    the separator."""
    from skipganomaly.evaluation.tables import markdown_table

    table = markdown_table(["model", "a|b", "c<d>", "mean"], [["knn", 0.5, 0.25, 0.375], ["x*y`z\\", 1.0, 0.0, 0.5]])
    rows = table.splitlines()
    cells = [len([c for c in row.replace("\\|", "").split("|")]) for row in rows]
    assert len(set(cells)) == 1, table
    assert "a\\|b" in rows[0] and "c\\<d\\>" in rows[0] and "x\\*y\\`z\\\\" in rows[3]
