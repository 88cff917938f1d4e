"""The backbone's eval preprocessing, bit-for-bit, at a fraction of its cost.

timm's eval transform ends in ``ToTensor`` + ``Normalize``: a float division, a
subtraction and a second division over every value, ~1.9 ms of a 224 px image's ~6 ms
of preprocessing. An 8-bit channel has only 256 values, so :class:`EvalPreprocess` runs
those two steps once per value into a table, with the same float32 operations in the
same order, and looks every pixel up: the result equals the transform's to the last bit
(``tests/features/test_preprocess.py`` checks it). The geometric steps before (resize,
crop) are the transform's own.

``jpeg_draft=True`` also lets the JPEG decoder scale a large photo down by 1/2, 1/4 or
1/8 in the DCT domain (``PIL.Image.draft``) to no less than the resize target, before
the resize. That decodes and resizes far fewer pixels, but they are not the same
pixels, so it is opt-in and part of the feature cache's identity.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from transferkit.data.images import load_image


def _table(normalize) -> np.ndarray:
    """(channels, 256) float32: ``(v / 255 - mean) / std`` as ToTensor + Normalize compute it."""
    import torch

    values = torch.arange(256, dtype=torch.uint8).to(torch.get_default_dtype()).div(255)
    mean = torch.as_tensor(normalize.mean, dtype=values.dtype).reshape(-1, 1)
    std = torch.as_tensor(normalize.std, dtype=values.dtype).reshape(-1, 1)
    return values.reshape(1, -1).sub(mean).div(std).numpy().astype(np.float32, copy=False)


def _resize_target(step) -> tuple[int, int] | None:
    """The smallest (width, height) a torchvision ``Resize`` needs from its input."""
    from torchvision.transforms import Resize

    if not isinstance(step, Resize) or getattr(step, "max_size", None) is not None:
        return None
    size = step.size
    if isinstance(size, int):
        return size, size
    if len(size) == 1:
        return int(size[0]), int(size[0])
    return int(size[1]), int(size[0])


class EvalPreprocess:
    """``transform`` (a torchvision ``Compose``) as image path → float32 array (C, H, W).

    Pixel steps, ``ToTensor``, ``Normalize`` is the form timm's eval transforms take; any
    other transform is applied as it is (and converted to an array), so every backbone
    works, only without the shortcut.
    """

    def __init__(self, transform, jpeg_draft: bool = False):
        from torchvision.transforms import Compose, Normalize, ToTensor

        self.transform = transform
        self.jpeg_draft = bool(jpeg_draft)
        steps = list(transform.transforms) if isinstance(transform, Compose) else []
        self._pixel_steps = self._tensor_steps = None
        self._table = None
        if (len(steps) >= 2 and isinstance(steps[-1], Normalize)
                and type(steps[-2]).__name__ in ("ToTensor", "MaybeToTensor")
                and isinstance(steps[-2], ToTensor)):
            self._pixel_steps, self._tensor_steps = steps[:-2], steps[-2:]
            self._table = _table(steps[-1])
        self.draft_size = _resize_target(steps[0]) if self.jpeg_draft and steps else None

    def __call__(self, path: str | Path) -> np.ndarray:
        image = load_image(path, draft_size=self.draft_size)
        return self.from_image(image)

    def from_image(self, image: Image.Image) -> np.ndarray:
        if self._table is None:
            return np.asarray(self.transform(image), dtype=np.float32)
        for step in self._pixel_steps:
            image = step(image)
        pixels = np.asarray(image)
        if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] != len(self._table):
            for step in self._tensor_steps:
                image = step(image)
            return np.asarray(image, dtype=np.float32)
        channels = np.arange(len(self._table)).reshape(-1, 1, 1)
        return self._table[channels, pixels.transpose(2, 0, 1)]
