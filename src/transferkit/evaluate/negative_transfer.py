"""Negative-transfer check: is the transferred model worse than not transferring at all?

"Negative transfer: when the acquired knowledge worsens the model performance." Both the
transferred estimator and a no-transfer baseline (raw pixels + the same classifier
family) are cross-validated on the SAME folds; the per-fold differences are tested with
a one-sided paired t-test, so the flag fires only when the transferred model is worse
beyond the noise of the cross-validation.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy import stats
from sklearn.base import clone
from sklearn.metrics import balanced_accuracy_score
from sklearn.model_selection import RepeatedStratifiedKFold

from transferkit.errors import DataError


def negative_transfer_check(transferred, X, y, baseline=None, folds: int = 5, repeats: int = 2,
                            alpha: float = 0.05, random_state: int = 0) -> dict:
    """Compare ``transferred`` with ``baseline`` (default raw pixels) on paired CV folds."""
    from transferkit.features.raw_pixels import RawPixelClassifier

    baseline = baseline if baseline is not None else RawPixelClassifier(random_state=random_state)
    X = np.asarray([str(x) for x in X], dtype=object)
    y = np.asarray(y)
    smallest = int(np.unique(y, return_counts=True)[1].min())
    folds = min(folds, smallest)
    if folds < 2:
        raise DataError("the negative-transfer check needs at least two images per class.")
    splitter = RepeatedStratifiedKFold(n_splits=folds, n_repeats=repeats, random_state=random_state)
    scores = {"transferred": [], "baseline": []}
    for train, test in splitter.split(X, y):
        for name, estimator in (("transferred", transferred), ("baseline", baseline)):
            model = clone(estimator)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model.fit(X[train], y[train])
            scores[name].append(balanced_accuracy_score(y[test], model.predict(X[test])))
    transferred_scores = np.array(scores["transferred"])
    baseline_scores = np.array(scores["baseline"])
    difference = transferred_scores - baseline_scores
    if np.allclose(difference, difference[0]):
        p_value = 0.0 if difference[0] < 0 else 1.0  # no spread: the sign decides
    else:
        p_value = float(stats.ttest_rel(transferred_scores, baseline_scores,
                                        alternative="less").pvalue)
    negative = bool(difference.mean() < 0 and p_value < alpha)
    verdict = ("negative transfer: the pretrained features do worse than raw pixels"
               if negative else "no negative transfer detected")
    return {
        "negative_transfer": negative,
        "verdict": verdict,
        "transferred_balanced_accuracy": {"mean": float(transferred_scores.mean()),
                                          "std": float(transferred_scores.std(ddof=1))},
        "baseline_balanced_accuracy": {"mean": float(baseline_scores.mean()),
                                       "std": float(baseline_scores.std(ddof=1))},
        "mean_difference": float(difference.mean()),
        "p_value": p_value,
        "alpha": alpha,
        "protocol": f"{repeats}x stratified {folds}-fold, paired one-sided t-test",
        "baseline": type(baseline).__name__,
    }
