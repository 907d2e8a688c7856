"""Command line: train, test, predict, report, demo, benchmark, bench-speed. Errors end in one line, not a traceback."""

from __future__ import annotations

import argparse
import csv
import functools
import json
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import yaml

from .benchmark import PRESETS, PROTOCOLS, SweepConfig, cell_rows, run_sweep
from .data.cifar10 import NAME as CIFAR10_NAME, PAPER_ORDER, TITLE as CIFAR10_TITLE, Cifar10, load_cifar10
from .data.labelled import JOIN, LabelledImages, check_task, load_labelled, pseudo_anomaly
from .data.digits import digits_leave_one_out
from .data.folders import load_labelled_folder, train_folder
from .data.images import list_image_files, load_image_files
from .detector import Detector
from .errors import CheckpointError, ConfigError, DataError, SkipGanomalyError
from .evaluation.metrics import evaluate_scores
from .evaluation.plots import save_overlays
from .evaluation.report import build_benchmark_report, build_report, build_run_report, write_evaluation
from .evaluation.tables import PROTOCOL_NOTES, STD_NOTE, benchmark_table, per_class_table, shows_paper_numbers, summarise
from .files import write_text_atomic
from .models import BASELINES, get_model_class, list_models
from .models.base import check_geometry
from .provenance import environment
from .training.distributed import init_from_environment, is_main_process
from .training.loop import load_train_state
from .training.runtime import reduce_heap_fragmentation, resolve_device

