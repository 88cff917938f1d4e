"""Whole jobs on folders: fit a model and save it, evaluate it, predict with it.

These functions are the Python form of the CLI commands (which only parse and print)
and return JSON-able summaries. Methods are looked up by name in the method registry.
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


def _classes_lost_to_unreadable_files(images: LabelledImages, skipped) -> dict[str, str]:
    """Classes none of whose ``images`` could be read, each with its first file's reason."""
    reasons = {str(path): reason for path, reason in skipped}
    lost = {}
    for label, name in enumerate(images.classes):
        members = [str(path) for path, own in zip(images.paths, images.labels) if own == label]
        if members and all(path in reasons for path in members):
            lost[name] = reasons[members[0]]
    return lost


def _refuse_too_few_readable_classes(splits, skipped) -> dict[str, str]:
    """The classes whose training images were all unreadable (the model cannot have learnt
    them); a :class:`DataError` naming them when fewer than two classes are left."""
    lost = _classes_lost_to_unreadable_files(splits.train, skipped)
    kept = [name for name in splits.classes if name not in lost]
    if lost and len(kept) < 2:
        # One line, even when a file name holds a line break.
        detail = "; ".join(f"{name!r}, e.g. {reason}" for name, reason in lost.items())
        detail = detail.replace("\n", " ")
        raise DataError(f"every training image of {len(lost)} class(es) was unreadable ({detail}), "
                        f"which leaves {kept or 'no class'}; a classifier needs at least two "
                        "classes. Fix or replace those files.")
    return lost


def fit(data: str | os.PathLike, out: str | os.PathLike, method: str = "linear_probe",
        val_fraction: float = 0.2, random_state: int = 0, report: bool = True,
        check_negative_transfer: bool = False, overwrite: bool = False, **options) -> dict:
    """Train ``method`` on the images in ``data`` and save the model in ``out``.

    ``options`` go to the method's estimator (e.g. ``backbone``, ``classifier``,
    ``cache_dir``, ``progress``). ``report``: also write ``out/report.html``.
    ``check_negative_transfer`` (linear_probe, fne): cross-validate a fresh copy of the
    estimator against raw pixels on the training images and put the verdict in the
    summary under ``"negative_transfer"`` (see :func:`negative_transfer_summary`).
    ``out`` must be new, empty or written by transferkit, and apart from ``data``; a
    saved model there is replaced only with ``overwrite`` (see :mod:`transferkit.outputs`).
    Returns the summary printed by ``transferkit fit --json``.
    """
    from transferkit.outputs import prepare_output_folder

    start = time.perf_counter()
    from transferkit.methods.registry import create_method, list_methods

    if method not in list_methods(family="classifier"):
        raise TransferkitError(f"unknown method {method!r}; choose one of "
                               f"{', '.join(list_methods(family='classifier'))}.")
    cheap = list_methods(family="classifier", refits_cheaply=True)
    if check_negative_transfer and method not in cheap:
        raise TransferkitError(f"the negative-transfer check refits the model on every fold, "
                               f"which only the feature-based methods "
                               f"({', '.join(cheap)}) do cheaply; drop "
                               f"--check-negative-transfer for {method} or use one of those.")
    splits = load_dataset(data, val_fraction=val_fraction, random_state=random_state)
    # Before any training: a refused --out costs nothing and changes nothing.
    folder = prepare_output_folder(out, command="fit", inputs=(data,), overwrite=overwrite)
    work, stale_work_error = None, ()  # () catches nothing: no work folder, no stale one
    if method == "finetune" and options.get("run_dir") is None:
        from transferkit.outputs import WORK_FOLDER
        from transferkit.train.loop import RunMismatchError as stale_work_error

        # Checkpoints in the model folder: rerunning an interrupted fit resumes it.
        work = Path(out) / WORK_FOLDER
        options["run_dir"] = str(work)
    estimator = create_method(method, random_state=random_state, **options)
    with warnings.catch_warnings(record=True):
        # Skipped images are reported once, in the summary, not as a warning per call.
        warnings.simplefilter("ignore")
        try:
            estimator.fit(splits.train.paths, _names(splits.train),
                          X_val=splits.val.paths, y_val=_names(splits.val))
        except stale_work_error as exc:
            raise stale_work_error(f"{work} holds an interrupted fit with other settings or data; "
                                   "add --overwrite (overwrite=True) to start over, or give "
                                   "another --out.") from exc
        except DataError:
            # "need at least two classes" hides why: say which classes were unreadable.
            _refuse_too_few_readable_classes(splits, getattr(estimator, "skipped_", []))
            raise
    lost_classes = _refuse_too_few_readable_classes(splits, estimator.skipped_)
    val_outputs: dict = {}
    val_metrics, val_skipped = _score(estimator, splits.val, val_outputs)
    # Only training images count against n_train; the validation ones are in val_skipped.
    train_files = {str(path) for path in splits.train.paths}
    train_skipped = [(path, reason) for path, reason in estimator.skipped_
                     if str(path) in train_files]
    skipped = train_skipped + list(val_skipped)
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
        "dropped_classes": list(lost_classes),
        "validation": splits.validation_source,
        "n_train": int(len(splits.train) - len(train_skipped)),
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
    if check_negative_transfer:
        summary["negative_transfer"] = negative_transfer_summary(estimator, splits.train,
                                                                 random_state)
    data_summary = {"source": str(Path(data).resolve()), "validation": splits.validation_source,
                    "train_counts": splits.train.counts(), "val_counts": splits.val.counts()}
    save_bundle(estimator, folder, metrics={k: v for k, v in summary.items() if k != "skipped"},
                extra={"data": data_summary, "skipped": summary["skipped"]}, overwrite=overwrite)
    if report:
        summary["report"] = str(_write_fit_report(estimator, splits, val_outputs, out))
    summary["seconds"] = time.perf_counter() - start
    return summary


