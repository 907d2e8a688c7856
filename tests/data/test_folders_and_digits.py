"""Folder layouts and the embedded digits protocol."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from skipganomaly.data import (digits_leave_one_out, labelled_files, load_digits_images, load_labelled_folder, train_folder,
                               training_files)
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


def _mvtec_category(root: Path) -> None:
    """MVTec AD's layout: train/good, test/good beside defect folders, ground_truth/ masks."""
    write_images(root / "train" / "good", blob_images(4))
    write_images(root / "test" / "good", blob_images(2, seed=1))
    write_images(root / "test" / "scratch", noise_images(2))
    write_images(root / "ground_truth" / "scratch", noise_images(2), prefix="mask")


def test_train_and_test_folder_names_are_case_blind(tmp_path: Path) -> None:
    """`Train/` and `Test/` (as a Windows tool or a colleague wrote them) are found like `train/` and `test/`."""
    _mvtec_category(tmp_path / "lower")
    (tmp_path / "lower").rename(tmp_path / "upper")
    (tmp_path / "upper" / "train").rename(tmp_path / "upper" / "Train")
    (tmp_path / "upper" / "test").rename(tmp_path / "upper" / "TEST")
    folder, files = training_files(tmp_path / "upper")
    assert folder == tmp_path / "upper" / "Train" and len(files) == 4
    _, labels = labelled_files(tmp_path / "upper")
    assert labels == [0, 0, 1, 1]


def test_a_training_folder_that_holds_labelled_images_is_refused(tmp_path: Path) -> None:
    """A data set's root one level too high, its test folder, or a folder with a defect class below it would
    train on defects and masks as normal images, silently: each is refused, naming what it holds."""
    _mvtec_category(tmp_path / "data" / "bottle")
    assert training_files(tmp_path / "data" / "bottle")[0] == tmp_path / "data" / "bottle" / "train"
    with pytest.raises(DataError, match=r"holds bottle/ground_truth/ with images.*e\.g\. .*bottle/train\)"):
        training_files(tmp_path / "data")
    with pytest.raises(DataError, match=r"labelled test folder \(good/ beside scratch/\).*e\.g\. .*bottle/train\)"):
        training_files(tmp_path / "data" / "bottle" / "test")
    write_images(tmp_path / "line" / "2024" / "Defect", noise_images(1))
    write_images(tmp_path / "line" / "2025", blob_images(2))
    with pytest.raises(DataError, match="holds 2024/Defect/ with images"):
        training_files(tmp_path / "line")
    (tmp_path / "line" / "2024" / "Defect").rename(tmp_path / "line" / "2024" / "day1")  # dated folders: normal
    assert len(training_files(tmp_path / "line")[1]) == 3
    write_images(tmp_path / "line" / "2025" / "masks", noise_images(1))  # mask images are not parts either
    with pytest.raises(DataError, match="holds 2025/masks/ with images"):
        training_files(tmp_path / "line")


def test_fit_on_a_folder_takes_its_train_folder_and_refuses_labelled_images(tmp_path: Path) -> None:
    """The API reads a folder as `train` does: a data set's root means its `train/`."""
    from skipganomaly import Detector

    _mvtec_category(tmp_path / "bottle")
    write_images(tmp_path / "bottle" / "train" / "good", blob_images(16, seed=2), prefix="more")
    det = Detector("knn", image_size=32, progress=False).fit(tmp_path / "bottle")
    assert det.n_train_images_ + det.n_val_images_ == 20
    with pytest.raises(DataError, match="labelled test folder"):
        Detector("knn", image_size=32, progress=False).fit(tmp_path / "bottle" / "test")


def test_unlabelled_test_folder_is_a_clear_error(tmp_path: Path) -> None:
    write_images(tmp_path / "stuff", blob_images(2))
    with pytest.raises(DataError, match="no labelled subfolders"):
        labelled_files(tmp_path)
    with pytest.raises(DataError, match="folder not found"):
        labelled_files(tmp_path / "nope")


