"""N-way K-shot classification by class prototype or nearest support example.

Snell et al. 2017, "Prototypical Networks for Few-shot Learning": a class is
represented by the mean of its K support embeddings, ``c_k = mean_i f(x_i)``, and a query
goes to the nearest prototype, ``argmin_k d(f(q), c_k)``; ``predict_proba`` is Snell's
``softmax_k(-d(f(q), c_k))``. With ``rule="nearest"`` a query goes to the class of its
nearest support example (nearest-neighbour one-shot classification, as in Koch et al.
2015); with K = 1 the two rules coincide. The embedding ``f`` is whatever produced the
features: plain pretrained features, or a learned similarity
(:class:`~transferkit.methods.fewshot.siamese.SiameseSimilarity`).

``metric="cosine"`` uses ``d = 1 - cos`` (prototypes are the plain mean of the support
features; cosine looks at its direction), ``metric="euclidean"`` the squared Euclidean
distance Snell et al. use.
"""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from transferkit.errors import DataError

METRICS = ("cosine", "euclidean")
RULES = ("prototype", "nearest")


def _unit(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def pairwise_distance(a: np.ndarray, b: np.ndarray, metric: str) -> np.ndarray:
    """(len(a), len(b)) distances: ``1 - cos`` or the squared Euclidean distance."""
    if metric == "cosine":
        return 1.0 - _unit(a) @ _unit(b).T
    if metric == "euclidean":
        squared = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
        return np.maximum(squared, 0.0)
    raise DataError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}.")


class PrototypeClassifier(ClassifierMixin, BaseEstimator):
    """Nearest class prototype (``rule="prototype"``) or nearest support example
    (``rule="nearest"``) on features, with ``metric`` ``"cosine"`` or ``"euclidean"``.

    ``fit(support_features, support_labels)`` stores ``classes_``, ``prototypes_`` (one
    mean per class, rows in ``classes_`` order) and the support set; ``predict`` returns
    class labels, ``predict_proba`` ``softmax(-distance)`` over the classes,
    ``decision_function`` ``-distance`` (higher = closer; one column for two classes).
    """

    def __init__(self, metric: str = "cosine", rule: str = "prototype"):
        self.metric = metric
        self.rule = rule

    def _check_params(self) -> None:
        if self.metric not in METRICS:
            raise DataError(f"unknown metric {self.metric!r}; choose one of {', '.join(METRICS)}.")
        if self.rule not in RULES:
            raise DataError(f"unknown rule {self.rule!r}; choose one of {', '.join(RULES)}.")

    def fit(self, X, y):
        self._check_params()
        X, y = validate_data(self, X, y, dtype=np.float64)
        check_classification_targets(y)
        self.classes_, encoded = np.unique(y, return_inverse=True)
        if len(self.classes_) < 2:
            raise DataError(f"few-shot classification needs support images of at least two "
                            f"classes, got 1 class: {list(self.classes_)}.")
        self.prototypes_ = np.stack([X[encoded == k].mean(axis=0)
                                     for k in range(len(self.classes_))])
        self.support_ = X
        self.support_labels_ = encoded
        self.n_shots_ = np.bincount(encoded, minlength=len(self.classes_))
        return self

    def class_distances(self, X) -> np.ndarray:
        """(n_queries, n_classes): distance of each query to each class (its prototype,
        or its nearest support example with ``rule="nearest"``)."""
        check_is_fitted(self, "prototypes_")
        X = validate_data(self, X, dtype=np.float64, reset=False)
        if self.rule == "prototype":
            return pairwise_distance(X, self.prototypes_, self.metric)
        to_support = pairwise_distance(X, self.support_, self.metric)
        out = np.full((len(X), len(self.classes_)), np.inf)
        for k in range(len(self.classes_)):
            out[:, k] = to_support[:, self.support_labels_ == k].min(axis=1)
        return out

    def decision_function(self, X) -> np.ndarray:
        """``-distance`` per class; with two classes, as scikit-learn expects, one column:
        ``d(class 0) - d(class 1)`` (positive = nearer ``classes_[1]``)."""
        scores = -self.class_distances(X)
        return scores[:, 1] - scores[:, 0] if scores.shape[1] == 2 else scores

    def predict_proba(self, X) -> np.ndarray:
        logits = -self.class_distances(X)
        logits = logits - logits.max(axis=1, keepdims=True)
        weights = np.exp(logits)
        return weights / weights.sum(axis=1, keepdims=True)

    def predict(self, X) -> np.ndarray:
        nearest = self.class_distances(X).argmin(axis=1)  # checks it is fitted first
        return self.classes_[nearest]
