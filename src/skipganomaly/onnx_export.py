"""Export a model's score to ONNX (dynamic batch axis) and score with onnxruntime on CPUs.

The exported graph takes images already scaled to [-1, 1] ([N, C, H, W] float32) and returns one
score per image, computed in eval mode as `AnomalyModel.score` (to float32 rounding: `SCORE_AGREEMENT`). A
detector's export also carries, as the file's metadata (`METADATA`), what labelling and reading images need: its
threshold, the bit depth of its training files, how those files were stored (for the detector's warnings about
files of another shape or colour) and the model's name, so that `OnnxScorer` alone can `predict` and warn as it does;
and, for a service that reads the file without this package (`DESCRIPTION`), how images are prepared and what
the score means, also as the file's doc string.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .data.images import BIT_DEPTHS, BYTE_DEPTH, FileForm, read_images, to_unit_range
from .errors import CheckpointError, ConfigError
from .files import writing
from .models.base import AnomalyModel
from .training.inference import check_batch_size, default_eval_batch


class _Score(nn.Module):
    def __init__(self, model: AnomalyModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model.score(x)


METADATA = ("skipganomaly.model", "skipganomaly.threshold", "skipganomaly.bit_depth",  # values as text ("" = none)
            "skipganomaly.file_form")  # how the training files were stored (JSON), for the detector's warnings
INPUT, OUTPUT = "images", "scores"  # the graph's input and output names

# How closely onnxruntime's scores follow the detector's, as the tests check it for every model: a relative SCORE_RTOL,
# or SCORE_SPREAD_TOL of the scores' standard deviation where that is looser (standardised kNN terms near 0). An
# image scored exactly at the threshold by one may be just above it for the other.
SCORE_RTOL, SCORE_SPREAD_TOL = 1e-4, 1e-3
SCORE_AGREEMENT = (f"a relative {SCORE_RTOL:g}, or {SCORE_SPREAD_TOL:g} of the scores' standard deviation where that "
                   "is looser")


def description(model: AnomalyModel, bit_depth: int | None) -> dict[str, str]:
    """What a service needs to prepare images and read scores without this package (`skipganomaly.input`,
    `skipganomaly.score`, `skipganomaly.version`): written into every export beside `METADATA`."""
    from . import __version__

    colour = "RGB" if model.in_channels == 3 else "grayscale (Pillow's L: ITU-R 601-2 luma)"
    depth = (f"integer pixels wider than 8 bits (16-bit files, uint16 frames) scaled by 2**{bit_depth} - 1 first "
             "(skipganomaly.bit_depth); "
             if bit_depth and bit_depth > BYTE_DEPTH else "")
    return {
        "skipganomaly.input": f"{INPUT}: float32 [N, {model.in_channels}, {model.image_size}, {model.image_size}], "
                              f"{colour}, uint8 pixel / 127.5 - 1 (so in [-1, 1]); {depth}each image turned upright "
                              f"by its EXIF orientation, transparent pixels laid on black, then stretched (not "
                              f"cropped) to {model.image_size}x{model.image_size}, bilinear with antialiasing",
        "skipganomaly.score": f"{OUTPUT}: float32 [N], higher = more anomalous (may be negative); label 1 (anomaly) "
                              f"where score > skipganomaly.threshold; matches the detector's scores to "
                              f"{SCORE_AGREEMENT}",
        "skipganomaly.version": __version__,
    }


def _export_to(model: AnomalyModel, path: Path, threshold: float | None, bit_depth: int | None,
               file_form: FileForm | None) -> None:
    was_training = model.training
    model.eval()
    dummy = torch.zeros(2, model.in_channels, model.image_size, model.image_size,
                        device=next(iter([*model.parameters(), *model.buffers()])).device)
    too_large = False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # No constant folding: it would store casts of the model's tensors (a uint8 kNN bank as float32, twice)
            # in the file; onnxruntime folds them when it loads the graph.
            torch.onnx.export(_Score(model), (dummy,), str(path), input_names=[INPUT], output_names=[OUTPUT],
                              dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}}, dynamo=False,
                              opset_version=17, do_constant_folding=False)
    except Exception as err:
        if "onnx" in str(err).lower() and "not installed" in str(err).lower():
            raise ConfigError("ONNX export needs the onnx package: pip install onnx onnxruntime onnxscript (the "
                              "package's [onnx] extra)") from None
        if type(err).__name__ != "EncodeError":  # protobuf's, past its 2 GiB limit
            raise
        too_large = True
    finally:
        model.train(was_training)
    # `path` lies alone in export_onnx's private folder: past 2 GiB the exporter writes the weights beside it
    if too_large or len(list(path.parent.iterdir())) > 1:
        raise ConfigError(f"the {model.name!r} graph is larger than ONNX's 2 GiB limit for one file (a kNN bank of "
                          f"many images at {model.image_size} px?): export a smaller bank or image size")
    import onnx

    graph = onnx.load(str(path))
    values = (model.name, "" if threshold is None else repr(float(threshold)),
              "" if bit_depth is None else str(bit_depth), "" if file_form is None else json.dumps(file_form.as_dict()))
    described = description(model, bit_depth)
    for key, value in [*zip(METADATA, values, strict=True), *described.items()]:
        graph.metadata_props.add(key=key, value=value)
    graph.doc_string = " ".join(described.values())
    onnx.save(graph, str(path))


def export_onnx(model: AnomalyModel, path: str | os.PathLike[str], threshold: float | None = None,
                bit_depth: int | None = None, file_form: FileForm | None = None) -> Path:
    """Write `model.score` as an ONNX graph with a dynamic batch axis, with `METADATA`; returns the path."""
    if not model.exportable:
        raise ConfigError(f"model {model.name!r} cannot be exported to ONNX (its score is an optimisation loop)")
    if threshold is not None and not math.isfinite(threshold):
        raise ConfigError(f"the threshold must be a finite number, got {threshold}")
    as_folder = str(path).endswith(("/", os.sep))
    path = Path(path)
    above = next((p for p in (path, *path.parents) if p.exists()), None)
    if above is not None and not above.is_dir() and (above != path or as_folder):
        raise CheckpointError(f"cannot write {path}{os.sep if as_folder else ''}: {above} is a file, not a folder")
    if as_folder or path.is_dir():
        raise ConfigError(f"{path} is a folder; give the ONNX file to write (e.g. {path / 'model.onnx'})")
    if path.is_file() and zipfile.is_zipfile(path):  # an earlier export is replaced; a trained detector is not
        raise ConfigError(f"{path} is a zip file (a detector checkpoint, model.pt?), which the export would replace; "
                          "give the ONNX file to write (e.g. model.onnx)")
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        # written whole in a private folder, then renamed: no half-written file under the name, and whatever
        # the exporter writes beside it (external data of a graph past 2 GiB) is removed with the folder
        with tempfile.TemporaryDirectory(prefix=f".{path.name}.", dir=path.parent) as folder:
            tmp = Path(folder) / path.name
            _export_to(model, tmp, threshold, bit_depth, file_form)
            os.replace(tmp, path)
    return path


class OnnxScorer:
    """Score images with onnxruntime (CPU), in batches: whatever `Detector.decision_function` takes
    (uint8 or [0, 1] float arrays and tensors, lists of paths or PIL images), converted to the graph's
    channels and size (read from its input). Its scores match the detector's to `SCORE_AGREEMENT`. Scores only:
    anomaly maps need the detector (`Detector.load(...).anomaly_maps`). One scorer may serve several threads at
    once; pickled (to worker processes or machines), it carries the export's bytes, checked unchanged since it was
    opened, and the copy opens its own session. `threads`: onnxruntime's threads per call (default: every core;
    give 1 or 2 where several scorers share a machine)."""

    def __init__(self, path: str | os.PathLike[str], threads: int | None = None) -> None:
        try:
            import onnxruntime  # noqa: F401  (said here, before any file is read)
        except ImportError:
            raise ConfigError("onnxruntime is not installed: pip install onnxruntime (or the package's [onnx] extra)"
                              ) from None
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, (int, np.integer))
                                    or not 1 <= threads <= 4096):
            raise ConfigError(f"threads must be a whole number from 1 (or None: every core), got {threads!r}")
        if Path(path).is_dir():
            raise CheckpointError(f"{path} is a folder; give the ONNX file (e.g. {Path(path) / 'model.onnx'})")
        if not Path(path).is_file():
            raise CheckpointError(f"ONNX file not found: {path}")
        if zipfile.is_zipfile(path):
            raise CheckpointError(f"{path} is a zip file (a detector checkpoint, model.pt?), not an ONNX export: load a "
                                  "checkpoint with skipganomaly.Detector.load, or export it with `skipganomaly export`")
        data = Path(path).read_bytes()
        self._path, self._digest, self._bytes = Path(path).absolute(), hashlib.sha256(data).hexdigest(), None
        self._open(data, threads, path)

    def _open(self, data: bytes, threads: int | None, path: str | os.PathLike[str]) -> None:
        """The session of an export's bytes and what its metadata says (`path`: where they came from, for
        messages)."""
        import onnxruntime as ort

        self._threads = threads
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = int(threads)
        try:
            self.session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
        except Exception as err:  # onnxruntime's own types (InvalidProtobuf, Fail, ...): one project error
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise CheckpointError(f"{path} is not a readable ONNX file ({first})") from None
        self.in_channels, self.image_size = _checked_graph(self.session, path)
        meta = self.session.get_modelmeta().custom_metadata_map
        model, threshold, bit_depth, form = (meta.get(key, "") for key in METADATA)
        if not model:
            raise CheckpointError(f"{path} is not a skipganomaly export (no {METADATA[0]} in its metadata)")
        self.model_name: str = model
        try:
            self.threshold_: float | None = float(threshold) if threshold else None
            self.bit_depth_ = int(bit_depth) if bit_depth else BYTE_DEPTH  # files are read at it, each on its own
        except ValueError:
            raise CheckpointError(f"{path}: damaged metadata (threshold {threshold!r}, bit depth {bit_depth!r})") from None
        try:  # None for exports written before it was kept: no shape or colour warnings then
            self.file_form_ = FileForm.from_dict(json.loads(form)) if form else None
        except ValueError:
            self.file_form_ = None
        if (self.threshold_ is not None and not math.isfinite(self.threshold_)) or self.bit_depth_ not in BIT_DEPTHS:
            raise CheckpointError(f"{path}: damaged metadata (threshold {threshold!r}, bit depth {bit_depth!r})")

    def __getstate__(self) -> dict[str, Any]:
        """What pickling sends: the export's bytes (read again from its file, and refused if it changed since this
        scorer opened it, so a copy scores as this one does) and the threads."""
        data = self._bytes if self._bytes is not None else self._path.read_bytes()
        if hashlib.sha256(data).hexdigest() != self._digest:
            raise CheckpointError(f"{self._path} changed since this scorer opened it; open it again to pickle it")
        return {"model": data, "threads": self._threads, "path": str(self._path)}

    def __setstate__(self, state: dict[str, Any]) -> None:
        data = state["model"]
        self._path, self._digest, self._bytes = Path(state["path"]), hashlib.sha256(data).hexdigest(), data
        self._open(data, state["threads"], state["path"])

    def score(self, images: Any, batch_size: int | None = None) -> np.ndarray:
        """Anomaly scores, higher = more anomalous (files wider than 8 bits read at the detector's bit depth).
        `batch_size`: by default as many pixels per batch as the detector scores with on a CPU (64 images of
        32x32, 4 of 128x128), so memory does not grow with the square of the image size."""
        batch_size = default_eval_batch(torch.device("cpu"), self.image_size) if batch_size is None else batch_size
        check_batch_size(batch_size)
        # files unlike the training files are said, as by the detector
        data = read_images(images, self.image_size, self.in_channels, bit_depth=self.bit_depth_,
                           trained_on=self.file_form_).images
        out = []
        for start in range(0, len(data), batch_size):
            batch = to_unit_range(data[start:start + batch_size]).numpy()
            out.append(self.session.run([OUTPUT], {INPUT: batch})[0])
        return np.concatenate(out).astype(np.float64)

    def predict(self, images: Any, batch_size: int | None = None) -> np.ndarray:
        """1 where the score is above the detector's threshold (as `Detector.predict`), else 0."""
        if self.threshold_ is None:  # the same error type as Detector.predict's without a threshold
            raise CheckpointError("this ONNX file holds no threshold (exported from an unfinished training run, a bare "
                              "model, or a detector fitted without held-out images); compare `score` with your own")
        return (self.score(images, batch_size) > self.threshold_).astype(np.int64)


def _checked_graph(session: Any, path: str | os.PathLike[str]) -> tuple[int, int]:
    """The channels and size of an export's one input, [batch, C, S, S] named INPUT, scored as OUTPUT: another
    graph (another tool's, or a dynamic size) is refused here, not at its first call."""
    inputs, outputs = session.get_inputs(), session.get_outputs()
    shape = inputs[0].shape if len(inputs) == 1 else []
    if (len(inputs) != 1 or inputs[0].name != INPUT or [o.name for o in outputs] != [OUTPUT] or len(shape) != 4
            or not all(isinstance(d, int) for d in shape[1:]) or shape[2] != shape[3]):
        found = ", ".join(f"{i.name} {i.shape}" for i in inputs)
        raise CheckpointError(f"{path} is not a skipganomaly export (inputs: {found}; expected one input {INPUT!r} "
                              f"[batch, C, S, S] and one output {OUTPUT!r})")
    return int(shape[1]), int(shape[2])
