"""Subspace Alignment: map the source PCA basis onto the target's.

Fernando, Habrard, Sebban & Tuytelaars 2013, "Unsupervised Visual Domain Adaptation
Using Subspace Alignment". With P_S, P_T the d leading PCA directions (D × d) of each
domain, the alignment M = P_Sᵀ P_T minimises ‖P_S M − P_T‖_F; source rows become
(x − μ_S) · P_S · M and target rows (x − μ_T) · P_T, and the classifier is trained on
the former and applied to the latter.

**The classifier** sees the aligned coordinates centred and scaled by one factor (the
default estimator's :class:`~transferkit.methods.domain._base.IsotropicScaler`), not
standardised column by column. Standardising principal coordinates whitens them: the
weakest directions, mostly sampling noise and the least reliably aligned between the
domains, get the weight of the strongest (the paper's classifiers, 1-NN and an SVM on
the coordinates, do not whiten). That, not the number of directions, was the collapse of
issue 18 (amazon → webcam on Lite0 features, 10 classes: 0.498 against 0.923 for source
only; 0.966 with one scale for all, every direction kept). Over the six Office-31 pairs
the whitened classifier averages 0.548, this one 0.803, source only 0.797
(benchmarks/RESULTS.md, domain-shallow-office31).

**Choosing d.** The paper bounds d by the stability of the estimated subspaces and picks
it by cross-validation; a small d is also its failure mode: when leading eigenvalues are
close, the two domains order their directions differently, M = P_Sᵀ P_T is nearly
singular and the classes are lost (on five Gaussian classes in 20 dimensions whose target
is the source translated by 0.02, d = 1, 2, 4 lose 32, 18 and 5 points, see
tests/methods/domain/test_shallow_aligned_pair.py). The default keeps every direction
the data determine, d = min(n, D) of the smaller domain: with d = D the map is
per-domain centring followed by one rotation, so a target that needs no adaptation
costs nothing, and the isotropic scaling leaves the low-variance directions little
weight. A smaller d is for speed or for features known to be low-rank.

PCA directions have arbitrary signs; scikit-learn's convention (largest loading
positive) makes them agree across domains whenever the shift keeps the sign of each
direction's largest loading (translations, scalings, moderate rotations), not for every
shift. M is measured in the original space, so subspaces that are orthogonal there give
M = 0: SA aligns subspaces that overlap; it cannot undo, say, a permutation of features.
"""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.decomposition import PCA
from sklearn.utils.validation import check_is_fitted, validate_data

from transferkit.data.validation import check_domains
from transferkit.errors import DataError
from transferkit.methods.domain._base import DomainAdaptationClassifier


def _pca(X, n_components: int, random_state):
    return PCA(n_components=n_components, svd_solver="full", random_state=random_state).fit(X)


class SubspaceAlignmentTransformer(TransformerMixin, BaseEstimator):
    """Source ``(x − μ_S) P_S M``; target (``transform_target``) ``(x − μ_T) P_T``.

    ``fit(X, y=None, Xt=None)``: without ``Xt`` the target subspace is the source's, so
    M = I and ``transform`` is the source PCA projection. ``n_components``: d, or
    ``None`` (default) for min(n_samples, n_features) of the smaller domain. Fitted:
    ``n_components_`` (d), ``source_components_``, ``target_components_`` (d × D),
    ``alignment_`` (M, d × d), ``source_mean_``, ``target_mean_``.
    """

    def __init__(self, n_components: int | None = None, random_state=0):
        self.n_components = n_components
        self.random_state = random_state

    def _dimension(self, X, Xt) -> int:
        smallest = min(len(X), len(Xt) if Xt is not None else len(X))
        d = min(smallest, X.shape[1])
        if self.n_components is None:
            return d
        if int(self.n_components) < 1:
            raise DataError(f"n_components={self.n_components!r}: subspace alignment needs at "
                            "least one direction (None: all of them).")
        return min(d, int(self.n_components))

    def fit(self, X, y=None, Xt=None):
        X = validate_data(self, X, reset=True, dtype=np.float64)
        if Xt is not None:
            _, _, Xt, _ = check_domains(X, None, Xt)
        d = self._dimension(X, Xt)
        source = _pca(X, d, self.random_state)
        target = source if Xt is None else _pca(Xt, d, self.random_state)
        self.source_mean_, self.target_mean_ = source.mean_, target.mean_
        self.source_components_, self.target_components_ = source.components_, target.components_
        self.alignment_ = source.components_ @ target.components_.T
        self.n_components_ = d
        return self

    def transform(self, X):
        """Source features into the aligned subspace."""
        check_is_fitted(self, "alignment_")
        X = validate_data(self, X, reset=False, dtype=np.float64)
        return (X - self.source_mean_) @ self.source_components_.T @ self.alignment_

    def transform_target(self, Xt):
        """Target features into their own subspace (the space the source was aligned to)."""
        check_is_fitted(self, "alignment_")
        Xt = validate_data(self, Xt, reset=False, dtype=np.float64)
        return (Xt - self.target_mean_) @ self.target_components_.T


class SubspaceAlignment(DomainAdaptationClassifier):
    """Classifier on the aligned source subspace, applied to the target subspace.

    ``n_components`` is d (``None``: all, the default; see the module docstring). The
    default classifier scales the coordinates by one factor rather than standardising
    each. Fitted: ``transformer_``.
    """

    _whiten_features = False

    def __init__(self, estimator=None, n_components: int | None = None, random_state=0):
        self.estimator = estimator
        self.n_components = n_components
        self.random_state = random_state

    def _adapt(self, X, y, Xt, yt):
        self.transformer_ = SubspaceAlignmentTransformer(self.n_components,
                                                         self.random_state).fit(X, Xt=Xt)
        return self.transformer_.transform(X), y, None

    def _transform_target(self, Xt):
        return self.transformer_.transform_target(Xt)
