"""``transferkit zeroshot``: hold classes out, learn on the rest, name the held-out.

Protocol (Xian et al. 2017, "Zero-shot learning — the good, the bad and the ugly"): the
*unseen* classes contribute no training image at all; a seeded ``test_fraction`` of each
*seen* class's images is held out too. Reported, as per-class mean top-1 accuracy:

* zero-shot: unseen images, candidates = the unseen classes only (chance 1 / n_unseen);
* generalised zero-shot: seen test and unseen images, candidates = every class; the
  accuracy on each part and their harmonic mean H (chance 1 / n_classes for all three),
  with calibrated stacking and without it.

:func:`evaluate_zeroshot` works on features already extracted (the benchmark calls it);
:func:`run` reads a folder, extracts features, builds the semantic vectors and calls it,
returning the JSON-able summary ``transferkit zeroshot --json`` prints.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path

from transferkit.backbones.registry import DEFAULT_BACKBONE
from transferkit.errors import DataError
from transferkit.jobs import _options
from transferkit.jobs._common import (
    class_names,
    format_table,
    pooled_images,
    skipped_fields,
    skipped_lines,
)

NAME = "zeroshot"
HELP = ("zero-shot learning: hold classes out, learn a projection to a semantic space on the "
        "rest, name the held-out images by their nearest class vector")


def add_arguments(parser) -> None:
    parser.add_argument("data", help="labelled images (class sub-folders; train/ val/ test/ "
                        "parts or a path,label CSV are pooled)")
    parser.add_argument("--unseen", help="comma-separated classes to hold out (folder names or "
                        "cleaned names: sunflower = 09_sunflower); default a seeded random "
                        "--unseen-fraction of the classes")
    parser.add_argument("--unseen-fraction", type=float, help="share of the classes held out "
                        "when --unseen is not given (default 0.3)")
    semantic = parser.add_mutually_exclusive_group()
    semantic.add_argument("--attributes", help="CSV class,attr1,attr2,... (numbers): the "
                          "semantic space (default: sentence embeddings of the class names)")
    semantic.add_argument("--descriptions", help="CSV class,description: sentence embeddings of "
                          "these texts are the semantic space")
    parser.add_argument("--prompt", help="sentence around each cleaned class name, with {name} "
                        "(default 'a photo of a {name}.')")
    parser.add_argument("--test-fraction", type=float, help="share of each seen class's images "
                        "held out to score generalised zero-shot (default 0.2)")
    _options.add_backbone(parser, help=f"feature backbone (default {DEFAULT_BACKBONE})")
    _options.add_seed(parser)
    _options.add_cache(parser)


def resolve_unseen(classes: Sequence[str], unseen=None, unseen_fraction: float = 0.3,
                   random_state: int = 0) -> list[str]:
    """The held-out classes, in ``classes`` order.

    ``unseen``: names (a list, or one comma-separated string) matching folder names or
    their cleaned form, case-insensitively (``sunflower`` or ``09_sunflower``). When
    ``None``, a seeded random ``unseen_fraction`` of the classes (at least 2). At least 2
    classes must stay seen and at least 2 be unseen.
    """
    import numpy as np

    from transferkit.methods.zeroshot import clean_class_name

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
                     prompt: str | None = None):
    """(vectors (n_classes, dim), what they are): an attribute table, class descriptions
    or class names in ``prompt`` (default :data:`~transferkit.methods.zeroshot.DEFAULT_PROMPT`),
    each embedded as described in :mod:`transferkit.methods.zeroshot`."""
    from transferkit.methods import zeroshot

    if attributes is not None and descriptions is not None:
        raise DataError("give either an attribute table or class descriptions, not both.")
    if attributes is not None:
        matrix = zeroshot.read_attribute_table(attributes, classes)
        return matrix, f"attribute table {Path(attributes).name} ({matrix.shape[1]} attributes)"
    if descriptions is not None:
        return (zeroshot.embed_descriptions(descriptions, classes),
                f"descriptions in {Path(descriptions).name}, embedded by {zeroshot.SENTENCE_MODEL}")
    prompt = zeroshot.DEFAULT_PROMPT if prompt is None else prompt
    return (zeroshot.embed_class_names(classes, prompt),
            f"class names in the prompt {prompt!r}, embedded by {zeroshot.SENTENCE_MODEL}")


def split_zeroshot(labels: Sequence[str], unseen: Sequence[str], test_fraction: float = 0.2,
                   random_state: int = 0):
    """Indices (seen train, seen test, unseen): a seeded ``test_fraction`` of each seen
    class is held out (at least one image of a class with two or more)."""
    import numpy as np

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


def evaluate_zeroshot(features, labels: Sequence[str], classes: Sequence[str], vectors,
                      unseen: Sequence[str], test_fraction: float = 0.2, random_state: int = 0,
                      **options) -> dict:
    """Fit :class:`~transferkit.methods.zeroshot.ZeroShotClassifier` (``options``) on the
    seen training images and score zero-shot and generalised zero-shot. ``labels``: class
    name of each feature row; ``vectors``: one row per class of ``classes``."""
    import numpy as np

    from transferkit.methods import create_method
    from transferkit.methods.zeroshot import harmonic_mean, per_class_accuracy

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
    model = create_method("zeroshot", random_state=random_state, **options)
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


def run(data: str | os.PathLike, unseen=None, attributes=None, descriptions=None,
        prompt: str | None = None, unseen_fraction: float = 0.3, test_fraction: float = 0.2,
        backbone: str | None = None, weights: str | None = None, arch: str | None = None,
        random_state: int = 0, cache_dir=None, use_cache: bool = True, progress: bool = False,
        **options) -> dict:
    """Zero-shot evaluation on a labelled image folder (class sub-folders; train/ val/
    test/ parts, or a CSV ``path,label``, are pooled). ``unseen``: classes to hold out
    (default: a seeded ``unseen_fraction`` of them). Semantic vectors from
    ``attributes`` (CSV ``class,attr1,...``), ``descriptions`` (CSV
    ``class,description``) or the class names in ``prompt``. ``options`` go to
    :class:`~transferkit.methods.zeroshot.ZeroShotClassifier` (alpha, beta, calibration)."""
    from transferkit.features.extract import FrozenExtractor

    start = time.perf_counter()
    images = pooled_images(data, random_state=random_state, with_test=True)
    images = images.subset(sorted(range(len(images)), key=lambda i: str(images.paths[i])))
    paths = [Path(p) for p in images.paths]  # in the folder's own order
    held_out = resolve_unseen(images.classes, unseen, unseen_fraction, random_state)
    vectors, semantic = semantic_vectors(images.classes, attributes, descriptions, prompt)
    extractor = FrozenExtractor.from_name(backbone or DEFAULT_BACKBONE, weights, arch,
                                          cache_dir=cache_dir, use_cache=use_cache)
    result = extractor.extract(paths, progress=progress)
    summary = evaluate_zeroshot(result.features, class_names(images)[result.ok], images.classes,
                                vectors, held_out, test_fraction, random_state, **options)
    summary.update(data=str(data), semantic=semantic, backbone=backbone or DEFAULT_BACKBONE,
                   seed=random_state, test_fraction=test_fraction,
                   **skipped_fields(result.skipped), seconds=time.perf_counter() - start)
    return summary


def render(summary: dict) -> str:
    zsl, gzsl = summary["zero_shot"], summary["generalised"]
    raw = gzsl["uncalibrated"]
    hyper = summary["hyperparameters"]
    return "\n".join([
        f"semantic space: {summary['semantic']}",
        f"seen {len(summary['seen'])} classes ({summary['n_train']} training, "
        f"{summary['n_seen_test']} test images); unseen {len(summary['unseen'])}: "
        + ", ".join(summary["unseen"]) + f" ({summary['n_unseen_test']} images)",
        format_table([["", "seen", "unseen", "H", "chance"],
                      ["zero-shot (unseen candidates only)", "—", f"{zsl['accuracy']:.3f}", "—",
                       f"{zsl['chance']:.3f}"],
                      ["generalised (all candidates)", f"{gzsl['seen']:.3f}",
                       f"{gzsl['unseen']:.3f}", f"{gzsl['harmonic_mean']:.3f}",
                       f"{gzsl['chance']:.3f}"],
                      ["generalised, uncalibrated", f"{raw['seen']:.3f}", f"{raw['unseen']:.3f}",
                       f"{raw['harmonic_mean']:.3f}", f"{gzsl['chance']:.3f}"]]),
        f"alpha {hyper['alpha']:g}, beta {hyper['beta']:g}, seen-class calibration "
        f"{hyper['calibration']:g} ({hyper['chosen_by']}); per-class accuracy, chance = 1/k",
        *skipped_lines(summary)])
