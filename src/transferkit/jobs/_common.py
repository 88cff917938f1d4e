"""What several jobs share: reading labelled and unlabelled image folders, class names,
the skipped-file fields of a summary, scoring and loading a saved model, and the text
that ``render`` returns. Heavy imports stay inside the functions (see :mod:`transferkit.jobs`).
"""

from __future__ import annotations

import os
from pathlib import Path

from transferkit.errors import DataError

# The input of Ganin & Lempitsky's small network (transferkit.nets.digits, which imports
# torch), on which adapt's deep methods and the autoencoder job train.
SMALL_IMAGE_SIZE = 32


# -- reading images ----------------------------------------------------------------------

def class_names(images):
    """The class name of every image of a :class:`~transferkit.data.dataset.LabelledImages`."""
    import numpy as np

    return np.asarray(images.classes, dtype=object)[images.labels]


def read_labelled_folder(folder, classes=None, what: str = "labelled images"):
    """The images of a folder of class sub-folders; with ``classes``, only those classes
    (another part of the same data), else at least two of them."""
    from transferkit.data.dataset import read_image_folder

    images = read_image_folder(folder, classes)
    if classes is None and len(images.classes) < 2:
        raise DataError(f"{folder}: the {what} need at least two classes, found "
                        f"{images.classes}.")
    return images


def list_unlabelled_images(folder, what: str = "unlabelled images") -> list[Path]:
    """Every image under ``folder`` (any layout: sub-folder names are not labels)."""
    from transferkit.data.dataset import list_image_files

    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: not a folder of {what}.")
    paths = list_image_files(folder)
    if not paths:
        raise DataError(f"{folder}: no {what} found.")
    return paths


def pooled_images(data: str | os.PathLike, random_state: int = 0, with_test: bool = False):
    """All images of a labelled folder or CSV as one ``LabelledImages``: the train and val
    parts (and the test part ``with_test``) pooled, for jobs that split data their own way."""
    import numpy as np

    from transferkit.data import load_dataset
    from transferkit.data.dataset import LabelledImages

    splits = load_dataset(data, random_state=random_state)
    parts = [part for part in (splits.train, splits.val, splits.test if with_test else None)
             if part is not None]
    return LabelledImages([path for part in parts for path in part.paths],
                          np.concatenate([part.labels for part in parts]), list(splits.classes))


def skipped_fields(skipped) -> dict:
    """The ``n_skipped`` and ``skipped`` entries of a summary, from (path, reason) pairs."""
    skipped = list(skipped)
    return {"n_skipped": len(skipped),
            "skipped": [{"path": path, "reason": reason} for path, reason in skipped]}


# -- saved models -------------------------------------------------------------------------

def load_model(bundle, cache_dir=None, use_cache: bool = True, progress: bool = False):
    """A saved model whose feature cache and progress bars are the caller's, not the ones
    it was saved with."""
    from transferkit.bundle import load_bundle

    estimator = load_bundle(bundle)
    for name, value in (("cache_dir", cache_dir), ("use_cache", use_cache), ("progress", progress)):
        if name in estimator.get_params():
            setattr(estimator, name, value)
    if hasattr(estimator, "extractor_"):
        estimator.extractor_ = None  # rebuilt lazily with the options above
    return estimator


def score_images(estimator, images, keep: dict | None = None,
                 what: str = "evaluation images") -> tuple[dict, list]:
    """Metrics of ``estimator`` on labelled ``images``; unreadable images are skipped and
    returned, and a DataError naming them (``what`` they are) when none is left. ``keep``,
    when given, receives the probabilities and the readable mask."""
    import numpy as np

    from transferkit.evaluate import classification_summary

    proba, ok, skipped = estimator.predict_paths(images.paths)
    truth = class_names(images)[ok]
    if len(truth) == 0:
        named = "; ".join(reason for _, reason in skipped[:5]).replace("\n", " ")
        more = f" and {len(skipped) - 5} more" if len(skipped) > 5 else ""
        raise DataError(f"none of the {len(skipped)} {what} could be read ({named}{more}); "
                        "fix or replace them." if skipped else f"there are no {what}.")
    if keep is not None:
        keep.update(proba=proba, ok=ok)
    predicted = np.asarray(estimator.classes_, dtype=object)[proba.argmax(axis=1)]
    return classification_summary(truth, predicted, list(estimator.classes_)), skipped


# -- what render returns ------------------------------------------------------------------

def format_table(rows: list[list]) -> str:
    """Left-aligned columns two spaces apart, one line per row."""
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip()
                     for row in rows)


def format_score(value) -> str:
    return "—" if value is None else f"{value:.3f}"


def skipped_lines(summary: dict) -> list[str]:
    """The lines that list a summary's unreadable files (none when there were none)."""
    if not summary.get("n_skipped"):
        return []
    return [f"skipped {summary['n_skipped']} unreadable file(s):",
            *(f"  {item['reason']}" for item in summary["skipped"])]
