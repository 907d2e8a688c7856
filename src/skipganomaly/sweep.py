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

Each (model, class, seed, protocol) cell is written to its own JSON file as soon as it finishes, with
every setting that can change its result (`cell_settings`: the detector's result settings, from
`DetectorSettings`, plus the protocol, class, data sizes and data set), and a rerun skips finished
cells, so an interrupted sweep loses at most the cell in progress. A cell saved with other settings
(other epochs, `--model-arg`, `--amp`, ...) is not reused: it is run again with the new ones, into its
own file. A setting missing from a saved cell (added to the code since) counts as its default. The
device and thread count are recorded but not compared: they change floating-point rounding only.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import glob
import hashlib
import io
import json
import logging
import multiprocessing
import multiprocessing.connection
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch

from .data.cifar10 import NAME as CIFAR10, PAPER_ORDER, Cifar10, load_cifar10
from .data.labelled import (JOIN, ClassSplit, LabelledImages, check_task, class_split, load_decoded, load_labelled,
                            pseudo_anomaly, save_decoded, training_count, validation_split)
from .detector import (Detector, DetectorSettings, check_threshold_split, model_option_names,
                       setting_defaults)
from .errors import (PACKAGE_LOGGER, PARTLY_FAILED_EXIT, ConfigError, DataError, SkipGanomalyError,
                     warnings_said)
from .evaluation.metrics import evaluate_scores
from .evaluation.tables import (PAPER, PROTOCOL_NOTES, VALIDATE, WARNINGS_NOTE, benchmark_table, commit_text,
                                commits_note, one_pass_note, shows_paper_numbers, summarise, table_notes,
                                warning_source)
from .files import json_text, replacing, write_text_atomic
from .interrupts import interrupts_held, sigterm_as_interrupt
from .models import create, get_model_class, list_models
from .models.base import check_geometry, plain
from .provenance import command_line, cpu_model, environment, git_commit
from .run_directory import SweepDirectory, write_json
from .training.config import differing
from .training import EpochRecord, batched_apply
from .training.inference import checked_scores, default_eval_batch
from .training.loop import fit_statistics

log = logging.getLogger(PACKAGE_LOGGER)

DEADLINE_EXIT = 3  # exit code of a cell process, and of the benchmark command, stopped by the time limit


class CellsFailed(SkipGanomalyError):
    """No cell of the sweep finished, and some failed (each with its error in the log)."""

    exit_code = PARTLY_FAILED_EXIT  # as a sweep where only some cells failed: the cells' failure, not the input's


class DeadlineReached(SkipGanomalyError):
    """A cell stopped at an epoch's end because the sweep's time limit had passed; it is not saved."""

    exit_code = DEADLINE_EXIT
PROTOCOLS = tuple(PROTOCOL_NOTES)  # honest, paper, validate: each with what its table shows
PAPER_TEST_BATCH = 64

PRESETS: dict[str, dict[str, Any]] = {
    # The smallest: 5% of the training images, 10% of the test images, 3 epochs (run times: README, CIFAR-10).
    "cpu-smoke": {"train_fraction": 0.05, "test_fraction": 0.1, "epochs": 3, "batch_size": 64, "seeds": [0]},
    # Between the two: 9,000 training images (20%), a stratified half of the test images (7,500), 3 epochs.
    "cpu-medium": {"train_fraction": 0.2, "test_fraction": 0.5, "epochs": 3, "batch_size": 64, "seeds": [0]},
    # The paper's sizes: 45,000 / 15,000 images, 15 epochs (the reference's default; its run_cifar.sh
    # script passes 30: add --epochs 30 for that), three seeds.
    "paper": {"train_fraction": 1.0, "test_fraction": 1.0, "epochs": 15, "batch_size": 64, "seeds": [0, 1, 2]},
}


@dataclass
class SweepConfig:
    """What a sweep runs: models x classes x seeds x protocols, each cell a detector built from `settings`
    with the cell's model, seed and options (`model_options`: per model name), on a `train_fraction` /
    `test_fraction` of the data set named `dataset` (CIFAR-10, or a fingerprint of the user's data)."""

    models: list[str]
    classes: list[str]
    seeds: list[int]
    protocols: list[str]
    settings: DetectorSettings = field(default_factory=DetectorSettings)
    model_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    train_fraction: float = 1.0
    test_fraction: float = 1.0
    dataset: str = CIFAR10

    def __post_init__(self) -> None:
        bad = [p for p in self.protocols if p not in PROTOCOLS]
        if bad:
            raise ConfigError(f"unknown protocol {bad[0]!r}; use {', '.join(PROTOCOLS)}")
        for model in self.models:
            for protocol in self.protocols:  # unknown models and options fail here, before any training
                detector_settings(model, self.seeds[0] if self.seeds else 0, protocol, self)

    @property
    def epochs(self) -> int:
        return self.settings.training.epochs

    @property
    def batch_size(self) -> int:
        return self.settings.training.batch_size

    def as_dict(self) -> dict[str, Any]:
        """Plain values for results.json: the sweep's own fields and the settings, flat."""
        settings = {k: v for k, v in self.settings.as_dict().items() if k not in ("model", "model_options")}
        return {"models": self.models, "classes": self.classes, "seeds": self.seeds, "protocols": self.protocols,
                "train_fraction": self.train_fraction, "test_fraction": self.test_fraction, "dataset": self.dataset,
                "model_options": self.model_options, **settings}