log = logging.getLogger("skipganomaly")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.low_memory:
        reduce_heap_fragmentation()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s", stream=sys.stderr)
    try:
        return int(args.func(args) or 0)
    except SkipGanomalyError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # a path that cannot be written or read, a full disk: the machine's, not a bug
        print(f"error: {err.strerror or err}" + (f": {err.filename}" if err.filename else ""), file=sys.stderr)
        return 2
    except (MemoryError, RuntimeError) as err:  # torch.OutOfMemoryError is a RuntimeError
        if not _out_of_memory(err):
            raise
        detail = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        print(f"error: out of memory ({detail}); {_memory_advice(args)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        hint = _how_to_continue(args)
        print("interrupted" + (f"; {hint}" if hint else ""), file=sys.stderr)
        return 130


def _out_of_memory(err: BaseException) -> bool:
    """A failed allocation: Python's MemoryError, CUDA's OutOfMemoryError, or the CPU allocator's RuntimeError."""
    text = str(err)
    return (isinstance(err, MemoryError) or type(err).__name__ == "OutOfMemoryError"
            or "can't allocate memory" in text or "out of memory" in text.lower())


def _memory_advice(args: argparse.Namespace) -> str:
    low = "or on a CPU put --low-memory before the command"
    if args.command in ("train", "demo"):
        return ("lower --batch-size or --image-size (memory grows with batch x pixels: README, Image size, batch and "
                f"memory), {low}")
    if args.command == "benchmark":
        return f"lower --batch-size or --workers, {low}"
    return "give fewer images per call"


def _how_to_continue(args: argparse.Namespace) -> str | None:
    """What survives an interrupted long command, and the command that picks it up."""
    if args.command == "train":
        run = args.resume or args.out
        if (run / "model.state.pt").exists():
            return f"the last complete epoch is kept; continue with: skipganomaly train --resume {run}"
        return "no epoch was complete, so there is nothing to resume"
    if args.command == "benchmark":
        return f"finished cells are kept in {args.out}; the same command runs only the missing ones"
    return None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="skipganomaly", description=__doc__)
    parser.add_argument("--low-memory", action="store_true",
                        help="return freed activations to the OS (glibc mmap for allocations >= 4 MiB): about 200 MiB "
                             "lower peak memory in CIFAR-10 training, about 20%% slower on a CPU")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train a detector on a folder of normal images",
                       description="Train on normal images; writes a run directory with config, "
                                   "checkpoint (updated every epoch), per-epoch losses and metrics.")
    p.add_argument("--data", type=Path,
                   help="folder of normal images, or a root whose train/ (or train/0.normal/) holds them")
    p.add_argument("--resume", type=Path, metavar="RUN_DIR",
                   help="continue an interrupted run from its last complete epoch, with the settings in "
                        "RUN_DIR/config.yaml (the result equals an uninterrupted run's); add --epochs N to train a "
                        "finished or interrupted run up to N epochs")
    p.add_argument("--test", type=Path, help="labelled folder (normal/ + abnormal/) to evaluate after training")
    p.add_argument("--out", type=Path, default=Path("runs/train"), help="run directory (default: runs/train)")
    p.add_argument("--tensorboard", action="store_true",
                   help="also log per-epoch scalars for TensorBoard in OUT/tensorboard (needs tensorboard)")
    _add_model_args(p)
    _add_training_args(p)
    p.set_defaults(func=cmd_train, epochs=None)  # None: 15, or with --resume the interrupted run's

    p = sub.add_parser("test", help="evaluate a checkpoint on a labelled folder",
                       description="Score a labelled folder (normal/ + abnormal/, or test/0.normal + "
                                   "test/1.abnormal) and report AUROC, AUPRC and F1 at the stored threshold.")
    p.add_argument("--checkpoint", required=True, type=Path)
    p.add_argument("--data", required=True, type=Path)
    p.add_argument("--out", type=Path, help="write metrics JSON here (default: print only)")
    p.add_argument("--report-dir", type=Path, default=Path("runs/test"),
                   help="where scores, figures and report.html go (default: runs/test)")
    p.add_argument("--no-report", dest="report_dir", action="store_const", const=None,
                   help="print and write metrics only")
    _add_runtime_args(p)
    p.set_defaults(func=cmd_test)

    p = sub.add_parser("predict", help="score images or folders and write a CSV",
                       description="Write path, score and label (1 = above the stored threshold) per image.")
    p.add_argument("--checkpoint", required=True, type=Path)
    p.add_argument("inputs", nargs="+", type=Path, help="image files and/or folders")
    p.add_argument("--out", type=Path, default=Path("predictions.csv"), help="CSV file (default: predictions.csv)")
    p.add_argument("--save-maps", type=Path, metavar="DIR",
                   help="also write one PNG per image: input | anomaly-map overlay (path in the CSV's map column)")
    _add_runtime_args(p)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("report", help="rebuild report.html of a run or benchmark folder from its saved scores",
                       description="Redraw ROC/PR curves, histograms and training curves from scores.csv, "
                                   "evaluation.json and metrics.jsonl (or a benchmark's cells), and write "
                                   "report.html. No model is loaded; example grids drawn at test time are reused.")
    p.add_argument("run_dir", type=Path, help="a train/test run directory or a benchmark --out folder")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("demo", help="leave-one-digit-out on the embedded scikit-learn digits",
                       description="Train on nine digits, test on held-out normals plus the tenth digit, "
                                   "for each chosen digit; prints a per-digit AUC table. No download.")
    p.add_argument("--digits", default="all", help="abnormal digits: 'all' or a list like 0,3,8")
    p.add_argument("--max-train", type=_positive_int, help="cap on training images per digit (size knob)")
    p.add_argument("--out", type=Path, default=Path("runs/demo"))
    p.add_argument("--baselines", default=",".join(BASELINES),
                   help=f"raw-pixel baselines run beside the model on the same split (default {','.join(BASELINES)}; "
                        "'none' for none)")
    _add_model_args(p, channels=False)
    # ~1,300 training digits give 20 steps per epoch at the reference batch 64 and lr 2e-4, too few
    # for the linear-output generator to learn; batch 32 and lr 1e-3 were chosen on validation loss.
    _add_training_args(p, epochs=3, batch_size=32, lr=1e-3)
    p.set_defaults(func=cmd_demo, channels=1)

    p = sub.add_parser("benchmark", help="leave-one-class-out sweep on CIFAR-10 or your labelled data",
                       description="Reproduce the paper's Table 1 for any models, classes and seeds (honest and/or "
                                   "paper protocol), choose settings on the validate protocol, or run the same "
                                   "comparison on your own labelled images (--data). Each (model, class, seed, "
                                   "protocol) cell is saved as it finishes; a rerun skips finished cells. Writes "
                                   "results.csv, results.json, table.md and report.html.")
    p.add_argument("--dataset", default=CIFAR10_NAME, choices=[CIFAR10_NAME])
    p.add_argument("--data-dir", type=Path, default=Path("data"),
                   help="folder holding cifar-10-batches-py (or that folder itself); default ./data")
    p.add_argument("--download", action="store_true", help="download CIFAR-10 into --data-dir if it is missing")
    p.add_argument("--data", type=Path, metavar="PATH",
                   help="your labelled images instead of CIFAR-10: an .npz (train_images, train_labels, test_images, "
                        "test_labels; optional label_names) or a folder with a subfolder per class (or train/ and "
                        "test/ with a subfolder per class each)")
    p.add_argument("--normal-labels", metavar="A,B",
                   help="these classes are normal and all others abnormal, in one task (default: leave each class "
                        "out in turn)")
    p.add_argument("--image-size", type=int, default=32, help="--data: the size images are resized to (default 32)")
    p.add_argument("--channels", type=int, choices=(1, 3), default=3,
                   help="--data folders: 1 grayscale or 3 RGB (default 3; an .npz gives its own)")
    p.add_argument("--models", default="skipganomaly++",
                   help=f"comma-separated model names (e.g. skipganomaly++,{','.join(BASELINES)} for the model beside "
                        "the raw-pixel baselines)")
    p.add_argument("--classes", default="all", help="'all' or comma-separated abnormal classes")
    p.add_argument("--seeds", help="comma-separated seeds (preset's, else 0)")
    p.add_argument("--protocol", default="honest",
                   help=f"{', '.join(PROTOCOLS)}, a comma-separated list of them, or both (= honest,paper); "
                        "default honest")
    p.add_argument("--preset", choices=sorted(PRESETS),
                   help="sizes: cpu-smoke (minutes), cpu-medium (an hour per GAN model) or paper (full size)")
    p.add_argument("--epochs", type=int, help="default: preset's, else 15")
    p.add_argument("--batch-size", type=int, help="default: preset's, else 64")
    p.add_argument("--lr", type=float, help="Adam learning rate (default: the Detector's, 2e-4)")
    p.add_argument("--train-fraction", type=float, help="stratified share of the training images")
    p.add_argument("--test-fraction", type=float, help="stratified share of the test images")
    p.add_argument("--model-arg", action="append", default=[], metavar="MODEL:KEY=VALUE",
                   help="extra option for one model, e.g. anogan:search_steps=100 (repeatable)")
    p.add_argument("--out", type=Path, default=Path("runs/benchmark"))
    p.add_argument("--workers", type=_positive_int, default=1,
                   help="cells run at once, each in its own process (CPU threads shared out; one per GPU on "
                        "several GPUs); a crash loses that cell only (default 1)")
    _add_amp_arg(p)
    _add_runtime_args(p)
    p.set_defaults(func=cmd_benchmark)

    p = sub.add_parser("bench-speed", help="training/scoring throughput, FLOPs and fraction of machine peak",
                       description="Per model: training and scoring images/s (PyTorch, onnxruntime), FLOPs per "
                                   "image, achieved GFLOP/s against a peak measured in the same run, peak RSS. "
                                   "Each model runs in its own process; medians after warm-up.")
    p.add_argument("--models", default="all", help="'all' or comma-separated model names")
    p.add_argument("--threads", type=_positive_int, default=torch_threads(),
                   help="torch threads (default: this machine's)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--score-batch", type=_positive_int, default=256)
    p.add_argument("--steps", type=_positive_int, default=3, help="training steps per timing")
    p.add_argument("--repeats", type=_positive_int, default=3, help="timings per measurement (the median is kept)")
    p.add_argument("--no-onnx", action="store_true", help="skip the onnxruntime measurement")
    p.add_argument("--compile", action="store_const", const="inductor",
                   help="torch.compile the model's blocks before timing training; reports the compile seconds")
    p.add_argument("--amp", action="store_true",
                   help="also time training and scoring under bf16 autocast, in turns with float32")
    p.add_argument("--compare-reference", action="store_true",
                   help="also time the reference code's way of computing the same step and score, in the same "
                        "process, and report the speed-ups (skipganomaly and skipganomaly++ only)")
    p.add_argument("--model-arg", action="append", default=[], metavar="MODEL:KEY=VALUE",
                   help="extra option for one model, e.g. anogan:search_steps=50 (repeatable)")
    p.add_argument("--device", default="auto",
                   help="auto, cpu, cuda or cuda:N (default auto: the GPU where there is one; the reference "
                        "style of --compare-reference runs on the CPU, as the reference code does)")
    p.add_argument("--out", type=Path, help="write the JSON result here")
    p.set_defaults(func=cmd_bench_speed)
    return parser


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def _add_model_args(p: argparse.ArgumentParser, channels: bool = True) -> None:
    p.add_argument("--model", default="skipganomaly++", choices=list_models())
    p.add_argument("--image-size", type=int, default=32, help="multiple of 8, at least 32 (default 32)")
    if channels:
        p.add_argument("--channels", type=int, default=3, choices=(1, 3), help="1 grayscale, 3 RGB (default 3)")
    p.add_argument("--model-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="extra model option, e.g. noise_sigma=0.1 or detach_latent=true (repeatable)")


def _add_training_args(p: argparse.ArgumentParser, epochs: int = 15, batch_size: int = 64,
                       lr: float = 2e-4) -> None:
    p.add_argument("--epochs", type=int, default=epochs, help=f"default {epochs}")
    p.add_argument("--batch-size", type=int, default=batch_size, help=f"default {batch_size}")
    p.add_argument("--lr", type=float, default=lr, help=f"Adam learning rate (default {lr:g})")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--val-fraction", type=float, default=0.05,
                   help="share of the normal training images held out for the threshold (default 0.05)")
    p.add_argument("--contamination", type=float, default=0.05,
                   help="share of validation normals above the threshold (default 0.05)")
    p.add_argument("--patience", type=int,
                   help="early stopping on validation loss after this many epochs without improvement")
    p.add_argument("--compile", action="store_const", const="inductor",
                   help="torch.compile the model's blocks: about 2 minutes of compiling on a CPU, then faster steps; "
                        "pays off for long runs (see README, Speed)")
    _add_amp_arg(p)
    _add_runtime_args(p)