def test_a_test_folder_whose_abnormal_files_are_all_unreadable_is_an_error(tmp_path: Path) -> None:
    """The labels are checked again once the files are read: metrics over normal images alone are not a test."""
    write_images(tmp_path / "normal", blob_images(3))
    (tmp_path / "abnormal").mkdir()
    for i in range(2):
        (tmp_path / "abnormal" / f"bad{i}.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="none of the 2 abnormal images .* could be read"):
        load_labelled_folder(tmp_path, 32, 3)
    write_images(tmp_path / "abnormal", noise_images(1))
    assert load_labelled_folder(tmp_path, 32, 3)[1].tolist() == [0, 0, 0, 1]


def test_images_beside_the_labelled_folders_are_named_as_not_read(tmp_path: Path,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    write_images(tmp_path / "normal", blob_images(2))
    write_images(tmp_path / "abnormal", noise_images(1))
    write_images(tmp_path, blob_images(2), prefix="loose")
    with caplog.at_level("WARNING", logger="skipganomaly"):
        assert len(labelled_files(tmp_path)[0]) == 3
    assert "2 image files lie directly in" in caplog.text and "loose_000.png" in caplog.text


def test_mvtec_layout_takes_every_defect_folder_as_abnormal(tmp_path: Path,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    """MVTec AD: test/good beside one folder per defect type; ground_truth/ (masks) is not a defect."""
    write_images(tmp_path / "test" / "good", blob_images(2))
    write_images(tmp_path / "test" / "crack", noise_images(3))
    write_images(tmp_path / "test" / "scratch", noise_images(1))
    write_images(tmp_path / "test" / "ground_truth" / "crack", noise_images(3))
    write_images(tmp_path / "test" / "Masks" / "crack", noise_images(2))  # masks under another name: not a defect
    with caplog.at_level("INFO", logger="skipganomaly"):
        paths, labels = labelled_files(tmp_path)
    assert labels == [0, 0, 1, 1, 1, 1] and {p.parent.name for p in paths[2:]} == {"crack", "scratch"}
    assert "abnormal = crack/, scratch/; not read: Masks/, ground_truth/" in caplog.text


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


def test_masks_keep_thin_defects_read_0_1_masks_and_skip_unreadable_ones(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                         caplog: pytest.LogCaptureFixture) -> None:
    """MVTec AD masks at the model's size: a 2-px scratch in a 256-px mask still marks its pixels at 32 px, a mask
    stored as 0/1 counts, an unreadable mask leaves its image out with a warning (not an error after training),
    and `.` from inside test/ finds ground_truth/ beside it."""
    import logging

    import numpy as np
    from PIL import Image

    from skipganomaly.data.folders import load_masks

    write_images(tmp_path / "test" / "good", blob_images(2))
    defects = write_images(tmp_path / "test" / "scratch", noise_images(3))
    (tmp_path / "ground_truth" / "scratch").mkdir(parents=True)
    thin = np.zeros((256, 256), np.uint8)
    thin[40:200, 100:102] = 255
    Image.fromarray(thin).save(tmp_path / "ground_truth" / "scratch" / f"{defects[0].stem}_mask.png")
    ones = np.zeros((32, 32), np.uint8)
    ones[:4, :4] = 1
    Image.fromarray(ones).save(tmp_path / "ground_truth" / "scratch" / f"{defects[1].stem}_mask.png")
    (tmp_path / "ground_truth" / "scratch" / f"{defects[2].stem}_mask.png").write_text("not a png")
    paths, labels = labelled_files(tmp_path)
    with caplog.at_level(logging.WARNING, logger="skipganomaly"):
        truth = load_masks(tmp_path, paths, labels, 32)
    assert truth is not None and truth.index == [0, 1, 2, 3]  # the third defect's mask is unreadable: left out
    assert "1 masks cannot be read" in caplog.text
    assert not truth.masks[:2].any() and truth.masks[2, 5:25, 12].all() and truth.masks[2].sum() == 20
    assert truth.masks[3, :4, :4].all() and truth.masks[3].sum() == 16
    monkeypatch.chdir(tmp_path / "test")
    paths, labels = labelled_files(".")
    assert load_masks(".", paths, labels, 32) is not None


def test_masks_that_contradict_their_images_or_match_none_are_named(tmp_path: Path,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    """A defect image whose mask marks nothing (a broken mask), a good image whose mask marks a defect, a defect
    image without a mask, and masks no image claims (a shifted number, a defect folder with no test folder): each
    kind is one warning naming the files; the metrics keep their rules (empty masks count, good images are normal)."""
    import logging

    import numpy as np
    from PIL import Image

    from skipganomaly.data.folders import load_masks

    good = write_images(tmp_path / "test" / "good", blob_images(2))
    defects = write_images(tmp_path / "test" / "scratch", noise_images(6))
    marked = np.zeros((32, 32), np.uint8)
    marked[4:8, 4:8] = 255
    for folder, name, pixels in (("scratch", f"{defects[0].stem}_mask", marked), ("scratch", f"{defects[1].stem}_mask",
                                 np.zeros_like(marked)), ("good", f"{good[0].stem}_mask", marked),
                                 ("scratch", "099_mask", marked), ("crack", "000_mask", marked),
                                 ("scratch", f"{defects[4].stem}_mask", np.zeros((32, 64), np.uint8)),
                                 ("scratch", f"{defects[5].stem}_mask", np.kron(marked, np.ones((2, 2), np.uint8)))):
        (tmp_path / "ground_truth" / folder).mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(tmp_path / "ground_truth" / folder / f"{name}.png")
    paths, labels = labelled_files(tmp_path)
    with caplog.at_level(logging.WARNING, logger="skipganomaly"):
        truth = load_masks(tmp_path, paths, labels, 32)
    assert truth is not None and truth.index == [0, 1, 2, 3, 7] and truth.n_masks == 3
    assert not truth.masks[:2].any() and truth.masks[2].sum() == 16 and not truth.masks[3].any()
    assert truth.masks[4].sum() == 16  # a mask at twice the size, the same shape: used
    assert f"1 mask is not the shape of their image (turned, cropped or of another image?), so their defects would " \
           f"land elsewhere; the pixel metrics leave those images out: {defects[4]} (32x32, its mask 64x32)" in caplog.text
    assert f"1 abnormal test images have a mask that marks no defect pixel (a broken mask?); the pixel metrics count " \
           f"all their pixels as normal: {defects[1]}" in caplog.text
    assert f"1 normal test images have a mask in {tmp_path / 'ground_truth'} that marks defect pixels" in caplog.text
    assert f"2 abnormal test images have no mask in {tmp_path / 'ground_truth'}; the pixel metrics leave them out: " \
           f"{defects[2]}, {defects[3]}" in caplog.text
    assert "2 masks in" in caplog.text and "crack/000_mask.png, scratch/099_mask.png" in caplog.text


def test_mask_images_of_every_kind_mark_their_defects(tmp_path: Path) -> None:
    """Any non-zero value in any channel is a defect, transparent parts are laid on black (their hidden colour is
    not a defect), a palette's colours count, and a 1-px speck in a 1024-px mask survives at 32 px; a linked test/
    folder finds the ground_truth/ beside the link."""
    import numpy as np
    from PIL import Image

    from skipganomaly.data.folders import defect_pixels, mask_folder

    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., :3] = 255  # white everywhere, transparent but for one opaque pixel
    rgba[2, 3, 3] = 255
    assert defect_pixels(Image.fromarray(rgba)).nonzero() == ((2,), (3,))
    blue = np.zeros((8, 8, 3), np.uint8)
    blue[1, 1, 2] = 1
    palette = Image.fromarray((blue[..., 2] > 0).astype(np.uint8), mode="P")  # index 1: the colour (0, 0, 1)
    palette.putpalette([0, 0, 0, 0, 0, 1])
    assert defect_pixels(Image.fromarray(blue)).sum() == 1 and defect_pixels(palette).sum() == 1
    write_images(tmp_path / "data" / "test" / "good", blob_images(1))
    [spot] = write_images(tmp_path / "data" / "test" / "spot", noise_images(1))
    (tmp_path / "data" / "ground_truth" / "spot").mkdir(parents=True)
    speck = np.zeros((1024, 1024), np.uint8)
    speck[500, 700] = 255
    Image.fromarray(speck).save(tmp_path / "data" / "ground_truth" / "spot" / f"{spot.stem}_mask.png")
    from skipganomaly.data.folders import load_masks

    paths, labels = labelled_files(tmp_path / "data")
    truth = load_masks(tmp_path / "data", paths, labels, 32)
    assert truth is not None and truth.masks[1].nonzero() == ((15,), (21,)) and truth.n_masks == 1
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "data" / "test").rename(tmp_path / "elsewhere" / "bottle_test")
    (tmp_path / "data" / "test").symlink_to(tmp_path / "elsewhere" / "bottle_test")
    assert mask_folder(tmp_path / "data" / "test") == tmp_path / "data" / "ground_truth"


def test_a_labelled_folder_skips_a_run_folder_and_refuses_names_that_differ_only_in_case(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A training run's folder inside a test folder is not a defect class (its figures would be scored); `abnormal/`
    beside `Abnormal/` is an error, where one of them was dropped without a word."""
    import logging

    write_images(tmp_path / "good", blob_images(2))
    write_images(tmp_path / "crack", noise_images(2))
    write_images(tmp_path / "run" / "figures", noise_images(1))
    (tmp_path / "run" / "config.yaml").write_text("format: skipganomaly-run\n")
    (tmp_path / "run" / "model.pt").write_bytes(b"PK")
    write_images(tmp_path / "unfinished" / "figures", noise_images(1))  # stopped before its first checkpoint
    (tmp_path / "unfinished" / "config.yaml").write_text("format: skipganomaly-run\n")
    (tmp_path / "unfinished" / "model.state.pt").write_bytes(b"PK")
    with caplog.at_level(logging.INFO, logger="skipganomaly"):
        paths, labels = labelled_files(tmp_path)
    assert labels == [0, 0, 1, 1] and all("run" not in p.parts and "unfinished" not in p.parts for p in paths)
    assert "not read, a training run's folder: run/, unfinished/" in caplog.text
    write_images(tmp_path / "Crack", noise_images(2))
    with pytest.raises(DataError, match="Crack/ and crack/, folders whose names differ only in letter case"):
        labelled_files(tmp_path)


def test_training_reads_a_linked_file_once(tmp_path: Path) -> None:
    """A link to a training file beside it is the same image: read once, so it cannot be trained on and held out."""
    from skipganomaly.data import training_files

    files = write_images(tmp_path / "train", blob_images(3))
    (tmp_path / "train" / "link.png").symlink_to(files[0])
    assert sorted(p.name for p in training_files(tmp_path / "train")[1]) == sorted(p.name for p in files)


def test_copies_inside_a_test_set_are_named(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The same image twice in a test set counts twice; under both labels it contradicts itself: both are said."""
    import logging
    import shutil

    normal = write_images(tmp_path / "normal", blob_images(3))
    abnormal = write_images(tmp_path / "abnormal", noise_images(3))
    shutil.copy(normal[0], tmp_path / "normal" / "again.png")
    with caplog.at_level(logging.WARNING, logger="skipganomaly"):
        load_labelled_folder(tmp_path, 32, 3)
    assert "1 test image is a copy of another in the test set" in caplog.text
    assert f"{normal[0]} = {tmp_path / 'normal' / 'again.png'}" in caplog.text
    assert "other label" not in caplog.text
    caplog.clear()
    shutil.copy(abnormal[1], tmp_path / "normal" / "mislabelled.png")
    with caplog.at_level(logging.WARNING, logger="skipganomaly"):
        load_labelled_folder(tmp_path, 32, 3)
    assert "2 test images are copies of another" in caplog.text and "1 of them under the other label" in caplog.text
    assert f"{abnormal[1]} = {tmp_path / 'normal' / 'mislabelled.png'}" in caplog.text