def check_protocol_settings(protocols: Sequence[str], settings: DetectorSettings) -> None:
    """Settings a protocol cannot run with, said before any data is read: `paper` holds no image out (so no
    early stopping), the others take their threshold from held-out training normals."""
    for protocol in protocols:
        if protocol != PAPER:
            check_threshold_split(settings.val_fraction,
                                  f"the {protocol} protocol takes its threshold from held-out training normals")
            continue
        try:  # the settings a paper cell gets (detector_settings): what they cannot hold out is refused there
            settings.replace(val_fraction=0.0)
        except ConfigError as error:
            raise ConfigError(f"the paper protocol trains on every training image and holds none out: {error}; drop "
                              "that setting or the paper protocol") from None


def detector_settings(model: str, seed: int, protocol: str, config: SweepConfig) -> DetectorSettings:
    """The settings of one cell's detector: under `paper`, the model's reference options and no
    validation split (the reference trains on every image and reports no threshold)."""
    options = dict(config.model_options.get(model, {}))
    check_protocol_settings([protocol], config.settings)
    if protocol == PAPER:
        options.update(get_model_class(model).reference_options())
    val_fraction = 0.0 if protocol == PAPER else config.settings.val_fraction
    return DetectorSettings.from_params(**{**config.settings.params(), "model": model, "seed": seed,
                                           "val_fraction": val_fraction}, model_options=options)


def cell_key(model: str, cls: str, seed: int, protocol: str) -> str:
    """The readable name of a cell (in logs and failure reports); its file name adds the settings hash.
    A long class name (many abnormal classes joined) is cut, with a hash of the whole, to fit a file name."""
    if len(cls) > 80:
        cls = f"{cls[:60]}-{hashlib.sha256(cls.encode('utf-8', 'surrogateescape')).hexdigest()[:8]}"
    return f"{model.replace('+', 'p')}__{cls}__seed{seed}__{protocol}"


CLOSED_FORM_WORK = 0.1
"""A closed-form model's cell (one fit, one scoring pass) in training epochs: a rough estimate for the progress bar."""


def cell_work(model: str, config: SweepConfig) -> float:
    """How much work a cell of `model` is, in training epochs, for the progress bar."""
    if not get_model_class(model).trained_by_gradient:
        return CLOSED_FORM_WORK
    return float(config.settings.training.epochs)


def cell_settings(model: str, cls: str, seed: int, protocol: str, config: SweepConfig) -> dict[str, Any]:
    """Every setting that can change a cell's result: the cell is reused only when all are equal. The model's
    options are all of them, the defaults filled in, so a cell run before a default changed is not reused."""
    settings: dict[str, Any] = {
        **detector_settings(model, seed, protocol, config).result_settings(), "class": cls, "protocol": protocol,
        "train_fraction": config.train_fraction, "test_fraction": config.test_fraction, "dataset": config.dataset,
    }
    settings["model_options"] = {**_option_defaults(model), **settings.get("model_options", {})}
    if protocol == PAPER:
        settings.update(test_batch=PAPER_TEST_BATCH,
                        train_mode_scoring=get_model_class(model).reference_scores_in_train_mode)
    # A JSON round trip, so that what is compared with a saved cell has the types JSON gives back.
    return json.loads(json.dumps(settings, default=str))


def _key_defaults() -> dict[str, Any]:
    """What a setting missing from a saved cell was: its default (it did not exist when the cell ran)."""
    return json.loads(json.dumps({**setting_defaults(), "dataset": CIFAR10}, default=str))


def _option_defaults(model: str) -> dict[str, Any]:
    """The model's options (its geometry aside) at their defaults, as plain values."""
    defaults = get_model_class(model).param_defaults()
    return {name: plain(defaults[name]) for name in model_option_names(model)}


def _as_saved_then(saved: dict[str, Any]) -> dict[str, Any]:
    """A saved cell's settings with the model options it did not record filled in by their defaults: cells
    saved before the options were all recorded named only those given."""
    options = saved.get("model_options", {})  # missing: written before options were recorded, so none was given
    if not isinstance(options, dict) or saved.get("model") not in list_models():
        return saved
    return {**saved, "model_options": json.loads(json.dumps({**_option_defaults(saved["model"]), **options},
                                                            default=str))}


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
    if protocol == VALIDATE:
        return validation_split(data, abnormal, config.train_fraction, config.test_fraction, seed)
    return class_split(data, abnormal, config.train_fraction, config.test_fraction, seed)


