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
    """Accuracy, balanced accuracy, per-class precision/recall/F1 and the confusion matrix.

    ``y_true``/``y_pred`` hold class names; ``classes`` fixes the matrix order.
    """
    classes = [c.item() if hasattr(c, "item") else c for c in classes]
    y_true = np.asarray(y_true)
    y_pred = np.asarray(y_pred)
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=classes, zero_division=0)
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "balanced_accuracy": float(balanced_accuracy_score(y_true, y_pred)),
        "n": int(len(y_true)),
        "per_class": {str(c): {"precision": float(p), "recall": float(r), "f1": float(f),
                               "support": int(s)}
                      for c, p, r, f, s in zip(classes, precision, recall, f1, support)},
        "confusion_matrix": {"labels": [str(c) for c in classes],
                             "matrix": confusion_matrix(y_true, y_pred, labels=classes).tolist()},
    }
