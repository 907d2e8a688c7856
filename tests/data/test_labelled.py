"""Labelled image sets: .npz and class folders, class splits, and a validation split that never holds
an image of the class it is named after."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from skipganomaly.data.labelled import (LabelledImages, class_split, load_class_folders, load_labelled, load_npz,
                                        pseudo_anomaly, validation_split)
from skipganomaly.errors import DataError
from tests.conftest import write_images


def _npz(path: Path, rgb: bool = False, n_train: int = 12, n_test: int = 6, classes: int = 3,
         column_labels: bool = True, **extra: np.ndarray) -> Path:
    """Class c images are filled with the value 40 * (c + 1) plus a little noise, so they can be told apart."""
    rng = np.random.default_rng(0)
    arrays: dict[str, np.ndarray] = {}
    for part, n in (("train", n_train), ("test", n_test)):
        labels = np.arange(n) % classes
        shape = (n, 28, 28, 3) if rgb else (n, 28, 28)
        images = (40 * (labels + 1)).reshape(-1, *([1] * (len(shape) - 1))) + rng.integers(0, 5, shape)
        arrays[f"{part}_images"] = images.astype(np.uint8)
        arrays[f"{part}_labels"] = labels[:, None] if column_labels else labels
    arrays.update(extra)
    np.savez(path, **arrays)
    return path


def test_npz_grayscale_with_column_labels(tmp_path: Path) -> None:
    data = load_npz(_npz(tmp_path / "g.npz", val_images=np.zeros((2, 28, 28), np.uint8)))
    assert data.train_images.shape == (12, 1, 28, 28) and data.train_images.dtype == torch.uint8
    assert data.test_images.shape == (6, 1, 28, 28)
    assert data.classes == ("0", "1", "2") and data.name == "g"
    assert data.train_labels.tolist() == [0, 1, 2] * 4
    # Pixels stay where they were: class 1 images are about 80 everywhere.
    assert 80 <= int(data.train_images[1].min()) and int(data.train_images[1].max()) <= 84
    assert data.fingerprint.startswith("g.npz:")


def test_npz_rgb_with_label_names(tmp_path: Path) -> None:
    path = _npz(tmp_path / "c.npz", rgb=True, column_labels=False, label_names=np.array(["a", "b", "c"]))
    data = load_labelled(path)
    assert data.train_images.shape == (12, 3, 32, 32)  # load_labelled resizes to its image_size (32)
    assert data.classes == ("a", "b", "c")
    assert data.class_names("a+c") == ["a", "c"]


@pytest.mark.parametrize("change, message", [
    (lambda a: a.pop("test_labels"), "lacks test_labels"),
    (lambda a: a.update(train_labels=a["train_labels"][:5]), "has 5 labels for 12 images"),
    (lambda a: a.update(train_labels=np.ones((12, 2), np.int64)), r"expected \(N,\) or \(N, 1\)"),
    (lambda a: a.update(train_images=np.zeros((12, 28), np.uint8)), "expected"),
    (lambda a: a.update(test_images=np.zeros((6, 20, 20), np.uint8)), "train images are"),
    (lambda a: a.update(test_images=a["test_images"].astype(np.uint16) * 16),  # wider than the 8-bit train images
     r"up to 1984\); train_images are read as 8-bit data \(0\.\.255, or floats in \[0, 1\]\): scale the train and test "
     r"arrays alike, e\.g\. x / 4095"),
    (lambda a: a.update(test_images=a["test_images"].astype(np.int16) - 100), r"outside \[0, 255\] \(dtype int16, up to"),
    # floats on one scale, 0..1, in both parts: a stray 1.02 or one NaN was read as a black image
    (lambda a: a.update(train_images=a["train_images"] / 120.0), r"train_images: float images must lie in \[0, 1\]"),
    (lambda a: a.update(train_images=np.where(np.arange(28) == 3, np.nan, a["train_images"] / 255.0)),
     "and NaN or infinite values"),
])
def test_npz_errors_are_one_line(tmp_path: Path, change, message: str) -> None:  # type: ignore[no-untyped-def]
    path = _npz(tmp_path / "d.npz")
    with np.load(path) as archive:
        arrays = {k: archive[k] for k in archive.files}
    change(arrays)
    np.savez(path, **arrays)
    with pytest.raises(DataError, match=message) as err:
        load_npz(path)
    assert "\n" not in str(err.value)


def test_npz_of_12_bit_integers_is_read_at_the_training_images_depth(tmp_path: Path, caplog) -> None:  # type: ignore[no-untyped-def]
    """12-bit scans stored as uint16 fill 0..255 (read at the narrowest depth holding the training maximum, as
    for files), and the test images are read at that depth: a test image four times darker stays darker, and
    values above the range clip with a warning."""
    path = _npz(tmp_path / "w.npz")
    with np.load(path) as archive:
        arrays = {k: archive[k] for k in archive.files}
    ramp = np.linspace(0, 4095, 28 * 28).round().astype(np.uint16).reshape(28, 28)
    arrays["train_images"] = np.stack([ramp] * len(arrays["train_images"]))
    test = np.stack([ramp] * len(arrays["test_images"]))
    test[0] //= 4  # a failed lamp: four times darker
    test[1] = np.minimum(ramp.astype(np.uint32) * 2, 65535).astype(np.uint16)  # beyond the 12-bit range
    arrays["test_images"] = test
    np.savez(path, **arrays)
    with caplog.at_level(logging.INFO):
        data = load_npz(path)
    assert int(data.train_images.max()) == 255 and int(data.train_images.min()) == 0
    assert torch.equal(data.test_images[2], data.train_images[0])
    assert 62 <= int(data.test_images[0].max()) <= 64  # a quarter of the range, not brightened to 255
    assert int(data.test_images[1].max()) == 255
    assert "read as 12-bit data" in caplog.text
    assert "1 images hold values above the 12-bit range of train_images; they are clipped" in caplog.text


def test_npz_that_is_not_an_archive_of_plain_arrays(tmp_path: Path) -> None:
    np.save(tmp_path / "one.npy", np.zeros((2, 28, 28), np.uint8))
    (tmp_path / "one.npy").rename(tmp_path / "one.npz")
    np.savez(tmp_path / "obj.npz", train_images=np.array([object()] * 3, dtype=object), train_labels=np.zeros(3),
             test_images=np.zeros(3), test_labels=np.zeros(3))
    (tmp_path / "junk.npz").write_bytes(b"PK\x03\x04 not really a zip")
    for name, message in (("one.npz", "single array"), ("obj.npz", "cannot be read"), ("junk.npz", "cannot read")):
        with pytest.raises(DataError, match=message) as err:
            load_npz(tmp_path / name)
        assert "\n" not in str(err.value)


def test_npz_takes_the_channels_asked_for_as_image_files_do(tmp_path: Path) -> None:
    """--channels reaches an .npz: RGB read as Pillow's luma, grayscale repeated; without it, the data's own."""
    from PIL import Image

    rgb = _npz(tmp_path / "c.npz", rgb=True)
    with np.load(rgb) as archive:  # saturated colours, where a rounding or weight difference shows
        arrays = {k: archive[k] for k in archive.files}
    arrays["train_images"] = np.random.default_rng(3).integers(0, 256, arrays["train_images"].shape, dtype=np.uint8)
    np.savez(rgb, **arrays)
    grey = load_npz(rgb, in_channels=1)
    with np.load(rgb) as archive:
        expected = np.asarray(Image.fromarray(archive["train_images"][2]).convert("L"))
    assert grey.train_images.shape == (12, 1, 28, 28) and np.array_equal(grey.train_images[2, 0].numpy(), expected)
    assert load_npz(rgb).train_images.shape[1] == 3
    again = load_npz(_npz(tmp_path / "g.npz"), in_channels=3)
    assert again.test_images.shape == (6, 3, 28, 28) and bool((again.test_images[:, 0] == again.test_images[:, 2]).all())


def test_a_class_with_test_images_only_can_be_abnormal_but_not_normal(tmp_path: Path) -> None:
    """Good parts to train on, defects only in the test part: legal with the defect abnormal (--normal-labels good);
    a task that would count the never-learnt class as normal is refused, naming it."""
    from skipganomaly.data.labelled import check_task

    path = _npz(tmp_path / "d.npz", classes=2, label_names=np.array(["good", "defect", "scratch"]))
    with np.load(path) as archive:
        arrays = {k: archive[k] for k in archive.files}
    arrays["test_labels"] = np.r_[arrays["test_labels"][:-1, 0], 2]  # "scratch": test images only
    np.savez(path, **arrays)
    data = load_npz(path)
    check_task(data, ["defect", "scratch"])
    with pytest.raises(DataError, match="class 'scratch' of d has test images but no training image"):
        check_task(data, ["defect"])


def test_split_folders_are_not_taken_for_classes(tmp_path: Path) -> None:
    """train/ + val/ (no test/) is two parts of a data set, not two classes named train and val."""
    for part in ("train", "val"):
        for cls in ("a", "b"):
            write_images(tmp_path / part / cls, np.full((2, 8, 8, 3), 9, np.uint8))
    with pytest.raises(DataError, match="train/, val/, which name parts of a data set, not classes"):
        load_class_folders(tmp_path)
    flat = tmp_path / "flat"  # a real class called train (Pascal VOC, CIFAR-100): images directly inside
    for cls in ("ship", "train"):
        write_images(flat / cls, np.full((5, 8, 8, 3), 9, np.uint8))
    assert load_class_folders(flat).classes == ("ship", "train")


def test_boolean_npz_images_are_black_and_white(tmp_path: Path) -> None:
    """Masks stored as booleans read as 0 and 255 (as a bool array given to a detector, or a 1-bit file), not as
    0 and 1, which is black."""
    path = _npz(tmp_path / "d.npz")
    with np.load(path) as saved:
        arrays = dict(saved)
    masks = {part: arrays[f"{part}_images"] > 100 for part in ("train", "test")}
    np.savez(path, **{**arrays, **{f"{part}_images": m for part, m in masks.items()}})
    data = load_npz(path)
    assert set(data.train_images.unique().tolist()) == {0, 255}
    assert torch.equal(data.test_images[:, 0].bool(), torch.from_numpy(masks["test"]))


def test_npz_is_resized_when_asked(tmp_path: Path) -> None:
    data = load_npz(_npz(tmp_path / "r.npz"), image_size=32)
    assert data.train_images.shape == (12, 1, 32, 32) and data.test_images.shape == (6, 1, 32, 32)


def test_unknown_label_and_class_without_images(tmp_path: Path) -> None:
    data = load_npz(_npz(tmp_path / "d.npz", label_names=np.array(["a", "b", "c", "d"])))
    with pytest.raises(DataError, match="unknown label 'zebra'.*a, b, c, d"):
        data.class_names("zebra")
    with pytest.raises(DataError, match="class 'd' of d has no images"):
        class_split(data, ["d"])


def test_class_folders_split_each_class_and_train_test_layout(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for name, n in (("cat", 10), ("dog", 5)):
        write_images(tmp_path / "flat" / name, rng.integers(0, 255, (n, 16, 16, 3), dtype=np.uint8))
    data = load_class_folders(tmp_path / "flat", image_size=32)
    assert data.classes == ("cat", "dog")
    # A fixed 20% of each class is the test part.
    assert sorted(data.test_labels.tolist()) == [0, 0, 1]
    assert sorted(data.train_labels.tolist()) == [0] * 8 + [1] * 4
    assert data.train_images.shape[1:] == (3, 32, 32)
    again = load_class_folders(tmp_path / "flat", image_size=32)
    assert torch.equal(again.test_images, data.test_images) and again.fingerprint == data.fingerprint

    for part, n in (("train", 4), ("test", 2)):
        for name in ("a", "b"):
            write_images(tmp_path / "split" / part / name, rng.integers(0, 255, (n, 32, 32, 1), dtype=np.uint8))
    split = load_class_folders(tmp_path / "split", image_size=32, in_channels=1)
    assert len(split.train_labels) == 8 and len(split.test_labels) == 4 and split.train_images.shape[1] == 1

    (tmp_path / "empty" / "x").mkdir(parents=True)
    (tmp_path / "empty" / "y").mkdir(parents=True)
    write_images(tmp_path / "empty" / "x", rng.integers(0, 255, (3, 32, 32, 3), dtype=np.uint8))
    with pytest.raises(DataError, match="folder is empty: .*empty/y"):
        load_class_folders(tmp_path / "empty")


def test_copies_and_loose_files_in_class_folders_are_said(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A file copied into a second class (or twice into one) is named with its copy; an image next to the class
    folders is not silently ignored. Distinct images say nothing."""
    rng = np.random.default_rng(0)
    for name in ("cat", "dog"):
        write_images(tmp_path / "flat" / name, rng.integers(0, 255, (5, 16, 16, 3), dtype=np.uint8))
    with caplog.at_level(logging.WARNING, logger="skipganomaly"):
        load_class_folders(tmp_path / "flat", image_size=16)
    assert caplog.text == ""
    shutil.copy(sorted((tmp_path / "flat" / "cat").iterdir())[0], tmp_path / "flat" / "dog" / "z.png")
    shutil.copy(sorted((tmp_path / "flat" / "cat").iterdir())[0], tmp_path / "flat" / "stray.png")
    with caplog.at_level(logging.WARNING, logger="skipganomaly"):
        load_class_folders(tmp_path / "flat", image_size=16)
    first = sorted((tmp_path / "flat" / "cat").iterdir())[0].name
    assert f"1 image is an exact copy of another (the same pixels as read; e.g. dog/z.png = cat/{first})" in caplog.text
    assert "1 image file directly in the folder (stray.png) is not read" in caplog.text


