"""Turn whatever the user has (files, PIL images, arrays, tensors) into one uint8 tensor [N, C, H, W].

Images are kept as uint8 and normalised per batch on the device, so a data set costs one byte per
pixel and no per-sample Python work happens in the training loop.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import struct
import warnings
from collections import Counter
from pathlib import Path
from typing import Any, Iterator, NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import PACKAGE_LOGGER, DataError
from ..files import few_names, readable_name

log = logging.getLogger(PACKAGE_LOGGER)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".jfif", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".pgm", ".ppm",
                    ".pnm")
BIT_DEPTHS = (8, 10, 12, 14, 16, 32)  # what integer image files hold, narrowest first
BYTE_DEPTH = BIT_DEPTHS[0]  # the depth of 8-bit images and arrays: what a detector trained on them reads files at


def to_unit_range(batch: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float in [-1, 1], the range every reference model trains on."""
    return batch.float().div_(127.5).sub_(1.0)


def load_image(path: str | os.PathLike[str], image_size: int, in_channels: int,
               bit_depth: int | None = None) -> np.ndarray:
    """Read one image file as uint8 [C, H, W], converted to the model's channels and size.

    JPEGs at least 8 times the model's size are decoded at a reduced scale (`draft`, to no less than
    DRAFT_MARGIN times the size, from which the resize gives what a full decode would, up to rounding: a mean 0.2
    grey levels measured from 512 px), so a 10000x10000 photo costs a few MB, not 300. Pillow's decompression-bomb
    guard stays on: images above twice its pixel limit (about 179 million pixels) are refused, which
    `load_image_files` turns into a skip with a warning; between one and two times the limit, they are read (a
    large scan or photo is a legitimate input).
    """
    with _large_images_allowed():
        image, _, several, _ = _read_image(path, image_size, in_channels, bit_depth)
    if several:
        log.warning("%s holds several frames (pages); only the first is read", path)
    return image


@contextlib.contextmanager
def _large_images_allowed() -> Iterator[None]:
    """Silence Pillow's warning for images between one and two times its pixel limit. Not thread-safe
    (it swaps the process's warning filters), so it is entered once around a pool of readers."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        # Pillow's notes on a file's damaged metadata (a camera's EXIF block: "Tag data larger than file", ...): the
        # pixels read, and a reader's warning would repeat for every such file
        warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")
        yield


class FileForm(NamedTuple):
    """How an image file is stored, before it is converted to the model's channels and size."""
    colour: bool  # False: grayscale (one channel, 8 bits or wider)
    size: tuple[int, int]  # width, height

    def as_dict(self) -> dict[str, Any]:
        return {"colour": self.colour, "size": list(self.size)}

    @classmethod
    def from_dict(cls, saved: Any) -> "FileForm | None":
        """The form `as_dict` wrote; None for anything else (a checkpoint from before it was recorded)."""
        try:
            w, h = (int(v) for v in saved["size"])
            return cls(bool(saved["colour"]), (w, h)) if w > 0 and h > 0 else None
        except (TypeError, KeyError, ValueError):
            return None


def common_form(forms: Sequence[FileForm | None]) -> FileForm | None:
    """How most of a set's files are stored: the majority's colour and the most common size (None: no file)."""
    known = [f for f in forms if f is not None]
    if not known:
        return None
    colour = 2 * sum(f.colour for f in known) > len(known)
    return FileForm(colour, Counter(f.size for f in known).most_common(1)[0][0])


ASPECT_TOLERANCE = 0.05  # relative difference of width/height beyond which an image is said to be stretched otherwise


