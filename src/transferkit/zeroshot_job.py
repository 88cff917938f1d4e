"""The ``transferkit zeroshot`` job: hold classes out, learn on the rest, name the held-out.

Protocol (Xian et al. 2017, "Zero-shot learning — the good, the bad and the ugly"): the
*unseen* classes contribute no training image at all; a seeded ``test_fraction`` of each
*seen* class's images is held out too. Reported, as per-class mean top-1 accuracy:

* zero-shot: unseen images, candidates = the unseen classes only (chance 1 / n_unseen);
* generalised zero-shot: seen test and unseen images, candidates = every class; the
  accuracy on each part and their harmonic mean H (chance 1 / n_classes for all three),
  with calibrated stacking and without it.

:func:`evaluate_zeroshot` works on features already extracted (the benchmark calls it);
:func:`zeroshot` reads a folder, extracts features, builds the semantic vectors and
calls it, returning the JSON-able summary ``transferkit zeroshot --json`` prints.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from transferkit.errors import DataError
from transferkit.methods.zeroshot import (
    DEFAULT_PROMPT,
    SENTENCE_MODEL,
    ZeroShotClassifier,
    clean_class_name,
    embed_class_names,
    embed_descriptions,
    harmonic_mean,
    per_class_accuracy,
    read_attribute_table,
)


def resolve_unseen(classes: Sequence[str], unseen=None, unseen_fraction: float = 0.3,
                   random_state: int = 0) -> list[str]:
    """The held-out classes, in ``classes`` order.

    ``unseen``: names (a list, or one comma-separated string) matching folder names or
    their cleaned form, case-insensitively (``sunflower`` or ``09_sunflower``). When
    ``None``, a seeded random ``unseen_fraction`` of the classes (at least 2). At least 2
    classes must stay seen and at least 2 be unseen.
    """
    classes = list(classes)
    if len(classes) < 4:
        raise DataError(f"zero-shot evaluation needs at least 4 classes (2 seen, 2 unseen); "
                        f"found {len(classes)}: {classes}.")
    if unseen is None:
        if not 0.0 < float(unseen_fraction) < 1.0:
            raise DataError(f"unseen_fraction must lie between 0 and 1, got {unseen_fraction}.")
        n = min(max(2, int(round(unseen_fraction * len(classes)))), len(classes) - 2)
        picked = set(np.random.default_rng(random_state).choice(len(classes), n, replace=False))
        return [c for i, c in enumerate(classes) if i in picked]
    names = [u.strip() for u in (unseen.split(",") if isinstance(unseen, str) else unseen)]
    names = [u for u in names if u]
    lookup = {}
    for c in classes:
        lookup.setdefault(c.lower(), c)
        lookup.setdefault(clean_class_name(c).lower(), c)
    unknown = [u for u in names if u.lower() not in lookup
               and clean_class_name(u).lower() not in lookup]
    if unknown:
        raise DataError(f"unseen class(es) {unknown} are not classes of the data; the classes "
                        f"are {classes}.")
    chosen = {lookup.get(u.lower()) or lookup[clean_class_name(u).lower()] for u in names}
    if len(chosen) < 2:
        raise DataError(f"hold out at least two unseen classes (got {sorted(chosen)}): with one "
                        "candidate, zero-shot accuracy is 1 by construction.")
    if len(classes) - len(chosen) < 2:
        raise DataError(f"at least two classes must stay seen to learn the projection; "
                        f"{len(chosen)} of {len(classes)} are held out.")
    return [c for c in classes if c in chosen]


def semantic_vectors(classes: Sequence[str], attributes=None, descriptions=None,
                     prompt: str = DEFAULT_PROMPT) -> tuple[np.ndarray, str]:
    """(vectors (n_classes, dim), what they are): an attribute table, class descriptions
    or class names, each embedded as described in :mod:`transferkit.methods.zeroshot`."""
    if attributes is not None and descriptions is not None:
        raise DataError("give either an attribute table or class descriptions, not both.")
    if attributes is not None:
        matrix = read_attribute_table(attributes, classes)
        return matrix, f"attribute table {Path(attributes).name} ({matrix.shape[1]} attributes)"
    if descriptions is not None:
        return (embed_descriptions(descriptions, classes),
                f"descriptions in {Path(descriptions).name}, embedded by {SENTENCE_MODEL}")
    return (embed_class_names(classes, prompt),
            f"class names in the prompt {prompt!r}, embedded by {SENTENCE_MODEL}")


def split_zeroshot(labels: Sequence[str], unseen: Sequence[str], test_fraction: float = 0.2,
                   random_state: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices (seen train, seen test, unseen): a seeded ``test_fraction`` of each seen
    class is held out (at least one image of a class with two or more)."""
    if not 0.0 < float(test_fraction) < 1.0:
        raise DataError(f"test_fraction must lie between 0 and 1, got {test_fraction}.")
    labels = np.asarray(labels, dtype=object)
    is_unseen = np.isin(labels, np.asarray(list(unseen), dtype=object))
    rng = np.random.default_rng(random_state)
    train, test = [], []
    for name in sorted(set(labels[~is_unseen].tolist())):
        members = rng.permutation(np.flatnonzero(labels == name))
        n_test = min(max(int(round(test_fraction * len(members))), 1), len(members) - 1)
        test.extend(members[:n_test].tolist())
        train.extend(members[n_test:].tolist())
    return np.sort(train), np.sort(test), np.flatnonzero(is_unseen)


