"""The two baselines that bracket every domain-adaptation result, and their shared base.

``SourceOnly`` trains on the labelled source features and is applied to the target
unchanged (no adaptation: the lower bound). ``TargetOracle`` trains on labelled target
features (the upper bound a method could reach with the target's labels). A method's
share of the gap closed is ``(adapted - source_only) / (oracle - source_only)``
(see :func:`transferkit.evaluate.domain.gap_closed`).

:class:`DomainAdaptationClassifier` is the base of every shallow (feature-level) method
of this package: ``fit(X, y, Xt, yt=None)`` on feature matrices (``X``/``y`` the labelled
source, ``Xt`` the target, ``yt`` optional target labels with ``-1`` marking unlabelled
rows, scikit-learn's semi-supervised convention), then ``predict`` / ``predict_proba`` /
``score`` on *target* features. The classifier is ``estimator`` (default: standardise +
``LogisticRegression(max_iter=2000)``; a method whose output is a principal subspace
scales it by one factor instead, :class:`IsotropicScaler`), cloned and fitted on the
adapted source.
The input checks, :func:`~transferkit.data.validation.check_domains` among them, live in
:mod:`transferkit.data.validation`, where the domain measures use them too.

In a scikit-learn ``Pipeline`` or ``GridSearchCV`` the target travels as a fit parameter:
``search.fit(X, y, Xt=Xt)`` and ``pipe.fit(X, y, coral__Xt=Xt)`` (``<step>__Xt``), or,
with metadata routing enabled, ``pipe.fit(X, y, Xt=Xt)``: ``Xt``/``yt`` are requested by
default, no ``set_fit_request`` needed. See :class:`DomainAdaptationClassifier`.
"""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, TransformerMixin, clone
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from transferkit.data.validation import (
    as_data_error,
    check_domains,
    check_target_labels,
    labelled_rows,
    validate_features,
    validate_labelled,
)
from transferkit.errors import DataError


def default_estimator(random_state=None, whiten: bool = True):
    """Standardisation + logistic regression: the classifier every method trains.

    ``whiten=False`` scales all columns by one factor instead of one each (see
    :class:`IsotropicScaler`): for coordinates in a principal subspace, whose spread
    along each direction is information, not an accident of units.
    """
    scaler = StandardScaler() if whiten else IsotropicScaler()
    return make_pipeline(scaler, LogisticRegression(max_iter=2000, random_state=random_state))