EXIF_ORIENTATION = 0x0112  # the tag whose values 5 to 8 turn an image a quarter (`ImageOps.exif_transpose`)
GREY_MODES = ("1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "F")


def _orientation(img: Image.Image) -> int:
    """The EXIF orientation (1: upright as stored); 1 where the EXIF block cannot be read, so a damaged one costs the
    turn, not the image."""
    try:
        return int(img.getexif().get(EXIF_ORIENTATION, 1))
    except (OSError, ValueError, TypeError, SyntaxError, struct.error):
        return 1


def _grey_palette(img: Image.Image) -> bool:
    """A palette image whose colours are all greys (a grayscale GIF): grayscale, not colour."""
    if img.mode not in ("P", "PA"):
        return False
    palette = img.getpalette() or []
    return all(palette[i] == palette[i + 1] == palette[i + 2] for i in range(0, len(palette) - 2, 3))


def _upright(img: Image.Image) -> tuple[int, int]:
    """An open image's (width, height) as shown: turned by its EXIF orientation (values 5 to 8 turn a quarter)."""
    return img.size[::-1] if _orientation(img) in (5, 6, 7, 8) else img.size


def upright_size(path: str | os.PathLike[str]) -> tuple[int, int] | None:
    """A file's (width, height) as shown, turned by its EXIF orientation, from its header alone; None where it cannot
    be read."""
    try:
        with Image.open(path) as img:
            return _upright(img)
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None


DRAFT_MARGIN = 4  # a JPEG is decoded at a reduced scale only down to this many times the model's size


def _read_image(path: str | os.PathLike[str], image_size: int, in_channels: int,
                bit_depth: int | None = None) -> tuple[np.ndarray, int | None, bool, FileForm]:
    """The image (wide integer images scaled by `bit_depth`, else by their own), the depth its own values
    need (None: not an integer image wider than 8 bits), whether the file holds further frames, and how
    it is stored."""
    try:
        with Image.open(path) as img:
            # a multi-page TIFF or an animated GIF: one image per file (a camera's MPO JPEG holds a preview
            # as its second picture: the first is the photo)
            several = getattr(img, "n_frames", 1) > 1 and img.format != "MPO"
            upright = _upright(img)
            form = FileForm(img.mode not in GREY_MODES and not _grey_palette(img), upright)  # before draft shrinks it
            # in the file's own colours (converted below, as any file), at no less than DRAFT_MARGIN times the model's
            # size: the resize then gives what a full decode would, up to rounding
            img.draft(None, (DRAFT_MARGIN * image_size, DRAFT_MARGIN * image_size))
            if _orientation(img) != 1:
                img = ImageOps.exif_transpose(img)
            own = wide_bit_depth(img)
            image = pil_to_array(img, image_size, in_channels, bit_depth if bit_depth is not None else own)
            return image, own, several, form
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError,
            DataError) as err:
        raise DataError(f"cannot read image {path}: {err}") from None


# Integer arrays whose largest value is at most this are said to be nearly black: a 0/1 mask or 0..16 digits
# given as integers, read as 0..255.
NARROW_INTEGERS = 16
WIDE_MODES = ("I;16", "I;16B", "I;16L", "I")  # Pillow's modes of integer images wider than 8 bits


def _is_wide(img: Image.Image) -> bool:
    return img.mode in WIDE_MODES


def wide_bit_depth(img: Image.Image) -> int | None:
    """The narrowest of `BIT_DEPTHS` that holds this image's largest value (None: not a wide integer image)."""
    if not _is_wide(img):
        return None
    return narrowest_bit_depth(int(np.asarray(img).max()))


def narrowest_bit_depth(peak: float) -> int:
    """The narrowest of `BIT_DEPTHS` whose range holds `peak` (the widest for anything above)."""
    return next(bits for bits in BIT_DEPTHS if peak <= 2 ** bits - 1 or bits == BIT_DEPTHS[-1])


def common_bit_depth(needed: Sequence[int], bit_depth: int | None, names: Sequence[str] = ()) -> int | None:
    """The one depth a set of wide integer images is read at, given the depth each one's values `needed`:
    `bit_depth` (a detector's; images that need more are clipped, with a warning naming them from `names`,
    the images' file names where known), else the widest needed."""
    if not len(needed):
        return bit_depth
    if bit_depth is None:
        return int(max(needed))
    above = [i for i, d in enumerate(needed) if d > bit_depth]
    if above:
        log.warning("%d images hold values above the %d-bit range the detector reads files at (its training images'; "
                    "8 for 8-bit images or arrays, and for arrays from wider files fitted without fit(..., bit_depth=)); "
                    "they are clipped to it%s", len(above), bit_depth,
                    f": {few_names([names[i] for i in above])}" if names else "")
    return bit_depth


def on_black(img: Image.Image) -> Image.Image:
    """An image with transparency (RGBA, LA, PA, ...; a tRNS chunk) laid on black, as RGBA: what a viewer shows on a
    dark background, not the colour stored under transparent pixels; any other image as it is."""
    if "A" in img.mode or "a" in img.mode or "transparency" in img.info:
        return Image.alpha_composite(Image.new("RGBA", img.size, (0, 0, 0, 255)), img.convert("RGBA"))
    return img


def check_unit_floats(values: np.ndarray | torch.Tensor, what: str, fix: str) -> None:
    """Refuse floating-point pixels outside [0, 1], naming their range.

    Floats are read on one scale, 0..1, for every image (float files, arrays and .npz alike), never by each image's
    own maximum, so an image's brightness does not depend on the others; a stray 1.01 or one NaN is an error, not an
    image read as black or white. `what` names the values, `fix` says what to do."""
    if isinstance(values, torch.Tensor):
        finite = torch.isfinite(values)
        all_finite = bool(finite.all())
        kept = values if all_finite else values[finite]
        lo, hi = (float(kept.min()), float(kept.max())) if kept.numel() else (math.nan, math.nan)
    else:
        finite = np.isfinite(values)
        all_finite = bool(finite.all())
        kept = values if all_finite else values[finite]
        lo, hi = (float(kept.min()), float(kept.max())) if kept.size else (math.nan, math.nan)
    if all_finite and not lo < 0 and not hi > 1:
        return
    found = (f"got {lo:.4g} to {hi:.4g}{'' if all_finite else ' and NaN or infinite values'}" if not math.isnan(lo)
             else "got only NaN or infinite values")
    raise DataError(f"{what} must lie in [0, 1] (floats are read as 0..1 for every image), {found}; {fix}")


