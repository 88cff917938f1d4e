"""Classification measures for a validation or test set."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    precision_recall_fscore_support,
)


def classification_summary(y_true, y_pred, classes) -> dict:
    """Accuracy (with a 95% Wilson interval), balanced accuracy, macro-F1, per-class
    precision/recall/F1 and the confusion matrix.

    ``y_true``/``y_pred`` hold class names; ``classes`` fixes the matrix order.
    """
    classes = [c.item() if hasattr(c, "item") else c for c in classes]
    y_true = np.asarray(y_true)
    y_pred = np.asarray(y_pred)
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=classes, zero_division=0)
    n_correct = int((y_true == y_pred).sum())
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "accuracy_ci95": list(wilson_interval(n_correct, len(y_true))),
        "balanced_accuracy": float(balanced_accuracy_score(y_true, y_pred)),
        "macro_f1": float(np.mean(f1)) if len(f1) else 0.0,
        "n": int(len(y_true)),
        "per_class": {str(c): {"precision": float(p), "recall": float(r), "f1": float(f),
                               "support": int(s)}
                      for c, p, r, f, s in zip(classes, precision, recall, f1, support)},
        "confusion_matrix": {"labels": [str(c) for c in classes],
                             "matrix": confusion_matrix(y_true, y_pred, labels=classes).tolist()},
    }


def equal_error_rate(y_true, scores) -> tuple[float, float]:
    """Equal error rate and its threshold for a detector or verifier.

    ``y_true``: 1 for genuine / positive / anomalous (whatever a high score should mean),
    0 otherwise; ``scores``: higher means "more positive". Accepting ``score >= t`` gives a
    false-accept rate FAR(t) (negatives accepted) and a false-reject rate FRR(t)
    (positives rejected); the EER is where they are equal. Between two thresholds the
    rates are interpolated linearly, as on a DET curve.
    """
    y_true = np.asarray(y_true).astype(bool)
    scores = np.asarray(scores, dtype=float)
    if y_true.all() or not y_true.any():
        raise ValueError("the equal error rate needs both positive and negative examples")
    thresholds = np.unique(scores)[::-1]
    thresholds = np.concatenate([[np.inf], thresholds])  # accept nothing first
    far = np.array([(scores[~y_true] >= t).mean() for t in thresholds])
    frr = np.array([(scores[y_true] < t).mean() for t in thresholds])
    diff = far - frr  # rises from -1 (accept nothing) to +1 (accept everything)
    crossing = int(np.argmax(diff >= 0))
    if diff[crossing] == 0 or crossing == 0:
        return float(far[crossing]), float(thresholds[crossing])
    # Linear interpolation between the last threshold with FAR < FRR and the first with
    # FAR >= FRR.
    lo, hi = crossing - 1, crossing
    weight = -diff[lo] / (diff[hi] - diff[lo])
    eer = far[lo] + weight * (far[hi] - far[lo])
    t_lo = thresholds[lo] if np.isfinite(thresholds[lo]) else thresholds[hi]
    threshold = t_lo + weight * (thresholds[hi] - t_lo)
    return float(eer), float(threshold)


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion (honest for small n and p near 0 or 1)."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return float(max(0.0, centre - half)), float(min(1.0, centre + half))


def binary_scores(y_true, positive_proba) -> dict:
    """ROC AUC, the ROC curve and the EER for a two-class problem."""
    from sklearn.metrics import roc_auc_score, roc_curve

    fpr, tpr, thresholds = roc_curve(y_true, positive_proba)
    eer, threshold = equal_error_rate(y_true, positive_proba)
    return {"auc": float(roc_auc_score(y_true, positive_proba)), "eer": eer,
            "eer_threshold": threshold,
            "roc": {"fpr": fpr.tolist(), "tpr": tpr.tolist()}}
