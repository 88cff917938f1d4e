"""One interface over the two kinds of model ``transferkit serve`` can serve.

* an ``.onnx`` file from ``transferkit export``: ONNX Runtime, no torch; each image is
  decoded and resized when it arrives (in the request's thread), so a batch holds only
  small arrays and the full-size pictures are dropped at once;
* a model folder from ``transferkit fit``: its estimator's ``predict_paths``, which
  decodes the files itself, so an image is passed on as the path of the uploaded file.

Either way :meth:`prepare` runs per image before batching (it may raise
:class:`~transferkit.errors.ImageDecodeError`) and :meth:`predict_prepared` runs once per
batch, giving each item its probabilities or the ImageDecodeError that skipped it.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path

import numpy as np

from transferkit.errors import ImageDecodeError


def json_safe(value):
    """``value`` with NaN and infinities as None: strict JSON (what the responses are
    encoded with) has no such numbers, and a model's metrics may hold them."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def public_metrics(metrics: dict) -> dict:
    """What ``GET /model`` shows of a model's metrics: strict JSON, and no path of the
    server's files (a file exported before paths were cut may still name them)."""
    from transferkit.runtime.onnx_predictor import without_local_paths

    return json_safe(without_local_paths(metrics))


class ExportedModel:
    """An ``.onnx`` file written by ``transferkit export``."""

    kind = "onnx"

    def __init__(self, path: str | os.PathLike):
        from transferkit.runtime import load_predictor

        self.predictor = load_predictor(path)
        self.name = Path(path).name
        self.method = self.predictor.method
        self.classes = [str(c) for c in self.predictor.classes]
        self.input_size = tuple(self.predictor.input_size)
        self.metrics = public_metrics(self.predictor.metadata.get("metrics", {}))

    def prepare(self, path: Path) -> list[np.ndarray]:
        return self.predictor.preprocess(path)

    def predict_prepared(self, rows: list[list[np.ndarray]]) -> list:
        # The graph's inputs and output are named by the file's metadata, which
        # OnnxPredictor has checked against the graph.
        inputs, output = self.predictor.inputs, self.predictor.metadata["output"]
        step, batches = self.predictor.batch_size, []
        for start in range(0, len(rows), step):
            chunk = rows[start:start + step]
            feeds = {spec["name"]: np.stack([row[i] for row in chunk])
                     for i, spec in enumerate(inputs)}
            (probabilities,) = self.predictor.session.run([output], feeds)
            batches.append(np.asarray(probabilities, dtype=np.float64))
        return list(np.concatenate(batches)) if batches else []


def _bundle_input_size(estimator) -> tuple[int, int] | None:
    """(height, width) the model's network reads: a fine-tuned model's data config, a
    distilled student's image size, or a frozen backbone's input."""
    config = getattr(estimator, "data_config_", None)
    if config is not None:
        return tuple(int(v) for v in config["input_size"][1:])
    if getattr(estimator, "image_size", None):
        return int(estimator.image_size), int(estimator.image_size)
    build = getattr(estimator, "_extractor", None)
    if build is None:
        return None
    extractor = build()
    first = getattr(extractor, "extractors", [extractor])[0]
    return tuple(int(v) for v in first.input_shape[1:])


def _read_metrics(folder: Path) -> dict:
    try:
        metrics = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):  # informative only: a model still serves
        return {}
    return public_metrics(metrics) if isinstance(metrics, dict) else {}


class BundleModel:
    """A model folder written by ``transferkit fit`` (needs torch)."""

    kind = "bundle"

    def __init__(self, folder: str | os.PathLike):
        from transferkit.bundle import read_config
        from transferkit.jobs._common import load_model

        folder = Path(folder)
        # No feature cache: it would keep features of every client's images on disk.
        self.estimator = load_model(folder, use_cache=False, progress=False)
        if "num_workers" in self.estimator.get_params():
            # Batches are small; worker processes would cost more to start than they save.
            self.estimator.num_workers = 0
        self.name = folder.name
        self.method = read_config(folder)["method"]
        self.classes = [str(c) for c in self.estimator.classes_]
        self.input_size = _bundle_input_size(self.estimator)
        self.metrics = _read_metrics(folder)
        self._warm_up()

    def _warm_up(self) -> None:
        """Build the network now, so the first client does not wait for it."""
        from PIL import Image

        with tempfile.TemporaryDirectory(prefix="transferkit-serve-") as folder:
            path = Path(folder) / "warm-up.png"
            Image.new("RGB", (64, 64), (128, 128, 128)).save(path)
            self.estimator.predict_paths([path])

    def prepare(self, path: Path) -> Path:
        return path  # predict_paths decodes (with load_image's checks) and skips bad files

    def predict_prepared(self, paths: list[Path]) -> list:
        proba, ok, skipped = self.estimator.predict_paths(paths)
        reasons = {str(path): reason for path, reason in skipped}
        rows = iter(np.asarray(proba, dtype=np.float64))
        return [next(rows) if readable
                else ImageDecodeError(reasons.get(str(path), f"{path}: unreadable image"))
                for path, readable in zip(paths, ok)]


def load_served_model(path: str | os.PathLike) -> ExportedModel | BundleModel:
    """An exported ``.onnx`` file or a model folder, ready to serve."""
    exported = os.path.isfile(path) or (str(path).lower().endswith(".onnx")
                                               and not os.path.isdir(path))
    return ExportedModel(path) if exported else BundleModel(path)
