"""How far apart two domains are, and how much of the gap a method closes.

* :func:`domain_separability` / :func:`proxy_a_distance` — Ben-David, Blitzer, Crammer &
  Pereira 2007, "Analysis of Representations for Domain Adaptation": d_A ≈ 2(1 − 2ε),
  ε the held-out error of a linear classifier telling source rows from target rows.
  0: indistinguishable; 2: perfectly separable. ``domain_separability`` also returns ε
  and a 95% interval.
* :func:`mmd` — maximum mean discrepancy (Gretton et al. 2012) between the samples,
  ‖mean φ(X_S) − mean φ(X_T)‖ in a kernel's feature space (the biased estimate, so two
  identical samples give exactly 0).
* :func:`gap_closed` — the share of the source-only → target-oracle gap an adapted
  model closes.

**Why the domain classifier is regularised relative to the dimension.** The A-distance
belongs to a class of classifiers. A standardised logistic regression with C = 1 on all
1,280 dimensions of pretrained features tells any two photo domains apart almost
perfectly: on Office-31 Lite0 features d_A is 1.84 for webcam ↔ dslr (the closest
pair), 1.99 for amazon ↔ webcam, and still 1.99 after CORAL, while two halves of one
domain read 0.02–0.05. It is not fooled (it reads ~0 when the distributions agree) but
it is pinned at its ceiling, so it cannot tell a near pair from a far one or show a
method moving the domains (issue 18: CORAL's 1.984 before and after). It also depends on
the dimension of the space: standardised rows have norm √D, and the capacity of a
norm-bounded linear class grows with the norm of the rows (its Rademacher complexity is
at most ‖w‖·max‖x‖/√n), so a 1,280-d space is held to a richer class than TCA's 10
components. By default (``dimension_free=True``) the rows are standardised and then
scaled to unit root-mean-square norm before the logistic regression with ``C`` (the
same as C/D on standardised rows): one class of the same capacity in every space
compared, before and after, whatever a method outputs. On the same features it reads
0.00 for two halves of webcam, 1.49 for webcam ↔ dslr, 1.86 amazon ↔ dslr, 1.91 amazon
↔ webcam, and after adaptation (amazon → webcam) 1.94 for CORAL (means are not matched),
1.67 / 1.63 for the KMM / domain-classifier re-weighted source (benchmarks/RESULTS.md,
domain-shallow-office31). ``dimension_free=False`` is the classical measure. A weakly
regularised classifier reads mostly how far the bulk of the two samples lies apart, so
a method that only matches the means can bring it down without aligning the classes.

**Spaces centred per domain read 0.** Where each domain was centred on its own sample
mean (subspace alignment, TCA), every cross-validation training fold's mean sits
opposite its held-out rows and the domain classifier errs *more* than half the time,
whatever the separability (after SA on amazon → webcam ε = 0.63 even with the classical
classifier). The distance then reads 0 and says nothing; measure such a space on rows
the method was not fitted on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from transferkit.data.validation import check_domains
from transferkit.errors import DataError
from transferkit.evaluate.metrics import wilson_interval
from transferkit.maths import median_heuristic_gamma, rbf_kernel


def _subsample(X, n_max: int, rng, weight=None):
    if len(X) <= n_max:
        return X, weight
    keep = rng.choice(len(X), n_max, replace=False)
    return X[keep], (None if weight is None else weight[keep])


@dataclass(frozen=True)
class DomainSeparability:
    """What :func:`domain_separability` measured.

    ``distance`` is the proxy A-distance 2(1 − 2ε) and ``interval`` its 95% interval
    (from ``error_interval``, the interval of ε); ``error`` is ε, the domain classifier's
    cross-validated balanced error; ``n_source`` / ``n_target`` the rows it was measured
    on (after subsampling); ``dimension_free`` how the classifier was regularised.
    """

    distance: float
    error: float
    interval: tuple[float, float]
    error_interval: tuple[float, float]
    n_source: int
    n_target: int
    dimension_free: bool

    def as_dict(self) -> dict:
        return {"distance": self.distance, "error": self.error,
                "interval": list(self.interval), "error_interval": list(self.error_interval),
                "n_source": self.n_source, "n_target": self.n_target,
                "dimension_free": self.dimension_free}


def _check_weight(weight, n: int) -> np.ndarray:
    weight = np.asarray(weight, dtype=np.float64).ravel()
    if len(weight) != n or not np.all(np.isfinite(weight)) or (weight < 0).any() \
            or not weight.sum() > 0:
        raise DataError(f"source_weight: give {n} finite weights ≥ 0, not all 0 (one per "
                        "source row).")
    return weight


def domain_separability(Xs, Xt, random_state=0, cv: int = 5, C: float = 1.0,
                        dimension_free: bool = True, max_samples: int = 2000,
                        source_weight=None) -> DomainSeparability:
    """Proxy A-distance between source rows ``Xs`` and target rows ``Xt``, with ε and CI.

    ε is the ``cv``-fold cross-validated *balanced* error of a logistic regression
    trained to tell the domains apart on standardised rows, balanced so that unequal
    domain sizes do not lower it. With ``dimension_free`` (default) the rows are also
    scaled to unit root-mean-square norm, so ``C`` means the same in a space of any
    dimension (see the module docstring); without it ``C`` applies to the standardised
    rows (the classical, dimension-dependent measure). Each domain is subsampled to
    ``max_samples`` rows.

    ``source_weight`` (one per source row, ≥ 0) weights the source rows in the domain
    classifier's loss and in ε: the distance between the *re-weighted* source and the
    target, which is what an importance-weighting method changes.

    The interval is the Wilson score interval of ε with the effective sample size
    n_eff = 4 / (1/n_s + 1/n_t) (the variance of a balanced error when both domains'
    errors are equal; n_s is Kish's effective size (Σw)²/Σw² when weighted), mapped
    through 2(1 − 2ε). It covers the sampling of the rows scored, not the variation of
    the classifier between training sets: over ten random halvings of Office-31 webcam
    the error's standard deviation was 1.5 times the one the interval implies.

    An error above one half is read as distance 0 (the A-distance is ≥ 0; ``error``
    keeps the raw value). It happens by chance when the domains agree, and
    systematically when each domain was centred on its own mean before measuring (subspace
    alignment, TCA): every training fold's mean then sits opposite its held-out rows, so
    the classifier learns the wrong side (on dslr → webcam after SA, ε = 0.56).
    """
    Xs, _, Xt, _ = check_domains(Xs, None, Xt)
    if source_weight is not None:
        source_weight = _check_weight(source_weight, len(Xs))
    if len(Xs) < cv or len(Xt) < cv:
        raise DataError(f"the proxy A-distance needs at least cv={cv} rows per domain, got "
                        f"{len(Xs)} and {len(Xt)}.")
    rng = np.random.default_rng(random_state)
    Xs, source_weight = _subsample(Xs, max_samples, rng, source_weight)
    Xt, _ = _subsample(Xt, max_samples, rng)
    Z = np.vstack([Xs, Xt])
    d = np.r_[np.zeros(len(Xs), dtype=int), np.ones(len(Xt), dtype=int)]
    # Unit-RMS-norm rows (x / √D after standardising) with C is C/D on standardised rows.
    strength = C / Z.shape[1] if dimension_free else C
    model = make_pipeline(StandardScaler(), LogisticRegression(
        C=strength, max_iter=2000, random_state=random_state))
    params = {}
    if source_weight is not None:
        params["logisticregression__sample_weight"] = np.r_[
            source_weight / source_weight.mean(), np.ones(len(Xt))]
    folds = StratifiedKFold(n_splits=cv, shuffle=True, random_state=random_state)
    predicted = cross_val_predict(model, Z, d, cv=folds, params=params)
    wrong_source = (predicted[d == 0] != 0).astype(float)
    if source_weight is None:
        source_error, n_source = float(wrong_source.mean()), float(len(Xs))
    else:
        source_error = float(np.average(wrong_source, weights=source_weight))
        n_source = float(source_weight.sum() ** 2 / np.sum(source_weight ** 2))
    error = 0.5 * (source_error + float(np.mean(predicted[d == 1] != 1)))
    n_effective = 4.0 / (1.0 / n_source + 1.0 / len(Xt))
    low, high = wilson_interval(error * n_effective, n_effective)
    return DomainSeparability(
        distance=_a_distance(error), error=error,
        interval=(_a_distance(high), _a_distance(low)),
        error_interval=(low, high), n_source=len(Xs), n_target=len(Xt),
        dimension_free=bool(dimension_free))


def _a_distance(error: float) -> float:
    """2(1 − 2ε), projected onto [0, 2], the range of the A-distance (see
    :func:`domain_separability` on errors above one half)."""
    return float(min(2.0, max(0.0, 2.0 * (1.0 - 2.0 * error))))


def proxy_a_distance(Xs, Xt, random_state=0, cv: int = 5, C: float = 1.0,
                     max_samples: int = 2000, dimension_free: bool = True) -> float:
    """Proxy A-distance 2(1 − 2ε) between ``Xs`` and ``Xt``: the ``distance`` of
    :func:`domain_separability` (which see; it also gives ε and a 95% interval)."""
    return domain_separability(Xs, Xt, random_state=random_state, cv=cv, C=C,
                               dimension_free=dimension_free,
                               max_samples=max_samples).distance


def mmd(Xs, Xt, kernel: str = "rbf", gamma: float | None = None, max_samples: int = 2000,
        random_state=0, source_weight=None) -> float:
    """Maximum mean discrepancy ‖μ_S − μ_T‖ (biased estimate, ≥ 0).

    ``kernel="rbf"`` with ``gamma=None`` uses the median heuristic γ = 1/median‖a−b‖²
    on the pooled sample; ``kernel="linear"`` is the distance between the means. Each
    domain is subsampled to ``max_samples`` rows. ``source_weight`` (one per source row,
    ≥ 0): μ_S is the weighted mean embedding, the source as a re-weighting method sees it.
    """
    Xs, _, Xt, _ = check_domains(Xs, None, Xt)
    weight = None if source_weight is None else _check_weight(source_weight, len(Xs))
    if kernel == "linear":
        return float(np.linalg.norm(np.average(Xs, axis=0, weights=weight) - Xt.mean(axis=0)))
    if kernel != "rbf":
        raise DataError(f"unknown kernel {kernel!r}; use 'rbf' or 'linear'.")
    rng = np.random.default_rng(random_state)
    Xs, weight = _subsample(Xs, max_samples, rng, weight)
    Xt, _ = _subsample(Xt, max_samples, rng)
    if gamma is None:
        gamma = median_heuristic_gamma(Xs, Xt, random_state=random_state)
    share = np.full(len(Xs), 1.0 / len(Xs)) if weight is None else weight / weight.sum()
    squared = (share @ rbf_kernel(Xs, Xs, gamma) @ share + rbf_kernel(Xt, Xt, gamma).mean()
               - 2.0 * share @ rbf_kernel(Xs, Xt, gamma).mean(axis=1))
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