def _now() -> float:
    """Wall-clock seconds (time.time); the one clock the time limit reads, so tests can move it."""
    return time.time()


def run_cell(load: Callable[[], LabelledImages], model: str, cls: str, seed: int, protocol: str,
             config: SweepConfig, deadline: float | None = None) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """Train one model for one abnormal class and seed, and evaluate it under one protocol; return
    the result, the test labels and the test scores (the selected epoch's, under the paper protocol).
    Past `deadline` (wall-clock seconds), it stops at the next epoch's end with DeadlineReached.

    The data set is loaded per cell (cheap next to training), so a worker process needs only `load`.
    """
    settings = cell_settings(model, cls, seed, protocol, config)
    commit = git_commit()  # the code this cell runs (a worker process imported it at its start)
    split = load_split(load, cls, seed, protocol, config)
    det = Detector.from_settings(detector_settings(model, seed, protocol, config))
    if split.train.shape[1] != det.in_channels:
        raise ConfigError(f"the data have {split.train.shape[1]} channels; the sweep's settings say {det.in_channels}")
    labels = split.test_labels.numpy()
    per_epoch: list[float] = []
    best_scores: list[np.ndarray] = []

    def paper_eval(record: EpochRecord) -> None:
        # The reference scores the class-ordered test set after every epoch in batches of 64 (PyTorch
        # references: in train mode) and keeps the first epoch with the best AUROC.
        assert det.model_ is not None
        if det.model_.fits_statistics:  # a feature bank of this epoch's features, as the last epoch gets
            fit_statistics(det.model_, split.train, det.holdout(len(split.train))[1],
                           default_eval_batch(det.device, det.image_size), det.device, det.train_config.amp)
        epoch_scores = checked_scores(batched_apply(det.model_.score, det.model_, split.test, PAPER_TEST_BATCH,
                                                    det.device, det.train_config.amp,
                                                    train_mode=settings["train_mode_scoring"]),
                                      det.model_).double().numpy()
        auroc = evaluate_scores(epoch_scores, labels, 0.0)["auroc"]
        if not per_epoch or auroc > max(per_epoch):
            best_scores[:] = [epoch_scores]
        per_epoch.append(auroc)

    def epoch_end(record: EpochRecord) -> None:
        if protocol == PAPER:
            paper_eval(record)
        if deadline is not None and _now() > deadline and record.epoch < det.train_config.epochs:
            raise DeadlineReached(f"time limit reached after epoch {record.epoch} of {det.train_config.epochs}")

    start = time.perf_counter()
    det.fit(split.train, on_epoch_end=epoch_end)
    seconds = time.perf_counter() - start
    result: dict[str, Any] = {
        "model": model, "class": cls, "seed": seed, "protocol": protocol, "epochs": config.epochs,
        "train_images": det.n_train_images_, "val_images": det.n_val_images_, "test_images": len(split.test),
        "test_abnormal": int(labels.sum()), "model_options": settings["model_options"], "train_seconds": seconds,
        "git_commit": commit, "device": str(det.device), "threads": torch.get_num_threads(), "cpu": cpu_model(),
        "command": command_line(),
    }
    if protocol == VALIDATE:
        result["pseudo_anomaly"] = split.abnormal_class
    if protocol == PAPER:
        best = int(np.argmax(per_epoch))  # the first of tied epochs, as the scores kept above
        scores = best_scores[0]
        # no threshold (nothing is held out): the metrics that need none, of the epoch the protocol selects
        result.update({"auroc": per_epoch[best], "auprc": evaluate_scores(scores, labels, 0.0)["auprc"],
                       "selected_epoch": best + 1, "auroc_per_epoch": per_epoch})
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
    unfinished: list[str] = field(default_factory=list)  # not run, or stopped, by the time limit or an interrupt


