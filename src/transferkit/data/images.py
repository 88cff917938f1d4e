"""Decode any image file a user may have into an RGB ``PIL.Image``.

Photographs arrive rotated by EXIF tags, as palette GIFs, greyscale, 16-bit PNG/TIFF,
CMYK JPEG or with transparency. A pretrained network wants 8-bit RGB in the camera's
upright orientation, so every path into the networks goes through :func:`load_image`.
"""

from __future__ import annotations

import errno
import os
import re
import stat
import threading
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from transferkit.errors import ImageDecodeError

# Files whose suffix says "image"; anything else in a class folder is still tried, so a
# mislabelled file is reported rather than silently ignored (hidden files are ignored).
IMAGE_SUFFIXES = {
    ".jpg", ".jpeg", ".png", ".gif", ".bmp", ".tif", ".tiff", ".webp",
    ".ppm", ".pgm", ".pbm", ".pnm", ".jfif", ".ico", ".tga",
}

# The largest image decoded when PIL's own limit (Image.MAX_IMAGE_PIXELS) is switched off.
_MAX_PIXELS = 20_000 * 20_000

_SPECIAL_FILE_KINDS = (
    (stat.S_ISDIR, "directory"), (stat.S_ISFIFO, "FIFO"), (stat.S_ISCHR, "character device"),
    (stat.S_ISBLK, "block device"), (stat.S_ISSOCK, "socket"),
)


def _not_regular(path: Path, mode: int) -> ImageDecodeError:
    kind = next((name for test, name in _SPECIAL_FILE_KINDS if test(mode)), "special file")
    return ImageDecodeError(f"{path}: not a regular file ({kind})")


def _unopenable(path: Path, exc: OSError) -> ImageDecodeError:
    if exc.errno == errno.ELOOP:
        return ImageDecodeError(f"{path}: symbolic link loop")
    if isinstance(exc, FileNotFoundError) and os.path.islink(path):
        return ImageDecodeError(f"{path}: broken symbolic link (its target "
                                f"{os.readlink(path)} does not exist)")
    if isinstance(exc, FileNotFoundError):
        return ImageDecodeError(f"{path}: file not found")
    return ImageDecodeError(f"{path}: cannot read file ({exc.strerror or exc})")


def open_regular_file(path: str | os.PathLike) -> BinaryIO:
    """Open ``path`` for binary reading if it is a regular file (links followed).

    Reading a FIFO or a device such as ``/dev/zero`` never ends, so anything else is
    refused with :class:`ImageDecodeError` naming what it is (FIFO, character device,
    broken symbolic link, symbolic link loop...).
    """
    path = Path(path)
    try:
        # Checked before opening too: opening a FIFO waits for a writer, and opening a
        # device can have side effects.
        mode = os.stat(path).st_mode
        if not stat.S_ISREG(mode):
            raise _not_regular(path, mode)
        # O_NONBLOCK: if the file was swapped for a FIFO since the check, open must not
        # wait; fstat then sees what was really opened. It changes nothing for regular files.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
                     | getattr(os, "O_BINARY", 0))
    except OSError as exc:
        raise _unopenable(path, exc) from exc
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise _not_regular(path, mode)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _pixel_limit() -> int:
    limit = Image.MAX_IMAGE_PIXELS
    return _MAX_PIXELS if limit is None else min(int(limit), _MAX_PIXELS)


def _declared_size(handle: BinaryIO) -> tuple[int, int] | None:
    """The size a file's header declares, read by PIL's format plugins without the
    decompression-bomb check (whose error hides the size)."""
    handle.seek(0)
    prefix = handle.read(16)
    for name in Image.ID:
        factory, accept = Image.OPEN[name]
        try:
            accepted = accept(prefix) if accept else True
            if accepted and not isinstance(accepted, str):  # a str: "maybe", as PIL reads it
                handle.seek(0)
                return tuple(factory(handle, "").size)
        except Exception:  # noqa: BLE001 - whatever a plugin raises, the file is not its format
            continue
    return None


def _bomb(path: Path, size: tuple[int, int] | None, detail: str = "") -> ImageDecodeError:
    if size is not None:
        declared = f"{size[0]}x{size[1]} pixels"
    else:
        count = re.search(r"\((\d+) pixels\)", detail)
        declared = f"{count.group(1)} pixels" if count else "the declared size"
    return ImageDecodeError(f"{path}: decompression bomb: {declared} exceeds the limit of "
                            f"{_pixel_limit()} pixels (raise PIL.Image.MAX_IMAGE_PIXELS to "
                            "decode larger images)")