def _write_fit_report(estimator, splits, val_outputs: dict, out) -> Path:
    """``report_data.json`` (validation predictions, feature map) and ``report.html``."""
    from transferkit.outputs import write_json_atomic
    from transferkit.report.html import REPORT_DATA, collect_report_data, write_report

    data = collect_report_data(estimator, splits.train.paths, _names(splits.train),
                               splits.val.paths, _names(splits.val), val_outputs["proba"],
                               val_outputs["ok"])
    write_json_atomic(Path(out) / REPORT_DATA, data)
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


# -- anomaly detection ----------------------------------------------------------------

ANOMALY_NORMAL_NAMES = ("normal", "good")  # "good": the MVTec AD layout


def _anomaly_test_groups(normal: Path, test: Path) -> tuple[list[tuple[str, list[Path]]], set[str]]:
    """The test folder's sub-folders as (name, files) and the names of the normal ones."""
    from transferkit.data.dataset import _is_visible, list_image_files, looks_like_image

    if not test.is_dir():
        raise DataError(f"{test}: not a folder. Give a test folder with a normal/ sub-folder "
                        "and one sub-folder per kind of anomaly.")
    loose = [p for p in test.iterdir() if p.is_file() and _is_visible(p) and looks_like_image(p)]
    if loose:
        raise DataError(f"{test}: {len(loose)} image(s) lie directly in the test folder (e.g. "
                        f"{loose[0].name}), so their label is unknown; move them into "
                        f"{test}/normal/ or into a sub-folder named after the anomaly.")
    groups = [(p.name, list_image_files(p)) for p in sorted(test.iterdir())
              if p.is_dir() and _is_visible(p)]
    groups = [(name, files) for name, files in groups if files]
    normal_names = {name for name, _ in groups
                    if name.lower() in ANOMALY_NORMAL_NAMES or name == normal.name}
    layout = (f"expected {test}/normal/* (or good/, or {normal.name}/, the normal folder's "
              f"name) holding normal images and other sub-folders holding anomalous ones")
    if not groups:
        raise DataError(f"{test}: no sub-folders with images; {layout}.")
    if not normal_names:
        raise DataError(f"{test}: no normal sub-folder among {[n for n, _ in groups]}; {layout}.")
    if len(normal_names) == len(groups):
        raise DataError(f"{test}: no anomalous sub-folder (only {sorted(normal_names)}); {layout}.")
    return groups, normal_names


