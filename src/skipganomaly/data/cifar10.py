"""CIFAR-10 (python version) and the paper's leave-one-class-out split (spec section E).

Files are read from a local folder and checked against the MD5s torchvision publishes; downloading is
opt-in and goes through the same checks, so a machine without internet works with a local copy.
"""

from __future__ import annotations

import os
import pickle
import tarfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import DataError
from ..files import file_digest
from .labelled import ClassSplit, LabelledImages, class_split

NAME, TITLE = "cifar10", "CIFAR-10"  # the data set's key (in cell settings, --dataset) and its name in titles
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
# Column order of the paper's Table 1.
PAPER_ORDER = ("bird", "automobile", "truck", "ship", "cat", "deer", "frog", "horse", "airplane", "dog")
ALIASES = {"car": "automobile", "plane": "airplane"}

URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
ARCHIVE_MD5 = "c58f30108f718f92721af3b95e74349a"
FOLDER = "cifar-10-batches-py"
DEFAULT_ROOT = "data"  # where the CLI looks for FOLDER (or downloads it) unless told, relative to the current folder
MD5 = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
    "batches.meta": "5ff9c542aee3614f3951f8cda6e48888",
}


@dataclass
class Cifar10(LabelledImages):
    """All of CIFAR-10 as uint8 [N, 3, 32, 32] tensors with int64 labels."""

    classes: tuple[str, ...] = CLASSES
    name: str = NAME
    fingerprint: str = ""  # the published files, checked by MD5: nothing to add to a cell's key

    def class_index(self, name: str) -> int:
        return class_index(name)


def class_index(name: str) -> int:
    """Index of a class by name (the reference's torchvision names, or GANomaly's 'car'/'plane')."""
    key = ALIASES.get(name.lower(), name.lower())
    if key not in CLASSES:
        raise DataError(f"unknown CIFAR-10 class {name!r}; use one of {', '.join(CLASSES)}")
    return CLASSES.index(key)


def md5sum(path: Path) -> str:
    return file_digest(path, "md5").hexdigest()


def find_folder(root: str | os.PathLike[str]) -> Path:
    """Accept the batches folder itself or a folder that contains it."""
    root = Path(root)
    return root if (root / "data_batch_1").exists() or root.name == FOLDER else root / FOLDER


def verify(folder: Path) -> None:
    """Every file present and with the published MD5; otherwise a DataError naming the file."""
    for name, expected in MD5.items():
        path = folder / name
        if not path.is_file():
            raise DataError(f"CIFAR-10 file missing: {path} (give --data-dir, or --download where there is internet)")
        if md5sum(path) != expected:
            raise DataError(f"CIFAR-10 file {path} fails its MD5 check (corrupt or not the python version)")


def download(root: Path, progress: bool = True) -> Path:
    """Fetch the official archive, check its MD5, and extract it without letting paths escape `root`."""
    from ..progress import progress_bar

    root.mkdir(parents=True, exist_ok=True)
    archive = root / "cifar-10-python.tar.gz"
    if not archive.exists() or md5sum(archive) != ARCHIVE_MD5:
        partial = archive.with_suffix(".part")
        try:
            with urllib.request.urlopen(URL, timeout=60) as response, partial.open("wb") as out:
                total = int(response.headers.get("Content-Length", 0)) or None
                with progress_bar(total=total, unit="B", unit_scale=True, desc="CIFAR-10", disable=not progress) as bar:
                    for block in iter(lambda: response.read(1 << 20), b""):
                        out.write(block)
                        bar.update(len(block))
        except OSError as err:
            partial.unlink(missing_ok=True)
            raise DataError(f"cannot download CIFAR-10 from {URL}: {err}") from None
        partial.replace(archive)
        if md5sum(archive) != ARCHIVE_MD5:
            raise DataError(f"downloaded {archive} fails its MD5 check; delete it and retry")
    safe_extract(archive, root)
    return root / FOLDER


def safe_extract(archive: Path, dest: Path) -> None:
    """Extract regular files and folders only, refusing absolute paths, '..' and links."""
    dest = dest.resolve()
    with tarfile.open(archive, "r:gz") as tar:
        members = tar.getmembers()
        for member in members:
            target = (dest / member.name).resolve()
            if not (member.isfile() or member.isdir()) or not target.is_relative_to(dest):
                raise DataError(f"refusing unsafe archive member {member.name!r} in {archive}")
        tar.extractall(dest, members=members)


def load_cifar10(root: str | os.PathLike[str], download_missing: bool = False, progress: bool = True) -> Cifar10:
    """Load and verify the python version from `root` (downloading it first only if asked)."""
    folder = find_folder(root)
    if download_missing and not (folder / "data_batch_1").exists():
        folder = download(Path(root), progress)
    verify(folder)
    train_images, train_labels = _read_batches([folder / f"data_batch_{i}" for i in range(1, 6)])
    test_images, test_labels = _read_batches([folder / "test_batch"])
    return Cifar10(train_images, train_labels, test_images, test_labels)


def _read_batches(paths: list[Path]) -> tuple[torch.Tensor, torch.Tensor]:
    """Read equal-sized batch files straight into one preallocated uint8 tensor (peak: result + one file)."""
    out = flat = None
    labels: list[int] = []
    for i, path in enumerate(paths):
        # The files passed their MD5 check, so they are the published pickles of arrays and lists.
        with path.open("rb") as fh:
            batch = pickle.load(fh, encoding="latin1")
        rows = len(batch["data"])
        if out is None:
            out = torch.empty((rows * len(paths), 3, 32, 32), dtype=torch.uint8)
            flat = out.view(len(out), -1).numpy()
        flat[i * rows:(i + 1) * rows] = batch["data"]
        labels += batch["labels"]
        del batch
    assert out is not None and len(labels) == len(out), "CIFAR-10 batch files differ in size"
    return out, torch.tensor(labels, dtype=torch.int64)


def leave_one_class_out(
    data: Cifar10, abnormal: str, train_fraction: float = 1.0, test_fraction: float = 1.0, seed: int = 0
) -> ClassSplit:
    """Train on the 45,000 training images of the nine normal classes; test on their 9,000 test images
    plus all 6,000 images (5,000 train + 1,000 test) of the abnormal class (spec section E).

    Fractions below 1 take stratified subsets (per class and per part), keeping the test order.
    """
    return class_split(data, [CLASSES[class_index(abnormal)]], train_fraction, test_fraction, seed)