def _to_uint8(array: np.ndarray) -> np.ndarray:
    """Scale a high-bit-depth or float array to 0..255 without clipping to white."""
    if array.dtype == np.uint8:
        return array
    if np.issubdtype(array.dtype, np.floating):
        finite = array[np.isfinite(array)]
        hi = float(finite.max()) if finite.size else 1.0
        scale = 255.0 if hi <= 1.0 else 255.0 / hi
        return np.clip(np.nan_to_num(array) * scale, 0, 255).astype(np.uint8)
    hi = int(array.max()) if array.size else 0
    # 16-bit files often use only 12 bits (medical, scientific cameras): scale by the
    # container's range when values use it, else by the data's own maximum.
    top = 65535 if hi > 4095 else (4095 if hi > 255 else 255)
    return np.clip(array.astype(np.float64) * (255.0 / top), 0, 255).astype(np.uint8)


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert a PIL image of any mode to 8-bit RGB (transparency over white)."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        grey = _to_uint8(np.asarray(image))
        return Image.fromarray(grey, mode="L").convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    # CMYK, YCbCr, LAB, HSV, L, 1, P: PIL knows the conversion.
    return image.convert("RGB")


_bomb_errors_lock = threading.Lock()
_bomb_errors_users = 0
_BOMB_ERROR_FILTER = ("error", None, Image.DecompressionBombWarning, None, 0)


@contextmanager
def _bomb_warnings_as_errors():
    """PIL's DecompressionBombWarning (an image, frame or tile past the pixel limit) as an
    error, for as long as any thread is decoding.

    Warning filters are process-wide and ``catch_warnings`` puts back, on exit, the whole
    list it saw on entry: threads decoding at once (the extraction lanes) each restoring
    their own snapshot left ``error``/``ignore`` entries behind for the rest of the
    process. Here the first decoder in adds one entry and the last one out removes that
    entry only.
    """
    global _bomb_errors_users
    with _bomb_errors_lock:
        if _bomb_errors_users == 0:
            warnings.filterwarnings("error", category=Image.DecompressionBombWarning)
        _bomb_errors_users += 1
    try:
        yield
    finally:
        with _bomb_errors_lock:
            _bomb_errors_users -= 1
            if _bomb_errors_users == 0:
                try:
                    warnings.filters.remove(_BOMB_ERROR_FILTER)
                except ValueError:  # someone reset the filters meanwhile
                    pass
                getattr(warnings, "_filters_mutated", lambda: None)()


def load_image(path: str | os.PathLike, draft_size: tuple[int, int] | None = None) -> Image.Image:
    """Read ``path`` as an upright 8-bit RGB image.

    ``draft_size`` (width, height): a JPEG may be decoded at 1/2, 1/4 or 1/8 scale, as
    long as the result is no smaller than that (``PIL.Image.draft``: far less work for a
    large photo that is resized down anyway, but not the same pixels as a full decode
    and resize). Other formats ignore it. The size checks apply to the full size.

    Raises :class:`ImageDecodeError` (never a bare PIL/OS error) when the file is
    missing, not a regular file, truncated, corrupt, not an image or a decompression bomb.
    """
    path = Path(path)
    try:
        with open_regular_file(path) as handle, _bomb_warnings_as_errors():
            try:
                opened = Image.open(handle)
            except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
                # PIL's message has the pixel count; the header has the size.
                raise _bomb(path, _declared_size(handle), str(exc)) from exc
            with opened:
                if opened.width * opened.height > _pixel_limit():
                    raise _bomb(path, opened.size)
                # For animated GIF/TIFF the first frame is the image.
                opened.seek(0)
                if draft_size is not None and opened.format == "JPEG":
                    opened.draft("RGB", tuple(draft_size))
                opened.load()
                upright = ImageOps.exif_transpose(opened)
                rgb = to_rgb(upright)
                # exif_transpose and to_rgb return new images, except for an image that
                # needs neither; only that one still belongs to the file closed below.
                return rgb.copy() if rgb is opened else rgb
    except ImageDecodeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _bomb(path, None, str(exc)) from exc
    except UnidentifiedImageError as exc:
        raise ImageDecodeError(f"{path}: not an image file PIL can read") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageDecodeError(f"{path}: corrupt or truncated image ({exc})") from exc


def readable_images(paths, ok: np.ndarray, skipped: list):
    """Yield ``(index, RGB picture)`` for each of ``paths`` that decodes, marking it in
    ``ok``; an unreadable one is appended to ``skipped`` as ``(path, reason)`` instead."""
    for index, path in enumerate(paths):
        try:
            picture = load_image(path)
        except ImageDecodeError as exc:
            skipped.append((str(path), str(exc)))
            continue
        ok[index] = True
        yield index, picture


def load_small_images(paths, size: int) -> tuple[np.ndarray, np.ndarray, list[tuple[str, str]]]:
    """Decode ``paths`` as ``size``×``size`` RGB uint8 arrays (bilinear resize).

    Returns ``(images (n_ok, size, size, 3), ok (n_input,) bool, skipped [(path, reason)])``:
    an unreadable file is reported and left out, the others are kept.
    """
    images, ok, skipped = [], np.zeros(len(paths), dtype=bool), []
    for _, picture in readable_images(paths, ok, skipped):
        if picture.size != (size, size):
            picture = picture.resize((size, size), Image.BILINEAR)
        images.append(np.asarray(picture, dtype=np.uint8))
    stacked = np.stack(images) if images else np.zeros((0, size, size, 3), np.uint8)
    return stacked, ok, skipped