def pixel_digest(image: torch.Tensor | np.ndarray) -> bytes:
    """A 16-byte hash of an image's pixels as read: what tells a copy of an image (another file, the same pixels)."""
    data = image.numpy() if isinstance(image, torch.Tensor) else image
    return hashlib.blake2b(np.ascontiguousarray(data).tobytes(), digest_size=16).digest()


def find_copies(images: Sequence[torch.Tensor | np.ndarray]) -> list[tuple[int, int]]:
    """(first, copy) index pairs of images with the same pixels as an earlier one (`pixel_digest`)."""
    first: dict[bytes, int] = {}
    copies: list[tuple[int, int]] = []
    for i, image in enumerate(images):
        key = pixel_digest(image)
        if key in first:
            copies.append((first[key], i))
        else:
            first[key] = i
    return copies


def wide_to_bytes(values: np.ndarray, depth: int) -> np.ndarray:
    """Integers of a `depth`-bit image as uint8: divided by the depth's top value, scaled to 0..255 (values above the
    top clip). One rule for 16-bit files and wide integer arrays, so a frame scores the same either way."""
    return np.clip(values.astype(np.float64) / (2.0 ** depth - 1) * 255.0, 0, 255).astype(np.uint8)


def pil_to_array(img: Image.Image, image_size: int, in_channels: int, bit_depth: int | None = None) -> np.ndarray:
    """Convert a PIL image to uint8 [C, H, W]; 16-bit, palette, alpha and CMYK modes are handled.

    Integer images wider than 8 bits are scaled by the top of `bit_depth` (values above it clip), by default
    the narrowest common depth that holds the image's maximum (`BIT_DEPTHS`), so 12-bit data stored in a 16-bit
    PNG (medical and inspection cameras) fills 0..255 instead of 0..15. A data set is read at one depth, the
    widest of its images (`read_image_files`), and a detector scores at the depth it was trained at: an image
    four times darker must stay darker, not be brightened by its own scale. An image with transparency is laid on
    black, so what is scored is what a viewer shows on a dark background, not the colour stored under
    transparent pixels (which viewers do not show and editors fill with anything)."""
    if _is_wide(img):
        depth = bit_depth if bit_depth is not None else wide_bit_depth(img)
        img = Image.fromarray(wide_to_bytes(np.asarray(img), depth), mode="L")
    elif img.mode == "F":  # floats on one scale for every image, as float arrays: 0..1 (no per-image guess)
        arr = np.asarray(img, dtype=np.float64)
        check_unit_floats(arr, "a floating-point image", "scale it (e.g. a CT window) and save it so, or as 8- or "
                          "16-bit integers")
        img = Image.fromarray(np.round(arr * 255.0).astype(np.uint8))
    img = on_black(img)
    img = img.convert("L" if in_channels == 1 else "RGB")
    if img.size != (image_size, image_size):
        img = img.resize((image_size, image_size), Image.Resampling.BILINEAR)
    arr = np.array(img, dtype=np.uint8)  # a copy: torch warns on (and cannot share) Pillow's read-only buffer
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1).copy()


class LoadedFiles(NamedTuple):
    images: torch.Tensor  # uint8 [N, C, H, W]
    kept: list[str]  # the paths read, in order (unreadable ones left out)
    bit_depth: int  # the depth wide integer images were, or would be, read at (the one given, else BYTE_DEPTH)
    form: FileForm | None = None  # how most of them are stored (`common_form`)
    forms: tuple[FileForm | None, ...] = ()  # how each kept file is stored
    several: tuple[str, ...] = ()  # the files of several frames, of which the first was read
    narrow: tuple[str, ...] = ()  # files of 8 bits (or floats) read for a detector trained on wider integer files


def load_image_files(
    paths: Sequence[str | os.PathLike[str]], image_size: int, in_channels: int, progress: bool = False,
    threads: int | None = None, bit_depth: int | None = None, trained_on: FileForm | None = None,
) -> tuple[torch.Tensor, list[str]]:
    """The images and the paths kept of `read_image_files`."""
    loaded = read_image_files(paths, image_size, in_channels, progress, threads, bit_depth, trained_on)
    return loaded.images, loaded.kept


