"""Folder layouts users have: a folder of normal images, and a test folder split by label.

Accepted test layouts (directly or under a `test/` subfolder; names in any case): a normal folder
(`normal/`, the reference's `0.normal/`, or MVTec AD's `good/`) and abnormal folders: every one named
`abnormal/`, `1.abnormal/`, `anomaly/` or `defect/`, or, where none is, every other subfolder (MVTec AD's
defect types: `crack/`, `scratch/`, ...). For training, a folder of images, or a root whose `train/`
(or `train/0.normal/`, `train/normal/`) holds them; a training folder that holds labelled images is refused.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np
import torch
from PIL import Image, ImageOps

from ..errors import PACKAGE_LOGGER, DataError
from ..files import few_names
from ..run_directory import RunDirectory
from .images import (IMAGE_EXTENSIONS, FileForm, is_image_name, list_image_files, load_image_files, on_black,
                     find_copies, upright_size)

NORMAL_NAMES = ("normal", "0.normal", "good")
ABNORMAL_NAMES = ("abnormal", "1.abnormal", "anomaly", "defect")
MASK_NAMES = ("ground_truth", "masks", "mask", "gt")  # folders of pixel masks: images, but not of parts
NOT_TEST_NAMES = ("train", "validation", "val", *MASK_NAMES)  # beside good/, never a defect type

log = logging.getLogger(PACKAGE_LOGGER)


# Folders whose images are not normal training images, wherever they lie below a training folder: test sets,
# MVTec AD's pixel masks, abnormal classes.
NOT_TRAINING_NAMES = ("test", *MASK_NAMES, *ABNORMAL_NAMES)


def _child(root: Path, name: str) -> Path | None:
    """`root`'s subfolder called `name` in any case (`Train/`, `TEST/`), or None."""
    if not root.is_dir():
        return None
    return next((p for p in sorted(root.iterdir()) if p.name.lower() == name and p.is_dir()), None)


def train_folder(root: str | os.PathLike[str]) -> Path:
    """The folder that holds the normal training images under `root`: its `train/` (names in any case),
    or that folder's `0.normal/` or `normal/`, or `root` itself."""
    root = Path(root)
    train = _child(root, "train")
    if train is None:
        return root
    return _child(train, "0.normal") or _child(train, "normal") or train


def training_files(root: str | os.PathLike[str]) -> tuple[Path, list[Path]]:
    """The folder of normal training images under `root` (`train_folder`) and the image files below it.
    A folder that also holds labelled images is refused: every image below it would be learnt as normal
    (a data set's root one level too high, its `test/` or `ground_truth/` masks, a `defect/` class, or
    `good/` beside defect folders)."""
    folder = train_folder(root)
    files = _each_file_once(list_image_files(folder))
    children: dict[tuple[str, ...], set[str]] = {}
    for path in files:
        parts = path.relative_to(folder).parts[:-1]
        for depth, name in enumerate(parts):
            children.setdefault(parts[:depth], set()).add(name)
            if name.lower() in NOT_TRAINING_NAMES:
                level = folder.joinpath(*parts[:depth])
                normal = next((c for c in (_child(level, n) for n in ("train", *NORMAL_NAMES)) if c is not None), None)
                raise DataError(f"{folder} holds {Path(*parts[:depth + 1])}/ with images: training reads every image "
                                "below the folder, so those would be learnt as normal; give the folder of normal "
                                "images only" + (f" (e.g. {normal})" if normal is not None else ""))
    for parent, names in children.items():
        normal = next((n for n in names if n.lower() in NORMAL_NAMES), None)
        others = sorted(n for n in names if n != normal and n.lower() not in NOT_TEST_NAMES)
        if normal is not None and others:
            where = folder.joinpath(*parent)
            # a test set's normal images are for testing: the example is a training folder beside it, if any
            train = _child(Path(os.path.abspath(where)).parent, "train")
            raise DataError(f"{where} is laid out as a labelled test folder ({normal}/ beside {', '.join(others[:3])}/"
                            f"{' ...' if len(others) > 3 else ''}): training reads every image below it, so those "
                            "would be learnt as normal; give a folder of normal training images only"
                            + (f" (e.g. {train})" if train is not None else ""))
    return folder, files


def _each_file_once(files: list[Path]) -> list[Path]:
    """Training files with links to files already listed left out: the same image twice could be trained on and
    held out for the threshold at once."""
    seen: set[str] = set()
    once, again = [], []
    for path in files:
        real = os.path.realpath(path)
        (again if real in seen else once).append(path)
        seen.add(real)
    if again:
        log.warning("%s to files already read, each read once (so that one image is not both trained on and held "
                    "out): %s", f"{len(again)} training files are links" if len(again) > 1 else "1 training file is a "
                    "link", few_names([str(p) for p in again], whole=True))
    return once


