"""Command line: argument parsing and thin handlers over workflows, sweep and throughput; errors end in one line,
not a traceback."""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
import time
import traceback
import zipfile
from pathlib import Path
from typing import Any, Sequence

from tqdm.contrib.logging import logging_redirect_tqdm

from .data.cifar10 import DEFAULT_ROOT as CIFAR10_DIR, NAME as CIFAR10_NAME, TITLE as CIFAR10_TITLE, Cifar10
from .data.folders import labelled_base, train_folder
from .data.images import is_image_name
from .detector import (DEFAULT_MODEL, Detector, DetectorSettings, check_threshold_split, setting_defaults,
                       setting_fields)
from .errors import BUG_EXIT, PACKAGE_LOGGER, PARTLY_FAILED_EXIT, ConfigError, SkipGanomalyError, warnings_said
from .files import few_names
from .folder_lock import claim_folder
from .interrupts import INTERRUPTED_EXIT, Terminated, sigterm_as_interrupt
from .evaluation.report import build_report
from .evaluation.tables import HONEST, PAPER
from .models import BASELINES, create, get_model_class, list_models
from .options import FORM, parse_model_args
from .run_directory import CHECKPOINT, RUN_FILES, RunDirectory, SweepDirectory, next_free_run, state_path
from .scored_parts import kept_note
from . import __version__
from .provenance import program
from .sweep import (DEADLINE_EXIT, PRESETS, PROTOCOLS, SweepConfig, benchmark_data, check_protocol_settings,
                    check_protocols, check_sizes, decode_once, resolve_classes, run_benchmark)
from .training.memory import reduce_heap_fragmentation
from .training.device import native_bf16, resolve_device
from .workflows import demo_kept, evaluate_folder, predict_files, resumed_settings, run_demo, train_run

log = logging.getLogger(PACKAGE_LOGGER)

DEFAULT_TRAIN_OUT = Path("runs/train")  # `train`'s run directory when --out is not given (or runs/train2, ...)
DEFAULT_TEST_OUT = Path("runs/test")  # `test`'s report folder when --report-dir is not given (or runs/test2, ...)


def run() -> None:
    """The `skipganomaly` command: `main`, exiting with its code; an unexpected exception (a bug) prints its traceback
    and exits with BUG_EXIT, so a script can tell a crash from a run that scored only some files (exit 1)."""
    try:
        code = main()
    except Exception:  # noqa: BLE001 - everything the commands do not turn into a message
        traceback.print_exc()
        print(f"error: an unexpected failure, a bug in skipganomaly {__version__} (the traceback above says where); "
              f"exit code {BUG_EXIT}", file=sys.stderr)
        code = BUG_EXIT
    sys.exit(code)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.started = time.time()  # what an interrupted command kept is what it wrote since
    if args.low_memory:
        reduce_heap_fragmentation()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s", stream=sys.stderr)
    try:
        # a warning is printed above a progress bar, not through it; SIGTERM stops a command as Ctrl-C does
        with sigterm_as_interrupt(), logging_redirect_tqdm():
            return int(args.func(args) or 0)
    except SkipGanomalyError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    except OSError as err:  # a path that cannot be written or read, a full disk: the machine's, not a bug
        hint = _how_to_continue(args)  # what a long command kept, and how to continue once space is freed
        print(f"error: {err.strerror or err}" + (f": {err.filename}" if err.filename else "")
              + (f"; {hint}" if hint else ""), file=sys.stderr)
        return SkipGanomalyError.exit_code
    except (MemoryError, RuntimeError) as err:  # torch.OutOfMemoryError is a RuntimeError
        if not _out_of_memory(err):
            raise
        detail = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        print(f"error: out of memory ({detail}); {_memory_advice(args)}", file=sys.stderr)
        return SkipGanomalyError.exit_code
    except KeyboardInterrupt as err:
        hint = _how_to_continue(args)
        terminated = isinstance(err, Terminated)
        print(("terminated" if terminated else "interrupted") + (f"; {hint}" if hint else ""), file=sys.stderr)
        return Terminated.exit_code if terminated else INTERRUPTED_EXIT


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
        if RunDirectory(run).state.exists():
            return f"the last complete epoch is kept; continue with: {program()} train --resume {shlex.quote(str(run))}"
        return "no epoch was complete, so there is nothing to resume: run the same command again"
    if args.command == "benchmark":
        cells = SweepDirectory(args.out).cells
        if not (cells.is_dir() and any(cells.glob("*.json"))):
            return "no cell had finished; the same command starts again"
        return f"finished cells are kept in {args.out}; the same command runs only the missing ones"
    if args.command == "demo":
        return demo_kept(args.out)
    if args.command == "predict":
        kept = None if getattr(args, "save_maps", None) is not None else kept_note(args.out, getattr(args, "started",
                                                                                                     None))
        if kept:
            return f"{kept}; the same command continues from there ({args.out} is written whole at the end)"
        return f"nothing was written ({args.out} and the maps are written whole at the end); run the same command again"
    return None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="skipganomaly", description="Image anomaly detection: Skip-GANomaly++, its "
                                     "baselines and detectors trained from normal images alone. Errors end in one line.")
    parser.add_argument("--low-memory", action="store_true",
                        help="return freed activations to the OS (glibc mmap for allocations >= 4 MiB): lower peak memory "
                             "in training, slower steps (README, Speed and memory)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_add_train, _add_test, _add_predict, _add_export, _add_report, _add_demo, _add_benchmark,
                _add_bench_speed):
        add(sub)
    return parser