def _add_amp_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--amp", action="store_true",
                   help="bf16 autocast (default off). On CPUs with AMX (e.g. this project's Xeon) training ran "
                        "1.6-2x faster, with results that differ from float32 by bf16 rounding; on an H200 it was "
                        "slower than float32 (see README, Speed and memory)")


def _add_runtime_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default auto)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _model_kwargs(pairs: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--model-arg expects KEY=VALUE, got {pair!r}")
        out[key.strip()] = yaml.safe_load(value)
    return out


def _detector(args: argparse.Namespace) -> Detector:
    if args.val_fraction <= 0:  # the library allows 0 (no threshold); train, test and demo report at the threshold
        raise ConfigError(f"--val-fraction must be above 0 (the threshold comes from those images), "
                          f"got {args.val_fraction}")
    return Detector(
        model=args.model, image_size=args.image_size, in_channels=args.channels, epochs=args.epochs,
        batch_size=args.batch_size, lr=args.lr, seed=args.seed, val_fraction=args.val_fraction,
        contamination=args.contamination, patience=args.patience, device=args.device,
        progress=not args.no_progress, compile=args.compile, amp=args.amp, **_model_kwargs(args.model_arg),
    )


def _write_json(path: Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, allow_nan=True) + "\n")


def _print_metrics(metrics: dict[str, float]) -> None:
    print(" ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items()))


def _resumed_args(args: argparse.Namespace) -> argparse.Namespace:
    """The interrupted run's settings from RUN_DIR/config.yaml; device, progress and (to train longer)
    --epochs may be given anew."""
    run_dir: Path = args.resume
    saved = run_dir / "config.yaml"
    if not saved.is_file():
        raise ConfigError(f"cannot resume {run_dir}: no config.yaml there (is it a `train` run directory?)")
    try:
        config = yaml.safe_load(saved.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"cannot resume {run_dir}: config.yaml is not valid YAML ({err})") from None
    merged = vars(args).copy()
    keep = {"device", "no_progress", "resume", "func"} | ({"epochs"} if args.epochs is not None else set())
    for key, value in config.items():
        if key in merged and key not in keep:
            merged[key] = Path(value) if key in ("data", "test", "out") and value is not None else value
    merged["out"] = run_dir
    return argparse.Namespace(**merged)


def cmd_train(args: argparse.Namespace) -> int:
    if args.resume is not None:
        args = _resumed_args(args)
    elif args.data is None:
        raise ConfigError("train needs --data FOLDER (or --resume RUN_DIR)")
    if args.epochs is None:
        args.epochs = 15
    init_from_environment()  # a no-op unless started by torchrun with several processes
    main_process = is_main_process()
    det = _detector(args)
    folder = train_folder(args.data)
    images, kept = load_image_files(list_image_files(folder), args.image_size, args.channels,
                                    progress=not args.no_progress)
    test_data = None
    if args.test is not None:  # load before training, so a bad test folder fails in seconds, not hours
        test_data = load_labelled_folder(args.test, args.image_size, args.channels)
    out: Path = args.out
    checkpoint = out / "model.pt"
    state = checkpoint.with_suffix(".state.pt")
    done = load_train_state(state)["history"] if args.resume is not None and state.exists() else []
    if not main_process:  # under torchrun, rank 0 alone writes the run directory (and evaluates)
        det.fit(images, checkpoint_path=checkpoint, resume=args.resume is not None)
        return 0
    out.mkdir(parents=True, exist_ok=True)
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k not in ("func", "resume")}
    write_text_atomic(out / "config.yaml", yaml.safe_dump({**config, "train_images": len(kept)}, sort_keys=False))
    log_epoch = EpochLog(out / "metrics.jsonl", tensorboard=args.tensorboard, done=done)
    print(f"training {args.model} on {len(kept)} images from {folder}; run directory {out}"
          + (f"; resuming after epoch {len(done)}" if done else ""))
    try:
        det.fit(images, checkpoint_path=checkpoint, on_epoch_end=log_epoch, resume=args.resume is not None)
    finally:
        log_epoch.close()
    metrics: dict[str, Any] = {"threshold": det.threshold_, "train_images": len(kept)}
    if test_data is not None:
        x, y, names = test_data
        scores = det.decision_function(x)
        metrics["test"] = evaluate_scores(scores, y.numpy(), det.threshold_)
        _print_metrics(metrics["test"])
        report = write_evaluation(out, f"{args.model} on {args.test}", x, names, y.numpy(), scores, metrics["test"],
                                  det.threshold_, det.reconstructions, det.anomaly_maps)
    else:
        report = build_run_report(out)
    _write_json(out / "metrics.json", metrics)
    print(f"saved {out / 'model.pt'} (threshold {det.threshold_:.6g}); report {report}")
    return 0