def read_image_files(
    paths: Sequence[str | os.PathLike[str]], image_size: int, in_channels: int, progress: bool = False,
    threads: int | None = None, bit_depth: int | None = None, trained_on: FileForm | None = None,
    say: bool = True,
) -> LoadedFiles:
    """Load many files; unreadable ones are skipped with a warning naming each file. With `trained_on` (how a
    detector's training files were stored), files of another shape or colour are warned about (`_say_unlike`).
    `say=False` leaves the warnings about the set as a whole (`say_read_files`) to a caller that reads a set in
    parts, so that each is said once for the whole set.

    Integer images wider than 8 bits are all scaled by one bit depth: `bit_depth` (a detector's, from its
    training images; brighter values clip, with a warning), or else the widest their values need (images whose
    own maximum needs less are read again at it, with a warning naming the few that set it), so that their
    brightness stays comparable. Scoring always passes a detector's depth (8 for one trained on 8-bit images),
    so no image's score depends on the others read beside it.

    Files are decoded by `threads` threads (default: the usable CPUs, at most 8; Pillow releases the
    GIL while it decodes and resizes) straight into one preallocated uint8 array, so the peak memory is
    the result, not the result plus a list of per-image arrays. Returns the images and the paths that
    were kept, in order. Fails only if none can be read.
    """
    from concurrent.futures import ThreadPoolExecutor

    from ..progress import progress_bar

    out = np.empty((len(paths), in_channels, image_size, image_size), dtype=np.uint8)
    ok = np.zeros(len(paths), dtype=bool)
    depths = np.zeros(len(paths), dtype=np.int64)  # the depth each wide image needs (0: not wide)
    several: list[str] = []
    forms: list[FileForm | None] = [None] * len(paths)

    def read(chunk: Sequence[int], depth: int | None, first: bool) -> int:
        for i in chunk:
            try:
                out[i], need, more, forms[i] = _read_image(paths[i], image_size, in_channels, depth)
                depths[i] = need or 0
                ok[i] = True
                if more and first:  # list.append is atomic under the GIL
                    several.append(str(paths[i]))
            except DataError as err:
                ok[i] = False  # also a file that changed between the two passes
                log.warning("%s; skipped", err)
        return len(chunk)

    def in_pool(indices: Sequence[int], depth: int | None, desc: str, first: bool = False) -> None:
        chunks = [indices[start:start + 64] for start in range(0, len(indices), 64)]
        pool = ThreadPoolExecutor(max(1, min(threads or _usable_cpus(), 8, len(chunks))))
        try:
            with _large_images_allowed(), progress_bar(total=len(indices), desc=desc, unit="img",
                                                       disable=not progress, leave=False) as bar:
                for done in pool.map(lambda chunk: read(chunk, depth, first), chunks):
                    bar.update(done)
        finally:
            pool.shutdown(cancel_futures=True)  # on Ctrl-C, stop after the chunks being read, not after all

    in_pool(range(len(paths)), bit_depth, "loading images", first=True)
    wide = np.flatnonzero(ok & (depths > 0))
    depth = common_bit_depth(depths[wide].tolist(), bit_depth, [str(paths[i]) for i in wide])
    again = np.flatnonzero(ok & (depths > 0) & (depths != depth)).tolist() if bit_depth is None else []
    if again:  # wide images whose own maximum needs less than the set's: read again at the set's
        _say_common_depth([str(paths[i]) for i in wide if depths[i] == depth], len(wide), depth)
        in_pool(again, depth, f"reading at {depth} bits")
    kept = np.flatnonzero(ok)
    if len(kept) == 0:
        if say and several:
            say_read_files(len(paths), [], [], several, image_size, in_channels, trained_on)
        raise DataError(f"none of the {len(paths)} image files could be read")
    kept_forms = [forms[i] for i in kept]
    kept_paths = [str(paths[i]) for i in kept]
    narrow = [str(paths[i]) for i in kept if depths[i] == 0] if bit_depth is not None and bit_depth > BYTE_DEPTH else []
    if say:
        say_read_files(len(paths), kept_paths, kept_forms, several, image_size, in_channels, trained_on, narrow,
                       bit_depth)
    if len(kept) < len(paths):
        for dst, src in enumerate(kept):  # close the gaps in place, keeping the order
            out[dst] = out[src]
    return LoadedFiles(torch.from_numpy(out[:len(kept)]), kept_paths,
                       depth if depth is not None and depths[kept].any() else bit_depth or BYTE_DEPTH,
                       common_form(kept_forms), tuple(kept_forms), tuple(several), tuple(narrow))


