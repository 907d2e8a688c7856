"""Image loading and conversion: every container, every odd file, clear errors."""

from __future__ import annotations

import logging
import warnings
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from skipganomaly.data import as_image_tensor, list_image_files, load_image, load_image_files, to_unit_range
from skipganomaly.errors import DataError
from tests.conftest import blob_images, smooth_images, write_images


def test_to_unit_range_maps_0_255_to_minus1_1() -> None:
    out = to_unit_range(torch.tensor([0, 255], dtype=torch.uint8))
    assert out.tolist() == [-1.0, 1.0]


@pytest.mark.parametrize("layout", ["nhwc", "nchw", "nhw"])
def test_numpy_layouts(layout: str) -> None:
    imgs = blob_images(3, channels=1)
    arr = {"nhwc": imgs, "nchw": imgs.transpose(0, 3, 1, 2), "nhw": imgs[..., 0]}[layout]
    out = as_image_tensor(arr, 32, 1)
    assert out.shape == (3, 1, 32, 32) and out.dtype == torch.uint8
    assert torch.equal(out[:, 0], torch.from_numpy(imgs[..., 0]))


def test_float_arrays_are_read_as_0_to_1_and_resized() -> None:
    arr = np.full((2, 3, 40, 40), 0.5, dtype=np.float32)
    out = as_image_tensor(arr, 32, 3)
    assert out.shape == (2, 3, 32, 32)
    assert int(out.float().mean().round()) == 128


def test_pil_images_and_paths(tmp_path: Path) -> None:
    paths = write_images(tmp_path, blob_images(2, channels=3))
    from_paths = as_image_tensor(paths, 32, 3)
    from_pil = as_image_tensor([Image.open(p) for p in paths], 32, 3)
    assert torch.equal(from_paths, from_pil)
    assert as_image_tensor(paths, 32, 1).shape == (2, 1, 32, 32)  # files are converted


@pytest.mark.parametrize("shape, channels, expected", [
    ((32, 32, 3), 3, (1, 3, 32, 32)),  # one RGB image, channels last
    ((3, 32, 32), 3, (1, 3, 32, 32)),  # one RGB image, channels first
    ((32, 32, 1), 1, (1, 1, 32, 32)),  # one grayscale image with its channel axis (was 32 images of 32 x 1)
    ((32, 32), 1, (1, 1, 32, 32)),  # one grayscale image
    ((3, 32, 32), 1, (3, 1, 32, 32)),  # three grayscale images
    ((5, 32, 32), 1, (5, 1, 32, 32)),
])
def test_one_image_is_one_image(shape: tuple[int, ...], channels: int, expected: tuple[int, ...]) -> None:
    assert tuple(as_image_tensor(np.zeros(shape, np.uint8), 32, channels).shape) == expected


def test_one_rgb_image_given_to_a_grayscale_model_is_a_channel_error_not_32_images() -> None:
    with pytest.raises(DataError, match="3 channels but the model expects in_channels=1"):
        as_image_tensor(np.zeros((32, 32, 3), np.uint8), 32, 1)


@pytest.mark.parametrize(
    "bad, message",
    [
        (np.zeros((2, 32, 32, 3), dtype=np.uint8), "3 channels but the model expects in_channels=1"),
        (np.full((2, 32, 32), 2.0, dtype=np.float32), r"\[0, 1\]"),
        (np.full((2, 32, 32), np.nan, dtype=np.float32), "NaN"),
        (np.zeros((0, 32, 32), dtype=np.uint8), "empty"),
        (np.zeros((32, 32), dtype=np.uint8)[None, None, None], "shape"),
        ([], "empty list"),
        ({"a": 1}, "unsupported"),
    ],
)
def test_bad_arrays_are_data_errors(bad: object, message: str) -> None:
    with pytest.raises(DataError, match=message):
        as_image_tensor(bad, 32, 1)


def test_sixteen_bit_and_palette_and_rgba_files(tmp_path: Path) -> None:
    sixteen = tmp_path / "a16.png"
    Image.fromarray(np.full((10, 10), 65535, dtype=np.uint16)).save(sixteen)
    assert load_image(sixteen, 32, 1).min() == 255
    palette = tmp_path / "p.png"
    Image.fromarray(blob_images(1)[0]).convert("P").save(palette)
    assert load_image(palette, 32, 3).shape == (3, 32, 32)
    rgba = tmp_path / "a.png"
    Image.fromarray(np.zeros((5, 7, 4), dtype=np.uint8)).save(rgba)
    assert load_image(rgba, 32, 3).shape == (3, 32, 32)


