"""Decode any image file a user may have into an RGB ``PIL.Image``.

Photographs arrive rotated by EXIF tags, as palette GIFs, greyscale, 16-bit PNG/TIFF,
CMYK JPEG or with transparency. A pretrained network wants 8-bit RGB in the camera's
upright orientation, so every path into the networks goes through :func:`load_image`.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from transferkit.errors import ImageDecodeError

# Files whose suffix says "image"; anything else in a class folder is still tried, so a
# mislabelled file is reported rather than silently ignored (hidden files are ignored).
IMAGE_SUFFIXES = {
    ".jpg", ".jpeg", ".png", ".gif", ".bmp", ".tif", ".tiff", ".webp",
    ".ppm", ".pgm", ".pbm", ".pnm", ".jfif", ".ico", ".tga",
}

# Refuse decompression bombs with a clear error instead of PIL's warning-then-error.
_MAX_PIXELS = 20_000 * 20_000


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


def load_image(path: str | os.PathLike) -> Image.Image:
    """Read ``path`` as an upright 8-bit RGB image.

    Raises :class:`ImageDecodeError` (never a bare PIL/OS error) when the file is
    missing, truncated, corrupt or not an image.
    """
    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as opened:
                if opened.width * opened.height > _MAX_PIXELS:
                    raise ImageDecodeError(
                        f"{path}: {opened.width}x{opened.height} pixels is too large to decode"
                    )
                # For animated GIF/TIFF the first frame is the image.
                opened.seek(0)
                opened.load()
                upright = ImageOps.exif_transpose(opened)
                return to_rgb(upright).copy()
    except ImageDecodeError:
        raise
    except FileNotFoundError as exc:
        raise ImageDecodeError(f"{path}: file not found") from exc
    except UnidentifiedImageError as exc:
        raise ImageDecodeError(f"{path}: not an image file PIL can read") from exc
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError,
            Image.DecompressionBombWarning, EOFError) as exc:
        raise ImageDecodeError(f"{path}: corrupt or truncated image ({exc})") from exc


def load_small_images(paths, size: int) -> tuple[np.ndarray, np.ndarray, list[tuple[str, str]]]:
    """Decode ``paths`` as ``size``×``size`` RGB uint8 arrays (bilinear resize).

    Returns ``(images (n_ok, size, size, 3), ok (n_input,) bool, skipped [(path, reason)])``:
    an unreadable file is reported and left out, the others are kept.
    """
    images, ok, skipped = [], np.zeros(len(paths), dtype=bool), []
    for i, path in enumerate(paths):
        try:
            picture = load_image(path)
        except ImageDecodeError as exc:
            skipped.append((str(path), str(exc)))
            continue
        if picture.size != (size, size):
            picture = picture.resize((size, size), Image.BILINEAR)
        images.append(np.asarray(picture, dtype=np.uint8))
        ok[i] = True
    stacked = np.stack(images) if images else np.zeros((0, size, size, 3), np.uint8)
    return stacked, ok, skipped
