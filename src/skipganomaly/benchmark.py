"""CIFAR-10 leave-one-class-out sweeps under two protocols (spec sections E, G, H).

- `honest` (default): eval-mode networks, shuffled test set, fixed epochs (last one reported), threshold
  from validation normals.
- `paper`: what the reference code does: the model's reference options (Skip-GANomaly++: detached latent
  loss), train-mode BatchNorm at test over the class-ordered, unshuffled test set in batches of 64, the
  test AUROC after every epoch, and the best epoch reported.

Each (model, class, seed, protocol) cell is written to its own JSON file as soon as it finishes, and a
rerun skips finished cells, so an interrupted sweep loses at most the cell in progress.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from .data.cifar10 import Cifar10, leave_one_class_out
from .detector import Detector
from .errors import ConfigError
from .evaluation.metrics import evaluate_scores
from .files import write_text_atomic
from .models import get_model_class
from .training import EpochRecord, batched_apply

PROTOCOLS = ("honest", "paper")
PAPER_TEST_BATCH = 64

PRESETS: dict[str, dict[str, Any]] = {
    # One model x ten classes in about 15 minutes on 2 CPU cores (Skip-GANomaly++).
    "cpu-smoke": {"train_fraction": 0.05, "test_fraction": 0.1, "epochs": 3, "batch_size": 64, "seeds": [0]},
    # The paper's sizes: 45,000 / 15,000 images, 15 epochs (the reference default), three seeds.
    "paper": {"train_fraction": 1.0, "test_fraction": 1.0, "epochs": 15, "batch_size": 64, "seeds": [0, 1, 2]},
}


@dataclass
class SweepConfig:
    models: list[str]
    classes: list[str]
    seeds: list[int]
    protocols: list[str]
    epochs: int = 15
    batch_size: int = 64
    train_fraction: float = 1.0
    test_fraction: float = 1.0
    device: str = "auto"
    progress: bool = True
    model_options: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        bad = [p for p in self.protocols if p not in PROTOCOLS]
        if bad:
            raise ConfigError(f"unknown protocol {bad[0]!r}; use honest, paper or both")
        for name in self.models:
            get_model_class(name)


def cell_key(model: str, cls: str, seed: int, protocol: str) -> str:
    return f"{model.replace('+', 'p')}__{cls}__seed{seed}__{protocol}"


def run_cell(load: Callable[[], Cifar10], model: str, cls: str, seed: int, protocol: str,
             config: SweepConfig) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """Train one model for one abnormal class and seed, and evaluate it under one protocol; return
    the result, the test labels and the test scores (the selected epoch's, under the paper protocol).

    The data set is loaded per cell and only the split is kept, so a full-size run does not hold
    CIFAR-10 twice (loading and checking it takes about a second).
    """
    split = leave_one_class_out(load(), cls, config.train_fraction, config.test_fraction, seed)
    options = dict(config.model_options.get(model, {}))
    if protocol == "paper":
        options.update(get_model_class(model).reference_options())
    det = Detector(model=model, image_size=32, in_channels=3, epochs=config.epochs, batch_size=config.batch_size,
                   seed=seed, device=config.device, progress=config.progress, **options)
    labels = split.test_labels.numpy()
    per_epoch: list[float] = []
    best_scores: list[np.ndarray] = []

    def paper_eval(record: EpochRecord) -> None:
        # The reference scores the test set after every epoch, in train-mode BN, class-ordered batches of 64.
        assert det.model_ is not None
        epoch_scores = batched_apply(det.model_.score, det.model_, split.test, PAPER_TEST_BATCH, det.device,
                                     train_mode=True).double().numpy()
        per_epoch.append(evaluate_scores(epoch_scores, labels, 0.0)["auroc"])
        if per_epoch[-1] >= max(per_epoch):
            best_scores[:] = [epoch_scores]

    start = time.perf_counter()
    det.fit(split.train, on_epoch_end=paper_eval if protocol == "paper" else None)
    seconds = time.perf_counter() - start
    result: dict[str, Any] = {
        "model": model, "class": cls, "seed": seed, "protocol": protocol, "epochs": config.epochs,
        "train_images": len(split.train), "test_images": len(split.test), "test_abnormal": int(labels.sum()),
        "model_options": options, "train_seconds": seconds,
    }
    if protocol == "paper":
        best = int(np.argmax(per_epoch))
        result.update({"auroc": per_epoch[best], "selected_epoch": best + 1, "auroc_per_epoch": per_epoch})
        scores = best_scores[0]
    else:
        order = torch.from_numpy(np.random.default_rng(seed).permutation(len(split.test)))
        shuffled = det.decision_function(split.test[order])
        scores = np.empty_like(shuffled)
        scores[order.numpy()] = shuffled
        metrics = evaluate_scores(scores, labels, det.threshold_)
        result.update({**metrics, "selected_epoch": len(det.history_)})
    result["history"] = det.history_
    return result, labels, scores


def run_sweep(load: Callable[[], Cifar10], config: SweepConfig, out: Path) -> list[dict[str, Any]]:
    """Run every missing cell, writing each as it finishes; return all cells of this sweep."""
    from tqdm.auto import tqdm

    cells_dir = out / "cells"
    cells_dir.mkdir(parents=True, exist_ok=True)
    plan = [(m, c, s, p) for m in config.models for p in config.protocols for c in config.classes for s in config.seeds]
    results = []
    bar = tqdm(plan, desc="benchmark", unit="cell", disable=not config.progress)
    for model, cls, seed, protocol in bar:
        path = cells_dir / f"{cell_key(model, cls, seed, protocol)}.json"
        if path.exists():
            result = json.loads(path.read_text())
            if _same_settings(result, config):
                results.append(result)
                continue
        bar.set_postfix_str(f"{model} {cls} seed {seed} {protocol}")
        result, labels, scores = run_cell(load, model, cls, seed, protocol, config)
        scores_file = path.with_suffix(".scores.npz")
        with scores_file.open("wb") as fh:  # before the cell file: a cell on disk always has its scores
            np.savez_compressed(fh, labels=labels.astype(np.int8), scores=scores.astype(np.float32))
        result = {**result, "settings": _settings(config), "scores_file": scores_file.name}
        write_text_atomic(path, json.dumps(result, indent=1))
        results.append(result)
    return results


def _settings(config: SweepConfig) -> dict[str, Any]:
    return {"epochs": config.epochs, "batch_size": config.batch_size, "train_fraction": config.train_fraction,
            "test_fraction": config.test_fraction}


def _same_settings(result: dict[str, Any], config: SweepConfig) -> bool:
    """A finished cell is reused only if it was run with the same sizes."""
    return result.get("settings") == _settings(config)


def cell_rows(results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Flat rows for results.csv."""
    keys = ["model", "class", "seed", "protocol", "auroc", "auprc", "f1", "precision", "recall", "threshold",
            "selected_epoch", "epochs", "train_images", "test_images", "test_abnormal", "train_seconds"]
    return [{k: r.get(k, "") for k in keys} for r in results]