class IsotropicScaler(TransformerMixin, BaseEstimator):
    """Centres the columns and divides them all by one number, so that their variances
    average 1 (what ``StandardScaler`` gives on average) while their ratios are kept.

    Per-column standardisation of principal-component coordinates whitens them: the
    weakest directions, mostly sampling noise and the least reliably aligned between
    domains, get the weight of the strongest. On Office-31 Lite0 features that alone
    cost subspace alignment 25 points on the six-pair average, 0.548 against 0.803
    (benchmarks/RESULTS.md, domain-shallow-office31). Fitted: ``mean_``, ``scale_``.
    """

    def fit(self, X, y=None):
        X = validate_data(self, X, reset=True, dtype=np.float64)
        self.mean_ = X.mean(axis=0)
        spread = float(np.sqrt(np.mean(X.var(axis=0))))
        self.scale_ = spread if spread > 0 else 1.0
        return self

    def transform(self, X):
        check_is_fitted(self, "scale_")
        X = validate_data(self, X, reset=False, dtype=np.float64)
        return (X - self.mean_) / self.scale_


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

    **The target in scikit-learn tools.** ``Xt`` (and ``yt``) are fit parameters, never
    constructor arguments (an array among the hyper-parameters would break ``clone``):

    * ``Pipeline``: ``pipe.fit(X, y, coral__Xt=Xt)``, the usual ``<step>__<param>``;
    * ``GridSearchCV`` / ``cross_validate``: ``search.fit(X, y, Xt=Xt)`` (or
      ``params={"Xt": Xt}``); each split trains on its source rows and scores on the
      held-out *source* rows (source-risk model selection: no target label is used, and
      it favours the setting that moves the source least, e.g. CORAL's largest λ, so
      search over values that all adapt);
    * with ``sklearn.set_config(enable_metadata_routing=True)`` the same calls work and
      ``pipe.fit(X, y, Xt=Xt)`` reaches the step too: ``Xt`` and ``yt`` are requested by
      default (no ``set_fit_request`` needed).

    ``Xt`` reaches the domain-adaptation step as given: the steps before it in a
    ``Pipeline`` transform ``X`` but not ``Xt``, so pass ``Xt`` in the space that step
    sees (or keep learned preprocessing such as scaling inside ``estimator``). A
    cross-validation splitter also slices every fit parameter as long as ``X``, so an
    ``Xt`` with as many rows as ``X`` is subsampled like ``X`` in each split (the final
    refit sees all of it). A method that needs ``Xt`` raises :class:`DataError` without it.
    """

    # Requested by default so that Pipeline / GridSearchCV route the target to fit when
    # metadata routing is enabled (scikit-learn would otherwise refuse to pass them).
    __metadata_request__fit = {"Xt": True, "yt": True}
    _needs_target = True
    # Whether the default classifier standardises each column (False: one scale for all,
    # for methods whose output coordinates are principal directions).
    _whiten_features = True

    def __init__(self, estimator=None, random_state=0):
        self.estimator = estimator
        self.random_state = random_state

    def _make_estimator(self):
        if self.estimator is None:
            return default_estimator(self.random_state, whiten=self._whiten_features)
        return clone(self.estimator)

    def _adapt(self, X, y, Xt, yt):  # pragma: no cover - abstract
        raise NotImplementedError

    def _transform_target(self, Xt):
        return Xt

    def _missing_target(self) -> DataError:
        name = type(self).__name__
        return DataError(f"{name} adapts to the target domain and needs its features Xt: "
                         f"call fit(X, y, Xt=...), in a Pipeline fit(X, y, <step>__Xt=...), "
                         f"in GridSearchCV fit(X, y, Xt=...).")

    def fit(self, X, y, Xt=None, yt=None):
        """Adapt source features ``X`` (labels ``y``) to target features ``Xt``; train.

        Labelled target rows (``yt != -1``), when given, join the training set after
        being mapped into the adapted space.
        """
        X, y = validate_labelled(self, X, y)
        if Xt is None:
            if self._needs_target:
                raise self._missing_target()
            Xt = X[:0]
        else:
            X, y, Xt, yt = check_domains(X, y, Xt, yt)
        yt = check_target_labels(Xt, yt)
        classes = np.unique(y)
        if len(classes) < 2:
            raise DataError(f"the source has 1 class ({classes[0]!r}); a classifier needs "
                            "labelled rows of at least two classes.")
        X_train, y_train, weight = self._adapt(X, y, Xt, yt)
        # The source as the classifier sees it (for domain distances after adaptation):
        # its rows and, for a re-weighting method, their weights.
        self.adapted_source_ = X_train
        self.adapted_source_weight_ = weight
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
        return self._transform_target(validate_features(self, Xt, reset=False))

    def predict_proba(self, Xt) -> np.ndarray:
        target = self.transform_target(Xt)  # checks it is fitted first
        return self.estimator_.predict_proba(target)

    def predict(self, Xt) -> np.ndarray:
        target = self.transform_target(Xt)
        return self.estimator_.predict(target)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = False
        return tags


class SourceOnly(DomainAdaptationClassifier):
    """No adaptation: the classifier is trained on the labelled source only.

    The lower bound of every domain-adaptation table (e.g. Ganin & Lempitsky 2015,
    Table 1, "source only"). ``Xt`` is optional (accepted for a uniform signature) and
    ignored, and so is ``yt``: source plus a few target labels is a different baseline.
    """

    _needs_target = False

    def _adapt(self, X, y, Xt, yt):
        return X, y, None

    def fit(self, X, y, Xt=None, yt=None):
        return super().fit(X, y, Xt, None)


class TargetOracle(DomainAdaptationClassifier):
    """Trained on the labelled target (``Xt``, ``yt``): the upper bound, not a method.

    ``X``/``y`` (the source) are ignored; ``yt`` is required and its ``-1`` rows are
    left out. Compare on held-out target rows, never on the ones it was trained on.
    """

    def fit(self, X, y, Xt=None, yt=None):
        if Xt is None or yt is None:
            raise DataError("TargetOracle trains on the labelled target: give its features "
                            "and labels, fit(X, y, Xt=..., yt=...).")
        Xt = validate_features(self, Xt, reset=True)
        yt = check_target_labels(Xt, yt)
        mask = labelled_rows(yt)
        as_data_error(check_classification_targets, yt[mask])
        classes = np.unique(yt[mask])
        if len(classes) < 2:
            raise DataError(f"TargetOracle's labelled target rows hold {len(classes)} "
                            f"class{'es' if len(classes) != 1 else ''}; it needs at least two "
                            "classes.")
        self.estimator_ = self._make_estimator().fit(Xt[mask], yt[mask])
        self.classes_ = self.estimator_.classes_
        return self