def labelled_base(root: str | os.PathLike[str]) -> Path:
    """The folder whose subfolders a labelled test folder's labels are read from: its `test/` (any case), or itself."""
    return _child(Path(root), "test") or Path(root)


def labelled_files(root: str | os.PathLike[str]) -> tuple[list[Path], list[int]]:
    """Image paths and labels (0 normal, 1 abnormal) of a labelled test folder; both labels must be
    there (AUROC needs both), and the folders taken as abnormal are logged by name."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root} is a file, not a folder: give the labelled test folder (normal/ and abnormal/ "
                        "inside)" if root.exists() else f"folder not found: {root}")
    base = labelled_base(root)
    subfolders = [p for p in sorted(base.iterdir()) if p.is_dir() and not p.name.startswith(".")]
    runs = [p for p in subfolders if _holds_run(p)]  # a run directory put here: its figures are not a defect type
    folders: dict[str, Path] = {}
    for p in subfolders:
        if p in runs:
            continue
        if p.name.lower() in folders:  # `abnormal/` and `Abnormal/` (two sources merged): one would be dropped
            raise DataError(f"{base} has {folders[p.name.lower()].name}/ and {p.name}/, folders whose names differ "
                            "only in letter case; a label is read from the name in any case, so merge them or "
                            "rename one")
        folders[p.name.lower()] = p
    normal = next((folders[n] for n in NORMAL_NAMES if n in folders), None)
    abnormal = [folders[n] for n in ABNORMAL_NAMES if n in folders]
    if normal is not None and not abnormal:
        abnormal = [p for name, p in folders.items() if p != normal and name not in NOT_TEST_NAMES]
    if normal is None and not abnormal:
        raise DataError(
            f"{base} has no labelled subfolders; expected one of {NORMAL_NAMES} and abnormal ones "
            f"({', '.join(ABNORMAL_NAMES)}, or MVTec AD's defect folders beside good/)"
        )
    if normal is None or not abnormal:
        found = normal.name if normal is not None else ", ".join(p.name for p in abnormal)
        raise DataError(f"{base} has {found}/ but no {'abnormal' if normal is not None else 'normal'} folder: "
                        f"a test needs both normal and abnormal images")
    left_out = [p.name for p in folders.values() if p != normal and p not in abnormal]
    log.info("test labels: normal = %s/; abnormal = %s%s%s", normal.name, ", ".join(f"{p.name}/" for p in abnormal),
             f"; not read: {', '.join(f'{name}/' for name in left_out)}" if left_out else "",
             f"; not read, a training run's folder: {', '.join(f'{p.name}/' for p in runs)}" if runs else "")
    loose = [p.name for p in sorted(base.iterdir()) if p.is_file() and is_image_name(p.name)]
    if loose:  # a label comes from a folder: these have none
        log.warning("%d image files lie directly in %s, outside its labelled folders, and are not read: %s",
                    len(loose), base, few_names(loose))
    paths: list[Path] = list_image_files(normal)
    labels: list[int] = [0] * len(paths)
    for folder in abnormal:
        files = list_image_files(folder)
        paths += files
        labels += [1] * len(files)
    return paths, labels


def _holds_run(folder: Path) -> bool:
    """A training run's folder (its config, and its checkpoint or, unfinished, its training state), not a class."""
    run = RunDirectory(folder)
    return run.config.is_file() and run.holds_run


def label_folders(root: str | os.PathLike[str], paths: Sequence[str | os.PathLike[str]]) -> list[str]:
    """The labelled folder (`good`, `scratch`, ...) each of `paths` lies in, of the test folder `root` (as
    `labelled_files` reads it: directly or under its `test/`)."""
    root = Path(root)
    base = _child(root, "test") or root
    return [Path(p).relative_to(base).parts[0] for p in paths]


def mask_folder(root: str | os.PathLike[str]) -> Path | None:
    """MVTec AD's `ground_truth/` of a labelled test folder `root`: beside its `test/` (root given as the data
    set's root), or beside root itself (root given as the `test/` folder, `.` from inside it too); None where
    there is none."""
    root = Path(root)
    if (found := _child(root, "ground_truth")) is not None:
        return found
    absolute = Path(os.path.abspath(root))  # `.` named, links not followed: a linked test/ has its masks beside it
    return _child(absolute.parent, "ground_truth") if absolute.name.lower() == "test" else None


