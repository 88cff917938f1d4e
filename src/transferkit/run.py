"""Whole jobs on folders: fit a model and save it, evaluate it, predict with it.

These functions are the Python form of the CLI commands (which only parse and print)
and return JSON-able summaries. Methods are looked up by name in :data:`METHOD_FACTORIES`.
"""

from __future__ import annotations

import os
import time
import warnings
from pathlib import Path

import numpy as np

from transferkit.bundle import load_bundle, read_config, save_bundle
from transferkit.data import collect_images, load_dataset, read_csv, read_image_folder
from transferkit.data.dataset import TEST_FOLDER_NAMES, VAL_FOLDER_NAMES, LabelledImages
from transferkit.errors import DataError, TransferkitError
from transferkit.evaluate import classification_summary


def _linear_probe(**options):
    from transferkit.methods.linear_probe import LinearProbe

    return LinearProbe(**options)


def _finetune(**options):
    from transferkit.methods.finetune import FineTuner

    return FineTuner(**options)


def _full_network_embedding(**options):
    """Garcia-Gasulla et al. 2018: all stages pooled, standardised, discretised; linear SVM."""
    from transferkit.methods.linear_probe import LinearProbe

    options.setdefault("classifier", "svm")
    options.update(layer="fne", pooling="avg", embedding="fne")  # FNE's definition
    return LinearProbe(**options)


METHOD_FACTORIES = {"linear_probe": _linear_probe, "fne": _full_network_embedding,
                    "finetune": _finetune}


def _names(images: LabelledImages) -> np.ndarray:
    return np.asarray(images.classes, dtype=object)[images.labels]


def _score(estimator, images: LabelledImages, keep: dict | None = None) -> tuple[dict, list]:
    """Metrics of ``estimator`` on ``images``; unreadable images are skipped and listed.
    ``keep``, when given, receives the probabilities and the readable mask (for the report)."""
    proba, ok, skipped = estimator.predict_paths(images.paths)
    truth = _names(images)[ok]
    if len(truth) == 0:
        raise DataError("none of the evaluation images could be read.")
    if keep is not None:
        keep.update(proba=proba, ok=ok)
    predicted = np.asarray(estimator.classes_, dtype=object)[proba.argmax(axis=1)]
    return classification_summary(truth, predicted, list(estimator.classes_)), skipped


def fit(data: str | os.PathLike, out: str | os.PathLike, method: str = "linear_probe",
        val_fraction: float = 0.2, random_state: int = 0, report: bool = True,
        **options) -> dict:
    """Train ``method`` on the images in ``data`` and save the model in ``out``.

    ``options`` go to the method's estimator (e.g. ``backbone``, ``classifier``,
    ``cache_dir``, ``progress``). ``report``: also write ``out/report.html``. Returns the
    summary printed by ``transferkit fit --json``.
    """
    start = time.perf_counter()
    if method not in METHOD_FACTORIES:
        raise TransferkitError(f"unknown method {method!r}; choose one of {sorted(METHOD_FACTORIES)}.")
    splits = load_dataset(data, val_fraction=val_fraction, random_state=random_state)
    estimator = METHOD_FACTORIES[method](random_state=random_state, **options)
    with warnings.catch_warnings(record=True):
        # Skipped images are reported once, in the summary, not as a warning per call.
        warnings.simplefilter("ignore")
        estimator.fit(splits.train.paths, _names(splits.train),
                      X_val=splits.val.paths, y_val=_names(splits.val))
    val_outputs: dict = {}
    val_metrics, val_skipped = _score(estimator, splits.val, val_outputs)
    skipped = list(estimator.skipped_) + list(val_skipped)
    if splits.test is not None:
        test_metrics, test_skipped = _score(estimator, splits.test)
        skipped += test_skipped
    else:
        test_metrics = None
    seconds = time.perf_counter() - start
    summary = {
        "method": method,
        "out": str(Path(out)),
        "backbone": getattr(estimator, "backbone", None),
        "classes": [str(c) for c in estimator.classes_],
        "validation": splits.validation_source,
        "n_train": int(len(splits.train) - len(estimator.skipped_)),
        "n_val": int(val_metrics["n"]),
        "n_skipped": len(skipped),
        "skipped": [{"path": path, "reason": reason} for path, reason in skipped],
        "val_accuracy": val_metrics["accuracy"],
        "val_balanced_accuracy": val_metrics["balanced_accuracy"],
        "val_metrics": val_metrics,
        "extract_seconds": float(getattr(estimator, "extract_seconds_", 0.0)),
        "seconds": seconds,
    }
    for key in ("epochs_run_", "best_epoch_"):
        if hasattr(estimator, key):
            summary[key.rstrip("_")] = int(getattr(estimator, key))
    if test_metrics is not None:
        summary["test_accuracy"] = test_metrics["accuracy"]
        summary["test_balanced_accuracy"] = test_metrics["balanced_accuracy"]
        summary["test_metrics"] = test_metrics
    data_summary = {"source": str(Path(data).resolve()), "validation": splits.validation_source,
                    "train_counts": splits.train.counts(), "val_counts": splits.val.counts()}
    save_bundle(estimator, out, metrics={k: v for k, v in summary.items() if k != "skipped"},
                extra={"data": data_summary, "skipped": summary["skipped"]})
    if report:
        summary["report"] = str(_write_fit_report(estimator, splits, val_outputs, out))
    summary["seconds"] = time.perf_counter() - start
    return summary