def say_read_files(given: int, kept: Sequence[str], forms: Sequence[FileForm | None], several: Sequence[str],
                   image_size: int, in_channels: int, trained_on: FileForm | None, narrow: Sequence[str] = (),
                   bit_depth: int | None = None) -> None:
    """The warnings about a set of `given` files as a whole, of which `kept` (stored as `forms`) were read: files of
    several frames, a mix of grey and colour (or sizes), files unlike the training files (of another form, or, with
    `narrow`, 8-bit or float files for a detector whose training files were `bit_depth` bits), and how many were
    skipped."""
    if narrow:
        log.warning("%d of %d files are 8-bit (or floats) where the detector's training files were %d-bit: each is "
                    "read on its own scale, which is not the training images' brightness, so they may score as "
                    "anomalous whatever they show; score files stored as the training files were: %s", len(narrow),
                    len(kept), bit_depth, few_names(narrow, whole=True))
    if several:
        log.warning("%s several frames (multi-page TIFF, animated GIF); only the first of each is read: %s",
                    f"{len(several)} files hold" if len(several) > 1 else "1 file holds", few_names(several, whole=True))
    if not kept:
        return
    _say_mixed_forms(kept, forms, image_size, in_channels)
    if trained_on is not None:
        _say_unlike(kept, forms, trained_on, image_size)
    if len(kept) < given:
        log.warning("skipped %d of %d image files that could not be read", given - len(kept), given)


def _say_unlike(paths: Sequence[str], forms: Sequence[FileForm | None], trained_on: FileForm, image_size: int) -> None:
    """A warning for files stored unlike a detector's training files: stretched by another aspect ratio (a strip
    where squares were trained: it may score high for its shape alone), or colour where the training files were
    grayscale and the other way round (another camera mode). Sizes of the same shape say nothing: all are resized."""
    w0, h0 = trained_on.size
    other_shape = [(p, f) for p, f in zip(paths, forms)
                   if f is not None and abs((f.size[0] / f.size[1]) / (w0 / h0) - 1) > ASPECT_TOLERANCE]
    if other_shape:
        shapes = Counter(f.size for _, f in other_shape)
        log.warning("%d of %d images are shaped unlike the training images (%dx%d): %s; each is stretched to %dx%d, so "
                    "it may score high for its shape alone: %s", len(other_shape), len(paths), w0, h0,
                    ", ".join(f"{w}x{h}" for (w, h), _ in shapes.most_common(3)) + (" ..." if len(shapes) > 3 else ""),
                    image_size,
                    image_size, few_names([p for p, _ in other_shape]))
    other_colour = [p for p, f in zip(paths, forms) if f is not None and f.colour != trained_on.colour]
    if other_colour:
        kinds = ("colour", "grayscale") if trained_on.colour else ("grayscale", "colour")
        log.warning("%d of %d images are %s where the training images were %s (another camera mode?): %s",
                    len(other_colour), len(paths), kinds[1], kinds[0], few_names(other_colour))


def _say_common_depth(widest: Sequence[str], n_wide: int, depth: int) -> None:
    """A set is read at the depth its brightest images need, which darkens the others: worth a warning when
    those images are a minority (a stray file, or one bright pixel, then sets the scale of every image)."""
    level = logging.WARNING if 2 * len(widest) < n_wide else logging.INFO
    log.log(level, "%d of %d integer images wider than 8 bits need %d bits (%s); all are read at that depth, so the "
            "other %d are darker than each alone%s", len(widest), n_wide, depth, few_names(widest), n_wide - len(widest),
            ": if those few are strays, remove them" if level == logging.WARNING else "")


def _say_mixed_forms(paths: Sequence[str], forms: Sequence[FileForm | None], image_size: int,
                     in_channels: int) -> None:
    """One line each when a set of files mixes grayscale and colour images (a warning: a stray scan of another
    kind) or sizes (information: photos often differ in size): all are converted to the model's channels and size
    without complaint, which hides a stray image that may then set the threshold or dominate a test."""
    known = [(path, form) for path, form in zip(paths, forms) if form is not None]
    colour = [path for path, form in known if form.colour]
    if 0 < len(colour) < len(known):
        grey = [path for path, form in known if not form.colour]
        fewer, kind = (grey, "grayscale") if len(grey) <= len(colour) else (colour, "colour")
        log.warning("%d of %d images are %s, the others %s; all are read as %s: %s", len(fewer), len(known), kind,
                    "colour" if kind == "grayscale" else "grayscale", "grayscale" if in_channels == 1 else "RGB",
                    few_names(fewer))
    sizes = Counter(form.size for _, form in known)
    if len(sizes) > 1:
        common = sizes.most_common(1)[0][0]
        other = [path for path, form in known if form.size != common]
        log.info("%d of %d images differ in size from the most common, %dx%d (%s); all are resized to %dx%d: %s",
                 len(other), len(known), *common, ", ".join(f"{w}x{h}" for (w, h), _ in sizes.most_common()[1:4])
                 + (" ..." if len(sizes) > 4 else ""), image_size, image_size, few_names(other))


def _usable_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def as_image_tensor(images: Any, image_size: int, in_channels: int, aligned: bool = True,
                    bit_depth: int | None = None) -> torch.Tensor:
    """The images of `read_images`."""
    return read_images(images, image_size, in_channels, aligned, bit_depth).images


