"""Labelled image sets and the class splits every protocol is built from.

A labelled set is CIFAR-10, a MedMNIST-style `.npz`, or a folder with one subfolder per class. From it:

- `class_split`: the abnormal classes against every other class (leave-one-class-out when there is
  one abnormal class): train on the normal classes' training images; test on their test images plus
  all images of the abnormal classes (their training images too, never trained on), as the paper's
  CIFAR-10 protocol does.
- `validation_split`: the same with the abnormal classes removed from the data before anything else,
  and one of the remaining classes held out as a pseudo-anomaly, so that settings can be chosen on a
  task like the real one without ever seeing the class they will be tested on.
"""

from __future__ import annotations

import hashlib
import logging
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..errors import PACKAGE_LOGGER, DataError
from ..files import few_names, file_digest, load_torch_checked, save_torch_atomic
from .images import (check_unit_floats, is_image_name, list_image_files, find_copies, narrowest_bit_depth,
                     read_image_files, resize_uint8)

log = logging.getLogger(PACKAGE_LOGGER)

NPZ_KEYS = ("train_images", "train_labels", "test_images", "test_labels")
FOLDER_TEST_SHARE = 0.2  # a folder per class without train/ and test/: this share of each class is test
JOIN = "+"  # several abnormal classes in one cell name: "cat+dog"


