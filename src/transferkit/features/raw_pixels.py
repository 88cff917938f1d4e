"""The no-transfer baseline: a shallow classifier on raw pixels.

Transfer learning must beat what the target data alone gives; with very small images
far from the source domain (8×8 digits) it may not — negative transfer. This estimator
is the reference for the demo and for :mod:`transferkit.evaluate.negative_transfer`.
It lives with the features, not with the transfer methods: raw pixels are the feature
space of not transferring, and the evaluation reads it without importing any method.
"""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.validation import check_is_fitted

from transferkit.data.images import load_image
from transferkit.errors import DataError, ImageDecodeError
from transferkit.features.classifiers import make_classifier
from transferkit.data.dataset import as_paths


def raw_pixels(paths, size: int = 32) -> np.ndarray:
    """Grey pixels resized to ``size``×``size`` in [0, 1], flattened."""
    rows = []
    for path in paths:
        try:
            grey = load_image(path).convert("L").resize((size, size))
        except ImageDecodeError as exc:
            raise DataError(str(exc)) from exc
        rows.append(np.asarray(grey, dtype=np.float32) / 255.0)
    return np.stack(rows).reshape(len(rows), -1)


class RawPixelClassifier(ClassifierMixin, BaseEstimator):
    """Image paths → grey ``size``×``size`` pixels → standardised shallow classifier."""

    def __init__(self, size: int = 32, classifier: str = "logreg", cv: int = 5,
                 random_state: int = 0):
        self.size = size
        self.classifier = classifier
        self.cv = cv
        self.random_state = random_state

    def fit(self, X, y):
        self.classes_, encoded = np.unique(np.asarray(y), return_inverse=True)
        self.model_ = make_classifier(self.classifier, encoded, self.cv, self.random_state)
        self.model_.fit(raw_pixels(as_paths(X), self.size), encoded)
        return self

    def predict_proba(self, X) -> np.ndarray:
        check_is_fitted(self, "model_")
        return self.model_.predict_proba(raw_pixels(as_paths(X), self.size))

    def predict(self, X) -> np.ndarray:
        return self.classes_[self.predict_proba(X).argmax(axis=1)]
