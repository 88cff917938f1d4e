"""Images and their segmentation masks: pairing by file name, reading and checking masks.

A segmentation data set is two folders, ``images/`` and ``masks/``, whose files pair up by
file stem (``IMD002.jpg`` with ``IMD002.png``; sub-folders count, ``a/x.jpg`` with
``a/x.png``). An image without a mask, or a mask without an image, is listed and skipped,
never guessed. Masks are PNG/BMP (any lossless format PIL reads) holding, per pixel,

* for two classes (background / object, the default): 0 and 255 (or 0 and 1);
* for ``n_classes`` > 2: the class index 0 … ``n_classes - 1`` (greyscale or palette PNG).

A value outside the declared classes is a :class:`~transferkit.errors.DataError` naming
the file and the values (a JPEG mask, whose compression smears 0/255 edges into grey,
fails here too). A mask of background only is allowed. A mask must have its image's size
(after the image's EXIF rotation): a mismatch is an error, never a silent resize.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from transferkit.data.images import IMAGE_SUFFIXES, open_regular_file
from transferkit.errors import DataError

# Lossless formats a mask may come in; JPEG is listed so that a JPEG mask is paired and
# then refused with the reason (its grey edges), not silently left out as "no mask".
MASK_SUFFIXES = {".png", ".bmp", ".tif", ".tiff", ".gif", ".pgm", ".ppm", ".pbm", ".pnm",
                 ".webp", ".jpg", ".jpeg"}


@dataclass
class SegmentationPairs:
    """Image files with their mask files, and the files that had no partner."""

    images: list[Path]
    masks: list[Path]
    unpaired: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, index) -> "SegmentationPairs":
        index = [int(i) for i in index]
        return SegmentationPairs([self.images[i] for i in index], [self.masks[i] for i in index])


def _files_by_stem(folder: Path, suffixes, what: str) -> tuple[dict[str, Path], list[tuple[str, str]]]:
    """``{relative stem: path}`` of the visible files under ``folder`` with ``suffixes``,
    and the ones whose stem repeats (``x.png`` beside ``x.bmp``: which is meant is unknown)."""
    found: dict[str, list[Path]] = {}
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        if any(part.startswith(".") for part in relative.parts) or not path.is_file():
            continue
        if path.suffix.lower() not in suffixes:
            continue
        found.setdefault(relative.with_suffix("").as_posix(), []).append(path)
    unique = {stem: paths[0] for stem, paths in found.items() if len(paths) == 1}
    repeated = [(str(p), f"{p}: several {what} files share the name {stem!r} "
                 f"({', '.join(q.name for q in paths)}); rename all but one")
                for stem, paths in found.items() if len(paths) > 1 for p in paths]
    return unique, repeated


def pair_images_and_masks(images: str | os.PathLike, masks: str | os.PathLike) -> SegmentationPairs:
    """Pair the images under ``images`` with the masks under ``masks`` by file stem.

    Unpaired files are returned in ``unpaired`` with the reason, not raised: the caller
    lists and skips them. A :class:`DataError` when a folder is missing or no pair is left.
    """
    images, masks = Path(images), Path(masks)
    for folder, what in ((images, "images"), (masks, "masks")):
        if not folder.is_dir():
            raise DataError(f"{folder}: not a folder of {what}.")
    image_files, repeated_images = _files_by_stem(images, IMAGE_SUFFIXES, "image")
    mask_files, repeated_masks = _files_by_stem(masks, MASK_SUFFIXES, "mask")
    stems = sorted(set(image_files) & set(mask_files))
    unpaired = repeated_images + repeated_masks
    unpaired += [(str(image_files[s]), f"{image_files[s]}: no mask named {s}.* in {masks}")
                 for s in sorted(set(image_files) - set(mask_files))]
    unpaired += [(str(mask_files[s]), f"{mask_files[s]}: no image named {s}.* in {images}")
                 for s in sorted(set(mask_files) - set(image_files))]
    if not stems:
        raise DataError(f"no image in {images} has a mask of the same name in {masks} "
                        f"({len(image_files)} image(s), {len(mask_files)} mask(s)); masks pair "
                        "with images by file name without its extension (IMD002.jpg ↔ IMD002.png).")
    return SegmentationPairs([image_files[s] for s in stems], [mask_files[s] for s in stems],
                             unpaired)


def _mask_values(image: Image.Image, path: Path) -> np.ndarray:
    """The per-pixel values of a mask image as a 2-D integer array."""
    if image.mode == "1":
        return np.asarray(image, dtype=np.uint8)
    if image.mode in ("L", "P", "I", "I;16", "I;16B", "I;16L", "I;16N"):
        return np.asarray(image).astype(np.int64)
    if image.mode in ("LA", "PA"):
        return np.asarray(image.getchannel(0)).astype(np.int64)
    if image.mode in ("RGB", "RGBA"):
        rgb = np.asarray(image.convert("RGB")).astype(np.int64)
        if (rgb == rgb[..., :1]).all():  # a grey mask saved as RGB
            return rgb[..., 0]
        raise DataError(f"{path}: a colour mask (mode {image.mode} with differing channels); "
                        "save the mask as a greyscale or palette PNG of class indices "
                        "(0/255 for two classes).")
    raise DataError(f"{path}: mask mode {image.mode} is not supported; save the mask as a "
                    "greyscale or palette PNG of class indices (0/255 for two classes).")


def load_mask(path: str | os.PathLike, n_classes: int = 2) -> np.ndarray:
    """The mask at ``path`` as a (H, W) ``uint8`` array of class indices 0 … n_classes-1.

    Two classes: 0/255 and 0/1 both read as 0/1. Any other value, or (for more classes)
    a value of ``n_classes`` or above, is a :class:`DataError` naming the values found.
    """
    path = Path(path)
    try:
        with open_regular_file(path) as handle, Image.open(handle) as opened:
            opened.seek(0)
            opened.load()
            values = _mask_values(ImageOps.exif_transpose(opened), path)
    except DataError:
        raise
    except Exception as exc:  # corrupt, truncated or not an image at all
        raise DataError(f"{path}: cannot be read as a mask ({type(exc).__name__}: "
                        f"{str(exc).strip().splitlines()[0] if str(exc).strip() else 'no details'})"
                        ) from exc
    present = np.unique(values)
    if n_classes == 2:
        allowed = (0, 255) if present.max(initial=0) > 1 else (0, 1)
        bad = [int(v) for v in present if v not in allowed]
        if not bad:
            return (values > 0).astype(np.uint8)
        declared = "0 and 255 (or 0 and 1) for two classes"
    else:
        bad = [int(v) for v in present if not 0 <= v < n_classes]
        if not bad:
            return values.astype(np.uint8)
        declared = f"class indices 0..{n_classes - 1} for {n_classes} classes"
    shown = ", ".join(map(str, bad[:8])) + (f" and {len(bad) - 8} more" if len(bad) > 8 else "")
    hint = (" (a JPEG mask blurs its edges into grey: save masks as PNG)"
            if path.suffix.lower() in (".jpg", ".jpeg") else
            "; declare the number of classes with --classes N" if n_classes == 2 else "")
    raise DataError(f"{path}: mask values {shown} are not {declared}{hint}.")


def check_same_size(image_size: tuple[int, int], mask: np.ndarray, image_path, mask_path) -> None:
    """A mask covers its image pixel for pixel: ``image_size`` is PIL's (width, height)."""
    if tuple(image_size) != (mask.shape[1], mask.shape[0]):
        raise DataError(f"{mask_path}: the mask is {mask.shape[1]}×{mask.shape[0]} pixels but its "
                        f"image {image_path} is {image_size[0]}×{image_size[1]}; a mask must have "
                        "its image's size.")