def test_class_folder_split_must_name_the_same_classes_and_reads_train_test_in_any_case(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    for part, name in (("Train", "a"), ("Train", "b"), ("Test", "a"), ("Test", "b")):
        write_images(tmp_path / "ok" / part / name, rng.integers(0, 255, (2, 32, 32, 3), dtype=np.uint8))
    assert load_class_folders(tmp_path / "ok").classes == ("a", "b")  # not two classes "Test" and "Train"
    for part, name in (("train", "a"), ("train", "b"), ("test", "a"), ("test", "B")):
        write_images(tmp_path / "bad" / part / name, rng.integers(0, 255, (2, 32, 32, 3), dtype=np.uint8))
    with pytest.raises(DataError, match=r"test/B has no class folder of that name in .*train \(it has a, b; names "
                                        "must match exactly"):
        load_class_folders(tmp_path / "bad")


def test_a_defect_class_in_the_test_folder_only_is_read_and_can_be_the_anomaly(tmp_path: Path) -> None:
    """MVTec AD's layout: good parts in train/ and test/, defects only in test/. Read; abnormal with
    --normal-labels; a task that would count the defects as normal is refused by check_task."""
    from skipganomaly.data.labelled import check_task
    from skipganomaly.sweep import resolve_classes

    rng = np.random.default_rng(2)
    for part, name in (("train", "good"), ("train", "other"), ("test", "good"), ("test", "other"), ("test", "crack")):
        write_images(tmp_path / part / name, rng.integers(0, 255, (3, 32, 32, 3), dtype=np.uint8))
    data = load_class_folders(tmp_path)
    assert data.classes == ("crack", "good", "other") and data.present() == ["good", "other"]
    assert resolve_classes(data, normal_labels="good,other") == ["crack"]
    with pytest.raises(DataError, match="class 'crack' .* has test images but no training image"):
        resolve_classes(data)
    check_task(data, ["crack", "other"])


def test_a_class_folder_that_groups_subfolders_is_one_class_with_a_word(tmp_path: Path,
                                                                         caplog: pytest.LogCaptureFixture) -> None:
    rng = np.random.default_rng(3)
    for name in ("shapes/circle", "shapes/square", "blobs", "dated/2026-01", "dated/x.png"):
        if not name.endswith(".png"):
            write_images(tmp_path / name, rng.integers(0, 255, (3, 32, 32, 3), dtype=np.uint8))
    write_images(tmp_path / "dated", rng.integers(0, 255, (1, 32, 32, 3), dtype=np.uint8))  # images of its own too
    with caplog.at_level("WARNING", logger="skipganomaly"):
        data = load_class_folders(tmp_path)
    assert data.classes == ("blobs", "dated", "shapes")
    assert "class 'shapes' is read from its 2 subfolders (circle, square) as one class" in caplog.text
    assert "'dated'" not in caplog.text and "'blobs'" not in caplog.text
    caplog.clear()
    for part in ("train", "test"):  # the same grouping in both parts: said once
        for name in ("shapes/circle", "shapes/square", "blobs"):
            write_images(tmp_path / "split" / part / name, rng.integers(0, 255, (3, 32, 32, 3), dtype=np.uint8))
    with caplog.at_level("WARNING", logger="skipganomaly"):
        load_class_folders(tmp_path / "split")
    assert caplog.text.count("is read from its 2 subfolders") == 1


def test_a_class_folder_fingerprint_changes_with_the_pixels_under_the_same_names(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    paths = write_images(tmp_path / "a", rng.integers(0, 255, (3, 32, 32, 3), dtype=np.uint8))
    write_images(tmp_path / "b", rng.integers(0, 255, (3, 32, 32, 3), dtype=np.uint8))
    before = load_class_folders(tmp_path).fingerprint
    assert load_class_folders(tmp_path).fingerprint == before
    write_images(tmp_path / "a", rng.integers(0, 255, (3, 32, 32, 3), dtype=np.uint8))  # same names, new pixels
    assert [p.name for p in paths] == sorted(p.name for p in (tmp_path / "a").iterdir())
    assert load_class_folders(tmp_path).fingerprint != before


def test_repeated_label_names_are_refused(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="class name 'a' is given to more than one label"):
        load_npz(_npz(tmp_path / "r.npz", label_names=np.array(["a", "a", "b"])))


def _sentinel_data() -> LabelledImages:
    """Five classes; every image of class c is filled with the value 50 * c, so any image's class shows."""
    def part(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.arange(n) % 5
        return (labels * 50).to(torch.uint8)[:, None, None, None].expand(n, 1, 32, 32).contiguous(), labels

    return LabelledImages(*part(50), *part(25), ("a", "b", "c", "d", "e"))


def test_class_split_with_several_abnormal_classes() -> None:
    data = _sentinel_data()
    split = class_split(data, ["b", "d"])
    assert split.abnormal_class == "b+d"
    assert set(split.train[:, 0, 0, 0].tolist()) == {0, 100, 200}
    abnormal = split.test[split.test_labels == 1][:, 0, 0, 0]
    assert set(abnormal.tolist()) == {50, 150} and len(abnormal) == 20 + 10  # their train and test images


@pytest.mark.parametrize("excluded", ["a", "c", "e"])
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_validation_split_never_holds_the_excluded_class(excluded: str, seed: int) -> None:
    data = _sentinel_data()
    value = 50 * data.class_index(excluded)
    split = validation_split(data, [excluded], seed=seed)
    seen = set(split.train[:, 0, 0, 0].tolist()) | set(split.test[:, 0, 0, 0].tolist())
    assert value not in seen
    pseudo = split.abnormal_class
    assert pseudo != excluded
    # The pseudo-anomaly is exactly the abnormal part of the test set, and never trained on.
    assert set(split.test[split.test_labels == 1][:, 0, 0, 0].tolist()) == {50 * data.class_index(pseudo)}
    assert 50 * data.class_index(pseudo) not in set(split.train[:, 0, 0, 0].tolist())
    assert seen == {50 * i for i in range(5)} - {value}


def test_pseudo_anomaly_is_the_next_class_and_rotates_with_the_seed() -> None:
    data = _sentinel_data()
    assert [pseudo_anomaly(data, [c]) for c in data.classes] == ["b", "c", "d", "e", "a"]
    assert [pseudo_anomaly(data, ["c"], seed) for seed in range(5)] == ["d", "e", "a", "b", "d"]
    small = data.without(["c", "d", "e"])
    with pytest.raises(DataError, match=r"at least two normal classes.*e\.g\. --protocol honest"):
        pseudo_anomaly(small, ["a"])


@pytest.mark.parametrize("fraction", [1.0, 0.5, 0.15, 0.05])
def test_training_count_is_the_size_of_the_training_part(tmp_path: Path, fraction: float) -> None:
    """The benchmark checks every task's training size from the label counts: they must be the sizes the
    splits really have, for leave-one-class-out and for validate's pseudo-anomaly."""
    from skipganomaly.data.labelled import training_count

    data = load_npz(_npz(tmp_path / "c.npz", n_train=40, classes=4))
    for abnormal in (["0"], ["1", "3"]):
        assert training_count(data, abnormal, fraction) == len(class_split(data, abnormal, fraction).train)
    for seed in (0, 1):
        pseudo = pseudo_anomaly(data, ["2"], seed)
        assert training_count(data, ["2", pseudo], fraction) == len(validation_split(data, ["2"], fraction,
                                                                                     seed=seed).train)
