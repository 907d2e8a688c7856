"""Benchmark sweeps: cells written as they finish, resumable, both protocols, tables."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch

from skipganomaly import benchmark
from skipganomaly.benchmark import SweepConfig, run_sweep
from skipganomaly.data.cifar10 import Cifar10
from skipganomaly.errors import ConfigError
from skipganomaly.evaluation import benchmark_table
from skipganomaly.evaluation.metrics import evaluate_scores
from skipganomaly.evaluation.tables import summarise
from skipganomaly.models import create
from skipganomaly.training import TrainingError, batched_apply
from tests.conftest import blob_images, noise_images


def _toy_cifar() -> Cifar10:
    """Class 8 ('ship') is noise, the other classes smooth blobs."""
    def part(n_per_class: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = [], []
        for c in range(10):
            arr = noise_images(n_per_class, seed=seed + c) if c == 8 else blob_images(n_per_class, seed=seed + c)
            images.append(torch.from_numpy(arr).permute(0, 3, 1, 2))
            labels.append(torch.full((n_per_class,), c))
        return torch.cat(images).contiguous(), torch.cat(labels)

    train_x, train_y = part(6, 0)
    test_x, test_y = part(2, 100)
    return Cifar10(train_x, train_y, test_x, test_y)


def _config(**kw: object) -> SweepConfig:
    base = dict(models=["ganomaly"], classes=["ship"], seeds=[0], protocols=["honest", "paper"], epochs=2,
                batch_size=16, device="cpu", progress=False)
    return SweepConfig(**{**base, **kw})  # type: ignore[arg-type]


def test_sweep_writes_each_cell_and_resumes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = _toy_cifar()
    results = run_sweep(lambda: data, _config(), tmp_path).results
    cells = sorted(p.name for p in (tmp_path / "cells").iterdir())
    assert cells == ["ganomaly__ship__seed0__honest.json", "ganomaly__ship__seed0__honest.scores.npz",
                     "ganomaly__ship__seed0__paper.json", "ganomaly__ship__seed0__paper.scores.npz"]
    for result in results:  # the saved scores are the ones behind each cell's AUROC (paper: the chosen epoch's)
        with np.load(tmp_path / "cells" / result["scores_file"]) as saved:
            assert len(saved["scores"]) == result["test_images"]
            assert evaluate_scores(saved["scores"], saved["labels"], 0.0)["auroc"] == pytest.approx(result["auroc"])
    honest, paper = results
    assert honest["train_images"] == 54 and honest["test_images"] == 18 + 6 + 2
    assert 0.0 <= honest["auroc"] <= 1.0 and honest["selected_epoch"] == 2
    assert len(paper["auroc_per_epoch"]) == 2
    assert paper["auroc"] == max(paper["auroc_per_epoch"])

    def must_not_run(*args: object, **kwargs: object) -> None:
        raise AssertionError("a finished cell was run again")

    monkeypatch.setattr(benchmark, "run_cell", must_not_run)
    again = run_sweep(lambda: data, _config(), tmp_path).results
    assert [r["auroc"] for r in again] == [r["auroc"] for r in results]


def test_cells_with_other_sizes_are_not_reused(tmp_path: Path) -> None:
    data = _toy_cifar()
    run_sweep(lambda: data, _config(protocols=["honest"]), tmp_path)
    rerun = run_sweep(lambda: data, _config(protocols=["honest"], epochs=1), tmp_path).results
    assert rerun[0]["epochs"] == 1


def test_paper_protocol_uses_the_reference_options() -> None:
    assert benchmark.get_model_class("skipganomaly++").reference_options() == {"detach_latent": True}
    assert benchmark.get_model_class("ganomaly").reference_options() == {}


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
    assert "0.500±0.100 (0.998)" in table and "- (0.819)" in table


def test_cli_benchmark_on_real_cifar(tmp_path: Path) -> None:
    from skipganomaly.cli import main
    from tests.data.test_cifar10 import REAL

    if not (REAL / "cifar-10-batches-py").is_dir():
        pytest.skip(f"real CIFAR-10 not found at {REAL}/cifar-10-batches-py")
    out = tmp_path / "bench"
    assert main(["benchmark", "--data-dir", str(REAL), "--models", "ganomaly", "--classes", "ship",
                 "--protocol", "both", "--epochs", "1", "--train-fraction", "0.004", "--test-fraction", "0.01",
                 "--out", str(out), "--no-progress", "--device", "cpu"]) == 0
    saved = json.loads((out / "results.json").read_text())
    assert {c["protocol"] for c in saved["cells"]} == {"honest", "paper"}
    assert saved["environment"]["torch"].startswith("2.13")
    assert "ganomaly" in (out / "table.md").read_text()
    assert (out / "results.csv").read_text().startswith("model,class,seed,protocol,auroc")
    page = (out / "report.html").read_text()
    assert "0.616)" in page  # GANomaly's ship AUROC in the paper's Table 1, beside ours
    assert page.count("data:image/png;base64,") == 2  # one ROC figure per protocol


def _toy_or_crash() -> Cifar10:
    """The toy set, except in the process of an EGBAD cell, which dies as if killed for memory."""
    if "egbad" in multiprocessing.current_process().name:
        os.kill(os.getpid(), signal.SIGKILL)
    return _toy_cifar()


def test_parallel_workers_match_sequential_and_a_crash_loses_one_cell(tmp_path: Path) -> None:
    config = _config(models=["ganomaly", "egbad"], classes=["ship", "cat"], protocols=["honest"], epochs=1)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # what each of 2 workers gets from a 2-thread parent (1 if the parent has 1)
    try:
        sequential = run_sweep(_toy_cifar, _config(classes=["ship", "cat"], protocols=["honest"], epochs=1),
                               tmp_path / "seq").results
    finally:
        torch.set_num_threads(threads)
    torch.set_num_threads(2)
    try:
        outcome = run_sweep(_toy_or_crash, config, tmp_path / "par", workers=2)
    finally:
        torch.set_num_threads(threads)
    assert sorted(key for key, _ in outcome.failures) == ["egbad__cat__seed0__honest", "egbad__ship__seed0__honest"]
    assert all("exit code -9" in why for _, why in outcome.failures)
    assert [(r["class"], r["auroc"]) for r in outcome.results] == [(r["class"], r["auroc"]) for r in sequential]
    assert sorted(p.name for p in (tmp_path / "par" / "cells").glob("*.json")) == [
        "ganomaly__cat__seed0__honest.json", "ganomaly__ship__seed0__honest.json"]


def test_a_failing_cell_does_not_stop_a_sequential_sweep(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = benchmark.run_cell

    def nan_for_cat(load, model, cls, *rest):  # type: ignore[no-untyped-def]
        if cls == "cat":
            raise TrainingError("loss g_con is not finite at epoch 1, step 1")
        return real(load, model, cls, *rest)

    monkeypatch.setattr(benchmark, "run_cell", nan_for_cat)
    data = _toy_cifar()
    outcome = run_sweep(lambda: data, _config(classes=["cat", "ship"], protocols=["honest"], epochs=1), tmp_path)
    assert [r["class"] for r in outcome.results] == ["ship"]
    assert outcome.failures == [("ganomaly__cat__seed0__honest", "loss g_con is not finite at epoch 1, step 1")]