ANOMALY_FILE_MARK = {"created_by": "transferkit"}  # lets a later run recognise its own file


def _prepare_anomaly_output(out, inputs, overwrite: bool) -> Path:
    """Check (and for a folder, create) anomaly's ``out`` before any extraction."""
    import json

    from transferkit.outputs import check_output_file, prepare_output_folder

    def written_by_transferkit(path: Path) -> bool:
        try:
            saved = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return False
        return isinstance(saved, dict) and saved.get("created_by") == "transferkit"

    if Path(out).suffix.lower() == ".json":
        return check_output_file(out, written_by_transferkit=written_by_transferkit,
                                 inputs=inputs, overwrite=overwrite, what="JSON file")
    return prepare_output_folder(out, command="anomaly", inputs=inputs, overwrite=overwrite)


def anomaly(normal: str | os.PathLike, test: str | os.PathLike, out: str | os.PathLike | None = None,
            scorer: str = "mahalanobis", backbone: str | None = None, weights: str | None = None,
            arch: str | None = None, layer: str = "pre_logits", cache_dir=None,
            use_cache: bool = True, progress: bool = False, threshold_quantile: float = 0.95,
            holdout: float = 0.3, random_state: int = 0, overwrite: bool = False,
            **options) -> dict:
    """Anomaly detection with transferred features: fit on normal images, score a test set.

    ``normal``: folder of normal images (searched recursively). ``test``: a folder of
    sub-folders; a sub-folder named ``normal`` or ``good`` (MVTec AD), or named like the
    ``normal`` folder itself, holds normal images and every other sub-folder holds
    anomalous ones (its name is the kind of anomaly). So one class of a labelled data
    set can be the normal one: ``anomaly("digits/0", "digits")``. Images that are both
    normal training and test images are split: a seeded ``holdout`` share of them is
    tested, the rest trains, so no image is scored by a model that saw it.

    ``scorer``, ``backbone``, ``weights``, ``arch``, ``layer`` and ``options`` (e.g.
    ``n_neighbors``, ``nu``) go to :class:`~transferkit.methods.anomaly.AnomalyDetector`.
    An image is ``flagged`` when its score reaches the ``threshold_quantile`` quantile of
    the normal training images' out-of-fold scores: no test label sets the threshold
    (the EER threshold is reported, but it is chosen on the test labels). Writes
    ``out`` when given: a ``.json`` file, or a folder with ``anomaly.json`` and
    ``scores.csv``; an existing result there is replaced only with ``overwrite``, and ``out``
    may not lie in the input folders (see :mod:`transferkit.outputs`). Returns the summary
    printed by ``transferkit anomaly --json``.
    """
    import json

    from transferkit.evaluate.metrics import binary_scores
    from transferkit.features.cache import atomic_write_bytes
    from transferkit.methods.anomaly import AnomalyDetector

    start = time.perf_counter()
    if not 0.0 < float(holdout) < 1.0:
        raise DataError(f"holdout must be between 0 and 1, got {holdout}.")
    detector = AnomalyDetector(scorer=scorer, backbone=backbone or "efficientnet_lite0",
                               weights=weights, arch=arch, layer=layer,
                               threshold_quantile=threshold_quantile, random_state=random_state,
                               cache_dir=cache_dir, use_cache=use_cache, progress=progress,
                               **options)
    detector._check_params()
    normal, test = Path(normal), Path(test)
    train_paths = collect_images([normal])
    groups, normal_names = _anomaly_test_groups(normal, test)

    # Images in both sets (e.g. --normal data/0 --test data): split them, never score
    # an image with a model fitted on it.
    train_set = {p.resolve() for p in train_paths}
    shared = sorted({p.resolve() for _, files in groups for p in files} & train_set)
    if any(p.resolve() in train_set for name, files in groups if name not in normal_names
           for p in files):
        raise DataError(f"some normal training images in {normal} also lie in an anomalous "
                        f"sub-folder of {test}; keep the normal folder apart from the anomalies.")
    held_out: set[Path] = set()
    if shared:
        rng = np.random.default_rng(random_state)
        n_held = int(round(float(holdout) * len(shared)))
        held_out = {shared[i] for i in rng.permutation(len(shared))[:n_held]}
        train_paths = [p for p in train_paths if p.resolve() not in held_out]
        groups = [(name, [p for p in files if p.resolve() not in train_set
                          or p.resolve() in held_out]) for name, files in groups]
        if not train_paths or not all(files for name, files in groups if name in normal_names):
            raise DataError(f"too few normal images in {normal} to hold some out for the test; "
                            f"give a separate test/normal/ folder.")
    test_paths = [p for _, files in groups for p in files]
    test_groups = [name for name, files in groups for _ in files]
    truth_all = np.array([name not in normal_names for name in test_groups], dtype=bool)
    if out is not None:
        _prepare_anomaly_output(out, (normal, test), overwrite)

    with warnings.catch_warnings():
        # Skipped images are reported once, in the summary, not as a warning per call.
        warnings.simplefilter("ignore")
        detector.fit(train_paths)
    scores, ok, test_skipped = detector.score_paths(test_paths)
    truth = truth_all[ok]
    kept_groups = [g for g, readable in zip(test_groups, ok) if readable]
    if truth.all() or not truth.any():
        raise DataError(f"{test}: after skipping unreadable images the test set has "
                        f"{'no normal' if truth.all() else 'no anomalous'} image left.")
    metrics = binary_scores(truth.astype(int), scores)
    flagged = scores >= detector.threshold_
    per_group = {}
    for name, _ in groups:
        mask = np.array([g == name for g in kept_groups], dtype=bool)
        if not mask.any():
            continue
        item = {"n": int(mask.sum()), "normal": name in normal_names,
                "flagged_rate": float(flagged[mask].mean()),
                "mean_score": float(scores[mask].mean())}
        if name not in normal_names:
            both = mask | ~truth
            item["auc"] = binary_scores(truth[both].astype(int), scores[both])["auc"]
        per_group[name] = item
    skipped = list(detector.skipped_) + list(test_skipped)
    rows = [{"path": str(path), "group": group, "score": float(score),
             "is_anomaly_true": bool(is_anomaly), "flagged": bool(flag)}
            for path, group, score, is_anomaly, flag
            in zip([p for p, r in zip(test_paths, ok) if r], kept_groups, scores, truth, flagged)]
    result = {
        "normal": str(normal), "test": str(test), "scorer": scorer,
        "backbone": detector.backbone if weights is None else f"{arch} ({weights})",
        "layer": layer,
        "auc": metrics["auc"], "eer": metrics["eer"], "eer_threshold": metrics["eer_threshold"],
        "threshold": float(detector.threshold_), "threshold_quantile": float(threshold_quantile),
        "detection_rate": float(flagged[truth].mean()),
        "false_alarm_rate": float(flagged[~truth].mean()),
        "n_normal_train": int(len(detector.train_scores_)),
        "n_test": int(len(truth)), "n_test_normal": int((~truth).sum()),
        "n_anomalous": int(truth.sum()), "n_held_out_normal": len(held_out),
        "normal_groups": sorted(normal_names), "per_group": per_group,
        "scores": rows, "n_skipped": len(skipped),
        "skipped": [{"path": path, "reason": reason} for path, reason in skipped],
        "extract_seconds": float(detector.extract_seconds_),
    }
    if out is not None:
        out = Path(out)
        if out.suffix.lower() == ".json":
            files = {"json": out}
        else:
            files = {"json": out / "anomaly.json", "csv": out / "scores.csv"}
        result["files"] = {key: str(path) for key, path in files.items()}
        result["seconds"] = time.perf_counter() - start
        files["json"].parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(files["json"], json.dumps({**result, **ANOMALY_FILE_MARK},
                                                     indent=2).encode("utf-8"))
        if "csv" in files:
            import csv
            import io

            buffer = io.StringIO()
            writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
            atomic_write_bytes(files["csv"], buffer.getvalue().encode("utf-8"))
    result["seconds"] = time.perf_counter() - start
    return result


