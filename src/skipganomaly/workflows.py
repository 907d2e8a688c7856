"""What the `train`, `test`, `predict` and `demo` commands do, as functions: load the images, fit a detector into a run
directory, evaluate, write the report. The CLI parses arguments and calls these."""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import json
import logging
import math
import os
import shlex
import shutil
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from .data.digits import digits_leave_one_out
from .data.folders import PixelTruth, label_folders, load_labelled_folder, load_masks, training_files
from .data.images import list_image_files, pixel_digest, read_image_files, say_read_files
from .detector import Detector, DetectorSettings, model_options_in_effect, setting_fields
from .models import get_model_class
from .errors import PACKAGE_LOGGER, CheckpointError, ConfigError, DataError, warnings_said
from .evaluation.metrics import evaluate_scores, metrics_per_folder, pixel_metrics, quantile_threshold
from .evaluation.plots import save_overlays
from .evaluation.report import IN_EFFECT, build_run_report, read_scores, write_evaluation, write_scores
from .evaluation.tables import per_class_table
from .folder_lock import claim_folder
from .files import few_names, file_digest, readable_name, say_if_not_utf8, write_text_atomic
from .options import parse_model_args
from .progress import progress_bar
from .run_directory import CHECKPOINT, EpochLog, RunDirectory, SweepDirectory, read_history, write_json
from .scored_parts import PartLog, ScoredPart, call_identity, partial_file
from .provenance import environment, program
from .training.distributed import init_from_environment, is_main_process, rank_zeros, world
from .training import TrainConfig
from .training.loop import check_resume_length, data_fingerprint, load_train_state

log = logging.getLogger(PACKAGE_LOGGER)