@dataclass
class LabelledImages:
    """Images as uint8 [N, C, H, W] with int64 labels indexing `classes`, in a train and a test part."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    classes: tuple[str, ...]
    name: str = "data"
    fingerprint: str = ""  # identifies the file(s) the set came from; part of a benchmark cell's key

    def class_index(self, name: str) -> int:
        """Index of a class by name; a one-line error that lists the names otherwise."""
        if name not in self.classes:
            raise DataError(f"unknown label {name!r} in {self.name}; its labels are {', '.join(self.classes)}")
        return self.classes.index(name)

    def class_names(self, text: str) -> list[str]:
        """'a+b' -> ['a', 'b'] as this set names them (CIFAR-10 also takes its aliases)."""
        return [self.classes[self.class_index(part.strip())] for part in text.split(JOIN)]

    def without(self, names: Sequence[str]) -> "LabelledImages":
        """A copy holding no image of the named classes (their labels stay reserved in `classes`)."""
        drop = torch.tensor([self.class_index(n) for n in names])
        keep_train = ~torch.isin(self.train_labels, drop)
        keep_test = ~torch.isin(self.test_labels, drop)
        return LabelledImages(self.train_images[keep_train], self.train_labels[keep_train],
                              self.test_images[keep_test], self.test_labels[keep_test], self.classes, self.name,
                              self.fingerprint)

    def present(self) -> list[str]:
        """Classes with at least one training image, in label order."""
        return [self.classes[i] for i in sorted(set(self.train_labels.tolist()))]

    def with_images(self) -> list[str]:
        """Classes with at least one image (training or test), in label order."""
        return [self.classes[i] for i in sorted(set(self.train_labels.tolist()) | set(self.test_labels.tolist()))]


@dataclass
class ClassSplit:
    """One task: train on normal images; a labelled test set (label 1 = abnormal), in the reference's
    order (normal test images, then abnormal training images, then abnormal test images)."""

    abnormal_class: str
    train: torch.Tensor
    test: torch.Tensor
    test_labels: torch.Tensor


def check_task(data: LabelledImages, abnormal: Sequence[str]) -> None:
    """A one-line DataError unless every named class exists and has images, and some normal class has
    training images; cheap (labels only), so a sweep can check every task before it trains."""
    bad = torch.tensor([data.class_index(n) for n in abnormal])
    for n, c in zip(abnormal, bad.tolist()):
        if not bool((data.train_labels == c).any() or (data.test_labels == c).any()):
            raise DataError(f"class {n!r} of {data.name} has no images")
    if not bool((~torch.isin(data.train_labels, bad)).any()):
        raise DataError(f"no normal training images in {data.name} when {JOIN.join(abnormal)} is abnormal")
    trained = set(data.train_labels.tolist())
    unseen = [data.classes[c] for c in sorted(set(data.test_labels.tolist()) - trained - set(bad.tolist()))]
    if unseen:  # normal in this task, never learnt: its test images would be scored as normal
        raise DataError(f"class {unseen[0]!r} of {data.name} has test images but no training image, so it cannot be "
                        f"normal when {JOIN.join(abnormal)} is abnormal: make it abnormal too (--normal-labels) or give "
                        "it training images")


def class_split(data: LabelledImages, abnormal: Sequence[str], train_fraction: float = 1.0,
                test_fraction: float = 1.0, seed: int = 0) -> ClassSplit:
    """The named classes are abnormal, every other class present is normal.

    Fractions below 1 take stratified subsets (per class and per part), keeping the test order.
    """
    for name, frac in (("train_fraction", train_fraction), ("test_fraction", test_fraction)):
        if not 0.0 < frac <= 1.0:
            raise DataError(f"{name} must be in (0, 1], got {frac}")
    check_task(data, abnormal)
    bad = torch.tensor([data.class_index(n) for n in abnormal])
    normal_train_mask = ~torch.isin(data.train_labels, bad)
    rng = np.random.default_rng(seed)
    train_idx = _stratified(data.train_labels, normal_train_mask, train_fraction, rng)
    normal_test = _stratified(data.test_labels, ~torch.isin(data.test_labels, bad), test_fraction, rng)
    abnormal_train = _stratified(data.train_labels, torch.isin(data.train_labels, bad), test_fraction, rng)
    abnormal_test = _stratified(data.test_labels, torch.isin(data.test_labels, bad), test_fraction, rng)
    test = torch.cat([data.test_images[normal_test], data.train_images[abnormal_train],
                      data.test_images[abnormal_test]])
    labels = torch.cat([torch.zeros(len(normal_test)), torch.ones(len(abnormal_train) + len(abnormal_test))]).long()
    return ClassSplit(JOIN.join(abnormal), data.train_images[train_idx], test, labels)


def pseudo_anomaly(data: LabelledImages, excluded: Sequence[str], seed: int = 0) -> str:
    """The class held out as a pseudo-anomaly when `excluded` is the real one: among the other classes
    in label order, the one after the (first) excluded class, moved on by `seed` (so over classes each
    one serves once, and over seeds the choice rotates)."""
    first = data.class_index(excluded[0])
    others = [c for c in data.present() if c not in excluded]
    if len(others) < 2:
        raise DataError(f"the validation protocol needs at least two normal classes besides "
                        f"{JOIN.join(excluded)}; {data.name} has {len(others)} (leave validate out of --protocol, "
                        "e.g. --protocol honest)")
    after = [c for c in others if data.class_index(c) > first] + [c for c in others if data.class_index(c) < first]
    return after[seed % len(after)]


def validation_split(data: LabelledImages, test_classes: Sequence[str], train_fraction: float = 1.0,
                     test_fraction: float = 1.0, seed: int = 0) -> ClassSplit:
    """Remove the test classes' images, hold out a pseudo-anomaly class, split as `class_split` does."""
    kept = data.without(test_classes)
    return class_split(kept, [pseudo_anomaly(data, test_classes, seed)], train_fraction, test_fraction, seed)


def _share(count: int, fraction: float) -> int:
    """How many of a class's `count` images a stratified `fraction` keeps (at least one)."""
    return count if fraction >= 1.0 else max(1, int(round(count * fraction)))


def training_count(data: LabelledImages, abnormal: Sequence[str], train_fraction: float = 1.0) -> int:
    """How many training images `class_split` keeps with these classes abnormal, from the label counts alone
    (no image is copied: a check of every task of a full-size sweep costs nothing)."""
    bad = {data.class_index(n) for n in abnormal}
    counts = torch.bincount(data.train_labels, minlength=len(data.classes)).tolist()
    return sum(_share(c, train_fraction) for i, c in enumerate(counts) if c and i not in bad)


def _stratified(labels: torch.Tensor, mask: torch.Tensor, fraction: float, rng: np.random.Generator) -> torch.Tensor:
    """Indices where `mask` holds; with fraction < 1, a random share of each class, in index order."""
    picked = [np.zeros(0, dtype=np.int64)]
    for cls in torch.unique(labels[mask]).tolist():
        idx = torch.nonzero(mask & (labels == cls)).flatten().numpy()
        if fraction < 1.0:
            idx = np.sort(rng.choice(idx, _share(len(idx), fraction), replace=False))
        picked.append(idx)
    return torch.from_numpy(np.sort(np.concatenate(picked)))