class EpochLog:
    """Appends each epoch's record to metrics.jsonl (one JSON object per line, flushed at once) and,
    with `tensorboard`, writes the same scalars as TensorBoard events next to it. A resumed run starts
    the file over from the records of its completed epochs (`done`), so no epoch appears twice."""

    def __init__(self, path: Path, tensorboard: bool = False, done: Sequence[dict[str, Any]] = ()) -> None:
        self.path = path
        write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in done))
        self.writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise ConfigError("--tensorboard needs the tensorboard package: pip install tensorboard") from None
            self.writer = SummaryWriter(str(path.parent / "tensorboard"))

    def __call__(self, record: Any) -> None:
        with self.path.open("a") as fh:
            fh.write(json.dumps(record.as_dict()) + "\n")
        if self.writer is not None:
            for name, value in record.losses.items():
                self.writer.add_scalar(f"loss/{name}", value, record.epoch)
            self.writer.add_scalar("validation/loss", record.val_loss, record.epoch)
            self.writer.add_scalar("speed/images_per_second", record.images_per_second, record.epoch)
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _load_calibrated(args: argparse.Namespace) -> Detector:
    det = Detector.load(args.checkpoint, device=args.device, progress=not args.no_progress)
    if det.threshold_ is None:
        raise CheckpointError(f"{args.checkpoint} comes from an unfinished training run and has no threshold")
    return det