def format_metrics(metrics: dict[str, Any]) -> str:
    """One line, `name=value`: four decimals, or four significant digits for a value they would show as 0
    (a threshold of 1.4e-05)."""
    def number(v: float) -> str:
        return f"{v:.4f}" if v == 0 or not math.isfinite(v) or abs(v) >= 5e-5 else f"{v:.4g}"

    return " ".join(f"{k}={number(v)}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items())


def load_calibrated(checkpoint: Path, device: str = "auto", progress: bool = True) -> Detector:
    """A saved detector that has its threshold (a finished training run)."""
    det = Detector.load(checkpoint, device=device, progress=progress)
    if det.threshold_ is None:
        run = checkpoint if Path(checkpoint).is_dir() else Path(checkpoint).parent
        raise CheckpointError(f"{checkpoint} comes from an unfinished training run and has no threshold (`{program()} "
                              f"train --resume {shlex.quote(str(run))}` finishes it; predict also takes a --threshold "
                              "of your own)")
    return det


def evaluate_folder(checkpoint: Path, data: Path, out: Path | None = None, report_dir: Path | None = None,
                    device: str = "auto", progress: bool = True) -> dict[str, Any]:
    """Score a labelled folder (normal/ + abnormal/) with a saved detector; print the metrics, write them
    to `out` (JSON) and, with `report_dir`, scores, figures and report.html there (with the warnings said)."""
    claim = claim_folder(report_dir) if report_dir is not None else contextlib.nullcontext()
    with claim, warnings_said() as said:
        return _evaluate_folder(checkpoint, data, out, report_dir, device, progress, said)


def _evaluate_folder(checkpoint: Path, data: Path, out: Path | None, report_dir: Path | None, device: str,
                     progress: bool, said: Sequence[str]) -> dict[str, Any]:
    det = load_calibrated(checkpoint, device, progress)
    x, y, names = load_labelled_folder(data, det.image_size, det.in_channels, progress=progress,
                                       bit_depth=det.bit_depth_, trained_on=det.file_form_)
    _warn_training_files_among(Path(checkpoint), names, y)
    truth = load_masks(data, names, y.tolist(), det.image_size)
    scores = det.decision_function(x)
    metrics = evaluate_scores(scores, y.numpy(), det.threshold_)
    metrics.update(_pixel_evaluation(det, truth, x))
    per_folder = _print_evaluation(metrics, scores, y.numpy(), label_folders(data, names), det.threshold_)
    if out is not None:
        write_json(out, {**metrics, **({"per_folder": per_folder} if per_folder else {})})
    if report_dir is not None:
        report = write_evaluation(report_dir, f"{det.model_name} ({checkpoint}) on {data}", x, names, y.numpy(),
                                  scores, metrics, det.threshold_, det.reconstructions, det.anomaly_maps,
                                  det.example_names(),
                                  per_folder=per_folder, calibration=calibration(det), warnings=said,
                                  settings=_shown_settings(det), model=_model_card(det, checkpoint))
        print(f"report {report}")
    return metrics


def _shown_settings(det: Detector) -> dict[str, Any]:
    """A detector's settings for a report: as saved, with every model option in effect (defaults included)."""
    return {**det.settings.as_dict(), IN_EFFECT: det.options_in_effect()}


def _checkpoint_file(checkpoint: Path) -> Path:
    """The file a `--checkpoint` names: itself, or a run directory's model.pt (as `Detector.load` reads it)."""
    return checkpoint / CHECKPOINT if checkpoint.is_dir() else checkpoint


def _model_card(det: Detector, checkpoint: Path) -> dict[str, Any]:
    """What a `test` report says of the detector it scored: which file (its full path and the start of its SHA-256),
    what it was trained on and by what (command, commit, machine; not recorded before checkpoints kept it)."""
    path = _checkpoint_file(checkpoint).resolve()
    trained_by = det.fit_environment_ or {}
    return {"checkpoint": str(path), "sha256": file_digest(path, "sha256").hexdigest()[:16], "model": det.model_name,
            "train_images": det.n_train_images_, "held_out_normals": det.n_val_images_,
            "epochs_trained": len(det.history_),
            **({f"trained by: {k}": v for k, v in trained_by.items()} if trained_by else
               {"trained by": "not recorded (a checkpoint saved before this was kept)"})}


def _pixel_evaluation(det: Detector, truth: PixelTruth | None, images: torch.Tensor) -> dict[str, float | int]:
    """Pixel AUROC and AUPRC where the test folder has MVTec AD's `ground_truth/` masks (`load_masks`): the anomaly
    maps of the normal test images and of the abnormal ones with a mask, against those masks (all zero for normal
    images), at the model's image size, and what they cover (`pixel_images` compared, of which `pixel_masks` have a
    defect mask: the rest of the abnormal images were left out, with a warning); nothing without masks."""
    if truth is None:
        return {}
    if not truth.masks.any():
        log.warning("no mask in %s marks a defect pixel (all are empty at %dx%d): the pixel metrics are undefined "
                    "(nan)", truth.folder, det.image_size, det.image_size)
    log.info("pixel metrics: the anomaly maps of %d test images against %d masks in %s, at %dx%d", len(truth.index),
             truth.n_masks, truth.folder, det.image_size, det.image_size)
    return {**pixel_metrics(det.anomaly_maps(images[truth.index]), truth.masks), "pixel_images": len(truth.index),
            "pixel_masks": truth.n_masks}


def _print_evaluation(metrics: dict[str, Any], scores: np.ndarray, labels: np.ndarray, folders: Sequence[str],
                      threshold: float) -> dict[str, dict[str, float]] | None:
    """Print the pooled metrics and, where the test set has several defect folders (MVTec AD's defect types),
    a line per folder; return those (None with one defect folder: the pooled metrics say it all)."""
    print(format_metrics(metrics))
    per_folder = metrics_per_folder(scores, labels, folders, threshold)
    if sum(row["label"] for row in per_folder.values()) < 2:
        return None
    for name, row in per_folder.items():
        what = f"auroc={row['auroc']:.4f} recall={row['flagged']:.4f}" if row["label"] else \
            f"false alarms={row['flagged']:.4f}"
        print(f"  {readable_name(name)}/: n={row['n']} {what}")
    return per_folder


PREDICT_PART_BYTES = 512 * 2 ** 20  # predict without maps reads and scores at most this many bytes of images
PREDICT_PART_IMAGES = 8192  # and this many images at a time: an interrupted call loses at most one part's work
RAW_MAPS = "maps.npz"  # in predict's --save-maps folder: `maps` [N, H, W] float32 and `paths`, in the CSV's order


def predict_files(checkpoint: Path, inputs: Sequence[Path], out: Path, save_maps: Path | None = None,
                  device: str = "auto", progress: bool = True, threshold: float | None = None) -> list[str]:
    """Write path, score, label (1 = above the stored threshold) and that threshold per image of `inputs` (files and
    folders) to the CSV `out`; with `save_maps`, one input | anomaly-map PNG per image there. A file that
    cannot be read keeps its row, with the score and label left empty (a part that disappears from an
    inspection log is worse than one marked unscored), and so does an input that does not exist or a subfolder
    that cannot be opened (one row for the folder); those paths are returned. Only inputs none of which exist,
    or hold no image, are an error. `threshold`: the label's cut instead of the stored threshold (then an
    unfinished run, which has none, scores too)."""
    if save_maps is not None:
        _check_maps_folder(save_maps, inputs)
    if threshold is not None and not math.isfinite(threshold):
        raise ConfigError(f"the threshold must be a finite number, got {threshold}")
    det = load_calibrated(checkpoint, device, progress) if threshold is None else \
        Detector.load(checkpoint, device=device, progress=progress)
    cut = det.threshold_ if threshold is None else threshold
    assert cut is not None
    paths, unlisted = _input_files(inputs)
    existing = [p for p in paths if p.exists()]
    # Without maps, the images are read and scored in parts (at most PREDICT_PART_BYTES of images and
    # PREDICT_PART_IMAGES images), so a folder of any size fits in memory and an interrupted call keeps its finished
    # parts (`PartLog`: the same command continues); the maps of one call share one colour scale and one maps.npz,
    # so they are made from all images at once.
    per_image = det.in_channels * det.image_size ** 2
    part_log = None
    if save_maps is not None:
        part = max(1, len(existing))
    else:
        part = max(1, min(PREDICT_PART_IMAGES, PREDICT_PART_BYTES // per_image))
        part_log = PartLog.open(out, call_identity(_checkpoint_file(checkpoint), existing, part))
    results: list[ScoredPart] = list(part_log.done) if part_log is not None else []
    starts = range(0, len(existing), part)
    in_parts = len(starts) > 1  # one bar for the call, not one per part
    if in_parts:
        det.set_params(progress=False)
    images = torch.zeros((0, det.in_channels, det.image_size, det.image_size), dtype=torch.uint8)
    with progress_bar(total=len(existing), initial=min(len(results) * part, len(existing)), desc="scoring",
                      unit="img", disable=not (progress and in_parts)) as bar:
        for start in starts[len(results):]:
            files = existing[start:start + part]
            try:
                loaded = read_image_files(files, det.image_size, det.in_channels, progress=progress and not in_parts,
                                          bit_depth=det.bit_depth_, trained_on=det.file_form_, say=False)
            except DataError:  # not one file of the part could be read: each still gets its row, unscored
                result = ScoredPart([], [], [], np.zeros(0))
            else:
                result = ScoredPart(loaded.kept, list(loaded.forms), list(loaded.several),
                                    det.decision_function(loaded.images), list(loaded.narrow))
                images = loaded.images if save_maps is not None else images
            if part_log is not None:
                part_log.add(result)
            results.append(result)
            bar.update(len(files))
    kept = [path for r in results for path in r.kept]
    forms = [form for r in results for form in r.forms]
    several = [path for r in results for path in r.several]
    scored = [r.scores for r in results]
    say_read_files(len(existing), kept, forms, several, det.image_size, det.in_channels, det.file_form_,
                   [path for r in results for path in r.narrow], det.bit_depth_)
    scores = np.concatenate(scored) if scored else np.zeros(0)
    labels = scores > cut
    # The CSV and the maps are written whole or not at all: the maps go to a hidden folder and the CSV to a temporary
    # file, and both are moved into place at the end, so an interrupted call leaves neither (a half-filled maps
    # folder would make the same command refuse it as not empty), only its finished parts' scores.
    partial = None if save_maps is None else save_maps.parent / f".{save_maps.name}.partial"
    csv_tmp = out.parent / f".{out.name}.tmp"
    scale: float | None = None
    try:
        maps = None
        if save_maps is not None and partial is not None and kept:
            shutil.rmtree(partial, ignore_errors=True)  # an earlier call's, killed before it could clean up
            raw = det.anomaly_maps(images)
            scale = held_out_map_scale(det, checkpoint)
            written = save_overlays(partial, images, kept, raw, vmax=scale)
            maps = [str(save_maps / Path(p).name) for p in written]
            # the maps as numbers too (the PNGs are for looking at: one colour scale, 8 bits)
            np.savez_compressed(partial / RAW_MAPS, maps=raw.astype(np.float32), paths=np.array(kept))
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        with_maps = save_maps is not None  # the map column whenever maps were asked for, so a script finds it
        # the cut each label was made at, on every row: a log of labels says what they meant (--threshold or stored)
        writer.writerow(["path", "score", "label", "threshold"] + (["map"] if with_maps else []))
        cut_text = f"{cut:.8g}"
        row_of = {path: i for i, path in enumerate(kept)}
        # in the order given, unreadable files in their place; folders that could not be opened or held no image last
        for path in [*map(str, paths), *map(str, unlisted)]:
            i = row_of.get(path)
            if i is None:
                writer.writerow([path, "", "", cut_text] + ([""] if with_maps else []))
            else:
                writer.writerow([path, f"{scores[i]:.8g}", int(labels[i]), cut_text] + ([maps[i]] if maps else []))
        write_text_atomic(csv_tmp, buffer.getvalue())
        say_if_not_utf8([*map(str, paths), *map(str, unlisted)], out)
        if maps is not None and save_maps is not None and partial is not None:
            if save_maps.is_dir():
                save_maps.rmdir()  # checked empty before the call
            partial.rename(save_maps)
        os.replace(csv_tmp, out)
        partial_file(out).unlink(missing_ok=True)  # this call's parts, or an earlier call's of other inputs
    finally:
        if partial is not None:
            shutil.rmtree(partial, ignore_errors=True)
        csv_tmp.unlink(missing_ok=True)
    unread = [path for path in map(str, paths) if path not in row_of] + list(map(str, unlisted))
    given = "" if threshold is None else f" above the given threshold {threshold:g}"
    share = f"{1 - det.settings.contamination:.0%}"
    colours = "" if not maps else (
        f" (full colour: map values above {scale:.4g}, the peak {share} of the run's held-out normal images stay "
        "under)" if scale is not None else
        " (colour scale: this call's largest map value; the run's held-out images, which fix it across calls, were "
        "not found)")
    print(f"wrote {len(kept)} score{'s' if len(kept) != 1 else ''} to {out} ({int(labels.sum())} flagged{given})"
          + (f"; anomaly-map overlays in {save_maps}{colours}" if maps else
             "; no maps: no file could be read" if save_maps else "")
          + (f"; {len(unread)} row{'s' if len(unread) > 1 else ''} with no score (unreadable, missing, or a folder "
             "that could not be opened or held no image)" if unread else ""))
    return unread


def held_out_map_scale(det: Detector, checkpoint: Path) -> float | None:
    """The overlays' colour scale for a training run's checkpoint: the map peak that 1 - contamination of the run's
    held-out normal images (its calibration.csv) stay under, so full colour means "hotter than normal parts get" in
    every call, and a good part scored alone is not drawn as hot as a defect. None where those images are not at
    hand (a detector saved by the API, a copied checkpoint, files moved): the caller's own scale then."""
    run = RunDirectory(checkpoint if checkpoint.is_dir() else checkpoint.parent)
    try:
        if not run.calibration.is_file() or not run.checkpoint.samefile(checkpoint if checkpoint.is_file()
                                                                          else run.checkpoint):
            return None
        names = read_scores(run.calibration)[0]
        if not names or not all(Path(name).is_file() for name in names):  # moved, or relative to another folder
            return None
        maps = det.anomaly_maps(names)
    except (DataError, OSError):
        return None
    peaks = maps.reshape(len(maps), -1).max(axis=1)
    return float(quantile_threshold(peaks, det.settings.contamination)) or None


def _input_files(inputs: Sequence[Path]) -> tuple[list[Path], list[Path]]:
    """The files to score, each once, in the order given (a folder's files sorted; a path that does not exist in its
    place, to get its row), and the folders that could not be opened or held no image (each a row too). One missing
    path or empty folder among several is a warning, so the others' scores are not lost; when nothing is left to
    score, it is the error."""
    paths: list[Path] = []
    unlisted: list[Path] = []
    missing: list[Path] = []
    empty: list[str] = []
    empty_folders: list[Path] = []
    for item in inputs:
        if item.is_dir():
            try:
                paths += list_image_files(item, unlisted)
            except DataError as err:  # empty, or no image in it
                empty.append(str(err))
                empty_folders.append(item)
        elif item.is_file():
            paths.append(item)
        else:
            missing.append(item)
            paths.append(item)
    if len(missing) == len(paths) and not unlisted:  # nothing to score: a mistyped name, say
        raise DataError(empty[0] if empty else f"no such file or folder: {missing[0]}")
    for why in empty:
        log.warning("%s; the other inputs are scored (it gets a row with no score)", why)
    unlisted += empty_folders  # an input that gave nothing keeps a row, as a missing one does
    if missing:
        many = len(missing) > 1
        log.warning("%d input%s not exist, %s kept as a row with no score: %s", len(missing),
                    "s do" if many else " does", "each" if many else "it is", few_names(missing, whole=True))
    seen: set[Path] = set()
    unique = []
    for path in paths:  # each path once, where it was first given (a link is a path of its own: it keeps its row)
        spelled = Path(os.path.normpath(path.absolute()))  # `a/../b.png` is `b.png`
        if spelled not in seen:
            seen.add(spelled)
            unique.append(path)
    if len(unique) < len(paths):
        dropped = len(paths) - len(unique)
        log.info("%d file%s given more than once; each is scored once", dropped, "s were" if dropped > 1 else " was")
    return unique, list(dict.fromkeys(unlisted))  # a folder given twice is one row


def _check_maps_folder(save_maps: Path, inputs: Sequence[Path]) -> None:
    """A maps folder must be new or empty (the maps of one call share one colour scale, and older ones would mix
    in) and outside the inputs (the next call would score the maps)."""
    if save_maps.is_dir() and any(save_maps.iterdir()):
        raise ConfigError(f"--save-maps {save_maps} is not empty; give a new or empty folder (the maps of one call "
                          "share one colour scale, and older ones would mix in)")
    inside = [i for i in inputs if i.is_dir() and save_maps.resolve().is_relative_to(i.resolve())]
    if inside:
        raise ConfigError(f"--save-maps {save_maps} is inside the input folder {inside[0]}: the next call would "
                          "score the maps; put them elsewhere")


_UNSET = object()  # an option the saved settings do not name


def resumed_settings(run: RunDirectory, given: dict[str, Any], model_args: Sequence[str] = ()
                     ) -> tuple[DetectorSettings, dict[str, Any]]:
    """The settings to continue an interrupted run with: those in its config.yaml, with the `given` ones
    that only say where and how fast it runs (device, progress, compile) or how long (epochs); any other
    given setting, and any `--model-arg` (`model_args`), must repeat the saved value (a one-line ConfigError
    otherwise). Also the run's own fields (data, test, tensorboard)."""
    try:
        saved, fields_ = run.read_config()
        settings = DetectorSettings.from_dict(saved, where=str(run.config))
    except ConfigError as err:
        raise ConfigError(f"cannot resume {run.root}: {err}") from None
    may_change = set(TrainConfig.names(on_resume="free")) | set(TrainConfig.names(on_resume="grow"))
    current = settings.params()
    # said before any image is read (config.yaml has the planned epochs; the state file checks again, with the rest)
    check_resume_length(run.root, dataclasses.replace(settings.training, epochs=given.get("epochs",
                                                                                          settings.training.epochs)),
                        trained=0, planned=settings.training.epochs)
    fixed = sorted(k for k, v in given.items() if k not in may_change and current.get(k) != v)
    options = parse_model_args(model_args, [settings.model])[settings.model]
    if fixed or any(settings.model_options.get(k, _UNSET) != v for k, v in options.items()):
        flags = {f.name: f.metadata["flag"] for f in setting_fields()}
        changeable = sorted(flags[k] for k in may_change if flags.get(k))  # as the user types them
        named = ", ".join(flags.get(k) or k for k in fixed) or "--model-arg"
        raise ConfigError(f"cannot resume {run.root} with other {named}: they are saved in {run.config}; only "
                          f"{', '.join(changeable)} may be given anew")
    return settings.replace(**{k: v for k, v in given.items() if k in may_change}), fields_


def _earlier_environments(run: RunDirectory) -> list[dict[str, Any]]:
    """The environments of the calls that trained a run before this resume (command, commit, threads, machine):
    a resumed run's provenance keeps every call, not only the last one."""
    try:
        fields_ = run.read_config()[1]
    except ConfigError:
        return []
    earlier = [e for e in fields_.get("earlier_environments") or [] if isinstance(e, dict)]
    last = fields_.get("environment")
    return earlier + ([last] if isinstance(last, dict) else [])


def _say_if_resumed_otherwise(before: dict[str, Any], now: dict[str, Any]) -> None:
    """A resume on other threads, another commit or another machine continues, but its floating-point rounding
    differs from an uninterrupted run's (a GAN amplifies it): said, so the record is not read as bit-identical."""
    differ = [f"{key} {before.get(key)} then, {now.get(key)} now" for key in ("git_commit", "threads", "cpu", "gpu",
                                                                               "torch")
              if before.get(key) != now.get(key)]
    if differ:
        log.warning("resuming with %s: the epochs from here round differently than an uninterrupted run's would "
                    "(config.yaml keeps every call's environment)", "; ".join(differ))


def train_run(settings: DetectorSettings, data: Path, test: Path | None, run: RunDirectory, resume: bool = False,
              tensorboard: bool = False, overwrite: bool = False) -> Detector:
    """Train on the normal images of `data` into `run` (config.yaml, model.pt after every epoch,
    metrics.jsonl, metrics.json, report); with `test` (normal/ + abnormal/), evaluate after training.
    `resume` continues from run/model.state.pt; `overwrite` removes the run's earlier files once the data are
    read. Under torchrun, rank 0 alone writes the run directory, holding it for the run (`claim_folder`). The
    warnings said go into the report."""
    init_from_environment()  # a no-op unless started by torchrun with several processes
    run = RunDirectory(rank_zeros(run.root))  # a default folder each rank picked for itself: rank 0's
    with claim_folder(run.root, enabled=is_main_process()), warnings_said() as said:
        return _train_run(settings, data, test, run, resume, tensorboard, overwrite, said)


def _train_run(settings: DetectorSettings, data: Path, test: Path | None, run: RunDirectory, resume: bool,
               tensorboard: bool, overwrite: bool, said: Sequence[str]) -> Detector:
    progress = settings.training.progress
    det = Detector.from_settings(settings)
    folder, files = training_files(data)
    loaded = read_image_files(files, settings.image_size, settings.in_channels, progress=progress)
    images, kept, bit_depth, form = loaded.images, loaded.kept, loaded.bit_depth, loaded.form
    test_data, truth = None, None
    if test is not None:  # load before training, so a bad test folder fails in seconds, not hours
        test_data = load_labelled_folder(test, settings.image_size, settings.in_channels, bit_depth=bit_depth,
                                         trained_on=form)
        truth = load_masks(test, test_data[2], test_data[1].tolist(), settings.image_size)
        _warn_shared_images(images, *test_data)
    # checked before anything in the run directory is rewritten: the same settings and the same images
    state = (load_train_state(run.state, settings.training, data_fingerprint(images))
             if resume and run.state.exists() else None)
    done = state["history"] if state is not None else []
    stopped_early = bool(state is not None and state.get("stopped"))
    del state  # weights and optimiser moments: the loop reads them again
    if resume and not run.state.exists() and (run.checkpoint.exists() or read_history(run.metrics_log)):
        raise ConfigError(f"cannot resume {run.root}: its training state {run.state.name} is missing (deleted?), "
                          "so it would train again from epoch 1; start a new run (or --overwrite this one)")
    if not is_main_process():
        det.fit(images, checkpoint_path=run.checkpoint, resume=resume, bit_depth=bit_depth, file_form=form)
        return det
    det.holdout(len(images))  # too few images to hold some out: said now, before anything is removed
    if overwrite:  # only now: a refused training folder or a bad test folder leaves the old run as it was
        run.clear()
    run.root.mkdir(parents=True, exist_ok=True)
    env, earlier = environment(), _earlier_environments(run) if done else []
    run.write_config(settings.as_dict(), command="train", data=data.resolve(),
                     **{IN_EFFECT: model_options_in_effect(settings)},
                     test=None if test is None else test.resolve(), tensorboard=tensorboard,
                     train_images=len(kept), processes=world()[1],
                     environment=env,  # of this call; a resumed run's earlier calls' are kept below
                     **({"earlier_environments": earlier} if earlier else {}))
    if earlier:
        _say_if_resumed_otherwise(earlier[-1], env)
    log_epoch = EpochLog(run, tensorboard=tensorboard, done=done)
    # a finished run (its metrics.json written) that this call trains no further: its epochs all done, fitted in one
    # pass, or stopped early (the loop says so)
    finished = bool(done) and run.metrics.exists() and (
        len(done) >= settings.training.epochs or not get_model_class(settings.model).trained_by_gradient
        or stopped_early)
    print(f"training {settings.model} on {len(kept)} images from {folder}; run directory {run.root}"
          + (f"; it had finished ({len(done)} of {settings.training.epochs} epochs), so nothing is trained: its threshold"
             + (", test" if test_data is not None else "") + " and report are made again (--epochs N trains on)"
             if finished else f"; resuming after epoch {len(done)}" if done else ""))
    try:
        det.fit(images, checkpoint_path=run.checkpoint, on_epoch_end=log_epoch, resume=resume, bit_depth=bit_depth,
                file_form=form)
    finally:
        log_epoch.close()
    metrics: dict[str, Any] = {"threshold": det.threshold_, "train_images": len(kept)}
    _write_calibration(det, kept, run)
    if test_data is not None:
        x, y, names = test_data
        scores = det.decision_function(x)
        metrics["test"] = evaluate_scores(scores, y.numpy(), det.threshold_)
        metrics["test"].update(_pixel_evaluation(det, truth, x))
        per_folder = _print_evaluation(metrics["test"], scores, y.numpy(), label_folders(test, names), det.threshold_)
    run.write_metrics({**metrics, "warnings": list(said)})  # before the report, which reads them
    if test_data is not None:
        report = write_evaluation(run.root, f"{settings.model} on {test}", x, names, y.numpy(), scores,
                                  metrics["test"], det.threshold_, det.reconstructions, det.anomaly_maps,
                                  det.example_names(), per_folder=per_folder, calibration=calibration(det), warnings=said)
    else:
        report = build_run_report(run.root)
    print(f"saved {run.checkpoint} (threshold {det.threshold_:.6g}); report {report}")
    return det


def calibration(det: Detector) -> dict[str, Any] | None:
    """What a fitted detector's threshold rests on, for the report's words about it (`threshold_note`); None
    where the checkpoint does not record how many images were held out (saved by early versions)."""
    if not isinstance(det.n_val_images_, int):
        return None
    return {"n_val_images": det.n_val_images_, "val_fraction": det.settings.val_fraction,
            "contamination": det.settings.contamination}


def _warn_training_files_among(checkpoint: Path, names: Sequence[str], labels: torch.Tensor) -> None:
    """`test` of a training run's checkpoint: warn when test files are files of the run's training folder (the
    same bytes; found by size first, so only files of a size in common are read), as `train --test` warns."""
    run = RunDirectory(checkpoint if checkpoint.is_dir() else checkpoint.parent)
    logger = logging.getLogger(PACKAGE_LOGGER)
    quiet = logger.disabled
    try:
        data = run.read_config()[1].get("data")
        if not data or not Path(data).is_dir() or not run.checkpoint.samefile(
                run.checkpoint if checkpoint.is_dir() else checkpoint):
            return
        folder = Path(data)
        logger.disabled = True  # its listing's lines (files left out, links) were said when it trained
        sizes: dict[int, list[Path]] = {}
        for path in training_files(folder)[1]:
            sizes.setdefault(os.path.getsize(path), []).append(path)
        test_sizes: dict[int, list[int]] = {}
        for i, name in enumerate(names):
            test_sizes.setdefault(os.path.getsize(name), []).append(i)
        common = [size for size in test_sizes if size in sizes]
        training = {_bytes_digest(p) for size in common for p in sizes[size]}
        shared = sorted(i for size in common for i in test_sizes[size] if _bytes_digest(names[i]) in training)
    except (ConfigError, DataError, OSError):
        return  # a detector saved by the API, or its training folder gone or changed: nothing to compare with
    finally:
        logger.disabled = quiet
    if shared:
        normal = int((labels[shared] == 0).sum())
        log.warning("%d of the %d test images (%d normal, %d abnormal) are files of the training folder %s: the test "
                    "metrics are optimistic; keep the test images out of the training folder: %s", len(shared),
                    len(names), normal, len(shared) - normal, folder, few_names([names[i] for i in shared]))


def _bytes_digest(path: str | os.PathLike[str]) -> bytes:
    return file_digest(path, "blake2b").digest()


def _warn_shared_images(train_images: torch.Tensor, test_images: torch.Tensor, labels: torch.Tensor,
                        names: Sequence[str]) -> None:
    """Warn when test images are training images too (the same pixels at the model's size: the same files, or
    copies): their scores are those of images the model has learnt, so the test's metrics are optimistic."""
    seen = {pixel_digest(image) for image in train_images}
    shared = [i for i, image in enumerate(test_images) if pixel_digest(image) in seen]
    if shared:
        normal = int((labels[shared] == 0).sum())
        log.warning("%d of the %d test images (%d normal, %d abnormal) are also training images, the same pixels: the "
                    "test metrics are optimistic; keep the test images out of the training folder: %s", len(shared),
                    len(test_images), normal, len(shared) - normal, few_names([names[i] for i in shared]))


def _write_calibration(det: Detector, names: Sequence[str], run: RunDirectory) -> None:
    """calibration.csv: the held-out training normals' scores, highest first, and which image's score the threshold
    is, so that an odd image among them (a grayscale scan in an RGB set) can be found and removed."""
    if det.val_scores_ is None or det.threshold_ is None:
        return
    # absolute, as config.yaml's folders: `predict --save-maps` reads these images from any current folder
    held_out = [os.path.abspath(names[i]) for i in det.holdout(len(names))[0].tolist()]
    order = np.argsort(-det.val_scores_, kind="stable")
    write_scores(run.calibration, [held_out[i] for i in order], np.zeros(len(order), dtype=np.int64),
                 det.val_scores_[order])
    setter = held_out[int(np.argmin(np.abs(det.val_scores_ - det.threshold_)))]
    print(f"threshold {det.threshold_:.6g}: the score of held-out training image {readable_name(setter)}, "
          f"rank {int((det.val_scores_ <= det.threshold_).sum())} of {len(held_out)} (all in {run.calibration})")


DEMO_VERSION_FIELDS = ("git_commit", "skipganomaly", "torch")  # an unfinished demo continues only on the same code


def _demo_identity(settings: dict[str, Any], digits: Any, baselines: Any, max_train: Any,
                   env: dict[str, Any]) -> dict[str, Any]:
    """What a demo's numbers depend on: its settings (not how it runs: device, progress bars), digits, baselines,
    size cap and code. An interrupted demo continues only under the same identity, so one table never mixes two."""
    free = set(TrainConfig.names(on_resume="free"))
    return {"settings": {k: v for k, v in settings.items() if k not in free}, "digits": digits,
            "baselines": list(baselines), "max_train": max_train, **{k: env.get(k) for k in DEMO_VERSION_FIELDS}}


def _saved_identity(saved: dict[str, Any]) -> dict[str, Any]:
    env, settings = saved.get("environment"), saved.get("settings")
    return _demo_identity(settings if isinstance(settings, dict) else {}, saved.get("digits"),
                          saved.get("baselines") or {}, saved.get("max_train"), env if isinstance(env, dict) else {})


def _earlier_demo(out: Path, identity: dict[str, Any]) -> dict[str, Any] | None:
    """An interrupted demo in `out` of the same identity: its results.json, whose finished digits are kept (the
    same command continues it). Any other demo there is replaced, with a word: its digits' runs go too, so no
    folder of the first call's is left beside a table that no longer lists it. Not a demo's: refused."""
    folder = SweepDirectory(out)
    if not folder.results_json.exists():
        return None
    try:
        saved = json.loads(folder.results_json.read_text())
    except (OSError, ValueError):
        saved = None
    if not isinstance(saved, dict) or "cells" in saved or not ("digits" in saved or any(str(k).startswith("digit ")
                                                                                        for k in saved)):
        raise ConfigError(f"{out} holds a results.json that is not a demo's (a benchmark's?): give the demo another "
                          "--out")
    if not folder.table.exists() and _saved_identity(saved) == identity:
        return saved
    finished = "" if folder.table.exists() else ", unfinished, of other settings, digits or code"
    earlier = sorted(p for p in out.glob("digit?") if p.is_dir() and p.name[-1].isdigit() and RunDirectory(p).holds_run)
    log.warning("%s holds an earlier demo%s (%s): replaced by this one", out, finished,
                ", ".join(p.name for p in earlier) or "table")
    for run_folder in earlier:
        RunDirectory(run_folder).clear()
        with contextlib.suppress(OSError):
            run_folder.rmdir()  # empty unless the user put files there
    for path in (folder.results_json, folder.table):
        path.unlink(missing_ok=True)
    return None


def demo_kept(out: Path) -> str:
    """What an interrupted demo left in `out` for the same command to continue from, in words."""
    try:
        saved = json.loads(SweepDirectory(out).results_json.read_text())
    except (OSError, ValueError):
        saved = {}
    finished = sorted(k for k in saved if str(k).startswith("digit ")) if isinstance(saved, dict) else []
    started = sorted(p.parent.name for p in out.glob(f"digit?/{RunDirectory(out).state.name}")
                     if f"digit {p.parent.name[-1]}" not in finished) if out.is_dir() else []
    if not finished and not started:
        return "no digit had finished an epoch; run the same command again"
    kept = ([f"finished: {', '.join(k.split()[1] for k in finished)}"] if finished else []) + \
        ([f"the last complete epoch of {', '.join(started)}"] if started else [])
    return f"kept in {out} ({'; '.join(kept)}); the same command continues from there"


def _fit_demo_digit(settings: DetectorSettings, images: torch.Tensor, run: RunDirectory,
                    may_continue: bool) -> Detector:
    """Train one digit's detector into `run`, from the start, or (`may_continue`: the demo continues an interrupted
    one of the same identity) from the last complete epoch of the training state it left there (same training
    settings and images: checked again)."""
    done: list[dict[str, Any]] = []
    if may_continue and run.state.exists():
        try:
            done = load_train_state(run.state, settings.training, data_fingerprint(images))["history"]
        except (ConfigError, CheckpointError) as err:
            log.warning("%s cannot be continued (%s): this digit trains again from the start", run.root, err)
    if not done:
        run.clear()
    elif len(done) < settings.training.epochs:
        print(f"continuing {run.root} after epoch {len(done)}")
    log_epoch = EpochLog(run, done=done)
    return Detector.from_settings(settings).fit(images, checkpoint_path=run.checkpoint, on_epoch_end=log_epoch,
                                                resume=bool(done))


def _demo_warnings(results: dict[str, dict[str, Any]]) -> str:
    """The warnings of the demo's digits, each once with the digits it was said for (the F1 column rests on the
    thresholds they may be about)."""
    digits_of: dict[str, list[str]] = {}
    for key, result in results.items():
        for warning in result.get("warnings") or []:
            digits_of.setdefault(str(warning), []).append(key.removeprefix("digit "))
    if not digits_of:
        return ""
    return ("\nWarnings while it ran (each can change what the numbers mean; every digit's report lists its own):\n"
            + "".join(f"- digit{'s' if len(ds) > 1 else ''} {', '.join(ds)}: {w}\n" for w, ds in digits_of.items()))


def run_demo(settings: DetectorSettings, digits: Sequence[int], out: Path, baselines: Sequence[str] = (),
             max_train: int | None = None) -> bool:
    """Leave-one-digit-out on scikit-learn's digits: for each digit, train on the other nine (a run
    directory per digit), test on held-out normals plus that digit; beside the model, the `baselines`
    on the same split, seed and validation share. Prints and writes the per-digit table (table.md,
    results.json); returns False when an AUROC could not be computed. Run again after an interruption, with the
    same settings, it keeps the finished digits and continues the interrupted one from its last complete epoch.
    `out` is held for the demo (`claim_folder`)."""
    with claim_folder(out):
        return _run_demo(settings, digits, out, baselines, max_train)


def _run_demo(settings: DetectorSettings, digits: Sequence[int], out: Path, baselines: Sequence[str],
              max_train: int | None) -> bool:
    baselines = [b for b in baselines if b != settings.model]
    env = environment()
    earlier = _earlier_demo(out, _demo_identity(settings.as_dict(), list(digits), baselines, max_train, env))
    kept = [d for d in digits if earlier is not None and f"digit {d}" in earlier]
    results: dict[str, dict[str, float]] = {f"digit {d}": earlier[f"digit {d}"] for d in kept} if earlier else {}
    baseline_auroc: dict[str, dict[str, float]] = {
        b: {f"digit {d}": earlier["baselines"][b][f"digit {d}"] for d in kept} if earlier else {} for b in baselines}
    seed, start = settings.training.seed, time.perf_counter()
    calls = ([*(earlier.get("earlier_environments") or []), earlier.get("environment")] if earlier else [])
    made_by = {"environment": env, **({"earlier_environments": calls} if calls else {}),
               "settings": settings.as_dict(), "digits": list(digits), "max_train": max_train}
    if earlier is not None:
        print(f"continuing the interrupted demo in {out}: "
              + (f"digit{'s' if len(kept) > 1 else ''} {', '.join(map(str, kept))} finished and kept" if kept else
                 "no digit had finished"))
    seconds_before = float(earlier.get("seconds") or 0.0) if earlier else 0.0

    def save() -> None:  # after every digit, and first of all: the identity an interrupted demo continues under
        write_json(SweepDirectory(out).results_json, {**results, "baselines": baseline_auroc, **made_by,
                                                      "seconds": seconds_before + time.perf_counter() - start})

    out.mkdir(parents=True, exist_ok=True)
    save()
    for digit in digits:
        key = f"digit {digit}"
        if key in results:
            continue
        split = digits_leave_one_out(digit, settings.image_size, seed=seed, max_train=max_train)
        print(f"digit {digit} abnormal: {len(split.train)} training normals, {len(split.test)} test images")
        run = RunDirectory(out / f"digit{digit}")
        with warnings_said() as said:
            det = _fit_demo_digit(settings, split.train, run, may_continue=earlier is not None)
        scores, labels = det.decision_function(split.test), split.test_labels.numpy()
        metrics = evaluate_scores(scores, labels, det.threshold_)
        results[key] = {**metrics, "warnings": list(said)}  # results.json keeps them; the report lists them apart
        names = [f"test{i:04d}" for i in range(len(labels))]
        write_evaluation(run.root, f"{settings.model}, digit {digit} abnormal", split.test, names, labels, scores,
                         metrics, det.threshold_, det.reconstructions, det.anomaly_maps, det.example_names(),
                         calibration=calibration(det), warnings=said, settings=_shown_settings(det))
        for name in baselines:  # seconds each; their scores beside the model's, so their column can be checked
            base = Detector.from_settings(settings.replace(model=name, model_options={}, progress=False))
            base.fit(split.train)
            base_scores = base.decision_function(split.test)
            write_scores(run.baseline_scores(name), names, labels, base_scores, base.threshold_)
            baseline_auroc[name][key] = evaluate_scores(base_scores, labels, base.threshold_)["auroc"]
        save()
    results = {f"digit {d}": results[f"digit {d}"] for d in digits}  # the table in the order asked
    columns = [f"{settings.model} auroc", "auprc", "f1", *(f"{b} auroc" for b in baselines)]
    rows = {k: dict(zip(columns, [r["auroc"], r["auprc"], r["f1"], *(baseline_auroc[b][k] for b in baselines)]))
            for k, r in results.items()}
    table = per_class_table(rows, columns)
    seconds = seconds_before + time.perf_counter() - start
    training = settings.training
    summary = (f"{settings.model}, leave-one-digit-out on scikit-learn digits at {settings.image_size} px, "
               + ("every training normal of a digit's split" if max_train is None else
                  f"at most {max_train} training normals per digit (--max-train)")
               + f", {training.epochs} epochs, batch {training.batch_size}, lr {training.lr:g}, seed {seed}, "
               f"{'bf16 autocast' if training.amp else 'float32'}, {seconds:.0f} s"
               + (f" over {len(calls) + 1} calls (continued after an interruption)" if calls else "")
               + (f"; beside it, raw-pixel baselines on the same splits: {', '.join(baselines)}" if baselines else "")
               + f"\n\n{table}\n" + _demo_warnings(results))
    write_text_atomic(SweepDirectory(out).table, summary)
    print()
    print(summary)
    return not any(math.isnan(r["auroc"]) for r in results.values())