def warn_copies(images: torch.Tensor, names: Sequence[str], what: str) -> int:
    """Warn when images are exact copies of one another (the same pixels as read); return how many copies there are.

    A benchmark splits each class at random, so one copy can train and another be tested, where a detector finds it
    by memory (a nearest-neighbour distance of 0), not by detection: the number is inflated. Copies under two labels
    are label noise. Hashing costs under a second for 60,000 small images."""
    if len(images) != len(names):
        raise ValueError(f"{len(images)} images but {len(names)} names")
    copies = [f"{names[b]} = {names[a]}" for a, b in find_copies(images)]
    if copies:
        many = len(copies) > 1
        log.warning("%s: %d image%s %s exact cop%s of another (the same pixels as read; e.g. %s): a split can train on "
                    "one copy and test the other, which a detector then finds by memory, not by detection; remove the "
                    "copies for an honest number", what, len(copies), "s" if many else "", "are" if many else "is an",
                    "ies" if many else "y", "; ".join(copies[:3]) + (" ..." if len(copies) > 3 else ""))
    return len(copies)


# --- loading a user's labelled data -----------------------------------------------------------

def load_labelled(path: str | os.PathLike[str], image_size: int = 32, in_channels: int | None = None,
                  progress: bool = False) -> LabelledImages:
    """An `.npz` (see `load_npz`) or a folder with a subfolder per class (see `load_class_folders`), at
    `in_channels` (None: an .npz's own, a folder's images as RGB)."""
    path = Path(path)
    if path.is_file() and path.suffix == ".npz":
        return load_npz(path, image_size, in_channels)
    if path.is_dir():
        return load_class_folders(path, image_size, in_channels or 3, progress)
    if not path.exists():
        raise DataError(f"not found: {path}")
    raise DataError(f"{path}: expected an .npz file or a folder with one subfolder per class")


def load_npz(path: str | os.PathLike[str], image_size: int | None = None,
             in_channels: int | None = None) -> LabelledImages:
    """A MedMNIST-style archive: `train_images`, `train_labels`, `test_images`, `test_labels` (`val_*`
    may be there and is not used: thresholds come from held-out training normals in every protocol).
    Images uint8 (N, H, W) grayscale or (N, H, W, C) with C 1 or 3, floats in [0, 1], or wider non-negative
    integers (10- to 16-bit scans: read at the depth of the training images, see `_npz_bit_depth`); labels
    (N,) or (N, 1) integers.
    Optional `label_names` (one string per label value) names the classes; otherwise they are the
    label values as text. With `image_size`, images are resized to it (square) as they are read; with
    `in_channels`, converted to it as image files are (RGB to Pillow's L luma, grayscale repeated)."""
    path = Path(path)
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise DataError(f"cannot read {path} as an .npz archive: {str(err).splitlines()[0] if str(err) else err!r}") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise DataError(f"{path} is a single array, not an .npz archive of named arrays (needs {', '.join(NPZ_KEYS)})")
    with archive:
        missing = [k for k in NPZ_KEYS if k not in archive.files]
        if missing:
            raise DataError(f"{path} lacks {', '.join(missing)}; it has {', '.join(archive.files) or 'no arrays'} "
                            f"(needs {', '.join(NPZ_KEYS)})")
        try:
            parts = {k: archive[k] for k in NPZ_KEYS}
            names = archive["label_names"] if "label_names" in archive.files else None
        except (OSError, ValueError, zipfile.BadZipFile) as err:
            raise DataError(f"{path}: an array cannot be read ({str(err).splitlines()[0] if str(err) else err!r}; "
                            "object arrays are refused: save numbers and strings only)") from None
    images = {}
    labels = {}
    depth = _npz_bit_depth(parts["train_images"])
    if depth is not None:
        log.info("%s: train_images are %s integers up to %d, read as %d-bit data (divided by %d; test_images alike)",
                 path.name, parts["train_images"].dtype, int(parts["train_images"].max()), depth, 2 ** depth - 1)
    for part in ("train", "test"):
        images[part] = _npz_images(parts[f"{part}_images"], f"{path.name}: {part}_images", depth)
        if in_channels is not None:  # converted, then resized, as image files are
            images[part] = _as_channels(images[part], in_channels)
        labels[part] = _npz_labels(parts[f"{part}_labels"], len(images[part]), f"{path.name}: {part}_labels")
    if image_size is not None:
        images = {part: t if t.shape[-1] == t.shape[-2] == image_size else resize_uint8(t, image_size)
                  for part, t in images.items()}

    if images["train"].shape[1:] != images["test"].shape[1:]:
        raise DataError(f"{path.name}: train images are {tuple(images['train'].shape[1:])} but test images "
                        f"{tuple(images['test'].shape[1:])} (C, H, W)")
    warn_copies(torch.cat([images["train"], images["test"]]),
                [f"{part}_images[{i}]" for part in ("train", "test") for i in range(len(images[part]))], path.name)
    values = sorted(set(labels["train"].tolist()) | set(labels["test"].tolist()))
    if names is not None:
        names = [str(n) for n in np.asarray(names).reshape(-1)]
        if len(names) <= values[-1]:
            raise DataError(f"{path.name}: label_names has {len(names)} names but the labels go up to {values[-1]}")
    else:
        names = [str(v) for v in range(values[-1] + 1)]
    _check_names(names, path.name)
    return LabelledImages(images["train"], labels["train"], images["test"], labels["test"], tuple(names),
                          path.stem, f"{path.name}:{_sha256(path)}")


