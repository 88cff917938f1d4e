"""``transferkit evaluate``: score a saved model on labelled images."""

from __future__ import annotations

import os
import time
from pathlib import Path

from transferkit.errors import DataError
from transferkit.jobs import _options
from transferkit.jobs._common import (
    format_table,
    load_model,
    score_images,
    skipped_fields,
    skipped_lines,
)

NAME = "evaluate"
HELP = "score a saved model on labelled images"


def add_arguments(parser) -> None:
    parser.add_argument("bundle", metavar="model", help="model folder written by `transferkit fit`")
    parser.add_argument("data", help="class-folder tree or CSV (test/ or val/ part if present)")
    _options.add_cache(parser)


def _evaluation_images(data: Path, classes: list[str]):
    from transferkit.data import read_csv, read_image_folder
    from transferkit.data.dataset import TEST_FOLDER_NAMES, VAL_FOLDER_NAMES

    if data.is_file():
        return read_csv(data, classes)
    for names in (TEST_FOLDER_NAMES, VAL_FOLDER_NAMES):
        for name in names:
            if (data / name).is_dir():
                return read_image_folder(data / name, classes)
    return read_image_folder(data, classes)


def run(bundle: str | os.PathLike, data: str | os.PathLike, cache_dir=None,
        use_cache: bool = True, progress: bool = False) -> dict:
    """Score a saved model on labelled images (a class-folder tree or a CSV).

    A folder holding ``test/`` (else ``val/``) sub-folders is scored on that part.
    """
    start = time.perf_counter()
    estimator = load_model(bundle, cache_dir, use_cache, progress)
    data = Path(data)
    if not data.exists():
        raise DataError(f"{data}: no such file or folder.")
    images = _evaluation_images(data, [str(c) for c in estimator.classes_])
    metrics, skipped = score_images(estimator, images)
    metrics.update(skipped_fields(skipped))
    metrics["seconds"] = time.perf_counter() - start
    return metrics


def render(summary: dict) -> str:
    rows = [["class", "precision", "recall", "f1", "support"]]
    for name, row in summary["per_class"].items():
        rows.append([name, f"{row['precision']:.3f}", f"{row['recall']:.3f}", f"{row['f1']:.3f}",
                     str(row["support"])])
    matrix = summary["confusion_matrix"]
    return "\n".join([
        *skipped_lines(summary),
        f"accuracy {summary['accuracy']:.3f}, balanced accuracy "
        f"{summary['balanced_accuracy']:.3f} on {summary['n']} images",
        format_table(rows),
        "confusion matrix (rows: true, columns: predicted)",
        format_table([[""] + matrix["labels"]] + [[label] + [str(v) for v in row] for label, row
                                                  in zip(matrix["labels"], matrix["matrix"])])])
