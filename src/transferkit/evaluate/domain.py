"""How far apart two domains are, and how much of the gap a method closes.

* :func:`proxy_a_distance` — Ben-David, Blitzer, Crammer & Pereira 2007, "Analysis of
  Representations for Domain Adaptation": d_A ≈ 2(1 − 2ε), ε the held-out error of a
  linear classifier telling source rows from target rows. 0: indistinguishable; 2:
  perfectly separable.
* :func:`mmd` — maximum mean discrepancy (Gretton et al. 2012) between the samples,
  ‖mean φ(X_S) − mean φ(X_T)‖ in a kernel's feature space (the biased estimate, so two
  identical samples give exactly 0).
* :func:`gap_closed` — the share of the source-only → target-oracle gap an adapted
  model closes.
"""

from __future__ import annotations

import math

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from transferkit.data.validation import check_domains
from transferkit.errors import DataError
from transferkit.maths import median_heuristic_gamma, rbf_kernel


def _subsample(X, n_max: int, rng) -> np.ndarray:
    if len(X) <= n_max:
        return X
    return X[rng.choice(len(X), n_max, replace=False)]


def proxy_a_distance(Xs, Xt, random_state=0, cv: int = 5, C: float = 1.0,
                     max_samples: int = 2000) -> float:
    """Proxy A-distance 2(1 − 2ε) between source rows ``Xs`` and target rows ``Xt``.

    ε is the ``cv``-fold cross-validated *balanced* error of a standardised logistic
    regression (inverse regularisation ``C``) trained to tell the domains apart, so
    unequal domain sizes do not lower it. Each domain is subsampled to ``max_samples``
    rows. Values near 0 (possibly slightly below, by chance) mean indistinguishable.
    """
    Xs, _, Xt, _ = check_domains(Xs, None, Xt)
    if len(Xs) < cv or len(Xt) < cv:
        raise DataError(f"proxy_a_distance needs at least cv={cv} rows per domain, got "
                        f"{len(Xs)} and {len(Xt)}.")
    rng = np.random.default_rng(random_state)
    Xs, Xt = _subsample(Xs, max_samples, rng), _subsample(Xt, max_samples, rng)
    Z = np.vstack([Xs, Xt])
    d = np.r_[np.zeros(len(Xs), dtype=int), np.ones(len(Xt), dtype=int)]
    model = make_pipeline(StandardScaler(),
                          LogisticRegression(C=C, max_iter=2000, random_state=random_state))
    folds = StratifiedKFold(n_splits=cv, shuffle=True, random_state=random_state)
    predicted = cross_val_predict(model, Z, d, cv=folds)
    error = 0.5 * (np.mean(predicted[d == 0] != 0) + np.mean(predicted[d == 1] != 1))
    return float(2.0 * (1.0 - 2.0 * error))


def mmd(Xs, Xt, kernel: str = "rbf", gamma: float | None = None, max_samples: int = 2000,
        random_state=0) -> float:
    """Maximum mean discrepancy ‖μ_S − μ_T‖ (biased estimate, ≥ 0).

    ``kernel="rbf"`` with ``gamma=None`` uses the median heuristic γ = 1/median‖a−b‖²
    on the pooled sample; ``kernel="linear"`` is the distance between the means. Each
    domain is subsampled to ``max_samples`` rows.
    """
    Xs, _, Xt, _ = check_domains(Xs, None, Xt)
    if kernel == "linear":
        return float(np.linalg.norm(Xs.mean(axis=0) - Xt.mean(axis=0)))
    if kernel != "rbf":
        raise DataError(f"unknown kernel {kernel!r}; use 'rbf' or 'linear'.")
    rng = np.random.default_rng(random_state)
    Xs, Xt = _subsample(Xs, max_samples, rng), _subsample(Xt, max_samples, rng)
    if gamma is None:
        gamma = median_heuristic_gamma(Xs, Xt, random_state=random_state)
    squared = (rbf_kernel(Xs, Xs, gamma).mean() + rbf_kernel(Xt, Xt, gamma).mean()
               - 2.0 * rbf_kernel(Xs, Xt, gamma).mean())
    return float(math.sqrt(max(squared, 0.0)))


def gap_closed(source_only: float, adapted: float, oracle: float) -> float:
    """(adapted − source_only) / (oracle − source_only): 0 no gain, 1 the oracle's score.

    Negative means negative transfer; NaN when the oracle does not beat source-only
    (there is no gap to close).
    """
    gap = oracle - source_only
    if not gap > 0:
        return float("nan")
    return float((adapted - source_only) / gap)