def _write_fit_report(estimator, splits, val_outputs: dict, out) -> Path:
    """``report_data.json`` (validation predictions, feature map) and ``report.html``."""
    from transferkit.report.html import REPORT_DATA, collect_report_data, write_report
    from transferkit.train.checkpoint import atomic_write_json

    data = collect_report_data(estimator, splits.train.paths, _names(splits.train),
                               splits.val.paths, _names(splits.val), val_outputs["proba"],
                               val_outputs["ok"])
    atomic_write_json(Path(out) / REPORT_DATA, data)
    return write_report(out)


def _evaluation_images(data: Path, classes: list[str]) -> LabelledImages:
    if data.is_file():
        return read_csv(data, classes)
    for names in (TEST_FOLDER_NAMES, VAL_FOLDER_NAMES):
        for name in names:
            if (data / name).is_dir():
                return read_image_folder(data / name, classes)
    return read_image_folder(data, classes)


def _load(bundle, cache_dir=None, use_cache: bool = True, progress: bool = False):
    """Load a bundle and point its feature cache where the caller asks."""
    estimator = load_bundle(bundle)
    for name, value in (("cache_dir", cache_dir), ("use_cache", use_cache), ("progress", progress)):
        if name in estimator.get_params():
            setattr(estimator, name, value)
    if hasattr(estimator, "extractor_"):
        estimator.extractor_ = None  # rebuilt lazily with the options above
    return estimator


def evaluate(bundle: str | os.PathLike, data: str | os.PathLike, cache_dir=None,
             use_cache: bool = True, progress: bool = False) -> dict:
    """Score a saved model on labelled images (a class-folder tree or a CSV).

    A folder holding ``test/`` (else ``val/``) sub-folders is scored on that part.
    """
    start = time.perf_counter()
    estimator = _load(bundle, cache_dir, use_cache, progress)
    data = Path(data)
    if not data.exists():
        raise DataError(f"{data}: no such file or folder.")
    images = _evaluation_images(data, [str(c) for c in estimator.classes_])
    metrics, skipped = _score(estimator, images)
    metrics["n_skipped"] = len(skipped)
    metrics["skipped"] = [{"path": path, "reason": reason} for path, reason in skipped]
    metrics["seconds"] = time.perf_counter() - start
    return metrics


def predict(bundle: str | os.PathLike, inputs, cache_dir=None, use_cache: bool = True,
            progress: bool = False) -> dict:
    """Label and class probabilities for every image in ``inputs`` (files or folders)."""
    start = time.perf_counter()
    estimator = _load(bundle, cache_dir, use_cache, progress)
    paths = collect_images(inputs)
    proba, ok, skipped = estimator.predict_paths(paths)
    classes = [str(c) for c in estimator.classes_]
    predictions = []
    rows = iter(proba)
    for path, readable in zip(paths, ok):
        if readable:
            p = next(rows)
            predictions.append({"path": str(path), "label": classes[int(p.argmax())],
                                "probabilities": {c: float(v) for c, v in zip(classes, p)}})
    return {"bundle": str(bundle), "method": read_config(bundle)["method"],
            "predictions": predictions, "n_skipped": len(skipped),
            "skipped": [{"path": path, "reason": reason} for path, reason in skipped],
            "seconds": time.perf_counter() - start}
