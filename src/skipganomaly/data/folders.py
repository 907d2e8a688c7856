"""Folder layouts users have: a folder of normal images, and a test folder split by label.

Accepted test layouts (first match wins): `normal/` + `abnormal/`, the reference's `0.normal/` +
`1.abnormal/`, or either of those under a `test/` subfolder. For training, a folder of images, or a
root whose `train/` (or `train/0.normal/`) holds them.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..errors import DataError
from .images import list_image_files, load_image_files

NORMAL_NAMES = ("normal", "0.normal", "good")
ABNORMAL_NAMES = ("abnormal", "1.abnormal", "anomaly", "defect")


def train_folder(root: str | os.PathLike[str]) -> Path:
    """The folder that holds the normal training images under `root`."""
    root = Path(root)
    for candidate in (root / "train" / "0.normal", root / "train" / "normal", root / "train"):
        if candidate.is_dir():
            return candidate
    return root


def labelled_files(root: str | os.PathLike[str]) -> tuple[list[Path], list[int]]:
    """Image paths and labels (0 normal, 1 abnormal) of a labelled test folder."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"folder not found: {root}")
    base = root / "test" if (root / "test").is_dir() else root
    normal = _first_dir(base, NORMAL_NAMES)
    abnormal = _first_dir(base, ABNORMAL_NAMES)
    if normal is None and abnormal is None:
        raise DataError(
            f"{base} has no labelled subfolders; expected one of {NORMAL_NAMES} and one of {ABNORMAL_NAMES}"
        )
    paths: list[Path] = []
    labels: list[int] = []
    for folder, label in ((normal, 0), (abnormal, 1)):
        if folder is not None:
            files = list_image_files(folder)
            paths += files
            labels += [label] * len(files)
    return paths, labels


def load_labelled_folder(
    root: str | os.PathLike[str], image_size: int, in_channels: int, progress: bool = False
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Load a labelled folder: images uint8 [N, C, H, W], labels [N], and the kept paths."""
    paths, labels = labelled_files(root)
    label_of = {str(p): y for p, y in zip(paths, labels, strict=True)}
    images, kept = load_image_files(paths, image_size, in_channels, progress=progress)
    return images, torch.tensor([label_of[p] for p in kept]), kept


def _first_dir(base: Path, names: tuple[str, ...]) -> Path | None:
    for name in names:
        if (base / name).is_dir():
            return base / name
    return None