class ReadImages(NamedTuple):
    images: torch.Tensor  # uint8 [N, C, H, W]
    bit_depth: int | None  # files' and PIL images' depth; None for arrays and tensors, whose scale is the caller's
    form: FileForm | None  # how most files were stored; None for anything but files


def read_images(images: Any, image_size: int, in_channels: int, aligned: bool = True,
                bit_depth: int | None = None, trained_on: FileForm | None = None) -> ReadImages:
    """Accept a numpy array, a tensor, a list of paths or a list of PIL images; return uint8 [N, C, H, W], the
    bit depth files or PIL images were read at (`bit_depth`, else the widest their values need, 8 where none
    is wider; None for arrays and tensors, whose scale is the caller's), and how most files were stored (files
    unlike `trained_on` are warned about).

    Arrays and tensors may be [N, H, W], [N, H, W, C] or [N, C, H, W]; uint8 is read as 0..255,
    floats as 0..1. Their channel count must match the model (files and PIL images are converted).
    With `aligned` (scoring: row i must be input i), an unreadable file is an error naming it; without
    (training, where order does not matter), unreadable files are skipped with a warning, and a folder
    may be given: every image below it, or below its `train/` (`training_files`).
    """
    if isinstance(images, (str, os.PathLike)):
        if aligned:
            raise DataError(f"give a list of image paths, not one path ({images}): the scores line up with the list "
                            "(for a folder, the list skipganomaly.data.list_image_files(folder) gives; or "
                            "`skipganomaly predict FOLDER` with a checkpoint, which writes each file's path and score)")
        if not Path(images).is_dir():
            raise DataError(f"folder not found: {images}" if not Path(images).exists()
                            else f"give a folder or a list of image paths, not one file ({images})")
        from .folders import training_files  # folders builds on this module

        loaded = read_image_files(training_files(images)[1], image_size, in_channels, bit_depth=bit_depth,
                                  trained_on=trained_on)
        return ReadImages(loaded.images, loaded.bit_depth, loaded.form)
    if isinstance(images, Image.Image):
        images = [images]
    if isinstance(images, np.ndarray) and images.ndim == 1 and images.dtype.kind in "UO":
        images = images.tolist()  # paths from a table column (df["path"].values): a list of them
    elif type(images).__name__ == "Series" and hasattr(images, "tolist"):  # a pandas Series, of paths or arrays
        images = images.tolist()
    if isinstance(images, (list, tuple)):
        if len(images) == 0:
            raise DataError("no images given (empty list)")
        if all(isinstance(i, Image.Image) for i in images):
            needed = [d for d in map(wide_bit_depth, images) if d is not None]
            depth = common_bit_depth(needed, bit_depth)
            return ReadImages(torch.from_numpy(np.stack([pil_to_array(i, image_size, in_channels, depth)
                                                         for i in images])),
                              depth if needed else bit_depth or BYTE_DEPTH, None)
        if all(isinstance(i, (str, os.PathLike)) for i in images):
            loaded = read_image_files(images, image_size, in_channels, bit_depth=bit_depth, trained_on=trained_on)
            if aligned and len(loaded.kept) < len(images):
                readable = set(loaded.kept)
                bad = [str(p) for p in images if str(p) not in readable]
                listed = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
                raise DataError(
                    f"{len(bad)} of {len(images)} image files could not be read ({listed}); scores would not line "
                    "up with the paths: remove those files from the list (the warnings above say why each failed)")
            return ReadImages(loaded.images, loaded.bit_depth, loaded.form)
        given = [i.detach().cpu().numpy() if isinstance(i, torch.Tensor) else np.asarray(i) for i in images]
        arrays = [_plain_array(a, bit_depth) for a in given]
        if not any(_read_at_depth(a, bit_depth) for a in given):  # a dark frame read at its depth is dark, not a scale
            _say_if_nearly_black(arrays)
        if len({(a.shape, a.dtype) for a in arrays}) > 1:  # sizes or types differ: each image read on its own
            return ReadImages(torch.cat([_tensor_to_uint8(torch.from_numpy(np.ascontiguousarray(a))[None], image_size,
                                                          in_channels) for a in arrays]), None, None)
        images = np.stack(arrays)
    if isinstance(images, torch.Tensor) and _wide_integers(images) and (bit_depth or BYTE_DEPTH) > BYTE_DEPTH:
        images = images.detach().cpu().numpy()  # read at the detector's depth below, as a wide file would be
    if isinstance(images, np.ndarray):
        at_depth = _read_at_depth(images, bit_depth)
        images = torch.from_numpy(np.ascontiguousarray(_plain_array(images, bit_depth)))
        if not at_depth:
            _say_if_nearly_black([images])
    elif isinstance(images, torch.Tensor):
        _say_if_nearly_black([images])
    if not isinstance(images, torch.Tensor):
        raise DataError(f"unsupported image container {type(images).__name__}; use an array, tensor, paths or PIL images")
    return ReadImages(_tensor_to_uint8(images.detach().cpu(), image_size, in_channels), None, None)