# -- negative-transfer check from fit -----------------------------------------------------



def negative_transfer_summary(estimator, images: LabelledImages, random_state: int = 0) -> dict:
    """:func:`~transferkit.evaluate.negative_transfer.negative_transfer_check` of a fitted
    feature-based ``estimator`` on ``images`` (its training images): a fresh clone of it
    vs :class:`~transferkit.methods.raw_pixels.RawPixelClassifier` with the same
    classifier, on the same folds. Images the estimator could not read are left out."""
    from sklearn.base import clone

    from transferkit.evaluate.negative_transfer import negative_transfer_check
    from transferkit.methods.classifiers import CLASSIFIERS
    from transferkit.methods.raw_pixels import RawPixelClassifier

    unreadable = {str(path) for path, _ in getattr(estimator, "skipped_", [])}
    keep = [i for i, path in enumerate(images.paths) if str(path) not in unreadable]
    images = images.subset(keep)
    transferred = clone(estimator)
    if "progress" in transferred.get_params():
        transferred.set_params(progress=False)  # one bar per fold would be noise
    classifier = getattr(estimator, "classifier", "logreg")
    baseline = RawPixelClassifier(classifier=classifier if classifier in CLASSIFIERS else "logreg",
                                  random_state=random_state)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return negative_transfer_check(transferred, images.paths, _names(images),
                                       baseline=baseline, random_state=random_state)


