"""CIFAR-10: checksums, safe download/extraction, and the paper's split for every class."""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from skipganomaly.data import cifar10
from skipganomaly.data.cifar10 import CLASSES, Cifar10, leave_one_class_out, load_cifar10
from skipganomaly.errors import DataError
from tests.conftest import find_real_cifar10

REAL = find_real_cifar10()
# Skipped without the real data, except in CI (CI=true), which has it: there a missing copy fails the
# tests (the `real` fixture cannot load it) instead of passing them silently.
needs_real = pytest.mark.skipif(not (REAL / "cifar-10-batches-py").is_dir() and os.environ.get("CI") != "true",
                                reason=f"real CIFAR-10 not found at {REAL}/cifar-10-batches-py")


@pytest.fixture(scope="module")
def real() -> Cifar10:
    return load_cifar10(REAL)


@needs_real
def test_real_files_pass_their_checksums(real: Cifar10) -> None:
    assert real.train_images.shape == (50_000, 3, 32, 32) and real.train_images.dtype == torch.uint8
    assert real.test_images.shape == (10_000, 3, 32, 32)
    assert torch.bincount(real.train_labels).tolist() == [5_000] * 10


@needs_real
@pytest.mark.parametrize("cls", CLASSES)
def test_paper_split_counts_and_no_leak(real: Cifar10, cls: str) -> None:
    split = leave_one_class_out(real, cls)
    assert len(split.train) == 45_000
    assert len(split.test) == 15_000 and int(split.test_labels.sum()) == 6_000
    # Reference order: 9,000 normal test images first, then the 6,000 abnormal ones.
    assert split.test_labels[:9_000].sum() == 0 and split.test_labels[9_000:].all()
    train_keys = {bytes(x.numpy()) for x in split.train}
    assert not any(bytes(x.numpy()) in train_keys for x in split.test)


@needs_real
def test_fractions_are_stratified(real: Cifar10) -> None:
    split = leave_one_class_out(real, "ship", train_fraction=0.1, test_fraction=0.1, seed=3)
    assert len(split.train) == 4_500 and len(split.test) == 1_500 and int(split.test_labels.sum()) == 600


def test_unknown_class_and_bad_fraction_are_data_errors() -> None:
    data = _fake_dataset()
    with pytest.raises(DataError, match="unknown CIFAR-10 class"):
        leave_one_class_out(data, "unicorn")
    with pytest.raises(DataError, match="train_fraction"):
        leave_one_class_out(data, "ship", train_fraction=0.0)
    assert leave_one_class_out(data, "car").abnormal_class == "automobile"