def _npz_bit_depth(train: np.ndarray) -> int | None:
    """The depth wide integer images are read at: the narrowest of `BIT_DEPTHS` that holds the training
    images' largest value, as for image files (12-bit scans stored as uint16 fill 0..255), and the test images
    are read at the same depth, so a darker test image stays darker. None: not integers above 255."""
    if train.dtype.kind not in "ui" or not train.size or int(train.min()) < 0 or int(train.max()) <= 255:
        return None
    return narrowest_bit_depth(int(train.max()))


def _npz_images(array: np.ndarray, what: str, bit_depth: int | None = None) -> torch.Tensor:
    if array.ndim == 3:
        array = array[..., None]
    if array.ndim != 4 or array.shape[-1] not in (1, 3) or len(array) == 0:
        raise DataError(f"{what} has shape {array.shape}; expected (N, H, W) or (N, H, W, C) with C 1 or 3, N > 0")
    if array.dtype == np.bool_:  # masks: True is white, as Pillow reads a 1-bit image and the detector a bool array
        array = array.astype(np.uint8) * 255
    if array.dtype != np.uint8:
        if array.dtype.kind == "f":  # one scale for every image, as float arrays are read: 0..1
            check_unit_floats(array, f"{what}: float images", "clip them, or divide 0..255 data by 255")
            array = np.round(array * 255.0)
        elif bit_depth is not None and array.dtype.kind in "ui" and array.size and int(array.min()) >= 0:
            top = 2 ** bit_depth - 1
            above = int((array.reshape(len(array), -1) > top).any(axis=1).sum())
            if above:
                log.warning("%s: %d images hold values above the %d-bit range of train_images; they are clipped to "
                            "it", what, above, bit_depth)
            array = np.round(np.minimum(array, top) / top * 255.0)
        if array.size and (float(array.min()) < 0 or float(array.max()) > 255):
            hint = ""
            if array.dtype.kind in "ui" and float(array.min()) >= 0:  # wider than the training images
                hint = (f"; train_images are read as 8-bit data (0..255, or floats in [0, 1]): scale the train and "
                        f"test arrays alike, e.g. x / {2 ** narrowest_bit_depth(float(array.max())) - 1} as floats "
                        "in [0, 1]")
            raise DataError(f"{what} holds values outside [0, 255] (dtype {array.dtype}, up to "
                            f"{float(array.max()):g}){hint}")
        array = array.astype(np.uint8)
    return torch.from_numpy(np.ascontiguousarray(array.transpose(0, 3, 1, 2)))


def _as_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    """uint8 [N, C, H, W] at `channels`: RGB to luma by Pillow's L weights (ITU-R 601-2), or grayscale repeated."""
    if images.shape[1] == channels:
        return images
    if channels == 3:
        return images.expand(-1, 3, -1, -1).contiguous()
    weights = torch.tensor([19595, 38470, 7471], dtype=torch.int64).view(1, 3, 1, 1)  # Pillow's own, in 1/65536
    return ((images.to(torch.int64) * weights).sum(1, keepdim=True).add(0x8000) >> 16).to(torch.uint8)


