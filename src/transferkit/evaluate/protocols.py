"""Evaluation protocols for small data: stratified k-fold and repeated hold-out.

With a few hundred images one validation split is a noisy estimate; these protocols
refit any transferkit (or scikit-learn) estimator on several splits and report the mean
and standard deviation. Feature-based estimators reuse the feature cache, so only the
shallow classifier is refitted per split.
"""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.base import clone
from sklearn.model_selection import RepeatedStratifiedKFold, StratifiedShuffleSplit

from transferkit.errors import DataError
from transferkit.evaluate.metrics import classification_summary

MEASURES = ("accuracy", "balanced_accuracy", "macro_f1")


def _summarise(per_split: list[dict], protocol: str) -> dict:
    summary = {"protocol": protocol, "n_splits": len(per_split), "splits": per_split}
    for measure in MEASURES:
        values = np.array([split[measure] for split in per_split])
        summary[measure] = {"mean": float(values.mean()), "std": float(values.std(ddof=1))
                            if len(values) > 1 else 0.0}
    return summary


def _run_splits(estimator, X, y, splits) -> list[dict]:
    X = np.asarray(X, dtype=object) if not isinstance(X, np.ndarray) else X
    y = np.asarray(y)
    results = []
    for train, test in splits:
        model = clone(estimator)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.fit(X[train], y[train])
        predicted = model.predict(X[test])
        summary = classification_summary(y[test], predicted, np.unique(y))
        results.append({measure: summary[measure] for measure in MEASURES})
    return results


def _check(y, folds: int) -> None:
    counts = np.unique(np.asarray(y), return_counts=True)[1]
    if len(counts) < 2:
        raise DataError("cross-validation needs at least two classes.")
    if counts.min() < folds:
        raise DataError(f"the smallest class has {counts.min()} examples; {folds} folds need "
                        f"at least {folds} per class.")


def cross_validate(estimator, X, y, folds: int = 5, repeats: int = 1,
                   random_state: int = 0) -> dict:
    """Stratified ``folds``-fold CV repeated ``repeats`` times: mean ± std per measure."""
    _check(y, folds)
    splitter = RepeatedStratifiedKFold(n_splits=folds, n_repeats=repeats,
                                       random_state=random_state)
    per_split = _run_splits(estimator, X, y, splitter.split(np.zeros(len(y)), y))
    return _summarise(per_split, f"{repeats}x stratified {folds}-fold")


def repeated_holdout(estimator, X, y, test_size: float = 0.2, repeats: int = 5,
                     random_state: int = 0) -> dict:
    """``repeats`` seeded stratified train/test splits: mean ± std per measure."""
    _check(y, 2)
    splitter = StratifiedShuffleSplit(n_splits=repeats, test_size=test_size,
                                      random_state=random_state)
    per_split = _run_splits(estimator, X, y, splitter.split(np.zeros(len(y)), y))
    return _summarise(per_split, f"{repeats}x stratified hold-out ({test_size:.0%} test)")
