"""Cross-Domain Feature-space Generalisation (CDFG).

dos Santos, Ribeiro & Ponti 2019, "Generalization of feature embeddings transferred from
different video anomaly detection domains" (JVCIR). For a feature-space mapping and a
fixed classifier family, trained on domain A:

    G_part(f^A)       = | R(f^A) on held-out X^A  −  R(f^A) on X^B |
    G_comp(f^A, f^B)  = ½ (G_part(f^A) + G_part(f^B))

with R the risk (error rate). Lower means the feature space carries over better: a
classifier's error measured on its own domain predicts its error on the other one.

Both risks are measured on held-out images: each domain is cut by the same seeded
stratified split, f^A is trained on A's training part and scored on A's and B's test
parts (never on an image it was trained on, even when a file lies in both domains), so
two identical domains give G_comp = 0 exactly.
"""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.model_selection import train_test_split

from transferkit.backbones.registry import DEFAULT_BACKBONE
from transferkit.errors import DataError
from transferkit.features.classifiers import make_probe_pipeline


def _risk(model, X, y) -> float:
    return float((model.predict(X) != np.asarray(y)).mean())


def partial_generalisation(Xa, ya, Xb, yb, classifier: str = "logreg", embedding=None,
                           pca=None, test_size: float = 0.3, random_state: int = 0) -> dict:
    """G_part(f^A): train on part of A; compare its risk on held-out A and held-out B."""
    ya, yb = np.asarray(ya), np.asarray(yb)
    unknown = set(np.unique(yb)) - set(np.unique(ya))
    if unknown:
        raise DataError(f"domain B has classes {sorted(map(str, unknown))} that domain A lacks; "
                        "CDFG compares the same task in two domains.")
    for name, y in (("A", ya), ("B", yb)):
        counts = np.unique(y, return_counts=True)[1]
        if counts.min() < 2:
            raise DataError(f"domain {name} has a class with {counts.min()} image(s); CDFG "
                            "holds out part of each class, so give at least two per class.")
    train_x, held_x, train_y, held_y = train_test_split(
        Xa, ya, test_size=test_size, stratify=ya, random_state=random_state)
    # B is cut the same way and only its test part is scored: the two risks are then
    # estimated alike, and an image of B that is also in A's training part is never used.
    _, held_xb, _, held_yb = train_test_split(
        Xb, yb, test_size=test_size, stratify=yb, random_state=random_state)
    if pca is not None and isinstance(pca, int):
        pca = min(pca, np.shape(Xa)[1])  # PCA cannot keep more components than features
    model = make_probe_pipeline(classifier, train_y, cv=3, random_state=random_state,
                                embedding=embedding, pca=pca)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(train_x, train_y)
    risk_a, risk_b = _risk(model, held_x, held_y), _risk(model, held_xb, held_yb)
    return {"risk_own": risk_a, "risk_other": risk_b, "g_part": abs(risk_a - risk_b),
            "n_train": int(len(train_y)), "n_test_own": int(len(held_y)),
            "n_test_other": int(len(held_yb))}


def cdfg(Xa, ya, Xb, yb, classifier: str = "logreg", embedding=None, pca=None,
         test_size: float = 0.3, random_state: int = 0) -> dict:
    """Both partial measures and G_comp for one feature space."""
    a_to_b = partial_generalisation(Xa, ya, Xb, yb, classifier, embedding, pca, test_size,
                                    random_state)
    b_to_a = partial_generalisation(Xb, yb, Xa, ya, classifier, embedding, pca, test_size,
                                    random_state)
    return {"g_part_a": a_to_b["g_part"], "g_part_b": b_to_a["g_part"],
            "g_comp": 0.5 * (a_to_b["g_part"] + b_to_a["g_part"]),
            "a_to_b": a_to_b, "b_to_a": b_to_a}


# Feature spaces compared by `transferkit cdfg`: extractor layers + post-processing.
FEATURE_SPACES = {
    "last": {"layer": "pre_logits"},
    "stages": {"layer": "stages"},
    "fne": {"layer": "fne", "embedding": "fne"},
    "pca64": {"layer": "pre_logits", "pca": 64},
}


def compare_feature_spaces(paths_a, ya, paths_b, yb, spaces=("last", "fne"),
                           backbone: str = DEFAULT_BACKBONE, classifier: str = "logreg",
                           random_state: int = 0, cache_dir=None, progress: bool = False,
                           weights: str | None = None, arch: str | None = None,
                           use_cache: bool = True) -> list[dict]:
    """One CDFG row per feature space; each image is forwarded once for all spaces.

    ``paths_a``/``paths_b`` are image files with labels ``ya``/``yb`` (the same class
    names); unreadable images are left out of both the features and the labels.
    """
    from transferkit.features.extract import FrozenExtractor

    unknown = [space for space in spaces if space not in FEATURE_SPACES]
    if unknown:
        raise DataError(f"unknown feature space(s) {unknown}; choose from {sorted(FEATURE_SPACES)}.")
    if not spaces:
        raise DataError(f"no feature space given; choose from {sorted(FEATURE_SPACES)}.")
    extractor = FrozenExtractor.from_name(backbone, weights, arch, layer="all",
                                          cache_dir=cache_dir, use_cache=use_cache)
    result_a = extractor.extract(paths_a, progress=progress)
    result_b = extractor.extract(paths_b, progress=progress)
    ya, yb = np.asarray(ya)[result_a.ok], np.asarray(yb)[result_b.ok]
    stages = extractor.identity()["stages"]
    rows = []
    for space in spaces:
        spec = FEATURE_SPACES[space]
        names = stages if spec["layer"] in ("stages", "fne") else [spec["layer"]]
        Xa = np.hstack([result_a.layer(name) for name in names])
        Xb = np.hstack([result_b.layer(name) for name in names])
        measures = cdfg(Xa, ya, Xb, yb, classifier, spec.get("embedding"), spec.get("pca"),
                        random_state=random_state)
        rows.append({"space": space, "dim": int(Xa.shape[1]), "n_a": int(len(ya)),
                     "n_b": int(len(yb)), **measures})
    return rows
