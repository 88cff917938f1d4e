"""``transferkit predict``: label images with a saved model."""

from __future__ import annotations

import os
import time

from transferkit.jobs import _options
from transferkit.jobs._common import load_model, skipped_fields, skipped_lines

NAME = "predict"
HELP = "label images with a saved model"


def add_arguments(parser) -> None:
    parser.add_argument("bundle", metavar="model", help="model folder written by `transferkit "
                        "fit`, or an .onnx file from `transferkit export` (no PyTorch needed)")
    parser.add_argument("inputs", metavar="images", nargs="+", help="image files or folders")
    _options.add_cache(parser)


def run(bundle: str | os.PathLike, inputs, cache_dir=None, use_cache: bool = True,
        progress: bool = False) -> dict:
    """Label and class probabilities for every image in ``inputs`` (files or folders)."""
    from transferkit.bundle import read_config
    from transferkit.data import collect_images

    start = time.perf_counter()
    # An exported model: ONNX Runtime, no torch or scikit-learn. A missing or special
    # .onnx path goes there too, to be named as the file it is meant to be.
    if os.path.isfile(bundle) or (str(bundle).lower().endswith(".onnx")
                                   and not os.path.isdir(bundle)):
        from transferkit.runtime import load_predictor

        estimator = load_predictor(bundle)
        method, classes = estimator.method, [str(c) for c in estimator.classes]
    else:
        estimator = load_model(bundle, cache_dir, use_cache, progress)
        method, classes = read_config(bundle)["method"], [str(c) for c in estimator.classes_]
    paths = collect_images(inputs)
    proba, ok, skipped = estimator.predict_paths(paths)
    predictions = []
    rows = iter(proba)
    for path, readable in zip(paths, ok):
        if readable:
            p = next(rows)
            predictions.append({"path": str(path), "label": classes[int(p.argmax())],
                                "probabilities": {c: float(v) for c, v in zip(classes, p)}})
    return {"bundle": str(bundle), "method": method,
            "predictions": predictions, **skipped_fields(skipped),
            "seconds": time.perf_counter() - start}


def render(summary: dict) -> str:
    lines = [f"{item['path']}\t{item['label']}\t{item['probabilities'][item['label']]:.3f}"
             for item in summary["predictions"]]
    return "\n".join(lines + skipped_lines(summary))
