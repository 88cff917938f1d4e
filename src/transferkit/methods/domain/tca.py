"""Transfer Component Analysis: a kernel embedding where the domains' means agree.

Pan, Tsang, Kwok & Yang 2011, "Domain Adaptation via Transfer Component Analysis". On
the pooled rows Z = [X_S; X_T] (n = n_s + n_t) with kernel matrix K, MMD matrix L
(L_ij = 1/n_s² within the source, 1/n_t² within the target, −1/(n_s n_t) across) and
centring H = I − 11ᵀ/n, TCA finds W (n × m) solving

    max_W  tr((Wᵀ(KLK + μI)W)⁻¹ WᵀKHKW),

the m leading generalised eigenvectors of (KHK, KLK + μI): directions of large
variance and small maximum mean discrepancy between the domains. Rows are embedded
as k(x, Z)·W, which also embeds new (out-of-sample) target rows. Z is n × n, so the
pooled rows are subsampled beyond ``max_samples`` (with a warning).
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy.linalg import eigh
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted, validate_data

from transferkit.data.validation import check_domains
from transferkit.errors import TransferkitError
from transferkit.maths import median_heuristic_gamma, rbf_kernel
from transferkit.methods.domain._base import DomainAdaptationClassifier

KERNELS = ("linear", "rbf")


class TCATransformer(TransformerMixin, BaseEstimator):
    """Embeds rows of either domain as ``k(x, Z)·W`` (m transfer components).

    ``fit(X, y=None, Xt=None)``: without ``Xt`` L is zero and TCA reduces to kernel PCA.
    ``kernel``: ``"linear"`` or ``"rbf"`` (``gamma=None``: median heuristic); ``mu`` the
    trade-off μ; ``max_samples`` caps n (half source, half target). Fitted: ``support_``
    (Z), ``components_`` (W, n × m), ``gamma_``.
    """

    def __init__(self, n_components: int = 10, kernel: str = "linear", gamma: float | None = None,
                 mu: float = 1.0, max_samples: int = 1000, random_state=0):
        self.n_components = n_components
        self.kernel = kernel
        self.gamma = gamma
        self.mu = mu
        self.max_samples = max_samples
        self.random_state = random_state

    def _kernel(self, A, B):
        if self.kernel == "linear":
            return A @ B.T
        return rbf_kernel(A, B, self.gamma_)

    def fit(self, X, y=None, Xt=None):
        if self.kernel not in KERNELS:
            raise TransferkitError(f"unknown TCA kernel {self.kernel!r}; use one of {KERNELS}.")
        X = validate_data(self, X, reset=True, dtype=np.float64)
        Xt = X[:0] if Xt is None else check_domains(X, None, Xt)[2]
        rng = np.random.default_rng(self.random_state)
        half = self.max_samples // 2
        if len(X) + len(Xt) > self.max_samples:
            n_t = min(len(Xt), max(half, self.max_samples - len(X)))
            n_s = min(len(X), self.max_samples - n_t)
            warnings.warn(f"TCA: {len(X)} source + {len(Xt)} target rows, solving on "
                          f"{n_s} + {n_t} (the problem is n × n); raise max_samples to use more.",
                          stacklevel=2)
            X = X[np.sort(rng.choice(len(X), n_s, replace=False))]
            Xt = Xt[np.sort(rng.choice(len(Xt), n_t, replace=False))]
        Z = np.vstack([X, Xt])
        n_s, n_t, n = len(X), len(Xt), len(X) + len(Xt)
        self.gamma_ = None
        if self.kernel == "rbf":
            self.gamma_ = self.gamma if self.gamma is not None else median_heuristic_gamma(
                Z, random_state=self.random_state)
        K = self._kernel(Z, Z)
        e = np.r_[np.full(n_s, 1.0 / n_s), np.full(n_t, -1.0 / n_t) if n_t else np.zeros(0)]
        L = np.outer(e, e) if n_t else np.zeros((n, n))
        H = np.eye(n) - 1.0 / n
        A = K @ L @ K + self.mu * np.eye(n)
        B = K @ H @ K
        m = max(1, min(int(self.n_components), n))
        values, vectors = eigh((B + B.T) / 2, (A + A.T) / 2, subset_by_index=[n - m, n - 1])
        order = np.argsort(values)[::-1]
        self.components_ = vectors[:, order]
        self.eigenvalues_ = values[order]
        self.support_ = Z
        self.n_source_support_ = n_s
        return self

    def transform(self, X):
        """Rows of either domain into the transfer components."""
        check_is_fitted(self, "components_")
        X = validate_data(self, X, reset=False, dtype=np.float64)
        return self._kernel(X, self.support_) @ self.components_

    transform_target = transform


class TCA(DomainAdaptationClassifier):
    """Classifier on the TCA embedding of the source, applied to the embedded target.

    Parameters as :class:`TCATransformer`. Fitted: ``transformer_``.
    """

    def __init__(self, estimator=None, n_components: int = 10, kernel: str = "linear",
                 gamma: float | None = None, mu: float = 1.0, max_samples: int = 1000,
                 random_state=0):
        self.estimator = estimator
        self.n_components = n_components
        self.kernel = kernel
        self.gamma = gamma
        self.mu = mu
        self.max_samples = max_samples
        self.random_state = random_state

    def _adapt(self, X, y, Xt, yt):
        self.transformer_ = TCATransformer(self.n_components, self.kernel, self.gamma, self.mu,
                                           self.max_samples, self.random_state).fit(X, Xt=Xt)
        return self.transformer_.transform(X), y, None

    def _transform_target(self, Xt):
        return self.transformer_.transform(Xt)
