"""Folder layouts and the embedded digits protocol."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from skipganomaly.data import digits_leave_one_out, labelled_files, load_digits_images, load_labelled_folder, train_folder
from skipganomaly.errors import DataError
from tests.conftest import blob_images, noise_images, write_images


def test_user_layout(image_root: Path) -> None:
    assert train_folder(image_root) == image_root / "train"
    x, y, paths = load_labelled_folder(image_root, 32, 3)
    assert x.shape == (16, 3, 32, 32) and y.tolist() == [0] * 8 + [1] * 8 and len(paths) == 16


def test_reference_layout(tmp_path: Path) -> None:
    write_images(tmp_path / "train" / "0.normal", blob_images(3))
    write_images(tmp_path / "test" / "0.normal", blob_images(2))
    write_images(tmp_path / "test" / "1.abnormal", noise_images(3))
    assert train_folder(tmp_path) == tmp_path / "train" / "0.normal"
    _, labels = labelled_files(tmp_path)
    assert labels == [0, 0, 1, 1, 1]


def test_unlabelled_test_folder_is_a_clear_error(tmp_path: Path) -> None:
    write_images(tmp_path / "stuff", blob_images(2))
    with pytest.raises(DataError, match="no labelled subfolders"):
        labelled_files(tmp_path)
    with pytest.raises(DataError, match="folder not found"):
        labelled_files(tmp_path / "nope")


def test_mvtec_layout_takes_every_defect_folder_as_abnormal(tmp_path: Path,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    """MVTec AD: test/good beside one folder per defect type; ground_truth/ (masks) is not a defect."""
    write_images(tmp_path / "test" / "good", blob_images(2))
    write_images(tmp_path / "test" / "crack", noise_images(3))
    write_images(tmp_path / "test" / "scratch", noise_images(1))
    write_images(tmp_path / "test" / "ground_truth" / "crack", noise_images(3))
    with caplog.at_level("INFO", logger="skipganomaly"):
        paths, labels = labelled_files(tmp_path)
    assert labels == [0, 0, 1, 1, 1, 1] and {p.parent.name for p in paths[2:]} == {"crack", "scratch"}
    assert "abnormal = crack/, scratch/" in caplog.text


def test_named_abnormal_folders_are_all_read_and_names_are_case_blind(tmp_path: Path) -> None:
    write_images(tmp_path / "Normal", blob_images(2))
    write_images(tmp_path / "Abnormal", noise_images(1))
    write_images(tmp_path / "defect", noise_images(2))
    write_images(tmp_path / "unsure", noise_images(4))  # neither name: not a label when named ones exist
    _, labels = labelled_files(tmp_path)
    assert labels == [0, 0, 1, 1, 1]


def test_a_test_folder_with_one_label_only_is_a_clear_error(tmp_path: Path) -> None:
    write_images(tmp_path / "only" / "normal", blob_images(2))
    write_images(tmp_path / "bad" / "abnormal", noise_images(2))
    with pytest.raises(DataError, match="has normal/ but no abnormal folder"):
        labelled_files(tmp_path / "only")
    with pytest.raises(DataError, match="has abnormal/ but no normal folder"):
        labelled_files(tmp_path / "bad")


def test_digits_are_real_and_upscaled() -> None:
    images, targets = load_digits_images(32)
    assert images.shape == (1797, 1, 32, 32) and images.dtype == torch.uint8
    assert set(targets.tolist()) == set(range(10))
    assert images.max() == 255 and images.min() == 0


@pytest.mark.parametrize("digit", range(10))
def test_leave_one_digit_out_counts(digit: int) -> None:
    images, targets = load_digits_images(32)
    n_abnormal = int((targets == digit).sum())
    split = digits_leave_one_out(digit)
    n_normal_test = int((split.test_labels == 0).sum())
    assert int(split.test_labels.sum()) == n_abnormal
    assert len(split.train) + n_normal_test == 1797 - n_abnormal
    assert n_normal_test == round((1797 - n_abnormal) * 0.2)
    # No test image is in the training set (all 1,797 digits are distinct, so compare raw bytes).
    assert len({bytes(t.numpy()) for t in images}) == 1797
    train_keys = {bytes(t.numpy()) for t in split.train}
    assert not any(bytes(t.numpy()) in train_keys for t in split.test)