@pytest.mark.parametrize("bits", [12, 16])
def test_wide_integer_images_fill_the_range_of_their_bit_depth(tmp_path: Path, bits: int) -> None:
    """A ramp up to the top of a 12- or 16-bit range (12-bit data is stored in 16-bit PNGs) reads as 0..255,
    and the middle of the ramp as the middle of 0..255."""
    ramp = np.linspace(0, 2 ** bits - 1, 64).round().astype(np.uint16)[None].repeat(32, 0)
    path = tmp_path / f"ramp{bits}.png"
    Image.fromarray(ramp).save(path)
    assert Image.open(path).mode.startswith("I")
    row = load_image(path, 64, 1)[0, 0].astype(int)
    assert row[0] == 0 and row[-1] == 255 and abs(row[32] - 130) <= 2


def _twelve_bit(path: Path, scale: float = 1.0, seed: int = 0) -> Path:
    """A 12-bit image (values up to 4095, stored as 16-bit PNG), its brightness times `scale`."""
    smooth = smooth_images(1, channels=1, seed=seed)[0, ..., 0].astype(np.float64) / 255.0
    Image.fromarray(np.round(smooth * 4095 * scale).astype(np.uint16)).save(path)
    return path


def test_a_darker_wide_image_stays_darker_in_a_set_and_for_a_detector(tmp_path: Path,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    """A lamp failing (the same 12-bit scene 4x darker) must not be rescaled to look normal: a set of files is
    read at one bit depth, and a detector scores files at the depth of its training files, also one at a time."""
    from skipganomaly import Detector
    from skipganomaly.data.images import read_image_files

    bright, dark = _twelve_bit(tmp_path / "ok.png"), _twelve_bit(tmp_path / "dark.png", 0.25)
    loaded = read_image_files([bright, dark], 32, 1)
    assert loaded.bit_depth == 12
    means = loaded.images.float().mean(dim=(1, 2, 3))
    assert means[1] / means[0] == pytest.approx(0.25, abs=0.02)
    train = tmp_path / "train"
    train.mkdir()
    for i in range(40):
        _twelve_bit(train / f"{i}.png", seed=i)
    det = Detector("pca", in_channels=1, progress=False, val_fraction=0.5).fit(train)
    assert det.bit_depth_ == 12
    det.save(tmp_path / "m.pt")
    loaded_det = Detector.load(tmp_path / "m.pt")
    assert loaded_det.bit_depth_ == 12
    assert loaded_det.predict([dark])[0] == 1 and loaded_det.predict([bright])[0] == 0  # each file alone
    # an 8-bit export of a 12-bit scene is on another scale: said, not silently flagged
    eight = tmp_path / "eight.png"
    Image.fromarray((np.asarray(Image.open(bright)) // 16).astype(np.uint8)).save(eight)
    with caplog.at_level(logging.WARNING, logger="skipganomaly"):
        loaded_det.decision_function([bright, dark])
        assert "8-bit" not in caplog.text
        loaded_det.decision_function([bright, eight])
    assert "1 of 2 files are 8-bit (or floats) where the detector's training files were 12-bit" in caplog.text
    assert str(eight) in caplog.text
    assert np.array_equal(loaded_det.decision_function([dark]), det.decision_function([dark]))
    # a camera's uint16 frames given as arrays are read as the same frames saved as files: a dark one stays dark
    # (all its values under 256 once were read as 8-bit data, 16x brighter, and scored normal)
    frames = np.stack([np.asarray(Image.open(p)) for p in (dark, bright)])
    assert frames.dtype == np.uint16 and frames[0].max() <= 1023
    expected = det.decision_function([dark, bright])
    np.testing.assert_array_equal(det.decision_function(frames), expected)
    np.testing.assert_array_equal(det.decision_function(torch.from_numpy(frames.astype(np.int32))), expected)
    np.testing.assert_array_equal(det.decision_function(list(frames)), expected)
    # fitted on the frames themselves with their depth: the same rule, so the same scores as from the files
    raw = np.stack([np.asarray(Image.open(p)) for p in sorted(train.glob("*.png"))])  # the folder's order
    on_frames = Detector("pca", in_channels=1, progress=False, val_fraction=0.5).fit(raw, bit_depth=12)
    assert on_frames.bit_depth_ == 12
    np.testing.assert_allclose(on_frames.decision_function(frames), expected, rtol=1e-5)
    arrays = np.stack([np.asarray(Image.open(train / f"{i}.png")) // 16 for i in range(40)]).astype(np.uint8)
    assert det.fit(arrays).bit_depth_ == 8  # refitted on 8-bit arrays: no depth of earlier files lingers
    with pytest.raises(DataError, match="integer images must lie in 0..255"):  # 8-bit detectors: as before
        det.decision_function(frames)


def test_no_files_score_depends_on_the_files_scored_beside_it(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A detector trained on 8-bit images reads wider files at 8 bits (clipped, with a warning), each on its own: a
    12-bit scan scores the same alone and beside a 16-bit file with one bright pixel (read together at the widest
    depth they needed, the scan was 16 times darker)."""
    from skipganomaly import Detector
    from skipganomaly.onnx_export import OnnxScorer

    det = Detector("pca", in_channels=1, progress=False, val_fraction=0.5).fit(blob_images(40, channels=1))
    scan = _twelve_bit(tmp_path / "scan.png")
    marker = np.zeros((32, 32), dtype=np.uint16)
    marker[0, 0] = 65535
    Image.fromarray(marker).save(tmp_path / "marker.png")
    alone = det.decision_function([scan])
    with caplog.at_level(logging.WARNING, logger="skipganomaly"):
        beside = det.decision_function([scan, tmp_path / "marker.png"])
    assert beside[0] == alone[0]
    assert "above the 8-bit range the detector reads files at" in caplog.text
    pictures = [Image.open(scan), Image.open(tmp_path / "marker.png")]
    assert det.decision_function(pictures)[0] == alone[0]
    onnx = OnnxScorer(det.export_onnx(tmp_path / "m.onnx"))
    assert onnx.score([scan, tmp_path / "marker.png"])[0] == pytest.approx(alone[0], rel=1e-4)
    assert det.bit_depth_ == 8 and onnx.bit_depth_ == 8


def test_a_training_set_read_at_the_depth_a_few_files_need_names_them(tmp_path: Path,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    """One stray 16-bit file (one bright pixel) among 12-bit scans sets the depth of the whole set, 16 times darker:
    the warning names it; when most files need the widest depth, it is information only."""
    from skipganomaly.data.images import read_image_files

    scans = [_twelve_bit(tmp_path / f"{i}.png", seed=i) for i in range(5)]
    marker = np.zeros((32, 32), dtype=np.uint16)
    marker[0, 0] = 65535
    Image.fromarray(marker).save(tmp_path / "stray.png")
    with caplog.at_level(logging.INFO, logger="skipganomaly"):
        assert read_image_files([*scans, tmp_path / "stray.png"], 32, 1).bit_depth == 16
    warned = [r for r in caplog.records if r.levelno == logging.WARNING and "need 16 bits" in r.getMessage()]
    assert len(warned) == 1 and "1 of 6" in warned[0].getMessage() and "stray.png" in warned[0].getMessage()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="skipganomaly"):
        read_image_files([scans[0], _twelve_bit(tmp_path / "dim.png", 0.2)], 32, 1)
    said = [r for r in caplog.records if "need 12 bits" in r.getMessage()]
    assert len(said) == 1 and said[0].levelno == logging.INFO


@pytest.mark.parametrize("peak", [0.99, 1.01, 500.0])
def test_floating_point_files_are_read_on_one_scale(tmp_path: Path, peak: float) -> None:
    """A float TIFF is read as 0..1 like a float array, whatever its own maximum: one at 0.5 stays mid-grey beside a
    0.99 pixel, and one past 1 (a stray 1.01, CT numbers) is refused with its range, not read as black or white."""
    from skipganomaly.data.images import read_image_files

    values = np.full((16, 16), 0.5, dtype=np.float32)
    values[0, 0] = peak
    Image.fromarray(values, mode="F").save(tmp_path / "f.tif")
    if peak <= 1:
        assert int(load_image(tmp_path / "f.tif", 16, 1)[0, 8, 8]) == 128
    else:
        with pytest.raises(DataError, match=f"must lie in \\[0, 1\\].*0.5 to {peak:.4g}"):
            load_image(tmp_path / "f.tif", 16, 1)
        Image.fromarray(np.full((16, 16), 0.25, dtype=np.float32), mode="F").save(tmp_path / "g.tif")
        assert read_image_files([tmp_path / "f.tif", tmp_path / "g.tif"], 16, 1).kept == [str(tmp_path / "g.tif")]


def test_mac_metadata_files_are_not_images(tmp_path: Path) -> None:
    good = write_images(tmp_path, blob_images(2))
    (tmp_path / "._img_000.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    assert list_image_files(tmp_path) == good


def test_a_folder_lists_what_a_user_sees_as_its_images(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The image types of IMAGE_EXTENSIONS (GIF, WebP, JFIF too), linked subfolders (a link loop read
    once), no hidden files or folders (thumbnail caches, trash), and a word about what was left out."""
    import os

    folder = tmp_path / "data"
    good = write_images(folder, blob_images(2))
    for suffix in (".gif", ".webp", ".jfif"):
        Image.fromarray(blob_images(1)[0]).save(folder / f"more{suffix}", format="JPEG" if suffix == ".jfif" else None)
        good.append(folder / f"more{suffix}")
    elsewhere = tmp_path / "camera2"
    good += [folder / "linked" / p.name for p in write_images(elsewhere, blob_images(2), prefix="cam")]
    os.symlink(elsewhere, folder / "linked")
    os.symlink(folder, folder / "linked-loop")
    write_images(folder / ".thumbnails", blob_images(1))
    Image.fromarray(blob_images(1)[0]).save(folder / ".hidden.png")
    (folder / "notes.txt").write_text("not an image")
    os.symlink(tmp_path / "gone.png", folder / "broken.png")
    with caplog.at_level(logging.INFO, logger="skipganomaly"):
        assert list_image_files(folder) == sorted(good)
    assert "broken link" in caplog.text and "broken.png" in caplog.text
    assert "1 .txt" in caplog.text


def test_transparent_pixels_are_black_whatever_colour_lies_under_them(tmp_path: Path) -> None:
    """Two PNGs a viewer shows alike (the right half transparent) load alike, whatever the colour stored under
    the transparent pixels; a tRNS-transparent palette image too."""
    rgba = np.zeros((16, 16, 4), dtype=np.uint8)
    rgba[..., 0], rgba[:, :8, 3] = 200, 255
    Image.fromarray(rgba, "RGBA").save(tmp_path / "under-black.png")
    rgba[:, 8:, :3] = 255
    Image.fromarray(rgba, "RGBA").save(tmp_path / "under-white.png")
    for channels in (1, 3):
        black, white = (load_image(tmp_path / f"under-{c}.png", 16, channels) for c in ("black", "white"))
        assert np.array_equal(black, white) and black[:, :, 8:].max() == 0 and black[0, 0, 0] > 0
    palette = Image.fromarray(np.array([[0, 1], [1, 1]], dtype=np.uint8), "P")
    palette.putpalette([255, 255, 255, 255, 0, 0])
    palette.save(tmp_path / "palette.png", transparency=0)
    assert load_image(tmp_path / "palette.png", 2, 3)[:, 0, 0].tolist() == [0, 0, 0]


def test_a_file_of_several_frames_says_that_only_the_first_is_read(tmp_path: Path,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    frames = [Image.fromarray(np.full((8, 8), value, dtype=np.uint8)) for value in (10, 200)]
    frames[0].save(tmp_path / "pages.tif", save_all=True, append_images=frames[1:])
    with caplog.at_level(logging.WARNING, logger="skipganomaly"):
        assert load_image(tmp_path / "pages.tif", 8, 1).max() == 10
    assert "several frames" in caplog.text and "pages.tif" in caplog.text
    caplog.clear()
    for i in range(5):  # in a folder: one line for all, not one per file
        frames[0].save(tmp_path / f"more{i}.tif", save_all=True, append_images=frames[1:])
    with caplog.at_level(logging.WARNING, logger="skipganomaly"):
        load_image_files(sorted(tmp_path.glob("*.tif")), 8, 1)
    assert caplog.text.count("several frames") == 1 and "6 files" in caplog.text


def test_corrupt_files_are_skipped_with_a_warning_naming_them(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    good = write_images(tmp_path, blob_images(2))
    (tmp_path / "text.png").write_text("not an image")
    (tmp_path / "empty.jpg").write_bytes(b"")
    truncated = tmp_path / "trunc.png"
    truncated.write_bytes(good[0].read_bytes()[:60])
    paths = list_image_files(tmp_path)
    with caplog.at_level(logging.WARNING, logger="skipganomaly"):
        images, kept = load_image_files(paths, 32, 3)
    assert len(images) == 2 and sorted(kept) == sorted(map(str, good))
    for name in ("text.png", "empty.jpg", "trunc.png"):
        assert name in caplog.text
    assert "skipped 3 of 5" in caplog.text


def test_all_files_corrupt_is_a_data_error(tmp_path: Path) -> None:
    (tmp_path / "x.png").write_text("no")
    with pytest.raises(DataError, match="none of the 1 image files"):
        load_image_files([tmp_path / "x.png"], 32, 3)


def test_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="folder not found"):
        list_image_files(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="folder is empty"):
        list_image_files(tmp_path / "empty")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "readme.txt").write_text("hi")
    with pytest.raises(DataError, match="no images of a known type"):
        list_image_files(tmp_path / "docs")


def test_truncated_jpeg_is_skipped_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    good = tmp_path / "good.jpg"
    Image.fromarray(blob_images(1, size=64)[0]).save(good, quality=90)
    (tmp_path / "cut.jpg").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with caplog.at_level(logging.WARNING, logger="skipganomaly"):
        images, kept = load_image_files([good, tmp_path / "cut.jpg"], 32, 3)
    assert kept == [str(good)] and "cut.jpg" in caplog.text and "skipped 1 of 2" in caplog.text


def test_cmyk_jpeg_is_converted_to_rgb(tmp_path: Path) -> None:
    path = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (40, 40), (255, 0, 0, 0)).save(path, quality=95)  # pure cyan ink
    with Image.open(path) as img:
        assert img.mode == "CMYK"
    r, g, b = load_image(path, 32, 3).reshape(3, -1).mean(1)
    assert r < 30 and g > 225 and b > 225


def test_exif_rotated_jpeg_is_turned_upright(tmp_path: Path) -> None:
    stored = np.zeros((20, 40), dtype=np.uint8)
    stored[:, 20:] = 255  # stored: left half black, right half white
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation 6: display rotated 90 degrees clockwise, so the left half ends on top
    path = tmp_path / "rotated.jpg"
    Image.fromarray(stored).save(path, exif=exif, quality=95)
    upright = load_image(path, 32, 1)[0].astype(float)
    assert upright[:12].mean() < 40 and upright[-12:].mean() > 215
    from skipganomaly.data.images import read_image_files  # its shape is the upright one, 20 wide and 40 high
    assert read_image_files([path], 32, 1).form.size == (20, 40)


def test_a_damaged_exif_block_costs_nothing_but_its_notes(tmp_path: Path) -> None:
    """A camera's EXIF block whose tag points past the file's end: the image reads, upright as stored, and Pillow's
    notes about the block do not leak to the user, once per file."""
    import struct
    import warnings

    from skipganomaly.data.images import read_image_files

    entry = struct.pack("<HHII", 0x010F, 2, 10, 0x1000)  # a 10-byte text tag stored past the end
    tiff = b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", 1) + entry + struct.pack("<I", 0)
    Image.fromarray(np.full((20, 20), 77, np.uint8)).save(tmp_path / "bad.jpg", exif=b"Exif\x00\x00" + tiff)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert abs(int(load_image(tmp_path / "bad.jpg", 32, 1)[0, 5, 5]) - 77) <= 2
        assert read_image_files([tmp_path / "bad.jpg"], 32, 1).kept == [str(tmp_path / "bad.jpg")]
    assert [str(w.message) for w in caught] == []


def test_one_pixel_image_is_scaled_up(tmp_path: Path) -> None:
    path = tmp_path / "dot.png"
    Image.new("RGB", (1, 1), (10, 200, 30)).save(path)
    image = load_image(path, 32, 3)
    assert image.shape == (3, 32, 32)
    assert tuple(image[:, 16, 16]) == (10, 200, 30) and image.std(axis=(1, 2)).max() == 0


def test_huge_jpeg_is_downscaled_without_decoding_it_whole(tmp_path: Path) -> None:
    """10000 x 10000 RGB is 300 MB decoded; the loader must stay far below that (measured in a fresh
    process: peak RSS growth while loading)."""
    path = tmp_path / "huge.jpg"
    big = Image.new("RGB", (10000, 10000), (20, 20, 20))
    big.paste((230, 230, 230), (0, 5000, 10000, 10000))  # bottom half bright
    big.save(path, quality=70)
    del big
    code = (
        "import resource, sys; from skipganomaly.data import load_image; "
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss; "
        f"img = load_image({str(path)!r}, 32, 3); "
        "grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before; "
        "print(grown, img.shape, int(img[:, :12].mean()), int(img[:, -12:].mean()))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    grown_kib, *rest = out.stdout.split(maxsplit=1)
    assert int(grown_kib) < 60 * 1024, f"loading grew RSS by {int(grown_kib) // 1024} MiB"
    assert "(3, 32, 32)" in rest[0]
    top, bottom = map(int, rest[0].rsplit(maxsplit=2)[-2:])
    assert top < 40 and bottom > 200


def test_non_ascii_file_and_folder_names(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    folder = tmp_path / "données_画像"
    good = write_images(folder, blob_images(2), prefix="ünïcødé_😀")
    (folder / "défectueux_壊れた.png").write_text("not an image")
    with caplog.at_level(logging.WARNING, logger="skipganomaly"):
        images, kept = load_image_files(list_image_files(folder), 32, 3)
    assert len(images) == 2 and sorted(kept) == sorted(map(str, good))
    assert "défectueux_壊れた.png" in caplog.text


def test_threaded_loading_keeps_the_order_and_equals_one_thread(tmp_path: Path,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    """Decoding in threads writes each image to its own row; unreadable files are dropped without moving
    the others out of order (150 files: several 64-file chunks, bad files in the first and last)."""
    good = write_images(tmp_path, blob_images(150, seed=4))
    for i in (3, 70, 149):
        good[i].write_text("not an image")
    paths = sorted(good)
    with caplog.at_level(logging.WARNING, logger="skipganomaly"):
        one, kept_one = load_image_files(paths, 32, 3, threads=1)
        many, kept_many = load_image_files(paths, 32, 3, threads=3)
    expected = [str(p) for i, p in enumerate(paths) if i not in (3, 70, 149)]
    assert kept_one == kept_many == expected
    assert torch.equal(one, many) and one.shape == (147, 3, 32, 32)
    for row in (0, 68, 146):
        assert np.array_equal(many[row].numpy(), load_image(expected[row], 32, 3))
    assert caplog.text.count("skipped 3 of 150") == 2


def test_large_image_warning_stays_silent_in_reader_threads(tmp_path: Path) -> None:
    """Images between one and two times Pillow's pixel limit are legitimate input: no warning escapes,
    from the reader threads either."""
    path = tmp_path / "large.jpg"
    Image.new("RGB", (10000, 10000), (90, 90, 90)).save(path, quality=50)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        images, _ = load_image_files([path, path], 32, 3, threads=2)
    assert images.shape == (2, 3, 32, 32)
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]


def test_a_list_of_arrays_of_different_sizes_is_resized_like_pil_images() -> None:
    small, large = np.full((20, 30, 3), 10, np.uint8), np.full((40, 40, 3), 200, np.uint8)
    out = as_image_tensor([small, large], 32, 3)
    assert out.shape == (2, 3, 32, 32) and int(out[0].max()) == 10 and int(out[1].min()) == 200


def test_images_brighter_than_the_detectors_depth_are_clipped_with_a_warning(tmp_path: Path,
                                                                            caplog: pytest.LogCaptureFixture) -> None:
    """Files and PIL images alike: a 16-bit image given to a detector trained on 12-bit files is read at 12 bits
    (its bright part saturates) and the call says so once."""
    from skipganomaly.data import read_image_files, read_images

    values = {"bright": 65535, "brighter": 50000, "in-range": 4095}
    pictures = [Image.fromarray(np.full((8, 8), v, dtype=np.uint16)) for v in values.values()]
    for name, picture in zip(values, pictures):
        picture.save(tmp_path / f"{name}.png")

    def from_file() -> tuple[torch.Tensor, int | None]:
        loaded = read_image_files([tmp_path / f"{name}.png" for name in values], 8, 1, bit_depth=12)
        return loaded.images, loaded.bit_depth

    def from_pictures() -> tuple[torch.Tensor, int | None]:
        read = read_images(pictures, 8, 1, bit_depth=12)
        return read.images, read.bit_depth

    for read in (from_pictures, from_file):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="skipganomaly"):
            images, depth = read()
        assert depth == 12 and images.amax(dim=(1, 2, 3)).tolist() == [255, 255, 255]
        assert caplog.text.count("above the 12-bit range") == 1 and "2 images hold values" in caplog.text
    assert "clipped to it: bright.png, brighter.png" in caplog.text  # files are named (PIL images have no name)


def test_a_set_that_mixes_grayscale_and_colour_or_sizes_says_which_files_differ(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Every file is converted to the model's channels and size; a stray grayscale scan among colour ones, or a
    frame of another camera, is named in one line each, and a uniform set gets neither line."""
    from skipganomaly.data import read_image_files

    rng = np.random.default_rng(0)
    for i in range(5):
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(tmp_path / f"colour{i}.png")
    uniform = sorted(tmp_path.iterdir())
    Image.fromarray(rng.integers(0, 255, (40, 40), dtype=np.uint8)).save(tmp_path / "scan.png")
    Image.fromarray(rng.integers(0, 255, (160, 120, 3), dtype=np.uint8)).save(tmp_path / "frame.jpg")  # as stored,
    # not as decoded: a JPEG is decoded at a reduced scale
    with caplog.at_level(logging.INFO, logger="skipganomaly"):
        read_image_files(sorted(tmp_path.iterdir()), 16, 3)
    assert "1 of 7 images are grayscale, the others colour; all are read as RGB: scan.png" in caplog.text
    assert "1 of 7 images differ in size from the most common, 40x40 (120x160); all are resized to 16x16: frame.jpg" \
        in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="skipganomaly"):
        read_image_files(uniform, 16, 1)
    assert "grayscale" not in caplog.text and "differ in size" not in caplog.text


def test_a_large_array_is_resized_a_chunk_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """Scoring a big array must not make a float copy of all of it (2,000 images of 256 x 256 x 3 took 1.7 GiB):
    the resize runs on chunks, and gives the same pixels as one pass."""
    import torch.nn.functional as F

    from skipganomaly.data import images as images_module

    x = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (150, 3, 40, 40), dtype=np.uint8))
    whole = images_module.resize_uint8(x, 32, chunk=1000)
    seen: list[int] = []
    real = F.interpolate

    def counting(t: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        seen.append(len(t))
        return real(t, *args, **kwargs)

    monkeypatch.setattr(images_module.F, "interpolate", counting)
    assert torch.equal(images_module.as_image_tensor(x.numpy(), 32, 3), whole) and max(seen) <= 64


@pytest.mark.parametrize("as_tensor", [False, True])
def test_float_range_check_names_the_range_of_the_finite_values(as_tensor: bool) -> None:
    """One rule for float files, arrays and .npz: [0, 1] passes; past it, or with a NaN, the error names the range of
    the finite values (a NaN must not hide it) and says NaN is there; float16 tensors are checked as well."""
    import torch

    from skipganomaly.data.images import check_unit_floats

    def values(*v: float) -> object:
        a = np.array(v, dtype=np.float32)
        return torch.from_numpy(a).half() if as_tensor else a

    check_unit_floats(values(0.0, 0.5, 1.0), "x", "fix")
    with pytest.raises(DataError, match=r"^x must lie in \[0, 1\].*got 0\.25 to 1\.5; fix$"):
        check_unit_floats(values(0.25, 1.5), "x", "fix")
    with pytest.raises(DataError, match=r"got -0\.5 to 0\.75 and NaN or infinite values; fix$"):
        check_unit_floats(values(-0.5, float("nan"), 0.75), "x", "fix")
    with pytest.raises(DataError, match=r"got 0\.5 to 0\.5 and NaN or infinite values"):
        check_unit_floats(values(0.5, float("inf")), "x", "fix")
    with pytest.raises(DataError, match=r"got only NaN or infinite values; fix$"):
        check_unit_floats(values(float("nan")), "x", "fix")


def test_a_grey_palette_gif_is_grayscale_among_grayscale_files(tmp_path: Path,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    """A GIF stores greys in a palette: it is a grayscale image, not a colour one that a mixed-set warning names; a
    palette with a colour in it is colour."""
    import logging

    from skipganomaly.data.images import read_image_files

    write_images(tmp_path, blob_images(3, channels=1))
    grey = Image.fromarray(blob_images(1, channels=1)[0, ..., 0]).convert("P")
    grey.putpalette([v for i in range(256) for v in (i, i, i)])
    grey.save(tmp_path / "grey.gif")
    files = sorted(tmp_path.glob("*.*"))
    with caplog.at_level(logging.WARNING, logger="skipganomaly"):
        read_image_files(files, 32, 1)
    assert "colour" not in caplog.text
    grey.putpalette([v for i in range(256) for v in ((i, i, i) if i else (255, 0, 0))])
    grey.save(tmp_path / "grey.gif")
    with caplog.at_level(logging.WARNING, logger="skipganomaly"):
        read_image_files(files, 32, 1)
    assert "1 of 4 images are colour" in caplog.text and "grey.gif" in caplog.text


def test_files_stored_unlike_the_training_files_are_warned_about(tmp_path: Path,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    """A detector remembers how its training files were stored (shape, colour), also through save and load: a strip
    stretched to a square may score high for its shape alone, and a colour frame where grayscale ones were trained
    is another camera mode; each is said when scored. Same-shape files of another size, and a detector trained on
    arrays, say nothing."""
    import logging

    from skipganomaly import Detector

    train = write_images(tmp_path / "train", blob_images(12, channels=1, size=40))
    det = Detector("knn", in_channels=1, progress=False, val_fraction=0.25).fit([str(p) for p in train])
    assert det.file_form_ is not None and (det.file_form_.colour, det.file_form_.size) == (False, (40, 40))
    det.save(tmp_path / "d.pt")
    loaded = Detector.load(tmp_path / "d.pt")
    assert loaded.file_form_ == det.file_form_
    rng = np.random.default_rng(0)
    odd = tmp_path / "odd"
    odd.mkdir()
    Image.fromarray(rng.integers(0, 255, (20, 80), dtype=np.uint8)).save(odd / "strip.png")
    Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(odd / "rgb.png")
    Image.fromarray(rng.integers(0, 255, (64, 64), dtype=np.uint8)).save(odd / "bigger.png")
    caplog.clear()  # the fit's own (a threshold on 3 held-out images)
    with caplog.at_level(logging.WARNING, logger="skipganomaly"):
        loaded.decision_function([str(odd / "bigger.png")])
        assert caplog.text == ""
        loaded.decision_function([str(odd / n) for n in ("strip.png", "rgb.png", "bigger.png")])
    assert "1 of 3 images are shaped unlike the training images (40x40): 80x20; each is stretched to 32x32" in caplog.text
    assert "1 of 3 images are colour where the training images were grayscale (another camera mode?): rgb.png" \
        in caplog.text
    from_arrays = Detector("knn", in_channels=1, progress=False).fit(blob_images(12, channels=1))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="skipganomaly"):
        from_arrays.decision_function([str(odd / "strip.png")])
    assert from_arrays.file_form_ is None and "shaped unlike" not in caplog.text


@pytest.mark.parametrize("channels", [3, 1])
def test_a_jpeg_a_few_times_the_model_size_reads_as_its_full_decode(tmp_path: Path, channels: int) -> None:
    """A JPEG is decoded at a reduced scale only far above the model's size: one 4 times as large scores as the
    same pixels saved losslessly (the README's serving recipe decodes in full), in colour and in grey."""
    rng = np.random.default_rng(0)
    smooth = Image.fromarray((rng.random((8, 8, 3)) * 255).astype(np.uint8)).resize((128, 128),
                                                                                   Image.Resampling.BICUBIC)
    noisy = (np.asarray(smooth).astype(float) + rng.normal(0, 12, (128, 128, 3))).clip(0, 255).astype(np.uint8)
    Image.fromarray(noisy).save(tmp_path / "photo.jpg", quality=95)
    Image.open(tmp_path / "photo.jpg").convert("RGB").save(tmp_path / "decoded.png")
    assert np.array_equal(load_image(tmp_path / "photo.jpg", 32, channels), load_image(tmp_path / "decoded.png", 32,
                                                                                       channels))
