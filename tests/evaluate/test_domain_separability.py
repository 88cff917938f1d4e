"""The proxy A-distance with its error and interval (evaluate/domain.py,
``domain_separability``): near 0 for one distribution in high dimension, an interval
around its estimate, a dimension-free domain classifier that is not pinned at 2 by a
nuisance shift, and the distance of a re-weighted source."""

from __future__ import annotations

import numpy as np
import pytest

from transferkit.errors import DataError
from transferkit.evaluate.domain import domain_separability, proxy_a_distance


def low_rank_features(rng, n, dim=200, rank=10, noise=0.05):
    """Rows with a few strong directions (the bulk) and many weak ones (noise), like
    pretrained features; returns the rows and the basis of the strong directions."""
    basis = np.linalg.qr(np.random.default_rng(7).normal(size=(dim, rank)))[0]  # dim × rank
    return rng.normal(size=(n, rank)) @ basis.T * 3.0 + rng.normal(0, noise, (n, dim)), basis


def test_one_distribution_in_high_dimension_reads_zero_with_either_classifier():
    rng = np.random.default_rng(0)
    X, _ = low_rank_features(rng, 600)
    for dimension_free in (True, False):
        result = domain_separability(X[:300], X[300:], dimension_free=dimension_free)
        assert result.distance < 0.25 and abs(result.error - 0.5) < 0.07, result
        assert result.interval[0] == 0.0, result


def test_the_interval_holds_the_estimate_and_maps_the_error_interval():
    rng = np.random.default_rng(1)
    X, _ = low_rank_features(rng, 500)
    for shift in (0.0, 0.5, 3.0):
        result = domain_separability(X[:250], X[250:] + shift)
        low, high = result.interval
        assert low <= result.distance <= high
        assert result.error_interval[0] <= result.error <= result.error_interval[1]
        # 2(1 − 2ε), read as 0 when the error is above one half (A-distances are ≥ 0).
        assert low == pytest.approx(max(0.0, 2 * (1 - 2 * result.error_interval[1])))
        assert result.distance == pytest.approx(max(0.0, 2 * (1 - 2 * result.error)))
        assert 0.0 <= low and high <= 2.0
        assert result.n_source == result.n_target == 250
    # More rows, a narrower interval (the error's sampling shrinks as 1/√n).
    wide = domain_separability(X[:50], X[50:100] + 0.5)
    narrow = domain_separability(X[:250], X[250:] + 0.5)
    assert np.diff(narrow.interval)[0] < np.diff(wide.interval)[0]


def test_a_shift_of_the_weak_directions_does_not_pin_the_measure_at_two():
    """Issue 18: on 1,280-d features the classical measure read ~2 for every pair. Here
    two shifts of 4 deviations each, one along a weak direction that the bulk of the data
    does not show, one along a strong direction, are both ~2 to the classical classifier
    (standardising, weakly regularised, it whitens the weak direction); the
    dimension-free one weighs a shift by the variance it moves: the weak one reads far
    below the strong one."""
    rng = np.random.default_rng(2)
    X, basis = low_rank_features(rng, 800)
    weak = np.linalg.qr(np.c_[basis, rng.normal(size=200)])[0][:, -1]  # ⟂ the bulk
    source, target = X[:400], X[400:]
    nuisance = target + 0.2 * weak            # 4 × the 0.05 noise, in one weak direction
    bulk = target + 12.0 * basis[:, 0]        # 4 × the deviation 3 of a strong direction
    classical = [proxy_a_distance(source, t, dimension_free=False) for t in (nuisance, bulk)]
    assert min(classical) > 1.7, classical
    weak_shift, bulk_shift = (proxy_a_distance(source, t) for t in (nuisance, bulk))
    same = proxy_a_distance(source, target)
    assert same < 0.3 and weak_shift < 0.6 and bulk_shift > weak_shift + 1.0, (
        same, weak_shift, bulk_shift)


def test_re_weighting_the_source_towards_the_target_lowers_the_distance():
    rng = np.random.default_rng(3)
    source = rng.normal(size=(600, 5))
    target = rng.normal(size=(300, 5)) + np.r_[1.0, 0, 0, 0, 0]
    # The true density ratio p_T/p_S for a unit mean shift along x1.
    ratio = np.exp(source[:, 0] - 0.5)
    plain = domain_separability(source, target)
    weighted = domain_separability(source, target, source_weight=ratio)
    assert weighted.distance < plain.distance - 0.3, (plain, weighted)
    # Unequal weights leave fewer effective rows: a wider interval of the error.
    assert np.diff(weighted.error_interval)[0] > np.diff(plain.error_interval)[0]
    with pytest.raises(DataError, match="source_weight"):
        domain_separability(source, target, source_weight=-ratio)


def test_proxy_a_distance_stays_a_float():
    rng = np.random.default_rng(4)
    value = proxy_a_distance(rng.normal(size=(40, 3)), rng.normal(size=(40, 3)), random_state=0)
    assert isinstance(value, float)


def test_per_domain_centring_reads_zero_not_below():
    """Centring each domain on its own mean (as SA and TCA do) puts every training fold's
    mean opposite its held-out rows: the domain classifier errs more than half the time.
    The A-distance is ≥ 0, so the distance reads 0 and the error keeps the raw value."""
    rng = np.random.default_rng(5)
    source, target = rng.normal(size=(300, 20)), rng.normal(size=(300, 20))
    result = domain_separability(source - source.mean(0), target - target.mean(0))
    assert result.error > 0.5 and result.distance == 0.0 and result.interval[0] == 0.0


def test_weighted_mmd_of_the_true_density_ratio_is_smaller():
    from transferkit.evaluate.domain import mmd

    rng = np.random.default_rng(6)
    source = rng.normal(size=(600, 2))
    target = rng.normal(size=(300, 2)) + np.r_[1.0, 0.0]
    ratio = np.exp(source[:, 0] - 0.5)
    assert mmd(source, target, source_weight=ratio) < 0.5 * mmd(source, target)
    assert mmd(source, target, source_weight=np.ones(600)) == pytest.approx(mmd(source, target))
    assert mmd(source, target, kernel="linear", source_weight=ratio) < 0.5 * mmd(
        source, target, kernel="linear")
