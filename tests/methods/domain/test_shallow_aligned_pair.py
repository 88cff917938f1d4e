"""Every shallow domain-adaptation method, on a pair of domains that already agree, keeps
the accuracy of source only: adapting to a target that needs no adaptation must not cost
accuracy (issue 18: subspace alignment's default lost 40 points on real photos).

Two aligned pairs: five Gaussian classes in 20 dimensions with more rows than features,
and the regime of pretrained features, fewer rows (150) than features (300) with the
classes in a low-rank part, where issue 18's subspace alignment (every direction,
whitened) falls from 0.91 to 0.68. The methods are read from the registry, so a new
shallow method is held to this too.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from transferkit.methods import create_method, list_methods

N_CLASSES = 5


def aligned_pair(seed, n_source=400, n_target=400, n_test=1000, dim=20):
    """Five overlapping classes in 20-d (unit noise, class means drawn with sd 0.4 per
    axis); the target is the same distribution translated by 0.02 along every axis, a
    shift no method needs to undo."""
    rng = np.random.default_rng(seed)
    means = np.random.default_rng(1000).normal(0.0, 0.4, (N_CLASSES, dim))

    def draw(n, shift=0.0):
        y = rng.integers(0, N_CLASSES, n)
        return means[y] + rng.normal(size=(n, dim)) + shift, y

    (Xs, ys), (Xt, _), (Xtest, ytest) = draw(n_source), draw(n_target, 0.02), draw(n_test, 0.02)
    return Xs, ys, Xt, Xtest, ytest


def wide_aligned_pair(seed, n=150, n_test=1000, dim=300, rank=10):
    """Fewer rows than features, like pretrained features of a small domain: five classes
    in a 10-d subspace of 300-d plus weak isotropic noise; the target translated by 0.01."""
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(np.random.default_rng(1002).normal(size=(dim, rank)))[0]
    means = np.random.default_rng(1003).normal(0.0, 1.0, (N_CLASSES, rank))

    def draw(m, shift=0.0):
        y = rng.integers(0, N_CLASSES, m)
        strong = (means[y] + rng.normal(size=(m, rank))) @ basis.T * 2.0
        return strong + rng.normal(0.0, 0.3, (m, dim)) + shift, y

    (Xs, ys), (Xt, _), (Xtest, ytest) = draw(n), draw(n, 0.01), draw(n_test, 0.01)
    return Xs, ys, Xt, Xtest, ytest


PAIRS = {"20-d": aligned_pair, "300-d, 150 rows": wide_aligned_pair}
# Measured losses (mean of 3 seeds), open defects rather than noise: strict, so a fix has
# to remove the mark.
KNOWN_LOSSES = {
    ("tca", "20-d"): "TCA keeps n_components=10 of the 20 directions: 0.659 against "
                     "0.689 (m=20: 0.677)",
    ("kmm", "20-d"): "KMM's weights fit the sampling noise of the kernel means: they halve "
                     "the effective sample (ESS 176-196 of 400), 0.654 against 0.689",
    ("coral", "300-d, 150 rows"): "CORAL re-colours with a target covariance estimated "
                                  "from 150 rows in 300-d (λ = 1): 0.880 against 0.891",
}


def cases() -> list:
    params = []
    for name in list_methods(family="domain-shallow"):
        for pair in PAIRS:
            reason = KNOWN_LOSSES.get((name, pair))
            marks = [pytest.mark.xfail(reason=reason, strict=True)] if reason else []
            params.append(pytest.param(name, pair, marks=marks, id=f"{name}-{pair}"))
    return params


def scores(name, pair, seeds=(0, 1, 2)):
    values = []
    for seed in seeds:
        Xs, ys, Xt, Xtest, ytest = PAIRS[pair](seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # TCA/KMM announce subsampling
            model = create_method(name, random_state=seed).fit(Xs, ys, Xt)
        values.append(model.score(Xtest, ytest))
    return np.array(values)


@pytest.fixture(scope="module")
def source_only():
    return {pair: scores("source-only", pair) for pair in PAIRS}


@pytest.mark.parametrize("pair", PAIRS)
def test_the_pairs_are_aligned_and_not_trivial(pair, source_only):
    from transferkit.evaluate.domain import proxy_a_distance

    Xs, _, Xt, *_ = PAIRS[pair](0)
    assert proxy_a_distance(Xs, Xt) < 0.3              # hard to tell apart
    assert 0.6 < source_only[pair].mean() < 0.95       # and there is accuracy to lose


@pytest.mark.parametrize(("name", "pair"), cases())
def test_each_shallow_method_keeps_source_only_accuracy_on_an_aligned_pair(name, pair,
                                                                           source_only):
    adapted = scores(name, pair)
    # Scored on the same 3 × 1000 test rows as source only. One point of tolerance: two
    # logistic regressions trained on slightly different versions of the same rows
    # disagree on ~1% of test rows by chance (source only's spread over seeds is 1-2%).
    assert adapted.mean() >= source_only[pair].mean() - 0.01, (name, adapted,
                                                               source_only[pair])