def mask_files(root: str | os.PathLike[str], paths: Sequence[str | os.PathLike[str]], labels: Sequence[int]
               ) -> tuple[Path, list[Path | None]] | None:
    """The `ground_truth/` folder (`mask_folder`) and each abnormal test image's pixel mask in it, MVTec AD's
    `ground_truth/<defect>/<stem>_mask.<ext>` (or `<stem>.<ext>`) for `test/<defect>/<stem>.<ext>`, None where it
    has none (a normal image: no defect pixels); None for the whole set where `root` has no `ground_truth/`
    folder or no abnormal image a mask."""
    masks = mask_folder(root)
    if masks is None:
        return None
    folders = label_folders(root, paths)
    by_stem: dict[str, dict[str, Path]] = {}  # per defect folder: each mask by its stem
    for folder in dict.fromkeys(folders):
        where = _child(masks, folder.lower())
        by_stem[folder] = {} if where is None else {
            m.stem: m for m in sorted(where.iterdir(), reverse=True) if m.suffix.lower() in IMAGE_EXTENSIONS}
    found: list[Path | None] = []  # a normal image's mask too, where it has one (load_masks checks it marks nothing)
    for path, folder in zip(paths, folders, strict=True):
        stem = Path(path).stem
        found.append(by_stem[folder].get(f"{stem}_mask") or by_stem[folder].get(stem))
    if not any(m for m, label in zip(found, labels) if label):
        log.info("no mask in %s matches a test image's name (test/<defect>/NAME.png: ground_truth/<defect>/"
                 "NAME_mask.png or NAME.png); no pixel metrics", masks)
        return None
    missing = [str(path) for path, m, label in zip(paths, found, labels) if label and m is None]
    if missing:
        log.warning("%d abnormal test images have no mask in %s; the pixel metrics leave them out: %s", len(missing),
                    masks, few_names(missing, whole=True))
    # masks no test image claims: a name that does not match (a shifted number, another extension), or a defect
    # folder with no test folder
    used = {m for m in found if m is not None}
    extra = [m for where in sorted(d for d in masks.iterdir() if d.is_dir() and not d.name.startswith("."))
             for m in sorted(where.iterdir()) if m.suffix.lower() in IMAGE_EXTENSIONS and m not in used]
    if extra:
        log.warning("%d masks in %s match no test image's name (test/<defect>/NAME.png: ground_truth/<defect>/"
                    "NAME_mask.png), so they are not used: %s", len(extra), masks,
                    few_names([str(m.relative_to(masks)) for m in extra], whole=True))
    return masks, found


class PixelTruth(NamedTuple):
    """What pixel metrics compare anomaly maps with: which test images take part, and their masks."""
    index: list[int]  # test images with a mask (defects) or none needed (normal images)
    masks: np.ndarray  # bool [len(index), size, size]: defect pixels (all False for normal images)
    folder: Path  # where the masks were read
    n_masks: int  # how many masks were read


def load_masks(root: str | os.PathLike[str], paths: Sequence[str | os.PathLike[str]], labels: Sequence[int],
               image_size: int) -> PixelTruth | None:
    """The masks of `mask_files` at `image_size`, read before any training so that a bad one costs seconds: a
    pixel is a defect pixel where any part of its area is one in the mask (`defect_pixels`), so a scratch thinner
    than a pixel at that size is not lost; an unreadable mask is left out like a missing one, with a warning."""
    found = mask_files(root, paths, labels)
    if found is None:
        return None
    folder, files = found
    index, masks, unreadable, blank, contradicting, misshapen = [], [], [], [], [], []
    for i, (path, label, image) in enumerate(zip(files, labels, paths, strict=True)):
        if not label:  # a normal image: no defect pixel, whatever a mask of it says (said where it marks some)
            if path is not None and (marked := _read_defects(path)) is not None and marked.any():
                contradicting.append(str(image))
            index.append(i)
            masks.append(np.zeros((image_size, image_size), dtype=bool))
            continue
        if path is None:
            continue
        defect = _read_defects(path)
        if defect is None:
            unreadable.append(path)
            continue
        shown = upright_size(image)
        if not _same_shape(defect.shape[::-1], shown):
            misshapen.append(f"{image} ({_size_text(shown)}, its mask {_size_text(defect.shape[::-1])})")
            continue
        if not defect.any():
            blank.append(str(image))
        # the share of each output pixel's area that is defect, in floats (8 bits would round a speck to 0)
        coverage = Image.fromarray(defect.astype(np.float32), mode="F").resize((image_size, image_size),
                                                                               Image.Resampling.BOX)
        index.append(i)
        masks.append(np.asarray(coverage) > 0)
    if unreadable:
        log.warning("%d masks cannot be read; the pixel metrics leave their images out: %s", len(unreadable),
                    few_names(unreadable, whole=True))
    if misshapen:
        log.warning("%s not the shape of their image (turned, cropped or of another image?), so their defects "
                    "would land elsewhere; the pixel metrics leave those images out: %s",
                    f"{len(misshapen)} masks are" if len(misshapen) > 1 else "1 mask is",
                    few_names(misshapen, whole=True))
    used = sum(path is not None for path, label in zip(files, labels) if label) - len(unreadable) - len(misshapen)
    if blank and len(blank) < used:
        log.warning("%d abnormal test images have a mask that marks no defect pixel (a broken mask?); the pixel "
                    "metrics count all their pixels as normal: %s", len(blank), few_names(blank, whole=True))
    if contradicting:
        log.warning("%d normal test images have a mask in %s that marks defect pixels; they are scored as normal, "
                    "every pixel normal (is the image in the wrong folder?): %s", len(contradicting), folder,
                    few_names(contradicting, whole=True))
    return PixelTruth(index, np.stack(masks) if masks else np.zeros((0, image_size, image_size), bool), folder,
                      used)