def evaluate_zeroshot(features: np.ndarray, labels: Sequence[str], classes: Sequence[str],
                      vectors: np.ndarray, unseen: Sequence[str], test_fraction: float = 0.2,
                      random_state: int = 0, **options) -> dict:
    """Fit :class:`ZeroShotClassifier` (``options``) on the seen training images and score
    zero-shot and generalised zero-shot. ``labels``: class name of each feature row;
    ``vectors``: one row per class of ``classes``."""
    labels = np.asarray(labels, dtype=object)
    classes = list(classes)
    if len(vectors) != len(classes):
        raise DataError(f"{len(vectors)} semantic vectors for {len(classes)} classes.")
    unseen = [c for c in classes if c in set(unseen)]
    seen = [c for c in classes if c not in set(unseen)]
    train, seen_test, unseen_idx = split_zeroshot(labels, unseen, test_fraction, random_state)
    missing = sorted(set(unseen) - set(labels[unseen_idx].tolist()))
    if missing:
        raise DataError(f"unseen class(es) {missing} have no readable image to test on.")
    model = ZeroShotClassifier(random_state=random_state, **options)
    model.fit(features[train], labels[train], dict(zip(classes, vectors)))
    X_unseen, y_unseen = features[unseen_idx], labels[unseen_idx]
    zsl_pred = model.predict(X_unseen, "unseen")
    zero_shot = {"accuracy": per_class_accuracy(y_unseen, zsl_pred), "chance": 1 / len(unseen),
                 "per_class": {c: float(np.mean(zsl_pred[y_unseen == c] == c)) for c in unseen}}

    def generalised(calibrated: bool) -> dict:
        acc_s = per_class_accuracy(labels[seen_test], model.predict(features[seen_test], "all",
                                                                    calibrated))
        acc_u = per_class_accuracy(y_unseen, model.predict(X_unseen, "all", calibrated))
        return {"seen": acc_s, "unseen": acc_u, "harmonic_mean": harmonic_mean(acc_s, acc_u)}

    return {"classes": classes, "seen": seen, "unseen": unseen,
            "n_train": int(len(train)), "n_seen_test": int(len(seen_test)),
            "n_unseen_test": int(len(unseen_idx)), "zero_shot": zero_shot,
            "generalised": {**generalised(True), "chance": 1 / len(classes),
                            "uncalibrated": generalised(False)},
            "hyperparameters": {"alpha": model.alpha_, "beta": model.beta_,
                                "calibration": model.calibration_,
                                "chosen_by": "class-wise CV on the seen classes"
                                if model.cv_scores_ is not None else "given"}}


def zeroshot(data: str | os.PathLike, unseen=None, attributes=None, descriptions=None,
             prompt: str = DEFAULT_PROMPT, unseen_fraction: float = 0.3,
             test_fraction: float = 0.2, backbone: str | None = None,
             weights: str | None = None, arch: str | None = None, random_state: int = 0,
             cache_dir=None, use_cache: bool = True, progress: bool = False,
             **options) -> dict:
    """Zero-shot evaluation on a labelled image folder (class sub-folders; train/ val/
    test/ parts, or a CSV ``path,label``, are pooled). ``unseen``: classes to hold out
    (default: a seeded ``unseen_fraction`` of them). Semantic vectors from
    ``attributes`` (CSV ``class,attr1,...``), ``descriptions`` (CSV
    ``class,description``) or the class names in ``prompt``. ``options`` go to
    :class:`~transferkit.methods.zeroshot.ZeroShotClassifier` (alpha, beta, calibration)."""
    from transferkit.data import load_dataset
    from transferkit.features.extract import FrozenExtractor

    start = time.perf_counter()
    splits = load_dataset(data, random_state=random_state)
    classes = list(splits.classes)
    parts = [part for part in (splits.train, splits.val, splits.test) if part is not None]
    pooled = sorted((str(p), classes[label]) for part in parts
                    for p, label in zip(part.paths, part.labels))  # the folder's own order
    paths = [Path(p) for p, _ in pooled]
    labels = np.asarray([name for _, name in pooled], dtype=object)
    held_out = resolve_unseen(classes, unseen, unseen_fraction, random_state)
    vectors, semantic = semantic_vectors(classes, attributes, descriptions, prompt)
    extractor = FrozenExtractor.from_name(backbone or "efficientnet_lite0", weights, arch,
                                          cache_dir=cache_dir, use_cache=use_cache)
    result = extractor.extract(paths, progress=progress)
    summary = evaluate_zeroshot(result.features, labels[result.ok], classes, vectors, held_out,
                                test_fraction, random_state, **options)
    summary.update(data=str(data), semantic=semantic, backbone=backbone or "efficientnet_lite0",
                   seed=random_state, test_fraction=test_fraction,
                   n_skipped=len(result.skipped),
                   skipped=[{"path": p, "reason": r} for p, r in result.skipped],
                   seconds=time.perf_counter() - start)
    return summary