def _check_output_dir(path: Path | None, flag: str) -> None:
    """Fail before any work when an output folder's name is taken by a file."""
    if path is not None and path.exists() and not path.is_dir():
        raise ConfigError(f"{flag} {path} is a file, not a folder")


def cmd_test(args: argparse.Namespace) -> int:
    _check_output_dir(args.report_dir, "--report-dir")
    det = _load_calibrated(args)
    x, y, names = load_labelled_folder(args.data, det.image_size, det.in_channels, progress=not args.no_progress)
    scores = det.decision_function(x)
    metrics = evaluate_scores(scores, y.numpy(), det.threshold_)
    _print_metrics(metrics)
    if args.out is not None:
        _write_json(args.out, metrics)
    if args.report_dir is not None:
        report = write_evaluation(args.report_dir, f"{det.model_name} ({args.checkpoint}) on {args.data}", x, names,
                                  y.numpy(), scores, metrics, det.threshold_, det.reconstructions, det.anomaly_maps)
        print(f"report {report}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    _check_output_dir(args.save_maps, "--save-maps")
    det = _load_calibrated(args)
    paths: list[Path] = []
    for item in args.inputs:
        if item.is_dir():
            paths += list_image_files(item)
        elif item.is_file():
            paths.append(item)
        else:
            raise DataError(f"no such file or folder: {item}")
    images, kept = load_image_files(paths, det.image_size, det.in_channels, progress=not args.no_progress)
    scores = det.decision_function(images)
    maps = save_overlays(args.save_maps, images, kept, det.anomaly_maps(images)) if args.save_maps else None
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "score", "label"] + (["map"] if maps else []))
        labels = scores > det.threshold_
        for i, (path, score, label) in enumerate(zip(kept, scores, labels, strict=True)):
            writer.writerow([path, f"{score:.8g}", int(label)] + ([maps[i]] if maps else []))
    print(f"wrote {len(kept)} scores to {args.out} ({int(labels.sum())} flagged)"
          + (f"; anomaly-map overlays in {args.save_maps}" if maps else ""))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    print(f"wrote {build_report(args.run_dir)}")
    return 0


