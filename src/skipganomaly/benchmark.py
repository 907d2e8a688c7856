"""Leave-one-class-out sweeps on CIFAR-10 (spec sections E, G, H) or any labelled image set, under
three protocols.

- `honest` (default): eval-mode networks, shuffled test set, fixed epochs (last one reported), threshold
  from validation normals (5% of the training normals, held out from training).
- `validate`: what settings are chosen on. The abnormal class's images are dropped as soon as the data
  is loaded; one of the remaining classes (the next one in label order, moved on by the seed) is a
  pseudo-anomaly, the others are normal, and the task is scored as `honest` scores. No number of this
  protocol depends on the class it is named after.
- `paper`: what the reference code does: trained on every training normal (no validation split, no
  threshold), the model's reference options (Skip-GANomaly++: detached latent loss), the class-ordered,
  unshuffled test set scored in batches of 64 after every epoch, with the networks in train mode where
  the model's reference does so (the PyTorch ones: BatchNorm on batch statistics), and the first epoch
  with the best test AUROC reported.

Each (model, class, seed, protocol) cell is written to its own JSON file as soon as it finishes, named
by a hash of every setting that can change its result (`cell_settings`), and a rerun skips finished
cells, so an interrupted sweep loses at most the cell in progress. A cell saved with other settings
(other epochs, `--model-arg`, `--amp`, ...) is not reused: it is run again with the new ones, into its
own file. The device and thread count are recorded but not keyed: they change floating-point rounding
only.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import multiprocessing.connection
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from .data.cifar10 import NAME as CIFAR10
from .data.labelled import ClassSplit, LabelledImages, class_split, validation_split
from .detector import Detector
from .errors import ConfigError, SkipGanomalyError
from .evaluation.metrics import evaluate_scores
from .evaluation.tables import PROTOCOL_NOTES
from .files import write_text_atomic
from .models import get_model_class
from .provenance import git_commit
from .training import EpochRecord, batched_apply

log = logging.getLogger(__name__)

PROTOCOLS = tuple(PROTOCOL_NOTES)  # honest, paper, validate: each with what its table shows
PAPER_TEST_BATCH = 64
HONEST_VAL_FRACTION = 0.05  # training normals held out for the threshold under the honest protocol

PRESETS: dict[str, dict[str, Any]] = {
    # One model x ten classes in about 15 minutes on 2 CPU cores (Skip-GANomaly++).
    "cpu-smoke": {"train_fraction": 0.05, "test_fraction": 0.1, "epochs": 3, "batch_size": 64, "seeds": [0]},
    # Between the two: 9,000 training images (20%), a stratified half of the test images (7,500), 3 epochs;
    # one GAN x ten classes in about an hour on 2 CPU cores.
    "cpu-medium": {"train_fraction": 0.2, "test_fraction": 0.5, "epochs": 3, "batch_size": 64, "seeds": [0]},
    # The paper's sizes: 45,000 / 15,000 images, 15 epochs (the reference's default; its run_cifar.sh
    # script passes 30: add --epochs 30 for that), three seeds.
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
    lr: float | None = None  # None: the Detector's default (and the cell key stays what it was without it)
    train_fraction: float = 1.0
    test_fraction: float = 1.0
    device: str = "auto"
    amp: bool = False  # bf16 autocast (see training.runtime.autocast)
    progress: bool = True
    model_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    dataset: str = CIFAR10  # other data sets: their fingerprint, which their cells add to their key with the image size
    image_size: int = 32

    def __post_init__(self) -> None:
        bad = [p for p in self.protocols if p not in PROTOCOLS]
        if bad:
            raise ConfigError(f"unknown protocol {bad[0]!r}; use {', '.join(PROTOCOLS)} or both (honest and paper)")
        for name in self.models:
            get_model_class(name)


def cell_key(model: str, cls: str, seed: int, protocol: str) -> str:
    """The readable name of a cell (in logs and failure reports); its file name adds the settings hash.
    A long class name (many abnormal classes joined) is cut, with a hash of the whole, to fit a file name."""
    if len(cls) > 80:
        cls = f"{cls[:60]}-{hashlib.sha256(cls.encode()).hexdigest()[:8]}"
    return f"{model.replace('+', 'p')}__{cls}__seed{seed}__{protocol}"


def cell_settings(model: str, cls: str, seed: int, protocol: str, config: SweepConfig) -> dict[str, Any]:
    """Every setting that can change a cell's result: the cell is reused only when all are equal."""
    model_class = get_model_class(model)
    options = dict(config.model_options.get(model, {}))
    if protocol == "paper":
        options.update(model_class.reference_options())
    settings: dict[str, Any] = {
        "model": model, "class": cls, "seed": seed, "protocol": protocol, "epochs": config.epochs,
        "batch_size": config.batch_size, "train_fraction": config.train_fraction,
        "test_fraction": config.test_fraction, "amp": config.amp, "model_options": dict(sorted(options.items())),
        "val_fraction": 0.0 if protocol == "paper" else HONEST_VAL_FRACTION,
    }
    if config.lr is not None:
        settings["lr"] = config.lr
    if config.dataset != CIFAR10:
        settings.update(dataset=config.dataset, image_size=config.image_size)
    if protocol == "paper":
        settings.update(test_batch=PAPER_TEST_BATCH, train_mode_scoring=model_class.reference_scores_in_train_mode)
    # A JSON round trip, so that what is compared with a saved cell has the types JSON gives back.
    return json.loads(json.dumps(settings, default=str))


