"""``transferkit anomaly``: anomaly detection with transferred features — fit on normal
images only, score a test set (AUC, EER, detection and false-alarm rates)."""

from __future__ import annotations

import json
import os
import time
import warnings
from pathlib import Path

from transferkit.backbones.registry import DEFAULT_BACKBONE
from transferkit.errors import DataError
from transferkit.jobs import _options
from transferkit.jobs._common import format_table, skipped_fields, skipped_lines
from transferkit.outputs import removes_new_output_on_failure

NAME = "anomaly"
HELP = "anomaly detection: fit on normal images only, score a test set (AUC, EER)"

NORMAL_FOLDER_NAMES = ("normal", "good")  # "good": the MVTec AD layout
FILE_MARK = {"created_by": "transferkit"}  # lets a later run recognise its own file


def add_arguments(parser) -> None:
    parser.add_argument("--normal", required=True, help="folder of normal images (recursive)")
    parser.add_argument("--test", required=True, help="folder of sub-folders: normal/ (or good/, "
                        "or one named like the --normal folder) is normal, every other is "
                        "anomalous")
    parser.add_argument("--scorer", choices=["mahalanobis", "ocsvm", "knn"],
                        help="Mahalanobis distance (Ledoit-Wolf, the default), one-class SVM or "
                        "k-NN distance on standardised features")
    _options.add_backbone(parser)
    parser.add_argument("--layer", help="layer(s) whose features are used (default pre_logits)")
    parser.add_argument("--threshold-quantile", type=float,
                        help="flag images scoring above this quantile of the normal training "
                        "scores (default 0.95)")
    parser.add_argument("--holdout", type=float, help="share of normal images held out for the "
                        "test when --test contains the --normal folder (default 0.3)")
    _options.add_seed(parser)
    _options.add_out(parser, "write the scores: a .json file, or a folder (anomaly.json + "
                     "scores.csv)")
    _options.add_cache(parser)


def _test_groups(normal: Path, test: Path) -> tuple[list[tuple[str, list[Path]]], set[str]]:
    """The test folder's sub-folders as (name, files) and the names of the normal ones."""
    from transferkit.data.dataset import is_visible, list_image_files, looks_like_image

    if not test.is_dir():
        raise DataError(f"{test}: not a folder. Give a test folder with a normal/ sub-folder "
                        "and one sub-folder per kind of anomaly.")
    loose = [p for p in test.iterdir() if p.is_file() and is_visible(p) and looks_like_image(p)]
    if loose:
        raise DataError(f"{test}: {len(loose)} image(s) lie directly in the test folder (e.g. "
                        f"{loose[0].name}), so their label is unknown; move them into "
                        f"{test}/normal/ or into a sub-folder named after the anomaly.")
    groups = [(p.name, list_image_files(p)) for p in sorted(test.iterdir())
              if p.is_dir() and is_visible(p)]
    groups = [(name, files) for name, files in groups if files]
    normal_names = {name for name, _ in groups
                    if name.lower() in NORMAL_FOLDER_NAMES or name == normal.name}
    layout = (f"expected {test}/normal/* (or good/, or {normal.name}/, the normal folder's "
              f"name) holding normal images and other sub-folders holding anomalous ones")
    if not groups:
        raise DataError(f"{test}: no sub-folders with images; {layout}.")
    if not normal_names:
        raise DataError(f"{test}: no normal sub-folder among {[n for n, _ in groups]}; {layout}.")
    if len(normal_names) == len(groups):
        raise DataError(f"{test}: no anomalous sub-folder (only {sorted(normal_names)}); {layout}.")
    return groups, normal_names


def _prepare_output(out, inputs, overwrite: bool) -> Path:
    """Check (and for a folder, create) ``out`` before any extraction."""
    from transferkit.outputs import check_output_file, prepare_output_folder

    def written_by_transferkit(path: Path) -> bool:
        try:
            saved = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return False
        return isinstance(saved, dict) and saved.get("created_by") == FILE_MARK["created_by"]

    if Path(out).suffix.lower() == ".json":
        return check_output_file(out, written_by_transferkit=written_by_transferkit,
                                 inputs=inputs, overwrite=overwrite, what="JSON file")
    return prepare_output_folder(out, command="anomaly", inputs=inputs, overwrite=overwrite)