def _add_train(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    p = sub.add_parser("train", help="train a detector on a folder of normal images",
                       description="Train on normal images; writes a run directory with config, "
                                   "checkpoint (updated every epoch), per-epoch losses and metrics.")
    p.add_argument("--data", type=Path,
                   help="folder of normal images, or a root whose train/ (or train/0.normal/) holds them")
    p.add_argument("--resume", type=Path, metavar="RUN_DIR",
                   help="continue an interrupted run from its last complete epoch, with the settings in "
                        "RUN_DIR/config.yaml (the result equals an uninterrupted run's); add --epochs N to train a "
                        "finished or interrupted run up to N epochs")
    p.add_argument("--test", type=Path, help="labelled folder to evaluate after training (normal/ + abnormal/, "
                                            "0.normal/ + 1.abnormal/, or MVTec AD's good/ + one folder per defect)")
    p.add_argument("--out", type=Path,
                   help=f"run directory (default: {DEFAULT_TRAIN_OUT}, or the first of {DEFAULT_TRAIN_OUT}2, "
                        f"{DEFAULT_TRAIN_OUT}3, ... that holds no run); one that holds a run is refused")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the run in --out (its files only: config, checkpoints, metrics, report, figures)")
    p.add_argument("--tensorboard", action="store_true",
                   help="also log per-epoch scalars for TensorBoard in OUT/tensorboard (needs tensorboard)")
    _add_settings_args(p, unset=True)  # unset: the defaults, or with --resume the interrupted run's
    p.set_defaults(func=cmd_train)


def _add_checkpoint_arg(p: argparse.ArgumentParser) -> None:
    """The saved detector that test, predict and export read."""
    p.add_argument("--checkpoint", required=True, type=Path, help="a model.pt, or the run directory that holds it")


def _add_test(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    p = sub.add_parser("test", help="evaluate a checkpoint on a labelled folder",
                       description="Score a labelled folder (normal/ + abnormal/, test/0.normal + "
                                   "test/1.abnormal, or MVTec AD's test/good + one folder per defect type) and "
                                   "report AUROC, AUPRC and F1 at the stored threshold.")
    _add_checkpoint_arg(p)
    p.add_argument("--data", required=True, type=Path,
                   help="labelled folder: normal/ + abnormal/, 0.normal/ + 1.abnormal/, or good/ + defect folders")
    p.add_argument("--out", type=Path, help="write metrics JSON here (default: print only)")
    p.add_argument("--report-dir", type=Path,
                   help=f"where scores, figures and report.html go (default: {DEFAULT_TEST_OUT}, or the first of "
                        f"{DEFAULT_TEST_OUT}2, {DEFAULT_TEST_OUT}3, ... that holds no evaluation yet)")
    p.add_argument("--no-report", action="store_true", help="print and write metrics only")
    _add_settings_args(p, only=("device", "progress"))
    p.set_defaults(func=cmd_test)


def _add_predict(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    p = sub.add_parser("predict", help="score images or folders and write a CSV",
                       description="Write path, score, label (1 = above the stored threshold, or --threshold) and the "
                                   "threshold per image.")
    _add_checkpoint_arg(p)
    p.add_argument("inputs", nargs="+", type=Path, help="image files and/or folders")
    p.add_argument("--out", type=Path, default=Path("predictions.csv"), help="CSV file (default: predictions.csv)")
    p.add_argument("--threshold", type=float, metavar="SCORE",
                   help="label 1 above this score instead of the stored threshold (e.g. one read off the held-out "
                        "scores in the run's calibration.csv); an unfinished run, which has none, then scores too")
    p.add_argument("--save-maps", type=Path, metavar="DIR",
                   help="also write one PNG per image: input | anomaly-map overlay (path in the CSV's map column), and "
                        "maps.npz: the maps as float32 numbers with their paths")
    _add_settings_args(p, only=("device", "progress"))
    p.set_defaults(func=cmd_predict)


def _add_report(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    p = sub.add_parser("report", help="rebuild report.html of a run or benchmark folder from its saved scores",
                       description="Redraw ROC/PR curves, histograms and training curves from scores.csv, "
                                   "evaluation.json and metrics.jsonl (or a benchmark's cells), and write "
                                   "report.html. No model is loaded; example grids drawn at test time are reused.")
    p.add_argument("run_dir", type=Path, help="a train/test run directory or a benchmark --out folder")
    _add_quiet_flag(p)
    p.set_defaults(func=cmd_report)


def _add_quiet_flag(p: argparse.ArgumentParser) -> None:
    """--no-progress on a command that shows no progress bar: accepted, so a script may pass it to every command."""
    p.add_argument("--no-progress", dest="progress", action="store_false",
                   help="accepted for scripts that pass it to every command; this one shows no progress bar")


def _add_export(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    p = sub.add_parser("export", help="write a trained detector's score as an ONNX file",
                       description="Export the score graph (input: float32 images in [-1, 1], [N, C, H, W], dynamic "
                                   "batch) with the threshold and the training files' bit depth as metadata; "
                                   "skipganomaly.onnx_export.OnnxScorer scores and predicts with it alone.")
    _add_checkpoint_arg(p)
    p.add_argument("--out", required=True, type=Path, help="the ONNX file to write (e.g. model.onnx)")
    _add_quiet_flag(p)
    p.set_defaults(func=cmd_export)


def _add_demo(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    p = sub.add_parser("demo", help="leave-one-digit-out on the embedded scikit-learn digits",
                       description="Train on nine digits, test on held-out normals plus the tenth digit, "
                                   "for each chosen digit; prints a per-digit AUC table. No download.")
    p.add_argument("--digits", default="all", help="abnormal digits: 'all' or a list like 0,3,8")
    p.add_argument("--max-train", type=_positive_int,
                   help="cap on the training images of each left-out-digit run (size knob; default all, about 1,300)")
    p.add_argument("--out", type=Path, default=Path("runs/demo"), help="output folder (default %(default)s)")
    p.add_argument("--baselines", default=",".join(BASELINES),
                   help="raw-pixel baselines run beside the model on the same split (default %(default)s; 'none' "
                        "for none)")
    # The digits' settings of the default model (DEMO_DEFAULTS), with which it was chosen on the validate
    # protocol: ~1,300 training digits give only 20 steps per epoch at the reference batch 64.
    # bf16 autocast unless told: on for the default model where the CPU computes bf16 natively (cmd_demo), the
    # setting it was validated with; other models train in float32 unless given --amp.
    _add_settings_args(p, skip=("in_channels",), defaults={**DEMO_DEFAULTS, "amp": None})
    p.add_argument("--no-amp", dest="amp", action="store_false", default=None,
                   help="float32 even on a CPU with native bf16 (where the default model's demo uses --amp)")
    p.set_defaults(func=cmd_demo, in_channels=1)


def _add_benchmark(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    p = sub.add_parser("benchmark", help="leave-one-class-out sweep on CIFAR-10 or your labelled data",
                       description="Reproduce the paper's Table 1 for any models, classes and seeds (honest and/or "
                                   "paper protocol), choose settings on the validate protocol, or run the same "
                                   "comparison on your own labelled images (--data). Each (model, class, seed, "
                                   "protocol) cell is saved as it finishes; a rerun skips finished cells. Writes "
                                   "results.csv, results.json, table.md and report.html.")
    p.add_argument("--dataset", default=CIFAR10_NAME, choices=[CIFAR10_NAME],
                   help="the built-in data set (give --data for your own labelled images)")
    p.add_argument("--data-dir", type=Path, default=None,
                   help=f"folder holding cifar-10-batches-py (or that folder itself); default {CIFAR10_DIR} in the "
                        "current folder")
    p.add_argument("--download", action="store_true", help="download CIFAR-10 into --data-dir if it is missing")
    p.add_argument("--data", type=Path, metavar="PATH",
                   help="your labelled images instead of CIFAR-10: an .npz (train_images, train_labels, test_images, "
                        "test_labels; optional label_names) or a folder with a subfolder per class (or train/ and "
                        "test/ with a subfolder per class each)")
    p.add_argument("--normal-labels", metavar="A,B",
                   help="these classes are normal and all others abnormal, in one task (default: leave each class "
                        "out in turn)")
    p.add_argument("--models", default=DEFAULT_MODEL,
                   help="comma-separated model names (default %(default)s)")
    p.add_argument("--baselines", default=",".join(BASELINES),
                   help="raw-pixel baselines run beside the models, every table showing them (default "
                        "%(default)s; 'none' for none)")
    p.add_argument("--classes", default="all", help="'all' or comma-separated abnormal classes")
    p.add_argument("--seeds", help="comma-separated seeds (preset's, else 0)")
    p.add_argument("--protocol", default=HONEST,
                   help=f"{', '.join(PROTOCOLS)}, a comma-separated list of them, or both (= honest,paper); "
                        "default %(default)s")
    p.add_argument("--preset", choices=sorted(PRESETS),
                   help="sizes: cpu-smoke (the smallest, a quick check), cpu-medium (larger subsets) or paper (full size); "
                        "run times in README, CIFAR-10")
    p.add_argument("--train-fraction", type=float,
                   help="stratified share of the training images, above 0 and at most 1 (default: the preset's, else 1)")
    p.add_argument("--test-fraction", type=float,
                   help="stratified share of the test images, above 0 and at most 1 (default: the preset's, else 1)")
    p.add_argument("--out", type=Path, default=Path("runs/benchmark"),
                   help="benchmark folder (default %(default)s); cells already finished there are reused")
    p.add_argument("--workers", type=_positive_int, default=1,
                   help="cells run at once, each in its own process (CPU threads shared out; on several GPUs one "
                        "per GPU, on one GPU all share it); a crash loses that cell only. A process costs seconds to "
                        "start: it pays for cells that train, not for pca/knn alone (default %(default)s)")
    p.add_argument("--time-limit", type=_positive_float, metavar="SECONDS",
                   help="stop cleanly before SECONDS from now: no cell starts that the longest cell so far says "
                        "would end later, and a running cell stops at an epoch's end once it is past (the first "
                        "cell of a call runs to its end, so that each call makes progress); finished "
                        f"cells and the tables are written, and the same command continues (exit code {DEADLINE_EXIT} "
                        "while cells are left)")
    # --image-size and --channels: for --data (CIFAR-10 is 32x32 RGB); epochs and batch size: the preset's,
    # else the defaults; the seed comes from --seeds, val_fraction from the protocol where it fixes one.
    _add_settings_args(p, skip=("model", "seed"), unset=True)
    p.set_defaults(func=cmd_benchmark)


def _add_bench_speed(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    p = sub.add_parser("bench-speed", help="training/scoring throughput, FLOPs and fraction of machine peak",
                       description="Per model: training and scoring images/s (PyTorch, onnxruntime), FLOPs per "
                                   "image, achieved GFLOP/s against a peak measured in the same run, peak RSS. "
                                   "Each model runs in its own process; medians after warm-up.")
    p.add_argument("--models", default="all", help="'all' or comma-separated model names")
    p.add_argument("--threads", type=_positive_int, default=torch_threads(),
                   help="torch threads (default: this machine's)")
    _add_settings_args(p, only=("batch_size", "model_options", "compile", "device"))
    p.add_argument("--score-batch", type=_positive_int, default=256,
                   help="images per scoring pass timed (default %(default)s)")
    p.add_argument("--steps", type=_positive_int, default=3, help="training steps per timing")
    p.add_argument("--repeats", type=_positive_int, default=3, help="timings per measurement (the median is kept)")
    p.add_argument("--no-onnx", action="store_true", help="skip the onnxruntime measurement")
    p.add_argument("--amp", action="store_true",
                   help="also time training and scoring under bf16 autocast, in turns with float32")
    p.add_argument("--compare-reference", action="store_true",
                   help="also time the reference code's way of computing the same step and score, in the same "
                        "process, and report the speed-ups (skipganomaly and skipganomaly++ only)")
    p.add_argument("--out", type=Path, help="write the JSON result here")
    p.set_defaults(func=cmd_bench_speed)


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


DEMO_DEFAULTS = {"epochs": 10, "batch_size": 32, "lr": 1e-3}

_FLAG_TYPES = {"int": int, "float": float, "str": str, "int | None": int, "str | None": str}


def _add_settings_args(p: argparse.ArgumentParser, skip: Sequence[str] = (), only: Sequence[str] | None = None,
                       defaults: dict[str, Any] | None = None, unset: bool = False) -> None:
    """One flag per setting that names one (DetectorSettings, TrainConfig): the same flag, type, help and
    default in every command. `unset`: flags default to None, and the command fills in the preset's, the
    resumed run's or the settings' defaults (`_settings_params`)."""
    values = {**setting_defaults(), **(defaults or {})}
    for f in setting_fields():
        meta, name = f.metadata, f.name
        if meta.get("flag") is None or name in skip or (only is not None and name not in only):
            continue
        default = None if unset else values[name]
        if name == "model_options":
            p.add_argument(meta["flag"], dest="model_arg", action="append", default=[], metavar=FORM,
                           help=f"{meta['help']}; without MODEL: for every model the command runs (benchmark: those of "
                                "--models, not the baselines), e.g. "
                                "k=10 or anogan:search_steps=100 (repeatable)")
        elif f.type == "bool":
            action = "store_false" if meta["flag"].startswith("--no-") else "store_true"
            p.add_argument(meta["flag"], dest=name, action=action, default=default, help=meta["help"])
        elif meta["const"] is not None:
            p.add_argument(meta["flag"], dest=name, action="store_const", const=meta["const"], default=default,
                           help=meta["help"])
        else:
            choices = meta["choices"]() if callable(meta["choices"]) else meta["choices"]
            shown = f" (default {values[name]})" if values[name] is not None else ""
            p.add_argument(meta["flag"], dest=name, type=_FLAG_TYPES[f.type], choices=choices, default=default,
                           help=meta["help"].replace("%", "%%") + shown)


def _given(args: argparse.Namespace) -> dict[str, Any]:
    """The settings given on the command line (flags that are not None), by setting name."""
    return {f.name: getattr(args, f.name) for f in setting_fields()
            if f.name != "model_options" and getattr(args, f.name, None) is not None}


def _settings(args: argparse.Namespace) -> DetectorSettings:
    """The detector settings of a one-model command: the defaults overlaid with the flags given."""
    params = _given(args)
    if "val_fraction" in params:  # said in the CLI's words before the library's [0, 1) check can say otherwise
        _check_reports_threshold(params["val_fraction"])
    model = params.get("model", DEFAULT_MODEL)
    options = parse_model_args(args.model_arg, [model])[model]
    return DetectorSettings.from_params(**params, model_options=options)


def _check_reports_threshold(val_fraction: float) -> None:
    """train, test and demo report at the threshold, so (unlike the library) they need held-out images."""
    check_threshold_split(val_fraction, "the threshold comes from held-out training images")


def _resumed(args: argparse.Namespace) -> DetectorSettings:
    """The interrupted run's settings, and its --data, --test and --tensorboard unless given anew."""
    settings, fields_ = resumed_settings(RunDirectory(args.resume), _given(args), args.model_arg or ())
    for key in ("data", "test"):
        if getattr(args, key) is None and fields_.get(key) is not None:
            saved = Path(fields_[key])
            if not saved.exists():
                raise ConfigError(f"cannot resume {args.resume}: its --{key} folder, {saved} (saved in "
                                  f"{RunDirectory(args.resume).config}), is not found from {Path.cwd()}; "
                                  f"give --{key} FOLDER")
            setattr(args, key, saved)
    args.tensorboard = args.tensorboard or bool(fields_.get("tensorboard"))
    return settings


def cmd_train(args: argparse.Namespace) -> int:
    if args.resume is not None:
        if args.out is not None and Path(args.out).resolve() != Path(args.resume).resolve():
            raise ConfigError(f"--resume {args.resume} continues that run in its own folder; --out {args.out} is "
                              "another (copy the run there first to continue it there)")
        if args.overwrite:
            raise ConfigError("--overwrite starts a run afresh, --resume continues one: give one of them")
        settings = _resumed(args)
        args.out = args.resume
    elif args.data is None:
        raise ConfigError("train needs --data FOLDER (or --resume RUN_DIR)")
    else:
        settings = _settings(args)
        _check_model_builds(settings)
        args.out = _new_run_directory(args.out, args.overwrite)
    _check_reports_threshold(settings.val_fraction)
    _check_training_folder(args.data, args.out, args.test, resume=args.resume is not None)
    train_run(settings, args.data, args.test, RunDirectory(args.out), resume=args.resume is not None,
              tensorboard=args.tensorboard, overwrite=args.overwrite and args.resume is None)
    return 0


def _new_run_directory(out: Path | None, overwrite: bool) -> Path:
    """Where a new run goes: --out, refused if it holds a run (unless --overwrite), or the first free
    default, so two runs never share (and mix) one folder's files."""
    if out is None:
        return next_free_run(DEFAULT_TRAIN_OUT)
    _check_results_folder(out)
    if RunDirectory(out).holds_run and not overwrite:
        raise ConfigError(f"{out} already holds a run; continue it with --resume {shlex.quote(str(out))}, choose "
                          "another --out, or add --overwrite to replace it")
    return out


def _check_results_folder(out: Path) -> None:
    """`--out` of a command that writes a folder of results (train, demo): not a file, writable, and not a folder of
    the user's images, with which the results and figures would be mixed (and read as images next time)."""
    _check_output_dir(out, "--out")
    _check_writable(out, f"--out {out}")
    images = sorted(p.name for p in out.iterdir() if p.is_file() and is_image_name(p.name)) if out.is_dir() else []
    if images:
        raise ConfigError(f"--out {out} holds image files ({few_names(images)}), not results: the results and their "
                          "figures would be mixed in with them; give a new or empty folder")


def _check_training_folder(data: Path, out: Path, test: Path | None = None, resume: bool = False) -> None:
    """Refuse a run directory inside the training folder (its figures would be trained on by the next run) or the
    test folder (they would be scored as a class of their own); a training folder that holds labelled images is
    refused when its files are listed (`training_files`)."""
    folder = train_folder(data)
    if folder.is_dir() and out.resolve().is_relative_to(folder.resolve()):
        raise ConfigError(f"--out {out} is inside --data {data}: the run's figures would be read as training images "
                          "by the next run; put the run directory elsewhere")
    if test is not None and not resume:  # a run already there is not read as a class (`labelled_files`)
        _check_outside_test(out, "--out", test)


def _check_outside_test(out: Path, flag: str, test: Path) -> None:
    """A folder of figures inside the folder a test reads its labels from (a labelled folder, or its `test/`) would
    be scored as a class of images by the next test."""
    base = labelled_base(test)
    if base.is_dir() and out.resolve().is_relative_to(base.resolve()):
        raise ConfigError(f"{flag} {out} is inside the test folder {base}: its figures would be scored as a class of "
                          "test images by the next test; put it elsewhere")


def _check_output_dir(path: Path | None, flag: str) -> None:
    """Fail before any work when an output folder's name is taken by a file."""
    if path is not None and path.exists() and not path.is_dir():
        raise ConfigError(f"{flag} {path} is a file, not a folder")


def cmd_test(args: argparse.Namespace) -> int:
    if args.no_report and args.report_dir is not None:
        raise ConfigError("give --report-dir or --no-report, not both")
    report_dir = None if args.no_report else args.report_dir or next_free_run(DEFAULT_TEST_OUT, evaluations=True)
    _check_output_dir(report_dir, "--report-dir")
    _check_out_file(args.out, "JSON")
    if report_dir is not None:
        flag = "--report-dir" if args.report_dir is not None else "the default --report-dir"
        _check_writable(report_dir, f"{flag} {report_dir}")
        _check_outside_test(report_dir, flag, args.data)
    if report_dir is not None and RunDirectory(report_dir).holds_run:
        raise ConfigError(f"--report-dir {report_dir} holds a training run, whose evaluation and report this "
                          "would replace; give another --report-dir")
    if args.report_dir is not None and RunDirectory(report_dir).evaluation.exists():
        log.info("replacing the evaluation in %s (given as --report-dir)", report_dir)
    evaluate_folder(args.checkpoint, args.data, args.out, report_dir, device=args.device, progress=args.progress)
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    _check_output_dir(args.save_maps, "--save-maps")
    _check_out_file(args.out, "CSV", args.inputs)
    if args.save_maps is not None:
        _check_writable(args.save_maps, f"--save-maps {args.save_maps}")
    unread = predict_files(args.checkpoint, args.inputs, args.out, args.save_maps, device=args.device,
                           progress=args.progress, threshold=args.threshold)
    if unread:  # a script sees that not every part was scored; the CSV holds every other score
        print(f"error: {len(unread)} of the inputs could not be scored (named above: unreadable, missing, or a folder "
              f"that could not be opened or held no image); their rows in {args.out} have no score", file=sys.stderr)
        return PARTLY_FAILED_EXIT
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    _check_out_file(args.out, "ONNX")
    det = Detector.load(args.checkpoint, device="cpu", progress=False)  # without a threshold: said, as by the API
    cut = "no threshold: scores only" if det.threshold_ is None else f"threshold {det.threshold_:.6g}"
    print(f"wrote {det.export_onnx(args.out)} ({det.model_name}, {cut})")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    print(f"wrote {build_report(args.run_dir)}")
    return 0


def _model_names(text: str) -> list[str]:
    """A comma-separated list of registered model names, each once, in order ('none': no model)."""
    names = [] if text.strip() == "none" else list(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    for name in names:
        get_model_class(name)  # an unknown name is a one-line error listing the models
    return names


def cmd_demo(args: argparse.Namespace) -> int:
    digits = list(range(10)) if args.digits == "all" else _parse_digits(args.digits)
    if args.amp is None:  # the default model's demo settings are the ones it was validated with, bf16 included
        args.amp = (getattr(args, "model", None) or DEFAULT_MODEL) == DEFAULT_MODEL and native_bf16(
            resolve_device(args.device))
        why = "this CPU computes bf16 natively; --no-amp for float32" if args.amp else "--amp to turn it on"
    else:
        why = "as given"
    print(f"bf16 autocast {'on' if args.amp else 'off'} ({why})")
    settings = _settings(args)
    _check_reports_threshold(settings.val_fraction)
    _check_results_folder(args.out)
    ok = run_demo(settings, digits, args.out, _model_names(args.baselines), max_train=args.max_train)
    return 0 if ok else 1


def _parse_digits(text: str) -> list[int]:
    digits = _int_list(text, "--digits")
    if not digits or any(not 0 <= d <= 9 for d in digits):
        raise ConfigError(f"--digits expects 'all' or a comma-separated list of 0..9, got {text!r}")
    return digits


def _protocols(text: str) -> list[str]:
    given = [t.strip() for t in text.split(",") if t.strip()]
    names = [n for t in given for n in ([HONEST, PAPER] if t == "both" else [t])]  # both: honest and paper
    bad = [n for n in names if n not in PROTOCOLS]
    if bad or not names:
        raise ConfigError(f"--protocol: unknown protocol {bad[0] if bad else text!r}; use {', '.join(PROTOCOLS)}, "
                          "a comma-separated list of them; both = honest,paper")
    return list(dict.fromkeys(names))


def cmd_benchmark(args: argparse.Namespace) -> int:
    _check_output_dir(args.out, "--out")
    if RunDirectory(args.out).holds_run:
        raise ConfigError(f"--out {args.out} holds a training run, whose report a benchmark would replace; give "
                          "another folder")
    preset = PRESETS.get(args.preset or "", {})
    given = _given(args)
    seeds = _int_list(args.seeds, "--seeds") if args.seeds else preset.get("seeds", [0])
    chosen = _model_names(args.models)
    models = list(dict.fromkeys(chosen + _model_names(args.baselines)))
    if not models:
        raise ConfigError("--models and --baselines name no model")
    options = parse_model_args(args.model_arg, models, unprefixed=chosen)
    protocols = _protocols(args.protocol)
    train_fraction = _fraction(_pick(args.train_fraction, preset, "train_fraction", 1.0), "--train-fraction")
    test_fraction = _fraction(_pick(args.test_fraction, preset, "test_fraction", 1.0), "--test-fraction")
    sizes = {k: preset[k] for k in ("epochs", "batch_size") if k in preset}
    check_protocol_settings(protocols, DetectorSettings.from_params(**{**sizes, **given}))
    # An image size or option a model cannot take fails here, before any image is read and not in every cell;
    # the channel count is the data's, known once it is read (the check builds with the given one or 3).
    for name in models:
        _check_model_builds(DetectorSettings.from_params(**{**sizes, **given, "model": name},
                                                         model_options=options[name]))
    if args.data is not None and args.data_dir is not None:
        raise ConfigError(f"--data {args.data} and --data-dir {args.data_dir}: give one (--data-dir is where CIFAR-10 "
                          "is, --data your own labelled images)")
    with warnings_said() as data_warnings:  # unreadable files, copies, ...: listed beside the tables too
        load, data = benchmark_data(args.data, args.data_dir or Path(CIFAR10_DIR), args.download,
                                    given.get("image_size"), given.get("in_channels"),
                                    progress=given.get("progress", True))
    classes = resolve_classes(data, args.classes, args.normal_labels)
    settings = DetectorSettings.from_params(**{**sizes, **given, "in_channels": int(data.train_images.shape[1])})
    config = SweepConfig(
        models=models, classes=classes, seeds=seeds, protocols=protocols, settings=settings, model_options=options,
        train_fraction=train_fraction, test_fraction=test_fraction, dataset=data.fingerprint or data.name,
    )
    check_protocols(data, classes, config.protocols)
    check_sizes(data, config)
    title = CIFAR10_TITLE if isinstance(data, Cifar10) else data.name
    decoded = SweepDirectory(args.out).decoded
    with claim_folder(args.out):  # one benchmark at a time writes its cells and tables
        if args.data is not None and args.data.is_dir():
            load = decode_once(data, decoded)
        del data
        try:
            outcome = run_benchmark(load, config, args.out, title, workers=args.workers, time_limit=args.time_limit,
                                    data_warnings=data_warnings)
        finally:
            decoded.unlink(missing_ok=True)
    if outcome.failures:
        return PARTLY_FAILED_EXIT
    return DEADLINE_EXIT if outcome.unfinished else 0  # a script can tell "run again to continue" from "done"


def _check_out_file(out: Path | None, kind: str, inputs: Sequence[Path] = ()) -> None:
    """`--out` names a file to write, checked before any work, each a one-line error: not a folder, not a file the
    command would destroy (an image, one of `inputs`, a detector checkpoint, a run's own files), and in a folder
    that can be written."""
    if out is None:
        return
    example = f"e.g. {out / f'out.{kind.lower()}' if out.is_dir() else f'out.{kind.lower()}'}"
    if out.is_dir():
        raise ConfigError(f"--out {out} is a folder; give the {kind} file to write ({example})")
    an_input = any(p.is_file() and out.is_file() and p.resolve() == out.resolve() for p in inputs)
    run_file = out.name in (*RUN_FILES, state_path(Path(CHECKPOINT)).name) and RunDirectory(out.parent).holds_run
    taken = ("is one of the inputs" if an_input else "has an image file extension" if is_image_name(out.name) else
             f"is the {out.name} of the run in {out.parent}" if run_file else
             "is a detector checkpoint (a PyTorch file)" if out.is_file() and _torch_file(out) else None)
    if taken:
        raise ConfigError(f"--out {out} {taken}, which this would replace: give the {kind} file to write ({example})")
    _check_writable(out.parent, f"--out {out}")


def _torch_file(path: Path) -> bool:
    """A file `torch.save` wrote (a zip archive holding a `data.pkl`), under any name; not any zip (a spreadsheet)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith("data.pkl") for name in archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def _check_writable(folder: Path, what: str) -> None:
    """`folder` (created if missing) can take new files: the first of it and its parents that exists is a folder
    this user may write to. Said before any work, with the user's own path (a failed write at the end names a
    temporary file)."""
    existing = folder.absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"{what}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{what}: {existing} cannot be written (permission denied); give a path you can write to")


def _fraction(value: float, flag: str) -> float:
    if not 0 < value <= 1:
        raise ConfigError(f"{flag} must be above 0 and at most 1, got {value}")
    return value


def _check_model_builds(settings: DetectorSettings) -> None:
    """Build the model once (milliseconds), so that an image size or option it cannot take is one line
    before any image is read or any epoch runs."""
    create(settings.model, in_channels=settings.in_channels, image_size=settings.image_size,
           **settings.model_options)


def _pick(value: Any, preset: dict[str, Any], name: str, default: Any) -> Any:
    return value if value is not None else preset.get(name, default)


def cmd_bench_speed(args: argparse.Namespace) -> int:
    from .throughput import measure_models

    _check_out_file(args.out, "JSON")  # said now, not after the minutes of measuring

    models = ([m for m in list_models() if get_model_class(m).trained_by_gradient] if args.models == "all"
              else _model_names(args.models))
    if not models:
        raise ConfigError("--models names no model to measure")
    resolve_device(args.device)  # a bad or absent device is one line here, not an error in each worker
    measure_models(models, args.threads, parse_model_args(args.model_arg, models), args.out,
                   batch_size=args.batch_size, steps=args.steps, repeats=args.repeats, score_batch=args.score_batch,
                   onnx=not args.no_onnx, reference_style=args.compare_reference, compile=args.compile, amp=args.amp,
                   device=args.device)
    return 0


def _positive_int(text: str) -> int:
    """argparse type for counts and sizes: a bad value is a usage error naming the flag, not a traceback later."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {value}")
    return value


def _int_list(text: str, flag: str) -> list[int]:
    try:
        return list(dict.fromkeys(int(t) for t in text.split(",") if t.strip()))  # each once: a repeat is no new run
    except ValueError:
        raise ConfigError(f"{flag} expects comma-separated integers, got {text!r}") from None


if __name__ == "__main__":
    sys.exit(main())