def _baseline_names(text: str) -> list[str]:
    names = [] if text.strip() == "none" else [n.strip() for n in text.split(",") if n.strip()]
    for name in names:
        get_model_class(name)  # an unknown name is a one-line error listing the models
    return names


def cmd_demo(args: argparse.Namespace) -> int:
    digits = list(range(10)) if args.digits == "all" else _parse_digits(args.digits)
    baselines = [b for b in _baseline_names(args.baselines) if b != args.model]
    results: dict[str, dict[str, float]] = {}
    baseline_auroc: dict[str, dict[str, float]] = {b: {} for b in baselines}
    start = time.perf_counter()
    for digit in digits:
        split = digits_leave_one_out(digit, args.image_size, seed=args.seed, max_train=args.max_train)
        print(f"digit {digit} abnormal: {len(split.train)} training normals, {len(split.test)} test images")
        run = args.out / f"digit{digit}"
        log_epoch = EpochLog(run / "metrics.jsonl")
        det = _detector(args).fit(split.train, checkpoint_path=run / "model.pt", on_epoch_end=log_epoch)
        scores, labels = det.decision_function(split.test), split.test_labels.numpy()
        key = f"digit {digit}"
        results[key] = evaluate_scores(scores, labels, det.threshold_)
        names = [f"test{i:04d}" for i in range(len(labels))]
        write_evaluation(run, f"{args.model}, digit {digit} abnormal", split.test, names, labels, scores,
                         results[key], det.threshold_, det.reconstructions, det.anomaly_maps)
        for name in baselines:  # same split, seed and validation share; seconds each
            base = Detector(model=name, image_size=args.image_size, in_channels=args.channels, seed=args.seed,
                            val_fraction=args.val_fraction, contamination=args.contamination, device=args.device,
                            progress=False).fit(split.train)
            baseline_auroc[name][key] = evaluate_scores(base.decision_function(split.test), labels, base.threshold_)["auroc"]
        _write_json(args.out / "results.json", {**results, "baselines": baseline_auroc})
    columns = [f"{args.model} auroc", "auprc", "f1", *(f"{b} auroc" for b in baselines)]
    rows = {k: dict(zip(columns, [r["auroc"], r["auprc"], r["f1"], *(baseline_auroc[b][k] for b in baselines)]))
            for k, r in results.items()}
    table = per_class_table(rows, columns)
    seconds = time.perf_counter() - start
    summary = (f"{args.model}, leave-one-digit-out on scikit-learn digits, {args.epochs} epochs, "
               f"seed {args.seed}, {seconds:.0f} s"
               + (f"; beside it, raw-pixel baselines on the same splits: {', '.join(baselines)}" if baselines else "")
               + f"\n\n{table}\n")
    (args.out / "table.md").write_text(summary)
    print()
    print(summary)
    if any(math.isnan(r["auroc"]) for r in results.values()):
        return 1
    return 0


def _parse_digits(text: str) -> list[int]:
    digits = _int_list(text, "--digits")
    if not digits or any(not 0 <= d <= 9 for d in digits):
        raise ConfigError(f"--digits expects 'all' or a comma-separated list of 0..9, got {text!r}")
    return digits


