"""CORAL: correlation alignment of the source features to the target's covariance.

Sun, Feng & Saenko 2016, "Return of Frustratingly Easy Domain Adaptation". With
C_S = Cov(X_S) + λI and C_T = Cov(X_T) + λI, the source is whitened and re-coloured,

    X_S ← X_S · C_S^{-1/2} · C_T^{1/2},

so that its covariance becomes the target's (up to the λ regulariser); a classifier
trained on the re-coloured source is applied to the target features unchanged. Only
second-order statistics move: as in the paper, the means are not matched.
"""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted, validate_data

from transferkit.data.validation import check_domains
from transferkit.methods.domain._base import DomainAdaptationClassifier


def _sym_power(C: np.ndarray, power: float) -> np.ndarray:
    values, vectors = np.linalg.eigh(C)
    values = np.clip(values, 1e-12, None)
    return (vectors * values ** power) @ vectors.T


def _covariance(X: np.ndarray, regularization: float) -> np.ndarray:
    if len(X) < 2:
        C = np.zeros((X.shape[1], X.shape[1]))
    else:
        C = np.atleast_2d(np.cov(X, rowvar=False))
    return C + regularization * np.eye(X.shape[1])


class CORALTransformer(TransformerMixin, BaseEstimator):
    """Re-colours source features with the target covariance: ``X · C_S^{-1/2} C_T^{1/2}``.

    ``fit(X, y=None, Xt=None)``: ``X`` source, ``Xt`` target. Without ``Xt`` there is no
    target to align to: the target covariance is the source's and ``transform`` is the
    identity (which keeps the scikit-learn transformer contract, ``fit(X).transform(X)``).
    Fitted: ``coral_matrix_`` (d × d).
    """

    def __init__(self, regularization: float = 1.0):
        self.regularization = regularization

    def fit(self, X, y=None, Xt=None):
        X = validate_data(self, X, reset=True, dtype=np.float64)
        if Xt is None:
            self.coral_matrix_ = np.eye(X.shape[1])
            return self
        _, _, Xt, _ = check_domains(X, None, Xt)
        Cs = _covariance(X, self.regularization)
        Ct = _covariance(Xt, self.regularization)
        self.coral_matrix_ = _sym_power(Cs, -0.5) @ _sym_power(Ct, 0.5)
        return self

    def transform(self, X):
        check_is_fitted(self, "coral_matrix_")
        X = validate_data(self, X, reset=False, dtype=np.float64)
        return X @ self.coral_matrix_


class CORAL(DomainAdaptationClassifier):
    """Classifier trained on CORAL-re-coloured source features, applied to raw target ones.

    ``regularization`` is λ (the paper uses 1 on raw features). Fitted: ``transformer_``.
    """

    def __init__(self, estimator=None, regularization: float = 1.0, random_state=0):
        self.estimator = estimator
        self.regularization = regularization
        self.random_state = random_state

    def _adapt(self, X, y, Xt, yt):
        self.transformer_ = CORALTransformer(self.regularization).fit(X, Xt=Xt)
        return self.transformer_.transform(X), y, None