ASPECT_TOLERANCE = 0.02  # masks saved at another resolution round their sides: a relative difference of the
# width-to-height ratios up to this is the same shape


def _same_shape(mask: tuple[int, int], image: tuple[int, int] | None) -> bool:
    """Whether a mask of (width, height) `mask` lies on an image of `image` once both are resized to the model's
    square (a mask at another resolution of the same shape does; a turned or cropped one does not). An image whose
    size cannot be read is given the benefit of the doubt: its reading fails, and says so, elsewhere."""
    if image is None:
        return True
    return abs(mask[0] * image[1] - mask[1] * image[0]) <= ASPECT_TOLERANCE * mask[1] * image[0]


def _size_text(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}"


def _read_defects(path: Path) -> np.ndarray | None:
    """A mask file's defect pixels (`defect_pixels`); None where it cannot be read."""
    try:
        with Image.open(path) as img:
            return defect_pixels(img)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None


def _say_copies(images: torch.Tensor, names: Sequence[str], labels: Sequence[int]) -> None:
    """Warn about test images that are copies of others in the same test set (the same pixels at the model's size):
    each counts again in the metrics, and a copy under the other label contradicts itself."""
    copies = find_copies(images)
    if not copies:
        return
    both = [(a, b) for a, b in copies if labels[a] != labels[b]]
    log.warning("%s of another in the test set (the same pixels at the model's size), counted again in the "
                "metrics%s: %s", f"{len(copies)} test images are copies" if len(copies) > 1 else "1 test image is a copy",
                f"; {len(both)} of them under the other label (normal and abnormal at once)" if both else "",
                ", ".join(f"{names[b]} = {names[a]}" for a, b in (both or copies)[:3])
                + (" ..." if len(both or copies) > 3 else ""))


def defect_pixels(mask: Image.Image) -> np.ndarray:
    """Where a mask image marks a defect: any non-zero value in any channel (255 or 1, white or a colour; a
    palette's colours, not its indices), turned upright by its EXIF tag as images are, and laid on black where it
    is transparent (as images are: what a viewer shows)."""
    mask = ImageOps.exif_transpose(mask)
    if mask.mode in ("1", "L", "I", "I;16", "I;16B", "I;16L", "F"):
        return np.asarray(mask) != 0
    return np.asarray(on_black(mask).convert("RGB")).any(axis=-1)


def load_labelled_folder(
    root: str | os.PathLike[str], image_size: int, in_channels: int, progress: bool = False,
    bit_depth: int | None = None, trained_on: FileForm | None = None,
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Load a labelled folder: images uint8 [N, C, H, W], labels [N], and the kept paths (images wider than
    8 bits scaled by `bit_depth`, a detector's: see `read_image_files`)."""
    paths, labels = labelled_files(root)
    label_of = {str(p): y for p, y in zip(paths, labels, strict=True)}
    images, kept = load_image_files(paths, image_size, in_channels, progress=progress, bit_depth=bit_depth,
                                    trained_on=trained_on)
    labels_kept = [label_of[p] for p in kept]
    _say_copies(images, kept, labels_kept)
    for label, kind in ((0, "normal"), (1, "abnormal")):
        if label not in labels_kept:  # every file of one kind unreadable: the metrics would be undefined or one-sided
            raise DataError(f"none of the {labels.count(label)} {kind} images in {root} could be read (the warnings "
                            "above say why): a test needs both normal and abnormal images")
    return images, torch.tensor(labels_kept), kept