def _say_if_nearly_black(arrays: Sequence[np.ndarray | torch.Tensor]) -> None:
    """Integer images are read as 0..255: a set whose largest value is above 0 but at most NARROW_INTEGERS is
    almost surely on another scale (a 0/1 mask, 0..16 digits), and would be scored as nearly black. Said once
    per call, over the whole set (a single dark frame beside bright ones is not)."""
    peaks = []
    for a in arrays:
        if isinstance(a, np.ndarray):
            if a.dtype.kind not in "iu" or not a.size:
                return
            peaks.append(int(a.max()))
        else:
            if a.dtype == torch.bool or a.is_floating_point() or not a.numel():
                return
            peaks.append(int(a.to(torch.int64).max()))  # torch has no max for its unsigned 16- to 64-bit types
    if peaks and 0 < max(peaks) <= NARROW_INTEGERS:
        log.warning("integer images are read as 0..255, and these reach only %d: nearly black. If they are on another "
                    "scale (0/1 masks, 0..16), give floats in [0, 1], booleans, or scale them to 0..255", max(peaks))


def _wide_integers(t: torch.Tensor) -> bool:
    return not t.is_floating_point() and not t.is_complex() and t.dtype not in (torch.uint8, torch.bool)


def _read_at_depth(a: np.ndarray, bit_depth: int | None) -> bool:
    """Whether `_plain_array` reads this array at `bit_depth` (integers wider than 8 bits, a depth above 8)."""
    return a.dtype.kind in "ui" and a.dtype.itemsize > 1 and (bit_depth or BYTE_DEPTH) > BYTE_DEPTH


def _plain_array(a: np.ndarray, bit_depth: int | None = None) -> np.ndarray:
    """An array torch can take: native byte order, and integers wider than 8 bits brought to uint8: read at
    `bit_depth` where it is wider than 8 (a detector trained on 12- or 16-bit files reads a uint16 frame as it reads
    a 16-bit file, so a dark frame stays dark), else they must hold 0..255 like any integer images."""
    if a.dtype.kind not in "biuf":
        mixed = " (file names among arrays? give one kind: all paths, or all arrays)" if a.dtype.kind in "UO" else ""
        raise DataError(f"images must be numbers, got an array of {a.dtype}{mixed}")
    if not a.dtype.isnative:
        a = a.astype(a.dtype.newbyteorder("="))
    if _read_at_depth(a, bit_depth):
        assert bit_depth is not None
        if a.size and a.min() < 0:
            raise DataError(f"integer images must not be negative, got {a.dtype} values down to {a.min()}")
        top = 2 ** bit_depth - 1
        if a.size and a.max() > top:
            log.warning("integer images hold values up to %d, above the %d-bit range this detector was trained at; "
                        "they are clipped to it", int(a.max()), bit_depth)
        return wide_to_bytes(a, bit_depth)
    if a.dtype.kind == "u" and a.dtype.itemsize > 1:
        if a.size and a.max() > 255:
            raise DataError(f"integer images must lie in 0..255, got {a.dtype} values up to {a.max()} (scale them to "
                            "0..255, or to 0..1 as floats)")
        a = a.astype(np.uint8)
    return a


def _tensor_to_uint8(t: torch.Tensor, image_size: int, in_channels: int) -> torch.Tensor:
    if t.numel() == 0:
        raise DataError("no images given (empty array)")
    if t.ndim == 2:  # one grayscale image
        t = t[None]
    if t.ndim == 3:  # [N, H, W] grayscale, unless it is plainly one image: [H, W, C], or [C, H, W] for RGB
        one_hwc = t.shape[-1] in (1, 3) and min(t.shape[:2]) > 4
        one_chw = in_channels == 3 and t.shape[0] == 3 and t.shape[-1] > 4
        t = t[None] if one_hwc or one_chw else t[:, None]
    if t.ndim != 4:
        raise DataError(f"expected images of shape [N, H, W], [N, H, W, C] or [N, C, H, W], got {tuple(t.shape)}")
    if t.shape[1] not in (1, 3) and t.shape[-1] in (1, 3):
        t = t.permute(0, 3, 1, 2)
    alpha = next((c for c in (t.shape[1], t.shape[-1]) if c in (2, 4)), None)
    if alpha is not None and t.shape[1] not in (1, 3):
        kind, keep = ("grayscale + alpha", ":1") if alpha == 2 else ("RGBA", ":3")
        raise DataError(f"images have {alpha} channels ({kind}?): give PIL images or files, which are laid on black and "
                        f"converted, or drop the alpha channel (x[..., {keep}] for [N, H, W, C], x[:, {keep}] for "
                        f"[N, C, H, W]); the model expects in_channels={in_channels}")
    if t.shape[1] != in_channels:
        raise DataError(
            f"images have {t.shape[1]} channel{'s' if t.shape[1] != 1 else ''} but the model expects "
            f"in_channels={in_channels}"
        )
    if t.dtype == torch.uint8:
        out = t
    elif t.dtype == torch.bool:  # a mask: True is white, as Pillow reads a 1-bit image
        out = t.to(torch.uint8) * 255
    elif t.is_floating_point():
        check_unit_floats(t, "float images", "clip them, or pass uint8 arrays in 0..255")
        out = (t.float() * 255.0).round_().to(torch.uint8)
    else:
        wide = t.to(torch.int64)  # torch has no min/max for its unsigned 16- to 64-bit types
        if wide.min() < 0 or wide.max() > 255:
            raise DataError("integer images must lie in 0..255")
        out = wide.to(torch.uint8)
    if out.shape[-2:] != (image_size, image_size):
        out = resize_uint8(out, image_size)
    return out.contiguous()