# -- cross-domain feature-space generalisation ---------------------------------------------

def _pooled_images(data) -> tuple[list[Path], np.ndarray, list[str]]:
    """All images of a labelled folder/CSV (train and val parts pooled), labels as names."""
    splits = load_dataset(data)
    parts = [part for part in (splits.train, splits.val) if part is not None]
    paths = [path for part in parts for path in part.paths]
    names = np.concatenate([_names(part) for part in parts])
    return paths, names, list(splits.classes)


def cdfg(domain_a: str | os.PathLike, domain_b: str | os.PathLike, spaces=("last", "fne"),
         backbone: str | None = None, weights: str | None = None, arch: str | None = None,
         classifier: str = "logreg", random_state: int = 0, cache_dir=None,
         use_cache: bool = True, progress: bool = False) -> dict:
    """CDFG (dos Santos, Ribeiro & Ponti 2019) of each feature space between two domains.

    ``domain_a``/``domain_b``: labelled image folders (or CSVs) with the same class
    names; their train and val parts are pooled. ``spaces``: names from
    :data:`~transferkit.evaluate.cdfg.FEATURE_SPACES` (a list or a comma-separated
    string). One row per space with G_comp (lower: the space carries over better), both
    G_part and the four held-out risks. Returns the summary of ``transferkit cdfg --json``.
    """
    from transferkit.evaluate.cdfg import compare_feature_spaces

    start = time.perf_counter()
    if isinstance(spaces, str):
        spaces = [space.strip() for space in spaces.split(",") if space.strip()]
    paths_a, ya, classes_a = _pooled_images(domain_a)
    paths_b, yb, classes_b = _pooled_images(domain_b)
    if set(classes_a) != set(classes_b):
        only_a = sorted(set(classes_a) - set(classes_b))
        only_b = sorted(set(classes_b) - set(classes_a))
        raise DataError(f"the two domains must have the same classes (CDFG compares one task "
                        f"in two domains): only in {domain_a}: {only_a or 'none'}; only in "
                        f"{domain_b}: {only_b or 'none'}.")
    rows = compare_feature_spaces(paths_a, ya, paths_b, yb, spaces=tuple(spaces),
                                  backbone=backbone or "efficientnet_lite0",
                                  classifier=classifier, random_state=random_state,
                                  cache_dir=cache_dir, progress=progress, weights=weights,
                                  arch=arch, use_cache=use_cache)
    return {"domain_a": str(domain_a), "domain_b": str(domain_b),
            "backbone": ((backbone or "efficientnet_lite0") if weights is None
                         else f"{arch} ({weights})"),
            "classifier": classifier, "seed": random_state, "classes": sorted(classes_a),
            "n_a": len(paths_a), "n_b": len(paths_b), "rows": rows,
            "seconds": time.perf_counter() - start}