def run_sweep(load: Callable[[], LabelledImages], config: SweepConfig, out: Path, workers: int = 1,
              deadline: float | None = None) -> SweepOutcome:
    """Run every missing cell, writing each as it finishes; return all cells of this sweep.

    A failing cell (e.g. a loss that became NaN, or a process killed for memory) is reported and the
    others go on. With `workers` > 1, each cell runs in its own process, at most `workers` at a time
    (on several GPUs, one cell per GPU; on one GPU, all share it), so a crash loses that cell only;
    `load` must then be picklable (e.g. functools.partial(load_cifar10, data_dir)).

    With `deadline` (wall-clock seconds), no cell starts after it, nor one that the longest cell of
    this run says would end after it, and a running cell stops at its next epoch's end once it has
    passed (not saved); those cells are listed in `unfinished`, and the same call later runs them. The
    first cell of a call always starts and runs to its end, so that every call makes progress however
    short the limit (a limit shorter than one cell would otherwise stop it, unsaved, on every call).
    """
    from .progress import progress_bar

    if workers < 1:
        raise ConfigError(f"workers must be at least 1, got {workers}")
    cells_dir = SweepDirectory(out).cells
    cells_dir.mkdir(parents=True, exist_ok=True)
    plan = _plan(config)
    saved = {cell: _finished(cells_dir, cell, config) for cell in plan}  # each cell file read once
    todo = [cell for cell in plan if saved[cell] is None]
    for cell in todo:
        _say_if_saved_with_other_settings(cells_dir, cell, config)
    failures: list[tuple[str, str]] = []
    # The bar fills by expected work, not by cells: a raw-pixel baseline's cell takes seconds where a trained
    # model's takes minutes, so a bar counting cells would promise hours for a sweep that ends within one.
    work = {cell: cell_work(cell[0], config) for cell in plan}
    bar = progress_bar(total=sum(work.values()), initial=sum(work.values()) - sum(work[cell] for cell in todo),
                       desc="benchmark", bar_format="{l_bar}{bar}| [{elapsed}<{remaining}{postfix}]",
                       disable=not config.settings.training.progress)
    cells_done = len(plan) - len(todo)

    def advance(cell: tuple[str, str, int, str]) -> None:
        nonlocal cells_done
        cells_done += 1
        bar.set_postfix_str(f"{cells_done}/{len(plan)} cells", refresh=False)
        bar.update(work[cell])

    bar.set_postfix_str(f"{cells_done}/{len(plan)} cells")
    unfinished: list[str] = []
    # how long a cell takes, before one of this call has finished: the longest training of the saved cells, so a
    # call with a time limit does not start cells it can only stop unsaved (with --workers, in every slot at once)
    known = max((float(r.get("train_seconds") or 0.0) for r in saved.values() if r is not None), default=0.0)
    if workers == 1:
        longest = known
        with _each_warning_once():
            for cell in todo:
                if deadline is not None and cell != todo[0] and _now() + longest > deadline:
                    unfinished.append(cell_key(*cell))
                    continue
                bar.set_postfix_str(f"{cells_done}/{len(plan)} cells; running {' '.join(map(str, cell))}")
                start = _now()
                first = cell == todo[0]
                try:
                    _run_and_write(load, cell, config, cells_dir, None if first else deadline)
                except DeadlineReached:
                    unfinished.append(cell_key(*cell))
                except SkipGanomalyError as err:
                    failures.append((cell_key(*cell), str(err)))
                took = _now() - start
                longest = max(longest, took)
                if first:
                    _say_if_past(deadline, took)
                advance(cell)
    else:
        failures, unfinished = _run_in_processes(load, todo, config, cells_dir, workers, advance, deadline, known)
    bar.close()
    return SweepOutcome(saved_outcome(config, out).results, failures, unfinished)


def _plan(config: SweepConfig) -> list[tuple[str, str, int, str]]:
    """Every (model, class, seed, protocol) cell of the sweep, in the order they run."""
    return [(m, c, s, p) for m in config.models for p in config.protocols for c in config.classes for s in config.seeds]


def saved_outcome(config: SweepConfig, out: Path) -> SweepOutcome:
    """The cells of the sweep saved in `out` so far, and the others as unfinished (after an interrupt)."""
    cells_dir = SweepDirectory(out).cells
    found = [(cell, _finished(cells_dir, cell, config)) for cell in _plan(config)]
    return SweepOutcome([r for _, r in found if r is not None], [],
                        [cell_key(*cell) for cell, r in found if r is None])


@contextlib.contextmanager
def _each_warning_once() -> Iterator[None]:
    """While cells run in this process, a warning that every cell would repeat word for word (the threshold of a
    small held-out set, say) is printed for the first only: twelve cells do not print it twelve times. The printing
    handlers filter, not the logger, so each cell still records all of its warnings (`_run_and_write`). (With
    `--workers`, each cell's own process prints its warnings.)"""
    def once() -> Callable[[logging.LogRecord], bool]:
        seen: set[str] = set()  # each handler its own: a record reaches every handler

        def first_time(record: logging.LogRecord) -> bool:
            if record.levelno < logging.WARNING or record.levelno >= logging.ERROR:
                return True
            text = record.getMessage()
            new = text not in seen
            seen.add(text)
            return new
        return first_time

    printing = [*logging.getLogger().handlers, *logging.getLogger(PACKAGE_LOGGER).handlers]
    if logging.lastResort is not None:  # what prints where no handler is set up
        printing.append(logging.lastResort)
    filters = [(handler, once()) for handler in dict.fromkeys(printing)]
    for handler, only_once in filters:
        handler.addFilter(only_once)
    try:
        yield
    finally:
        for handler, only_once in filters:
            handler.removeFilter(only_once)