def resize_uint8(images: torch.Tensor, image_size: int, chunk: int = 64) -> torch.Tensor:
    """Bilinear (antialiased) resize of a uint8 batch, `chunk` images at a time into the result, so the float
    copy it needs is a chunk's, not the whole array's (2,000 images of 256 x 256 x 3 would take 1.5 GiB)."""
    out = torch.empty((*images.shape[:2], image_size, image_size), dtype=torch.uint8)
    for start in range(0, len(images), chunk):
        resized = F.interpolate(images[start:start + chunk].float(), size=(image_size, image_size), mode="bilinear",
                                align_corners=False, antialias=True)
        out[start:start + chunk] = resized.round_().clamp_(0, 255).to(torch.uint8)
    return out


def is_image_name(name: str) -> bool:
    """Whether a file of this name is read as an image: a known extension, not hidden (`._*` metadata)."""
    return not name.startswith(".") and Path(name).suffix.lower() in IMAGE_EXTENSIONS


def list_image_files(folder: str | os.PathLike[str], unlisted: list[Path] | None = None) -> list[Path]:
    """All image files below a folder, in its subfolders too (linked ones included, each folder once),
    sorted; clear errors for missing or empty ones. Hidden files and folders (names starting with a dot:
    thumbnails caches, trash, macOS's `._*` metadata) are not read. Files of other types and broken links
    are left out and said so in one line each kind, so a folder of, say, DICOM files does not look empty
    for no reason. A subfolder that cannot be opened (permissions) is warned about, never skipped in silence,
    and appended to `unlisted` when given (so `predict` can mark it in its output)."""
    root = Path(folder)
    if not root.exists():
        raise DataError(f"folder not found: {root}")
    if not root.is_dir():
        raise DataError(f"not a folder: {root}")
    try:
        os.scandir(root).close()
    except OSError as err:
        if unlisted is None:
            raise DataError(f"cannot open the folder {root}: {err.strerror or err}") from None
        log.warning("could not open the folder %s (%s), so its images are not read", root, err.strerror or err)
        unlisted.append(root)
        return []
    files: list[Path] = []
    other: Counter[str] = Counter()
    broken: list[Path] = []
    closed: list[tuple[Path, str]] = []
    visited: set[str] = set()

    def cannot_open(err: OSError) -> None:
        closed.append((Path(err.filename), err.strerror or str(err)))

    for here, dirs, names in os.walk(root, followlinks=True, onerror=cannot_open):
        real = os.path.realpath(here)
        if real in visited:  # a link back up the tree, or a second link to the same folder
            dirs[:] = []
            continue
        visited.add(real)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in names:
            path = Path(here) / name
            if name.startswith("."):
                continue
            if not path.exists():
                broken.append(path)
            elif is_image_name(name):
                files.append(path)
            else:
                other[path.suffix.lower() or "(no extension)"] += 1
    files.sort()
    if closed:
        log.warning("could not open %d folder%s in %s, so %s images are not read: %s", len(closed),
                    "s" if len(closed) > 1 else "", root, "their" if len(closed) > 1 else "its",
                    "; ".join(f"{readable_name(str(path))} ({why})" for path, why in closed[:3])
                    + (" ..." if len(closed) > 3 else ""))
        if unlisted is not None:
            unlisted += [path for path, _ in closed]
    if broken:
        log.warning("skipping %d broken link%s in %s: %s", len(broken), "s" if len(broken) > 1 else "", root,
                    few_names(broken, 5, whole=True))
    if other and files:
        count = other.total()
        log.info("left out %d file%s in %s that are not images of a known type (%s)", count, "s" if count > 1 else "",
                 root, ", ".join(f"{n} {suffix}" for suffix, n in sorted(other.items())))
    if not files:
        if not any(root.iterdir()):
            raise DataError(f"folder is empty: {root}")
        raise DataError(f"no images of a known type ({', '.join(IMAGE_EXTENSIONS)}) in {root}")
    return files
