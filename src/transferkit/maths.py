"""Kernel helpers shared by the domain measures and the kernel domain-adaptation methods.

The MMD of :mod:`transferkit.evaluate.domain`, KMM and TCA all use the RBF kernel
``k(a, b) = exp(−γ‖a − b‖²)`` with γ from the median heuristic, so they read it here.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial.distance import cdist


def median_heuristic_gamma(X, Y=None, max_samples: int = 1000, random_state=0) -> float:
    """γ = 1 / median(‖a − b‖²) over pairs of (a subsample of) the pooled rows."""
    Z = np.asarray(X, dtype=np.float64) if Y is None else np.vstack([X, Y]).astype(np.float64)
    if len(Z) > max_samples:
        Z = Z[np.random.default_rng(random_state).choice(len(Z), max_samples, replace=False)]
    d2 = cdist(Z, Z, "sqeuclidean")
    positive = d2[np.triu_indices(len(Z), 1)]
    positive = positive[positive > 0]
    median = float(np.median(positive)) if positive.size else 1.0
    return 1.0 / median


def rbf_kernel(A, B, gamma: float) -> np.ndarray:
    """``exp(−γ‖a − b‖²)`` for every row ``a`` of ``A`` and ``b`` of ``B``."""
    return np.exp(-gamma * cdist(A, B, "sqeuclidean"))