def _saved_cells(cells_dir: Path, cell: tuple[str, str, int, str]) -> list[tuple[Path, dict[str, Any]]]:
    """The saved results of this (model, class, seed, protocol), whatever their settings."""
    out = []
    for path in sorted(cells_dir.glob(f"{glob.escape(cell_key(*cell))}__*.json")):
        try:
            out.append((path, json.loads(path.read_text())))
        except (OSError, ValueError):  # a foreign or damaged file: not a finished cell
            continue
    return out


def _finished(cells_dir: Path, cell: tuple[str, str, int, str], config: SweepConfig) -> dict[str, Any] | None:
    """The cell's saved result if it was run with this sweep's settings."""
    settings, defaults = cell_settings(*cell, config), _key_defaults()
    for _, result in _saved_cells(cells_dir, cell):
        if isinstance(result.get("settings"), dict) and not differing(_as_saved_then(result["settings"]), settings,
                                                                      defaults):
            return result
    return None


def _say_if_saved_with_other_settings(cells_dir: Path, cell: tuple[str, str, int, str], config: SweepConfig) -> None:
    """Name the settings that differ when a cell is rerun because its saved runs used others."""
    settings, defaults = cell_settings(*cell, config), _key_defaults()
    for path, result in _saved_cells(cells_dir, cell):
        differ = differing(_as_saved_then(result.get("settings") or {}), settings, defaults)
        log.info("cell %s: %s was run with other settings (%s); running it with this sweep's", cell_key(*cell),
                 path.name, ", ".join(differ))


def _run_and_write(load: Callable[[], LabelledImages], cell: tuple[str, str, int, str], config: SweepConfig,
                   cells_dir: Path, deadline: float | None = None) -> None:
    with warnings_said() as said:
        result, labels, scores = run_cell(load, *cell, config, deadline=deadline)
    result["warnings"] = said  # what a reader of the table should know, e.g. a threshold on 3 held-out images
    path = cell_file(cells_dir, result["settings"])
    scores_file = path.with_suffix(".scores.npz")
    with replacing(scores_file) as tmp, tmp.open("wb") as fh:  # before the cell file: a cell on disk has its scores
        np.savez_compressed(fh, labels=labels.astype(np.int8), scores=scores.astype(np.float32))
    write_text_atomic(path, json_text({**result, "scores_file": scores_file.name}, indent=1))


def _cell_process(load: Callable[[], LabelledImages], cell: tuple[str, str, int, str], config: SweepConfig,
                  cells_dir: Path, threads: int, device: str, deadline: float | None = None) -> None:
    """One cell in its own process; a stop at the time limit exits with DEADLINE_EXIT."""
    torch.set_num_threads(threads)
    try:
        _run_and_write(load, cell, replace(config, settings=config.settings.replace(device=device, progress=False)),
                       cells_dir, deadline)
    except DeadlineReached:
        sys.exit(DEADLINE_EXIT)