def _protocols(text: str) -> list[str]:
    names = ["honest", "paper"] if text == "both" else [t.strip() for t in text.split(",") if t.strip()]
    bad = [n for n in names if n not in PROTOCOLS]
    if bad or not names:
        raise ConfigError(f"--protocol: unknown protocol {bad[0] if bad else text!r}; use {', '.join(PROTOCOLS)}, "
                          "a comma-separated list of them, or both")
    return list(dict.fromkeys(names))


def cmd_benchmark(args: argparse.Namespace) -> int:
    preset = PRESETS.get(args.preset or "", {})

    def pick(name: str, default: Any) -> Any:
        value = getattr(args, name)
        return value if value is not None else preset.get(name, default)

    seeds = _int_list(args.seeds, "--seeds") if args.seeds else preset.get("seeds", [0])
    data: LabelledImages
    if args.data is not None:
        if args.download:
            raise ConfigError("--download is for CIFAR-10; --data reads your own files")
        check_geometry(args.channels, args.image_size)
        load: Callable[[], LabelledImages] = functools.partial(load_labelled, args.data, args.image_size,
                                                                args.channels)
        data = load()
    else:
        if args.image_size != 32:
            raise ConfigError("--image-size is for --data; CIFAR-10 cells are 32x32")
        load = functools.partial(load_cifar10, args.data_dir)
        data = load_cifar10(args.data_dir, download_missing=args.download, progress=not args.no_progress)
    name = CIFAR10_TITLE if isinstance(data, Cifar10) else data.name
    if args.normal_labels:
        normal = [data.classes[data.class_index(n.strip())] for n in args.normal_labels.split(",")]
        abnormal = [c for c in data.with_images() if c not in normal]
        if not abnormal:
            raise ConfigError(f"--normal-labels names every class of {data.name}; leave at least one abnormal")
        if args.classes != "all":
            raise ConfigError("give --classes or --normal-labels, not both")
        classes = [JOIN.join(abnormal)]
    elif args.classes == "all":
        classes = list(PAPER_ORDER) if isinstance(data, Cifar10) else data.present()
    else:
        classes = [JOIN.join(data.class_names(c.strip())) for c in args.classes.split(",")]
    for cls in classes:  # a class with no images, or no normal class left, fails here in one line
        check_task(data, data.class_names(cls))
    options = _per_model_kwargs(args.model_arg)
    config = SweepConfig(
        models=[m.strip() for m in args.models.split(",") if m.strip()], classes=classes, seeds=seeds,
        protocols=_protocols(args.protocol),
        epochs=pick("epochs", 15), batch_size=pick("batch_size", 64), lr=args.lr,
        train_fraction=pick("train_fraction", 1.0), test_fraction=pick("test_fraction", 1.0),
        device=args.device, amp=args.amp, progress=not args.no_progress, model_options=options,
        dataset=data.fingerprint or data.name, image_size=args.image_size,
    )
    if "validate" in config.protocols:
        for cls in classes:
            pseudo_anomaly(data, data.class_names(cls))  # needs two normal classes: fail before training
    del data
    out: Path = args.out
    start = time.perf_counter()
    env = environment()  # before the sweep: the code that runs it (cells started later say so below)
    outcome = run_sweep(load, config, out, workers=args.workers)
    results = outcome.results
    for key, why in outcome.failures:
        log.error("cell %s failed: %s", key, why)
    if not results:
        raise SkipGanomalyError(f"no benchmark cell finished ({len(outcome.failures)} failed)")
    summary = summarise(results)
    end_commit = environment()["git_commit"]
    if end_commit != env["git_commit"]:  # the tree changed during the run; spawned workers may have run either
        env["git_commit"] = f"{env['git_commit']} (at start; {end_commit} at the end)"
    env["wall_seconds_this_run"] = round(time.perf_counter() - start, 1)
    _write_json(out / "results.json", {"config": {**vars(config)}, "dataset_name": name, "environment": env,
                                       "cells": results})
    rows = cell_rows(results)
    with (out / "results.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    paper_note = (" (paper's Table 1)" if config.dataset == CIFAR10_NAME else "")
    sections = [f"# {name} leave-one-class-out AUROC: ours{paper_note}\n\n"
                f"epochs {config.epochs}, batch {config.batch_size}, train fraction {config.train_fraction}, "
                f"test fraction {config.test_fraction}, seeds {','.join(map(str, seeds))}. "
                f"The mean column averages the classes shown"
                + ("; the paper's mean is over all ten" if config.dataset == CIFAR10_NAME else "")
                + f". {STD_NOTE}\n\n"
                f"Command: `{env['command']}`; git {env['git_commit']}; torch {env['torch']}, "
                f"{env['threads']} threads, {env['cpu']}; {env['wall_seconds_this_run']} s this run.\n"]
    for protocol in config.protocols:
        sections.append(f"## protocol: {protocol}\n\n{PROTOCOL_NOTES[protocol]}\n\n"
                        + benchmark_table(summary, config.models, config.classes, protocol,
                                          shows_paper_numbers(config.dataset, protocol)) + "\n")
    text = "\n".join(sections)
    (out / "table.md").write_text(text)
    print(text)
    print(f"report {build_benchmark_report(out)}")
    print(f"{len(results)} cells in {out} ({time.perf_counter() - start:.0f} s this run)"
          + (f"; {len(outcome.failures)} failed (rerun the same command to retry them)" if outcome.failures else ""))
    return 1 if outcome.failures else 0


def _per_model_kwargs(items: list[str]) -> dict[str, dict[str, Any]]:
    options: dict[str, dict[str, Any]] = {}
    for item in items:
        model, sep, pair = item.partition(":")
        if not sep:
            raise ConfigError(f"--model-arg expects MODEL:KEY=VALUE, got {item!r}")
        options.setdefault(model, {}).update(_model_kwargs([pair]))
    return options


def cmd_bench_speed(args: argparse.Namespace) -> int:
    from .speed import run

    models = ([m for m in list_models() if get_model_class(m).trained_by_gradient] if args.models == "all"
              else [m.strip() for m in args.models.split(",")])
    for name in models:
        get_model_class(name)
    resolve_device(args.device)  # a bad or absent device is one line here, not an error in each worker
    options = _per_model_kwargs(args.model_arg)
    rows = []
    result = {"environment": environment()}
    for name in models:
        part = run([name], args.threads, batch_size=args.batch_size, steps=args.steps, repeats=args.repeats,
                   score_batch=args.score_batch, onnx=not args.no_onnx, options=options.get(name),
                   reference_style=args.compare_reference, compile=args.compile, amp=args.amp,
                   device=args.device)
        rows += part["models"]
        print(_speed_line(part["models"][0]), flush=True)
    result["models"] = rows
    if args.out is not None:
        _write_json(args.out, result)
    return 0


def _speed_line(row: dict[str, Any]) -> str:
    peak = row["peak_kernels_gflops"]
    onnx = row.get("onnx_score_images_per_s")
    return (f"{row['model']}" + (f" on {row['device']}" if "device" in row else "")
            + f": train {row['train_images_per_s']:.1f} img/s ({row['train_gflop_per_image']:.2f} "
            f"GFLOP/img, {row['train_achieved_gflops']:.1f} GFLOP/s = {row['fraction_of_peak']:.0%} of peak "
            f"{peak['peak_gflops']:.1f}), score {row['score_images_per_s']:.1f} img/s"
            + (f", onnxruntime {onnx:.1f} img/s" if onnx else "") + f", peak RSS {row['peak_rss_mb']:.0f} MB"
            + (f"; reference-style train {row['reference_style_train_images_per_s']:.1f} img/s "
               f"({row['train_speedup']:.2f}x), score {row['reference_style_score_images_per_s']:.1f} img/s "
               f"({row['score_speedup']:.2f}x)" if "train_speedup" in row else "")
            + (f"; bf16 autocast: train {row['amp_train_images_per_s']:.1f} img/s "
               f"({row['amp_fraction_of_bf16_peak']:.0%} of bf16 peak {peak['bf16_matmul_gflops']:.0f}), score "
               f"{row['amp_score_images_per_s']:.1f} img/s" if "amp_train_images_per_s" in row else "")
            + (f"; compiled: train {row['compiled_train_images_per_s']:.1f} img/s after a "
               f"{row['compile_seconds']:.0f} s first step" if "compile_seconds" in row else ""))


def _positive_int(text: str) -> int:
    """argparse type for counts and sizes: a bad value is a usage error naming the flag, not a traceback later."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _int_list(text: str, flag: str) -> list[int]:
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise ConfigError(f"{flag} expects comma-separated integers, got {text!r}") from None


if __name__ == "__main__":
    sys.exit(main())