def _npz_labels(array: np.ndarray, n: int, what: str) -> torch.Tensor:
    if array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim != 1:
        raise DataError(f"{what} has shape {array.shape}; expected (N,) or (N, 1) (one class per image)")
    if len(array) != n:
        raise DataError(f"{what} has {len(array)} labels for {n} images")
    if array.dtype.kind not in "iu" or (len(array) and array.min() < 0):
        raise DataError(f"{what} must hold non-negative integers, got dtype {array.dtype}")
    return torch.from_numpy(array.astype(np.int64))


SPLIT_NAMES = ("train", "test", "val", "valid", "validation")  # folder names of a data set's parts, never classes


def load_class_folders(root: str | os.PathLike[str], image_size: int = 32, in_channels: int = 3,
                       progress: bool = False) -> LabelledImages:
    """`root/<class>/` image folders (then a fixed 20% of each class, seed 0, is the test part), or
    `root/train/<class>/` and `root/test/<class>/`. Images are converted to `in_channels` and
    `image_size` as they are read."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"not found: {root}")
    split = {d.name.lower(): d for d in root.iterdir() if d.is_dir() and d.name.lower() in SPLIT_NAMES[:2]}
    split_given = len(split) == 2
    bases = {"train": split["train"], "test": split["test"]} if split_given else {"all": root}  # train read first
    classes = {part: sorted(d.name for d in base.iterdir() if d.is_dir() and not d.name.startswith("."))
               for part, base in bases.items()}
    names = sorted({n for found in classes.values() for n in found})
    if not names:
        raise DataError(f"{root} has no class subfolders (expected {root}/<class>/ or {root}/train/<class>/)")
    parts_named = [n for n in names if n.lower() in SPLIT_NAMES and not split_given  # a part holds class folders
                   and any(d.is_dir() and not d.name.startswith(".") for d in (root / n).iterdir())]
    if parts_named:  # train/ + val/, or train/ alone: parts of a data set, not classes
        raise DataError(f"{root} has {', '.join(f'{n}/' for n in parts_named)}, which name parts of a data set, not "
                        f"classes: give {root}/train/<class>/ with {root}/test/<class>/ (another part, such as val/, "
                        "is not read: thresholds come from held-out training images), or one folder per class")
    if split_given:  # a defect class seen only at test time (MVTec AD's layout) is one: abnormal in every task
        test_only = [n for n in classes["test"] if n not in classes["train"]]  # (check_task)
        typo = next((n for n in test_only if n.lower() in {t.lower() for t in classes["train"]}), None)
        if typo is not None:
            raise DataError(f"{bases['test']}/{typo} has no class folder of that name in {bases['train']} "
                            f"(it has {', '.join(classes['train'])}; names must match exactly)")
        if test_only:
            log.info("%s: class%s %s only in %s (not in %s)", root, "es" if len(test_only) > 1 else "",
                     ", ".join(test_only), bases["test"].name, bases["train"].name)
    _check_names(names, str(root))
    for base in dict.fromkeys([root, *bases.values()]):  # each folder once, in a fixed order
        loose = sorted(p for p in base.iterdir() if is_image_name(p.name) and p.is_file())
        if loose:  # e.g. images copied next to the class folders instead of into one
            log.warning("%s: %d image file%s directly in the folder (%s) %s not read: only the class subfolders "
                        "are (%s/<class>/)", base, len(loose), "s" if len(loose) > 1 else "",
                        few_names([p.name for p in loose]), "are" if len(loose) > 1 else "is", base)
    parts: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    listing = []
    depth = None  # images wider than 8 bits: the test part is read at the training part's depth
    grouping_said: set[str] = set()  # class folders said to group subfolders (in train/ or test/: once)
    for part, base in bases.items():
        files: list[Path] = []
        labels: list[int] = []
        for i, name in enumerate(names):
            found = list_image_files(base / name) if (base / name).is_dir() else []
            if name not in grouping_said:
                grouping_said.update([name] if _say_if_grouping(base / name, found) else [])
            files += found
            labels += [i] * len(found)
        if not files:
            raise DataError(f"{base} holds no images in its class subfolders")
        loaded = read_image_files(files, image_size, in_channels, progress=progress, bit_depth=depth)
        images, kept, read_depth = loaded.images, loaded.kept, loaded.bit_depth
        depth = depth or read_depth
        label_of = {str(p): y for p, y in zip(files, labels, strict=True)}
        parts[part] = (images, torch.tensor([label_of[p] for p in kept], dtype=torch.int64))
        listing += [os.path.relpath(p, root) for p in kept]
    warn_copies(torch.cat([images for images, _ in parts.values()]), listing, str(root))
    if not split_given:
        images, labels = parts.pop("all")
        rng = np.random.default_rng(0)
        test = np.zeros(len(labels), dtype=bool)
        for c in range(len(names)):
            idx = np.flatnonzero(labels.numpy() == c)
            test[rng.choice(idx, int(round(len(idx) * FOLDER_TEST_SHARE)), replace=False)] = True
        mask = torch.from_numpy(test)
        parts = {"train": (images[~mask], labels[~mask]), "test": (images[mask], labels[mask])}
    for c, name in enumerate(names):
        if not any(bool((parts[p][1] == c).any()) for p in parts):
            raise DataError(f"class folder {name!r} in {root} holds no readable images")
    hasher = hashlib.sha256("\n".join(sorted(listing)).encode("utf-8", "surrogateescape"))
    for part in sorted(parts):  # the pixels too: a file replaced under its name is other data
        for tensor in parts[part]:
            hasher.update(memoryview(tensor.contiguous().numpy()).cast("B"))
    digest = hasher.hexdigest()[:12]
    return LabelledImages(*parts["train"], *parts["test"], tuple(names), root.name,
                          f"{root.name}:{len(listing)} files:{digest}:{image_size}px:{in_channels}ch")


def _say_if_grouping(folder: Path, files: Sequence[Path]) -> bool:
    """A class folder whose images all lie in several subfolders (shapes/circle/, shapes/square/) may group classes
    that were meant apart: they are read as one class, with a warning (returns whether it was said)."""
    below = sorted({f.relative_to(folder).parts[0] for f in files if len(f.relative_to(folder).parts) > 1})
    grouping = len(below) > 1 and all(len(f.relative_to(folder).parts) > 1 for f in files)
    if grouping:
        log.warning("class %r is read from its %d subfolders (%s) as one class; if they are classes, give each its own "
                    "folder beside the others", folder.name, len(below), few_names(below))
    return grouping


DECODED_FORMAT = "skipganomaly-decoded-images"


def save_decoded(data: LabelledImages, path: Path) -> None:
    """Write decoded images and labels (tensors and plain values only), so that processes that need the
    same set read one file instead of decoding a folder of images again, and warn again about its bad files."""
    save_torch_atomic(path, {"format": DECODED_FORMAT, "format_version": 1, "train_images": data.train_images,
                             "train_labels": data.train_labels, "test_images": data.test_images,
                             "test_labels": data.test_labels, "classes": list(data.classes), "name": data.name,
                             "fingerprint": data.fingerprint})


def load_decoded(path: Path) -> LabelledImages:
    """The set `save_decoded` wrote."""
    saved = load_torch_checked(Path(path), DECODED_FORMAT, 1, "decoded image set", "decoded image set")
    return LabelledImages(saved["train_images"], saved["train_labels"], saved["test_images"], saved["test_labels"],
                          tuple(saved["classes"]), saved["name"], saved["fingerprint"])


UNUSABLE_IN_NAMES = (JOIN, ",", "/", "\\")  # JOIN joins classes, "," lists them in flags, the rest split paths


def _check_names(names: Sequence[str], where: str) -> None:
    repeated = sorted({n for n in names if list(names).count(n) > 1})
    if repeated:
        raise DataError(f"{where}: class name {repeated[0]!r} is given to more than one label; each class needs its "
                        "own name (the cells and the table are keyed by it)")
    bad = [n for n in names if not n or len(n) > 60 or any(c in n for c in UNUSABLE_IN_NAMES)]
    if bad:
        raise DataError(f"{where}: class name {bad[0]!r} cannot be used (empty, longer than 60 characters, or "
                        f"containing one of {' '.join(UNUSABLE_IN_NAMES)}, which join classes in cell and file "
                        "names and flags)")


def _sha256(path: Path) -> str:
    return file_digest(path, "sha256").hexdigest()[:12]
