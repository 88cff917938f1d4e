"""Segment with an exported segmentation model: ONNX Runtime, numpy and PIL only.

``transferkit export`` writes a ``segment`` model (:mod:`transferkit.methods.segmentation`)
as a graph from uint8 RGB images stretched to the network's square input, ``(N, S, S, 3)``,
to per-pixel class logits ``(N, C, S, S)``. Like the model folder, :class:`OnnxSegmenter`
resizes each image's logits bilinearly back to the image's own size (the same sampling as
PyTorch's ``F.interpolate(mode="bilinear", align_corners=False)``) before the softmax, so
its masks are the folder's masks. The file is checked as :class:`OnnxPredictor` checks a
classifier's: standard operators only, no external data, every metadata value parsed.
"""

from __future__ import annotations

import numpy as np

from transferkit.errors import BundleError, TransferkitError
from transferkit.runtime.onnx_predictor import REDO_HINT, SEGMENTATION, OnnxPredictor


MAX_CLASSES = 255  # masks are written as 8-bit class indices, as `segment fit` allows


def _source_positions(size_in: int, size_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each output index along one axis: the two input indices it blends and the
    weight of the second, as PyTorch's bilinear upsampling with ``align_corners=False``
    (source = (i + 0.5) · in/out − 0.5, clamped at 0; no antialiasing)."""
    source = (np.arange(size_out, dtype=np.float64) + 0.5) * (size_in / size_out) - 0.5
    source = np.maximum(source, 0.0)
    low = np.minimum(np.floor(source).astype(np.int64), size_in - 1)
    high = np.minimum(low + 1, size_in - 1)
    return low, high, (source - low).astype(np.float32)


def resize_bilinear(maps: np.ndarray, height: int, width: int) -> np.ndarray:
    """``maps`` ``(C, h, w)`` float resized to ``(C, height, width)``, bilinearly."""
    rows_low, rows_high, row_weight = _source_positions(maps.shape[1], height)
    cols_low, cols_high, col_weight = _source_positions(maps.shape[2], width)
    maps = maps.astype(np.float32, copy=False)
    # Along columns first (C, h, width), then rows: the weights as PyTorch applies them.
    across = (maps[:, :, cols_low] * (1 - col_weight) + maps[:, :, cols_high] * col_weight)
    return (across[:, rows_low, :] * (1 - row_weight)[:, None]
            + across[:, rows_high, :] * row_weight[:, None])


def softmax(logits: np.ndarray, axis: int = 0) -> np.ndarray:
    shifted = logits - logits.max(axis=axis, keepdims=True)
    np.exp(shifted, out=shifted)
    return shifted / shifted.sum(axis=axis, keepdims=True)


class OnnxSegmenter(OnnxPredictor):
    """An exported segmentation model. ``n_classes``: classes per pixel (background 0);
    :meth:`predict_paths_masks` gives each image's class-index mask at its own size."""

    TASK = SEGMENTATION

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    def _check_graph(self) -> None:
        """One input, and per-pixel logits of the input's size for a batch of two."""
        if len(self.inputs) != 1:
            raise BundleError(f"{self.path}: a segmentation export has one input, this one "
                              f"names {len(self.inputs)}. {REDO_HINT}")
        rule = self.inputs[0]["resize_rule"]
        # The export stretches every image to the square input, so that the logits map
        # back onto the whole image; a crop or a kept aspect ratio would misplace the mask.
        if rule["resize"] != "exact" or rule["resize_to"] != rule["crop"]:
            raise BundleError(f"{self.path}: its resize rule crops or keeps the aspect ratio "
                              "(a segmentation export stretches each image to its input), so "
                              f"masks would not line up with the images. {REDO_HINT}")
        if not 2 <= self.n_classes <= MAX_CLASSES:
            raise BundleError(f"{self.path}: {self.n_classes} classes; masks hold class indices "
                              f"0 to {MAX_CLASSES} (one byte per pixel). {REDO_HINT}")
        self._check_inputs()
        height, width = self.input_size
        probe = self._run([np.stack([np.zeros((height, width, 3), np.uint8),
                                     np.full((height, width, 3), 255, np.uint8)])], check=False)
        if probe.shape != (2, self.n_classes, height, width) or not np.isfinite(probe).all():
            raise BundleError(f"{self.path}: the graph gives {list(probe.shape)} values for two "
                              f"images, not finite logits [2, {self.n_classes}, {height}, "
                              f"{width}]; the graph and its metadata do not belong together. "
                              f"{REDO_HINT}")

    def _logits(self, pixels: np.ndarray) -> np.ndarray:
        logits = self._run([pixels[None]], check=False)
        if logits.shape != (1, self.n_classes, *self.input_size):
            raise BundleError(f"{self.path}: the graph gave {list(logits.shape)} values for one "
                              f"image. {REDO_HINT}")
        if not np.isfinite(logits).all():
            raise BundleError(f"{self.path}: the graph gave non-finite logits for an image. "
                              f"{REDO_HINT}")
        return logits[0]

    def predict_proba_paths(self, paths):
        """(per-pixel class probabilities ``(C, H, W)`` float32 of each readable image at
        its own size, ok mask, skipped ``(path, reason)`` list)."""
        from transferkit.data.images import readable_images
        from transferkit.runtime.preprocessing import apply_rule

        rule = self.inputs[0]["resize_rule"]
        results, ok, skipped = [], np.zeros(len(paths), dtype=bool), []
        for _, picture in readable_images(paths, ok, skipped):
            logits = self._logits(apply_rule(picture, rule)).astype(np.float32)
            results.append(softmax(resize_bilinear(logits, picture.height, picture.width)))
        return results, ok, skipped

    def predict_paths_masks(self, paths):
        """(class-index masks ``(H, W)`` uint8 of the readable images, ok mask, skipped)."""
        probabilities, ok, skipped = self.predict_proba_paths(paths)
        return [p.argmax(0).astype(np.uint8) for p in probabilities], ok, skipped

    def predict_paths(self, images):
        raise TransferkitError(f"{self.path} is a segmentation model: it labels pixels, not "
                               "images (predict_paths_masks, `transferkit segment predict`).")

    def __repr__(self) -> str:
        return (f"OnnxSegmenter({str(self.path)!r}, classes={self.n_classes}, "
                f"input_size={self.input_size})")