def _numbered_dataset(train_per_class: int = 20, test_per_class: int = 10) -> Cifar10:
    """A fake CIFAR-10 whose every image says where it came from: pixel 0 = part (0 train, 1 test),
    pixel 1 = class, pixels 2-3 = index within that class and part (little-endian)."""
    def part(tag: int, per_class: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.arange(10).repeat(per_class)  # interleaved, as the real batches are not sorted
        images = torch.zeros(len(labels), 3, 32, 32, dtype=torch.uint8)
        flat = images.view(len(labels), -1)
        flat[:, 0], flat[:, 1] = tag, labels.to(torch.uint8)
        within = torch.arange(len(labels)) // 10
        flat[:, 2], flat[:, 3] = (within % 256).to(torch.uint8), (within // 256).to(torch.uint8)
        return images, labels
    return Cifar10(*part(0, train_per_class), *part(1, test_per_class))


def _origin(images: torch.Tensor) -> list[tuple[int, int, int]]:
    flat = images.reshape(len(images), -1).long()
    return list(zip(flat[:, 0].tolist(), flat[:, 1].tolist(), (flat[:, 2] + 256 * flat[:, 3]).tolist()))


@pytest.mark.parametrize("cls", ["airplane", "ship"])
def test_split_order_and_content_on_a_fake_cifar(cls: str) -> None:
    """Without the real files: train = every training image of the nine other classes; test = their
    test images, then the abnormal class's training images, then its test images (spec section E)."""
    data = _numbered_dataset()
    c = CLASSES.index(cls)
    split = leave_one_class_out(data, cls)
    train = _origin(split.train)
    assert sorted(train) == sorted((0, k, i) for k in range(10) if k != c for i in range(20))
    test = _origin(split.test)
    normal_test = [(1, k, i) for i in range(10) for k in range(10) if k != c]  # in the file's order
    assert test == normal_test + [(0, c, i) for i in range(20)] + [(1, c, i) for i in range(10)]
    assert split.test_labels.tolist() == [0] * 90 + [1] * 30


def test_fractions_are_stratified_on_a_fake_cifar() -> None:
    data = _numbered_dataset(train_per_class=40, test_per_class=20)
    split = leave_one_class_out(data, "ship", train_fraction=0.25, test_fraction=0.5, seed=3)
    ship = CLASSES.index("ship")
    train = _origin(split.train)
    assert all(sum(1 for p, k, _ in train if k == cls) == 10 for cls in range(10) if cls != ship)
    assert not any(k == ship for _, k, _ in train)
    test = _origin(split.test)
    assert [sum(1 for p, k, _ in test[:90] if k == cls) for cls in range(10)] == [10] * 8 + [0, 10]
    assert test[90:110] == sorted(test[90:110]) and {(p, k) for p, k, _ in test[90:110]} == {(0, ship)}
    assert {(p, k) for p, k, _ in test[110:]} == {(1, ship)} and len(test) == 120
    assert split.test_labels.tolist() == [0] * 90 + [1] * 30
    other = leave_one_class_out(data, "ship", train_fraction=0.25, test_fraction=0.5, seed=4)
    assert _origin(other.train) != train  # the seed picks the subset


def _fake_dataset(per_class: int = 4) -> Cifar10:
    labels = torch.arange(10).repeat_interleave(per_class)
    images = torch.randint(0, 256, (len(labels), 3, 32, 32), dtype=torch.uint8)
    return Cifar10(images, labels, images[: 10 * 2].clone(), labels[: 10 * 2].clone())


def _write_fake_batches(folder: Path) -> dict[str, str]:
    folder.mkdir(parents=True)
    sums = {}
    for name in cifar10.MD5:
        if name == "batches.meta":
            payload = {"label_names": list(CLASSES)}
        else:
            payload = {"data": np.zeros((10, 3072), dtype=np.uint8), "labels": list(range(10))}
        (folder / name).write_bytes(pickle.dumps(payload))
        sums[name] = hashlib.md5((folder / name).read_bytes()).hexdigest()
    return sums


def test_checksum_mismatch_names_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sums = _write_fake_batches(tmp_path / "cifar-10-batches-py")
    monkeypatch.setattr(cifar10, "MD5", sums)
    assert len(load_cifar10(tmp_path).train_images) == 50
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"tampered")
    with pytest.raises(DataError, match="data_batch_3 fails its MD5 check"):
        load_cifar10(tmp_path)
    with pytest.raises(DataError, match="CIFAR-10 file missing"):
        load_cifar10(tmp_path / "elsewhere")


def _tarball(path: Path, members: dict[str, bytes]) -> str:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_download_checks_md5_and_extracts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = tmp_path / "source"
    sums = _write_fake_batches(source / "cifar-10-batches-py")
    archive = tmp_path / "served.tar.gz"
    md5 = _tarball(archive, {f"cifar-10-batches-py/{n}": (source / "cifar-10-batches-py" / n).read_bytes()
                             for n in sums})
    monkeypatch.setattr(cifar10, "MD5", sums)
    monkeypatch.setattr(cifar10, "URL", archive.as_uri())
    monkeypatch.setattr(cifar10, "ARCHIVE_MD5", md5)
    data = load_cifar10(tmp_path / "dl", download_missing=True, progress=False)
    assert len(data.test_images) == 10
    monkeypatch.setattr(cifar10, "ARCHIVE_MD5", "0" * 32)
    with pytest.raises(DataError, match="fails its MD5 check"):
        load_cifar10(tmp_path / "dl2", download_missing=True, progress=False)


def test_extraction_refuses_path_traversal(tmp_path: Path) -> None:
    archive = tmp_path / "evil.tar.gz"
    _tarball(archive, {"../escaped.txt": b"x"})
    with pytest.raises(DataError, match="unsafe archive member"):
        cifar10.safe_extract(archive, tmp_path / "dest")
    assert not (tmp_path / "escaped.txt").exists()
