"""The two baselines that bracket every domain-adaptation result, and their shared base.

``SourceOnly`` trains on the labelled source features and is applied to the target
unchanged (no adaptation: the lower bound). ``TargetOracle`` trains on labelled target
features (the upper bound a method could reach with the target's labels). A method's
share of the gap closed is ``(adapted - source_only) / (oracle - source_only)``
(see :func:`transferkit.evaluate.domain.gap_closed`).

:class:`DomainAdaptationClassifier` is the base of every shallow (feature-level) method
in ``methods/``: ``fit(X, y, Xt, yt=None)`` on feature matrices (``X``/``y`` the labelled
source, ``Xt`` the target, ``yt`` optional target labels with ``-1`` marking unlabelled
rows, scikit-learn's semi-supervised convention), then ``predict`` / ``predict_proba`` /
``score`` on *target* features. The classifier is ``estimator`` (default: standardise +
``LogisticRegression(max_iter=2000)``), cloned and fitted on the adapted source.
"""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.validation import check_is_fitted

from transferkit.errors import DataError

UNLABELLED = -1


def default_estimator(random_state=None):
    """Standardisation + logistic regression: the classifier every method trains."""
    return make_pipeline(StandardScaler(),
                         LogisticRegression(max_iter=2000, random_state=random_state))


def check_domains(X, y, Xt, yt=None):
    """Validate source ``X, y`` and target ``Xt`` (same width); ``yt`` aligned with ``Xt``."""
    X = np.asarray(X, dtype=np.float64)
    Xt = np.asarray(Xt, dtype=np.float64)
    if X.ndim != 2 or Xt.ndim != 2:
        raise DataError(f"source and target features must be 2-D matrices, got shapes "
                        f"{X.shape} and {Xt.shape}.")
    if X.shape[1] != Xt.shape[1]:
        raise DataError(f"source features have {X.shape[1]} columns but target features "
                        f"{Xt.shape[1]}; extract both domains with the same backbone and layer.")
    if not (np.isfinite(X).all() and np.isfinite(Xt).all()):
        raise DataError("features contain NaN or infinity.")
    if y is not None:
        y = np.asarray(y)
        if len(y) != len(X):
            raise DataError(f"{len(X)} source rows but {len(y)} source labels.")
    if yt is not None:
        yt = np.asarray(yt)
        if len(yt) != len(Xt):
            raise DataError(f"{len(Xt)} target rows but {len(yt)} target labels; give one "
                            f"label per target row, {UNLABELLED} for the unlabelled ones.")
    return X, y, Xt, yt


def labelled_rows(yt) -> np.ndarray:
    """Boolean mask of the target rows that carry a label (``yt != -1``)."""
    if yt is None:
        return np.zeros(0, dtype=bool)
    yt = np.asarray(yt)
    if yt.dtype.kind in "iu" or yt.dtype.kind == "f":
        return yt != UNLABELLED
    return np.array([str(v) != str(UNLABELLED) for v in yt], dtype=bool)


def fit_weighted(estimator, X, y, sample_weight=None):
    """Fit ``estimator`` with per-row weights, routed to a pipeline's final step."""
    if sample_weight is None:
        return estimator.fit(X, y)
    if isinstance(estimator, Pipeline):
        return estimator.fit(X, y, **{f"{estimator.steps[-1][0]}__sample_weight": sample_weight})
    return estimator.fit(X, y, sample_weight=sample_weight)


class DomainAdaptationClassifier(ClassifierMixin, BaseEstimator):
    """Base: adapt, fit ``estimator`` on the (adapted) source, predict on the target.

    Subclasses implement ``_adapt(X, y, Xt, yt)`` returning ``(X_train, y_train,
    sample_weight)`` in the space the classifier sees (a method may subsample the
    source), and ``_transform_target(Xt)`` mapping target features into that space
    (identity by default).
    """

    def __init__(self, estimator=None, random_state=0):
        self.estimator = estimator
        self.random_state = random_state

    def _make_estimator(self):
        if self.estimator is None:
            return default_estimator(self.random_state)
        return clone(self.estimator)

    def _adapt(self, X, y, Xt, yt):  # pragma: no cover - abstract
        raise NotImplementedError

    def _transform_target(self, Xt):
        return Xt

    def fit(self, X, y, Xt, yt=None):
        """Adapt source features ``X`` (labels ``y``) to target features ``Xt``; train.

        Labelled target rows (``yt != -1``), when given, join the training set after
        being mapped into the adapted space.
        """
        X, y, Xt, yt = check_domains(X, y, Xt, yt)
        if len(np.unique(y)) < 2:
            raise DataError(f"the source needs at least two classes, got {list(np.unique(y))}.")
        self.n_features_in_ = X.shape[1]
        X_train, y_train, weight = self._adapt(X, y, Xt, yt)
        # The source as the classifier sees it (for domain distances after adaptation).
        self.adapted_source_ = X_train
        mask = labelled_rows(yt)
        if mask.any():
            X_train = np.vstack([X_train, self._transform_target(Xt[mask])])
            y_train = np.concatenate([y_train, yt[mask]])
            if weight is not None:
                weight = np.concatenate([weight, np.full(mask.sum(), float(np.mean(weight)))])
        self.estimator_ = fit_weighted(self._make_estimator(), X_train, y_train, weight)
        self.classes_ = self.estimator_.classes_
        return self

    def transform_target(self, Xt) -> np.ndarray:
        """Target features in the space the classifier was trained in."""
        check_is_fitted(self, "estimator_")
        return self._transform_target(np.asarray(Xt, dtype=np.float64))

    def predict_proba(self, Xt) -> np.ndarray:
        return self.estimator_.predict_proba(self.transform_target(Xt))

    def predict(self, Xt) -> np.ndarray:
        return self.estimator_.predict(self.transform_target(Xt))


class SourceOnly(DomainAdaptationClassifier):
    """No adaptation: the classifier is trained on the labelled source only.

    The lower bound of every domain-adaptation table (e.g. Ganin & Lempitsky 2015,
    Table 1, "source only"). ``Xt`` is accepted for a uniform signature and ignored,
    and so is ``yt``: source plus a few target labels is a different baseline.
    """

    def _adapt(self, X, y, Xt, yt):
        return X, y, None

    def fit(self, X, y, Xt=None, yt=None):
        X = np.asarray(X, dtype=np.float64)
        Xt = X[:0] if Xt is None else Xt
        return super().fit(X, y, Xt, None)


class TargetOracle(DomainAdaptationClassifier):
    """Trained on the labelled target (``Xt``, ``yt``): the upper bound, not a method.

    ``X``/``y`` (the source) are ignored; ``yt`` is required and its ``-1`` rows are
    left out. Compare on held-out target rows, never on the ones it was trained on.
    """

    def fit(self, X, y, Xt, yt=None):
        if yt is None:
            raise DataError("TargetOracle needs the target labels yt (it trains on the target).")
        Xt = np.asarray(Xt, dtype=np.float64)
        _, _, Xt, yt = check_domains(Xt[:0], None, Xt, yt)
        mask = labelled_rows(yt)
        if len(np.unique(yt[mask])) < 2:
            raise DataError("TargetOracle needs labelled target rows of at least two classes.")
        self.n_features_in_ = Xt.shape[1]
        self.estimator_ = self._make_estimator().fit(Xt[mask], yt[mask])
        self.classes_ = self.estimator_.classes_
        return self
