"""Kernel Mean Matching: source weights that match the target's kernel mean.

Huang, Smola, Gretton, Borgwardt & Schölkopf 2007, "Correcting Sample Selection Bias by
Unlabeled Data". With an RBF kernel k, KMM solves the quadratic programme

    min_β  ½ βᵀKβ − κᵀβ   s.t.  0 ≤ β_i ≤ B,  |Σ_i β_i − n_s| ≤ n_s·ε,

K_ij = k(x_i, x_j) over source rows, κ_i = (n_s/n_t) Σ_j k(x_i, x'_j) over target rows,
i.e. it makes the weighted source mean in the kernel's feature space close to the target
mean (a minimum-MMD re-weighting). The weights then multiply the source loss. The QP is
solved by accelerated projected gradient (FISTA); the projection onto the box and the
sum band is exact (a clip with a scalar shift found by bisection). K is n_s × n_s, so
more than ``max_source`` source rows are subsampled (with a warning).
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy.linalg import eigh

from transferkit.maths import median_heuristic_gamma, rbf_kernel
from transferkit.methods.domain._base import DomainAdaptationClassifier


def _project(v: np.ndarray, upper: float, lo_sum: float, hi_sum: float) -> np.ndarray:
    """Euclidean projection of ``v`` onto {0 ≤ β ≤ upper, lo_sum ≤ Σβ ≤ hi_sum}."""
    beta = np.clip(v, 0.0, upper)
    total = beta.sum()
    if lo_sum <= total <= hi_sum:
        return beta
    target = hi_sum if total > hi_sum else lo_sum
    # Σ clip(v − τ) is non-increasing in τ: bisect for the shift that meets the target.
    lo, hi = float(v.min() - upper), float(v.max())
    for _ in range(60):
        tau = 0.5 * (lo + hi)
        if np.clip(v - tau, 0.0, upper).sum() > target:
            lo = tau
        else:
            hi = tau
    return np.clip(v - 0.5 * (lo + hi), 0.0, upper)


def kmm_weights(X, Xt, gamma: float | None = None, B: float = 1000.0, eps: float | None = None,
                max_iter: int = 2000, tol: float = 1e-6, random_state=0,
                return_n_iter: bool = False):
    """Solve the KMM quadratic programme for the source rows ``X`` against ``Xt``.

    Returns the weights, or ``(weights, iterations run)`` with ``return_n_iter``.
    """
    X = np.asarray(X, dtype=np.float64)
    Xt = np.asarray(Xt, dtype=np.float64)
    n_s, n_t = len(X), len(Xt)
    if gamma is None:
        gamma = median_heuristic_gamma(X, Xt, random_state=random_state)
    if eps is None:
        eps = (np.sqrt(n_s) - 1.0) / np.sqrt(n_s)  # Huang et al.'s choice, B/√n_s with B≈1
    K = rbf_kernel(X, X, gamma)
    kappa = (n_s / n_t) * rbf_kernel(X, Xt, gamma).sum(axis=1)
    # Only the largest eigenvalue sets the step: a partial solve, not the O(n³) spectrum.
    largest = eigh(K, eigvals_only=True, subset_by_index=[n_s - 1, n_s - 1])[0]
    step = 1.0 / max(float(largest), 1e-12)
    lo_sum, hi_sum = n_s * (1.0 - eps), n_s * (1.0 + eps)
    beta = _project(np.ones(n_s), B, lo_sum, hi_sum)
    momentum, t = beta.copy(), 1.0
    n_iter = 0
    for n_iter in range(1, max_iter + 1):
        grad = K @ momentum - kappa
        new = _project(momentum - step * grad, B, lo_sum, hi_sum)
        change = np.abs(new - beta).max()
        if np.dot(momentum - new, new - beta) > 0:  # adaptive restart (O'Donoghue & Candès)
            t, momentum = 1.0, new
        else:
            t_next = 0.5 * (1.0 + np.sqrt(1.0 + 4.0 * t * t))
            momentum = new + ((t - 1.0) / t_next) * (new - beta)
            t = t_next
        beta = new
        if change < tol * max(1.0, np.abs(beta).max()):
            break
    return (beta, n_iter) if return_n_iter else beta


class KMM(DomainAdaptationClassifier):
    """Kernel mean matching weights on the source loss (RBF kernel, box ``[0, B]``).

    Parameters: ``gamma`` (RBF width; ``None`` is the median heuristic), ``B``, ``eps``
    (``None``: (√n_s − 1)/√n_s), ``max_source`` / ``max_target`` (subsample beyond),
    ``max_iter`` (projected-gradient iterations). Fitted: ``weights_`` (one per kept
    source row), ``source_index_``, ``n_iter_`` (iterations the solver ran).
    """

    def __init__(self, estimator=None, gamma: float | None = None, B: float = 1000.0,
                 eps: float | None = None, max_source: int = 2000, max_target: int = 2000,
                 max_iter: int = 2000, random_state=0):
        self.estimator = estimator
        self.gamma = gamma
        self.B = B
        self.eps = eps
        self.max_source = max_source
        self.max_target = max_target
        self.max_iter = max_iter
        self.random_state = random_state

    def _adapt(self, X, y, Xt, yt):
        rng = np.random.default_rng(self.random_state)
        keep = np.arange(len(X))
        if len(X) > self.max_source:
            warnings.warn(f"KMM: {len(X)} source rows, solving on a random {self.max_source} "
                          "(the QP is n_s × n_s); raise max_source to use more.", stacklevel=3)
            keep = np.sort(rng.choice(len(X), self.max_source, replace=False))
        target = Xt
        if len(Xt) > self.max_target:
            target = Xt[rng.choice(len(Xt), self.max_target, replace=False)]
        self.source_index_ = keep
        self.gamma_ = (self.gamma if self.gamma is not None
                       else median_heuristic_gamma(X[keep], target, random_state=self.random_state))
        self.weights_, self.n_iter_ = kmm_weights(X[keep], target, self.gamma_, self.B, self.eps,
                                                  self.max_iter, random_state=self.random_state,
                                                  return_n_iter=True)
        return X[keep], y[keep], self.weights_