def cell_file(cells_dir: Path, settings: dict[str, Any]) -> Path:
    """OUT/cells/<key>__<hash of the settings>.json."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]
    key = cell_key(settings["model"], settings["class"], settings["seed"], settings["protocol"])
    return cells_dir / f"{key}__{digest}.json"


def load_split(load: Callable[[], LabelledImages], cls: str, seed: int, protocol: str,
               config: SweepConfig) -> ClassSplit:
    """The cell's task: `cls` ('a' or 'a+b') abnormal, or under `validate` removed at once and replaced
    by a pseudo-anomaly class. Only the split is kept, so a full-size run does not hold CIFAR-10 twice."""
    data = load()
    abnormal = data.class_names(cls)
    if protocol == "validate":
        return validation_split(data, abnormal, config.train_fraction, config.test_fraction, seed)
    return class_split(data, abnormal, config.train_fraction, config.test_fraction, seed)


def run_cell(load: Callable[[], LabelledImages], model: str, cls: str, seed: int, protocol: str,
             config: SweepConfig) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """Train one model for one abnormal class and seed, and evaluate it under one protocol; return
    the result, the test labels and the test scores (the selected epoch's, under the paper protocol).

    The data set is loaded per cell (CIFAR-10: loading and checking it takes about a second).
    """
    settings = cell_settings(model, cls, seed, protocol, config)
    commit = git_commit()  # the code this cell runs (a worker process imported it at its start)
    split = load_split(load, cls, seed, protocol, config)
    det = Detector(model=model, image_size=config.image_size, in_channels=split.train.shape[1],
                   epochs=config.epochs, batch_size=config.batch_size, **({"lr": config.lr} if config.lr is not None else {}),
                   seed=seed, val_fraction=settings["val_fraction"], device=config.device, amp=config.amp,
                   progress=config.progress, **settings["model_options"])
    labels = split.test_labels.numpy()
    per_epoch: list[float] = []
    best_scores: list[np.ndarray] = []

    def paper_eval(record: EpochRecord) -> None:
        # The reference scores the class-ordered test set after every epoch in batches of 64 (PyTorch
        # references: in train mode) and keeps the first epoch with the best AUROC.
        assert det.model_ is not None
        epoch_scores = batched_apply(det.model_.score, det.model_, split.test, PAPER_TEST_BATCH, det.device,
                                     config.amp, train_mode=settings["train_mode_scoring"]).double().numpy()
        auroc = evaluate_scores(epoch_scores, labels, 0.0)["auroc"]
        if not per_epoch or auroc > max(per_epoch):
            best_scores[:] = [epoch_scores]
        per_epoch.append(auroc)

    start = time.perf_counter()
    det.fit(split.train, on_epoch_end=paper_eval if protocol == "paper" else None)
    seconds = time.perf_counter() - start
    result: dict[str, Any] = {
        "model": model, "class": cls, "seed": seed, "protocol": protocol, "epochs": config.epochs,
        "train_images": det.n_train_images_, "val_images": det.n_val_images_, "test_images": len(split.test),
        "test_abnormal": int(labels.sum()), "model_options": settings["model_options"], "train_seconds": seconds,
        "git_commit": commit, "device": str(det.device), "threads": torch.get_num_threads(),
    }
    if protocol == "validate":
        result["pseudo_anomaly"] = split.abnormal_class
    if protocol == "paper":
        best = int(np.argmax(per_epoch))  # the first of tied epochs, as the scores kept above
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
    result["settings"] = settings
    return result, labels, scores


@dataclass
class SweepOutcome:
    """The finished cells of a sweep (reused or new) and the cells that failed, with why."""

    results: list[dict[str, Any]]
    failures: list[tuple[str, str]]


def run_sweep(load: Callable[[], LabelledImages], config: SweepConfig, out: Path, workers: int = 1) -> SweepOutcome:
    """Run every missing cell, writing each as it finishes; return all cells of this sweep.

    A failing cell (e.g. a loss that became NaN, or a process killed for memory) is reported and the
    others go on. With `workers` > 1, each cell runs in its own process, at most `workers` at a time
    (on several GPUs, one cell per GPU), so a crash loses that cell only; `load` must then be
    picklable (e.g. functools.partial(load_cifar10, data_dir)).
    """
    from tqdm.auto import tqdm

    if workers < 1:
        raise ConfigError(f"workers must be at least 1, got {workers}")
    cells_dir = out / "cells"
    cells_dir.mkdir(parents=True, exist_ok=True)
    plan = [(m, c, s, p) for m in config.models for p in config.protocols for c in config.classes for s in config.seeds]
    todo = [cell for cell in plan if _finished(cells_dir, cell, config) is None]
    for cell in todo:
        _say_if_saved_with_other_settings(cells_dir, cell, config)
    failures: list[tuple[str, str]] = []
    bar = tqdm(total=len(plan), initial=len(plan) - len(todo), desc="benchmark", unit="cell",
               disable=not config.progress)
    if workers == 1:
        for cell in todo:
            bar.set_postfix_str(" ".join(map(str, cell)))
            try:
                _run_and_write(load, cell, config, cells_dir)
            except SkipGanomalyError as err:
                failures.append((cell_key(*cell), str(err)))
            bar.update()
    else:
        failures = _run_in_processes(load, todo, config, cells_dir, workers, bar.update)
    bar.close()
    results = [r for r in (_finished(cells_dir, cell, config) for cell in plan) if r is not None]
    return SweepOutcome(results, failures)


def _finished(cells_dir: Path, cell: tuple[str, str, int, str], config: SweepConfig) -> dict[str, Any] | None:
    """The cell's saved result if it was run with this sweep's settings."""
    settings = cell_settings(*cell, config)
    path = cell_file(cells_dir, settings)
    if not path.exists():
        return None
    result = json.loads(path.read_text())
    return result if result.get("settings") == settings else None


_IN_THE_NAME = ("model", "class", "seed", "protocol")


def _say_if_saved_with_other_settings(cells_dir: Path, cell: tuple[str, str, int, str], config: SweepConfig) -> None:
    """Name the settings that differ when a cell is rerun because its saved runs used others."""
    settings = cell_settings(*cell, config)
    for path in sorted(cells_dir.glob(f"{cell_key(*cell)}*.json")):
        try:
            saved = json.loads(path.read_text()).get("settings", {})
        except (OSError, ValueError):
            continue
        differ = [k for k in settings if k in saved and saved[k] != settings[k]]
        differ += [f"{k} (not recorded)" for k in settings if k not in saved and k not in _IN_THE_NAME]
        log.info("cell %s: %s was run with other settings (%s); running it with this sweep's", cell_key(*cell),
                 path.name, ", ".join(differ))


def _run_and_write(load: Callable[[], LabelledImages], cell: tuple[str, str, int, str], config: SweepConfig,
                   cells_dir: Path) -> None:
    result, labels, scores = run_cell(load, *cell, config)
    path = cell_file(cells_dir, result["settings"])
    scores_file = path.with_suffix(".scores.npz")
    with scores_file.open("wb") as fh:  # before the cell file: a cell on disk always has its scores
        np.savez_compressed(fh, labels=labels.astype(np.int8), scores=scores.astype(np.float32))
    write_text_atomic(path, json.dumps({**result, "scores_file": scores_file.name}, indent=1))


def _cell_process(load: Callable[[], LabelledImages], cell: tuple[str, str, int, str], config: SweepConfig,
                  cells_dir: Path, threads: int, device: str) -> None:
    torch.set_num_threads(threads)
    _run_and_write(load, cell, replace(config, device=device, progress=False), cells_dir)


def _run_in_processes(load: Callable[[], LabelledImages], todo: list[tuple[str, str, int, str]], config: SweepConfig,
                      cells_dir: Path, workers: int, done: Callable[[], object]) -> list[tuple[str, str]]:
    """One spawned process per cell, `workers` at a time; the CPU threads are shared out between them."""
    ctx = multiprocessing.get_context("spawn")
    gpus = torch.cuda.device_count() if config.device in ("auto", "cuda") and torch.cuda.is_available() else 0
    threads = max(1, torch.get_num_threads() // workers)
    pending = list(todo)
    running: dict[Any, tuple[tuple[str, str, int, str], int]] = {}
    failures = []
    while pending or running:
        while pending and len(running) < workers:
            slot = min(set(range(workers)) - {s for _, s in running.values()})
            cell = pending.pop(0)
            device = f"cuda:{slot % gpus}" if gpus else config.device
            proc = ctx.Process(target=_cell_process, args=(load, cell, config, cells_dir, threads, device),
                               name=cell_key(*cell))
            proc.start()
            running[proc] = (cell, slot)
        multiprocessing.connection.wait([p.sentinel for p in running])
        for proc in [p for p in running if not p.is_alive()]:
            proc.join()
            cell, _ = running.pop(proc)
            if proc.exitcode != 0:
                failures.append((cell_key(*cell), f"its process ended with exit code {proc.exitcode}"))
            done()
    return failures


def cell_rows(results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Flat rows for results.csv."""
    keys = ["model", "class", "seed", "protocol", "auroc", "auprc", "f1", "precision", "recall", "threshold",
            "selected_epoch", "epochs", "train_images", "val_images", "test_images", "test_abnormal",
            "train_seconds", "git_commit", "pseudo_anomaly"]
    return [{k: r.get(k, "") for k in keys} for r in results]
