"""The resize and crop a model's network expects, as data, applied with PIL alone.

An exported model takes images already resized to its input size as uint8 RGB; the
normalisation is inside its graph. What happens before that is written into the file as
a *resize rule* (a small JSON object), so a predictor without torchvision or timm
reproduces the bundle's preprocessing exactly:

* ``{"resize": "shorter_side", "resize_to": [S, S], "crop": [H, W], "interpolation": I}``:
  timm's eval transform in its ``center`` mode (torchvision ``Resize(S)`` of the shorter
  side, then ``CenterCrop``), with ``S = floor(size / crop_pct)``;
* ``{"resize": "exact", "resize_to": [h, w], "crop": [H, W], "interpolation": I}``:
  timm's ``squash`` mode, and the distilled students' plain resize (``crop`` equal to
  ``resize_to``).

torchvision resizes a PIL image with PIL itself, so the same PIL calls with the same
output sizes and crop offsets give the same pixels.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

from transferkit.errors import TransferkitError

# torchvision's InterpolationMode → PIL filter, as torchvision maps them for PIL images.
INTERPOLATIONS = {"nearest": Image.NEAREST, "bilinear": Image.BILINEAR,
                  "bicubic": Image.BICUBIC, "box": Image.BOX, "hamming": Image.HAMMING,
                  "lanczos": Image.LANCZOS}
RESIZE_MODES = ("shorter_side", "exact")
DEFAULT_CROP_PCT = 0.875  # timm's, when a data config gives none


def rule_from_data_config(data_config: dict) -> dict:
    """The resize rule of timm's eval transform for ``data_config`` (``input_size``,
    ``interpolation``, ``crop_pct``, ``crop_mode``), as ``Backbone.eval_transform`` and
    the fine-tuned model's transform build it."""
    _, height, width = (int(v) for v in data_config["input_size"])
    crop_pct = data_config.get("crop_pct") or DEFAULT_CROP_PCT
    mode = data_config.get("crop_mode") or "center"
    interpolation = data_config.get("interpolation", "bilinear")
    if interpolation not in INTERPOLATIONS:
        raise TransferkitError(f"interpolation {interpolation!r} has no PIL equivalent; "
                               f"exportable: {', '.join(INTERPOLATIONS)}.")
    scaled = [math.floor(height / crop_pct), math.floor(width / crop_pct)]
    if mode == "squash":
        return {"resize": "exact", "resize_to": scaled, "crop": [height, width],
                "interpolation": interpolation}
    if mode == "center" and height == width:
        return {"resize": "shorter_side", "resize_to": [scaled[0], scaled[0]],
                "crop": [height, width], "interpolation": interpolation}
    raise TransferkitError(f"the eval transform crop_mode={mode!r} with input size "
                           f"{height}x{width} cannot be exported; exportable: 'center' with a "
                           "square input, or 'squash'.")


def stretch_rule(size: int, interpolation: str = "bilinear") -> dict:
    """Resize to ``size``×``size`` whatever the aspect ratio, no crop."""
    return {"resize": "exact", "resize_to": [size, size], "crop": [size, size],
            "interpolation": interpolation}


def check_rule(rule) -> str | None:
    """Why ``rule`` (read from a file) is not a resize rule, or None when it is one."""
    if not isinstance(rule, dict) or set(rule) != {"resize", "resize_to", "crop",
                                                   "interpolation"}:
        return "is not an object with exactly resize, resize_to, crop and interpolation"
    if rule["resize"] not in RESIZE_MODES:
        return f"resize is {rule['resize']!r}, not one of {', '.join(RESIZE_MODES)}"
    if rule["interpolation"] not in INTERPOLATIONS:
        return (f"interpolation is {rule['interpolation']!r}, not one of "
                f"{', '.join(INTERPOLATIONS)}")
    for key in ("resize_to", "crop"):
        value = rule[key]
        if not (isinstance(value, list) and len(value) == 2
                and all(type(v) is int and 1 <= v <= 8192 for v in value)):
            return f"{key} is {value!r}, not two pixel counts"
    return None


def _resized_size(width: int, height: int, rule: dict) -> tuple[int, int]:
    if rule["resize"] == "exact":
        new_height, new_width = rule["resize_to"]
        return new_width, new_height
    # torchvision's _compute_resized_output_size for a single size (the shorter edge).
    requested = rule["resize_to"][0]
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = requested, int(requested * long / short)
    return (new_short, new_long) if width <= height else (new_long, new_short)


def apply_rule(image: Image.Image, rule: dict) -> np.ndarray:
    """``image`` (RGB) resized and cropped as ``rule`` says: uint8 ``(H, W, 3)``."""
    if image.mode != "RGB":
        image = image.convert("RGB")
    width, height = image.size
    new_width, new_height = _resized_size(width, height, rule)
    if (new_width, new_height) != (width, height):
        image = image.resize((new_width, new_height), INTERPOLATIONS[rule["interpolation"]])
    crop_height, crop_width = rule["crop"]
    # torchvision's CenterCrop: pad with black where the crop is larger than the image
    # (PIL's crop fills outside the image with 0), else round((size - crop) / 2).
    left = (-((crop_width - new_width) // 2) if crop_width > new_width
            else int(round((new_width - crop_width) / 2.0)))
    top = (-((crop_height - new_height) // 2) if crop_height > new_height
           else int(round((new_height - crop_height) / 2.0)))
    if (left, top, crop_width, crop_height) != (0, 0, new_width, new_height):
        image = image.crop((left, top, left + crop_width, top + crop_height))
    return np.asarray(image, dtype=np.uint8)