def _write_files(out: Path, result: dict, rows: list[dict]) -> None:
    """``anomaly.json`` (the summary, marked as transferkit's) and, for a folder,
    ``scores.csv``; ``result["files"]`` names them."""
    import csv
    import io

    from transferkit.outputs import write_bytes_atomic

    if out.suffix.lower() == ".json":
        files = {"json": out}
    else:
        files = {"json": out / "anomaly.json", "csv": out / "scores.csv"}
    result["files"] = {key: str(path) for key, path in files.items()}
    files["json"].parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(files["json"], json.dumps({**result, **FILE_MARK},
                                                 indent=2).encode("utf-8"))
    if "csv" in files:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
        write_bytes_atomic(files["csv"], buffer.getvalue().encode("utf-8"))


@removes_new_output_on_failure
def run(normal: str | os.PathLike, test: str | os.PathLike, out: str | os.PathLike | None = None,
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
    set can be the normal one: ``run("digits/0", "digits")``. Images that are both
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
    import numpy as np

    from transferkit.data import collect_images
    from transferkit.evaluate.metrics import binary_scores
    from transferkit.methods import create_method

    start = time.perf_counter()
    if not 0.0 < float(holdout) < 1.0:
        raise DataError(f"holdout must be between 0 and 1, got {holdout}.")
    detector = create_method("anomaly", scorer=scorer, backbone=backbone or DEFAULT_BACKBONE,
                             weights=weights, arch=arch, layer=layer,
                             threshold_quantile=threshold_quantile, random_state=random_state,
                             cache_dir=cache_dir, use_cache=use_cache, progress=progress,
                             **options)
    detector._check_params()
    normal, test = Path(normal), Path(test)
    train_paths = collect_images([normal])
    groups, normal_names = _test_groups(normal, test)

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
        from transferkit.outputs import input_folders

        _prepare_output(out, (normal, test, *input_folders(train_paths, test_paths)), overwrite)

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
        "scores": rows, **skipped_fields(list(detector.skipped_) + list(test_skipped)),
        "extract_seconds": float(detector.extract_seconds_),
    }
    if out is not None:
        result["seconds"] = time.perf_counter() - start
        _write_files(Path(out), result, rows)
    result["seconds"] = time.perf_counter() - start
    return result


def render(summary: dict) -> str:
    lines = skipped_lines(summary)
    lines.append(f"{summary['scorer']} on {summary['backbone']} features: AUC "
                 f"{summary['auc']:.3f}, EER {summary['eer']:.3f} (at score "
                 f"{summary['eer_threshold']:.3g}, chosen on the test labels)")
    lines.append(f"trained on {summary['n_normal_train']} normal images; tested on "
                 f"{summary['n_test']} ({summary['n_test_normal']} normal, "
                 f"{summary['n_anomalous']} anomalous"
                 + (f", {summary['n_held_out_normal']} held out of {summary['normal']}"
                    if summary["n_held_out_normal"] else "") + ")")
    lines.append(f"threshold {summary['threshold']:.3g} = {summary['threshold_quantile']:.0%} "
                 f"quantile of the normal training scores: detection rate "
                 f"{summary['detection_rate']:.3f}, false alarm rate "
                 f"{summary['false_alarm_rate']:.3f}")
    rows = [["sub-folder", "kind", "images", "flagged", "AUC vs normal"]]
    for name, item in summary["per_group"].items():
        rows.append([name, "normal" if item["normal"] else "anomalous", str(item["n"]),
                     f"{item['flagged_rate']:.3f}", f"{item['auc']:.3f}" if "auc" in item else "-"])
    lines.append(format_table(rows))
    if "files" in summary:
        lines.append("wrote " + ", ".join(summary["files"].values()))
    return "\n".join(lines)