def _run_in_processes(load: Callable[[], LabelledImages], todo: list[tuple[str, str, int, str]], config: SweepConfig,
                      cells_dir: Path, workers: int, done: Callable[[tuple[str, str, int, str]], object],
                      deadline: float | None = None, known: float = 0.0
                      ) -> tuple[list[tuple[str, str]], list[str]]:
    """One spawned process per cell, `workers` at a time; the CPU threads are shared out between them.
    Returns the failures and the cells left for the time limit (see `run_sweep`)."""
    ctx = multiprocessing.get_context("spawn")
    device = config.settings.training.device
    gpus = torch.cuda.device_count() if device in ("auto", "cuda") and torch.cuda.is_available() else 0
    threads = max(1, torch.get_num_threads() // workers)
    pending = list(todo)
    running: dict[Any, tuple[tuple[str, str, int, str], int, float]] = {}
    failures: list[tuple[str, str]] = []
    unfinished: list[str] = []
    longest = known  # the longest cell so far: of the saved ones, then of this call's
    with sigterm_as_interrupt():
        try:
            while pending or running:
                while pending and len(running) < workers:
                    if deadline is not None and pending[0] != todo[0] and _now() + longest > deadline:
                        unfinished += [cell_key(*cell) for cell in pending]
                        pending.clear()
                        break
                    slot = min(set(range(workers)) - {s for _, s, _ in running.values()})
                    cell = pending.pop(0)
                    limit = None if cell == todo[0] else deadline  # the first cell runs to its end (run_sweep)
                    proc = ctx.Process(target=_cell_process, args=(load, cell, config, cells_dir, threads,
                                                                   f"cuda:{slot % gpus}" if gpus else device, limit),
                                       name=cell_key(*cell))
                    running[proc] = (cell, slot, _now())  # before it starts: an interrupt then still stops it
                    proc.start()
                if not running:
                    break
                multiprocessing.connection.wait([p.sentinel for p in running])
                for proc in [p for p in running if not p.is_alive()]:
                    proc.join()
                    cell, _, started = running.pop(proc)
                    if proc.exitcode == 0:
                        longest = max(longest, _now() - started)
                        if cell == todo[0]:
                            _say_if_past(deadline, _now() - started)
                    elif proc.exitcode == DEADLINE_EXIT:
                        unfinished.append(cell_key(*cell))
                    else:
                        failures.append((cell_key(*cell), f"its process ended with exit code {proc.exitcode}"))
                    done(cell)
        finally:  # interrupted: the cells still running stop with the sweep (finished ones are on disk)
            _stop(list(running))
    return failures, unfinished


def _say_if_past(deadline: float | None, took: float) -> None:
    """After the first cell of a call: say so when it ran past the time limit (it always runs to its end)."""
    if deadline is not None and _now() > deadline:
        log.warning("the first cell took %.0f s and ran %.0f s past the time limit: a call always finishes the first "
                    "cell it starts, so that each call makes progress; give --time-limit more than one cell's time",
                    took, _now() - deadline)


def _stop(procs: list[Any], grace: float = 10.0) -> None:
    """Terminate the worker processes still running and wait for them; one not ended after `grace` seconds
    (e.g. stuck in a GPU's teardown) is killed."""
    for proc in procs:
        if proc.is_alive():
            proc.terminate()
    for proc in procs:
        if proc.pid is None:  # never started
            continue
        proc.join(grace)
        if proc.is_alive():
            proc.kill()
            proc.join()


def benchmark_warnings(data_warnings: Sequence[str], results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each warning once with who said it: reading the data (`data_warnings`), or the cells (by key) whose saved
    results hold it: a warning a cell's process printed is otherwise lost once the terminal closes."""
    said = [{"warning": text, "data": True, "cells": []} for text in dict.fromkeys(data_warnings)]
    by_text: dict[str, list[str]] = {}
    for result in results:
        for text in result.get("warnings") or ():
            if text in data_warnings:  # a cell reading the same data again says it again: listed once, as the data's
                continue
            by_text.setdefault(str(text), []).append(cell_key(result["model"], result["class"], result["seed"],
                                                              result["protocol"]))
    return said + [{"warning": text, "data": False, "cells": keys} for text, keys in by_text.items()]


def cell_rows(results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Flat rows for results.csv."""
    keys = ["model", "class", "seed", "protocol", "auroc", "auprc", "f1", "precision", "recall", "false_alarm_rate",
            "threshold",
            "selected_epoch", "epochs", "train_images", "val_images", "test_images", "test_abnormal",
            "train_seconds", "git_commit", "cpu", "pseudo_anomaly"]
    return [{k: r.get(k, "") for k in keys} for r in results]


def benchmark_data(data: Path | None, data_dir: Path, download: bool = False, image_size: int | None = None,
                   in_channels: int | None = None, progress: bool = True
                   ) -> tuple[Callable[[], LabelledImages], LabelledImages]:
    """The sweep's data set and a picklable function that loads it again (in each cell's process): the
    user's labelled images (`data`: an .npz or a folder per class, at `image_size` and `in_channels`), or
    CIFAR-10 from `data_dir` (downloaded with `download`; 32x32 RGB only)."""
    if data is not None:
        if download:
            raise ConfigError("--download is for CIFAR-10; --data reads your own files")
        size = image_size or 32
        check_geometry(in_channels or 3, size)
        load: Callable[[], LabelledImages] = functools.partial(load_labelled, data, size, in_channels)
        return load, load_labelled(data, size, in_channels, progress=progress)
    if (image_size or 32) != 32 or (in_channels or 3) != 3:
        raise ConfigError("--image-size and --channels are for --data; CIFAR-10 cells are 32x32 RGB")
    return (functools.partial(load_cifar10, data_dir),
            load_cifar10(data_dir, download_missing=download, progress=progress))


def decode_once(data: LabelledImages, path: Path) -> Callable[[], LabelledImages]:
    """Write a decoded image set to `path` and return the cells' loader of it: a folder of images is then
    decoded (and its unreadable files warned about) once, not once per cell. The caller removes `path`."""
    save_decoded(data, path)
    return functools.partial(load_decoded, path)


def check_protocols(data: LabelledImages, classes: Sequence[str], protocols: Sequence[str]) -> None:
    """Fail before training where a protocol cannot run on a task: `validate` needs two normal classes."""
    if VALIDATE in protocols:
        for cls in classes:
            pseudo_anomaly(data, data.class_names(cls))


def check_sizes(data: LabelledImages, config: SweepConfig) -> None:
    """Fail before training where a task's training part, at the sweep's fractions, is too small to hold out
    the threshold's images: said once, naming --train-fraction, rather than by every cell after loading."""
    least: dict[str, int] = {}  # what a model with these options needs to train on (a kNN score: more than k)
    for protocol in config.protocols:
        for cls in config.classes:
            for seed in config.seeds:  # under validate the seed picks the pseudo-anomaly, and so the training part
                abnormal = data.class_names(cls)
                if protocol == VALIDATE:
                    abnormal = [*abnormal, pseudo_anomaly(data, abnormal, seed)]
                n = training_count(data, abnormal, config.train_fraction)
                for model in config.models:
                    settings = detector_settings(model, seed, protocol, config)
                    key = json.dumps([model, settings.as_dict()["model_options"]], sort_keys=True)
                    if key not in least:
                        least[key] = create(model, in_channels=data.train_images.shape[1],
                                            image_size=settings.image_size,
                                            **settings.model_options).min_training_images()
                    try:  # the paper protocol holds none out
                        kept = len(Detector.from_settings(settings).holdout(n)[1])
                        if kept < least[key]:
                            held = f", and {n - kept} of {n} are held out for the threshold" if n > kept else ""
                            raise DataError(f"{model} with these options needs at least {least[key]} training "
                                            f"images{held}")
                    except DataError as err:
                        trained = [c for c in data.present() if c not in abnormal]
                        advice = ("raise --train-fraction" if config.train_fraction < 1 else
                                  "give those classes more images" + (", or leave validate out of --protocol"
                                                                      if protocol == VALIDATE else ""))
                        raise ConfigError(f"task {cls!r} ({protocol}, seed {seed}) trains on {', '.join(trained)}: "
                                          f"{n} training image{'s' if n != 1 else ''} at --train-fraction "
                                          f"{config.train_fraction:g}: {err}; {advice}") from None


def resolve_classes(data: LabelledImages, classes: str = "all", normal_labels: str | None = None) -> list[str]:
    """The abnormal class of each task: `classes` ('all', or 'a,b' with 'a+b' for several abnormal at once),
    or with `normal_labels` ('a,b') one task where every other class is abnormal. A class with no images,
    or no normal class left, fails here in one line."""
    if normal_labels:
        if classes != "all":
            raise ConfigError("give --classes or --normal-labels, not both")
        normal = [data.classes[data.class_index(n.strip())] for n in normal_labels.split(",")]
        abnormal = [c for c in data.with_images() if c not in normal]
        if not abnormal:
            raise ConfigError(f"--normal-labels names every class of {data.name}; leave at least one abnormal")
        tasks = [JOIN.join(abnormal)]
    elif classes == "all":
        tasks = list(PAPER_ORDER) if isinstance(data, Cifar10) else data.present()
    else:
        tasks = list(dict.fromkeys(JOIN.join(data.class_names(c.strip())) for c in classes.split(",")))  # each once
    for cls in tasks:
        check_task(data, data.class_names(cls))
    return tasks


def run_benchmark(load: Callable[[], LabelledImages], config: SweepConfig, out: Path, title: str,
                  workers: int = 1, time_limit: float | None = None, data_warnings: Sequence[str] = ()
                  ) -> SweepOutcome:
    """Run the sweep into `out`, then write its summaries there: results.json (config, environment, every
    cell), results.csv (one row per cell), table.md (per protocol, next to the paper's Table 1 on
    CIFAR-10) and report.html. Prints the table. With `time_limit` (seconds from now), see `run_sweep`'s
    deadline: what finished is written, and the same call later continues; so it is after an interrupt.
    `data_warnings`: what reading the data warned about, listed in the summaries with the cells' own warnings."""
    start = time.perf_counter()
    env = environment()  # before the sweep: the code that runs it (cells started later say so below)
    deadline = _now() + time_limit if time_limit is not None else None
    try:
        outcome = run_sweep(load, config, out, workers=workers, deadline=deadline)
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: the tables and report show what finished, before stopping
        with interrupts_held():  # a second Ctrl-C must not cut them in half
            kept = saved_outcome(config, out)
            if kept.results:
                print(f"writing the tables of the {len(kept.results)} finished cells ...", file=sys.stderr,
                      flush=True)
                _write_summaries(out, config, title, env, start, kept, data_warnings)
                print(f"{len(kept.results)} finished cells kept in {out} (table.md, report.html); "
                      f"{len(kept.unfinished)} not run yet", file=sys.stderr)
        raise
    for key, why in outcome.failures:
        log.error("cell %s failed: %s", key, why)
    left = len(outcome.unfinished)
    later = (f"{left} cell{'s' if left != 1 else ''} left for the time limit ({time_limit:g} s); the same command "
             "continues with them" if outcome.unfinished else "")
    if not outcome.results:
        # Nothing failed and cells are left: the same command continues, so it exits as a run the limit stopped.
        error = DeadlineReached if outcome.unfinished and not outcome.failures else CellsFailed
        raise error(f"no benchmark cell finished ({len(outcome.failures)} failed" + (f"; {later}" if later else "")
                    + ")")
    text = _write_summaries(out, config, title, env, start, outcome, data_warnings)
    print(text)
    print(f"report {SweepDirectory(out).report}")
    print(f"{len(outcome.results)} cells in {out} ({time.perf_counter() - start:.0f} s this run)"
          + (f"; {len(outcome.failures)} failed (named with their errors in table.md and results.json; the same "
             "command retries them, which helps where the cause has passed, e.g. memory)" if outcome.failures else "")
          + (f"; {later}" if later else ""))
    return outcome


def _write_summaries(out: Path, config: SweepConfig, title: str, env: dict[str, Any], start: float,
                     outcome: SweepOutcome, data_warnings: Sequence[str] = ()) -> str:
    """results.json, results.csv, table.md and report.html of the cells in `outcome`; returns the table."""
    from .evaluation.report import build_benchmark_report

    folder = SweepDirectory(out)
    said = benchmark_warnings(data_warnings, outcome.results)
    env = dict(env)
    end_commit = environment()["git_commit"]
    if end_commit != env["git_commit"]:  # the tree changed during the run; spawned workers may have run either
        env["git_commit_at_end"] = end_commit
    env["wall_seconds_this_run"] = round(time.perf_counter() - start, 1)
    write_json(folder.results_json, {"config": config.as_dict(), "dataset_name": title, "environment": env,
                                     "complete": not outcome.unfinished and not outcome.failures,
                                     "unfinished": outcome.unfinished,
                                     "failed": [{"cell": key, "error": why} for key, why in outcome.failures],
                                     "warnings": said, "cells": outcome.results})
    rows = cell_rows(outcome.results)
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(folder.results_csv, buffer.getvalue())
    text = sweep_table(outcome.results, config, title, env, outcome.failures, outcome.unfinished, said)
    write_text_atomic(folder.table, text)
    build_benchmark_report(out)
    return text


def sweep_table(results: Sequence[dict[str, Any]], config: SweepConfig, title: str, env: dict[str, Any],
                failures: Sequence[tuple[str, str]] = (), unfinished: Sequence[str] = (),
                warnings: Sequence[dict[str, Any]] = ()) -> str:
    """table.md: the sizes, the command and machine, then one AUROC table per protocol; cells that failed
    or were left for the time limit are named above the tables (their means leave them out), and so are the
    warnings (`benchmark_warnings`)."""
    summary = summarise(results)
    cifar = config.dataset == CIFAR10
    paper_note = " (paper's Table 1)" if cifar else ""
    # a column per task: one class left out, or several abnormal at once (--normal-labels, "a+b")
    tasks = "leave-one-class-out" if not any(JOIN in c for c in config.classes) else \
        "abnormal classes (each column's) against the others"
    sections = [f"# {title} {tasks} AUROC: ours{paper_note}\n\n"
                f"epochs {config.epochs}{one_pass_note(config.models)}, batch {config.batch_size}, "
                f"train fraction {config.train_fraction}, "
                f"test fraction {config.test_fraction}, seeds {','.join(map(str, config.seeds))}. "
                f"The mean column averages the classes with our number" + (", ours and the paper's alike" if cifar else "")
                + f". {table_notes(summary)}\n\n"
                f"Command: `{env['command']}`" + (f" (in {env['cwd']})" if env.get("cwd") else "")
                + f"; git {commit_text(env)}; torch {env['torch']}, "
                f"{env['threads']} threads, {env['cpu']}; {env['wall_seconds_this_run']} s this run."
                + (f" **{versions}**" if (versions := commits_note(results, env)) else "") + "\n"]
    if failures or unfinished:
        missing = [f"- `{key}` failed: {why}" for key, why in failures] + [f"- `{key}` not run yet (the same command runs it)"
                                                                          for key in unfinished]
        are = f"{len(missing)} cells are" if len(missing) > 1 else "1 cell is"
        sections.append(f"**Incomplete: {are} missing (`-` below); each mean is over the cells that finished.**\n\n"
                        + "\n".join(missing) + "\n")
    if warnings:
        sections.append(f"**Warnings** ({WARNINGS_NOTE}):\n\n"
                        + "\n".join(f"- {warning_source(w)}: {w['warning']}" for w in warnings) + "\n")
    for protocol in config.protocols:
        sections.append(f"## protocol: {protocol}\n\n{PROTOCOL_NOTES[protocol]}\n\n"
                        + benchmark_table(summary, config.models, config.classes, protocol,
                                          shows_paper_numbers(config.dataset, protocol)) + "\n")
    return "\n".join(sections)
