"""Domain distances (proxy A-distance, MMD) and the share of the gap closed."""

from __future__ import annotations

import math

import numpy as np
import pytest

from transferkit.errors import DataError
from transferkit.evaluate.domain import gap_closed, mmd, proxy_a_distance


def test_proxy_a_distance_is_near_zero_for_one_distribution_and_two_for_disjoint_ones():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(600, 5))
    same = proxy_a_distance(X[:300], X[300:], random_state=0)
    far = proxy_a_distance(X[:300], X[300:] + 10.0, random_state=0)
    assert abs(same) < 0.25
    assert far > 1.95
    middle = proxy_a_distance(X[:300], X[300:] + 0.7, random_state=0)
    assert same < middle < far


def test_proxy_a_distance_is_not_fooled_by_unequal_sizes():
    rng = np.random.default_rng(1)
    assert abs(proxy_a_distance(rng.normal(size=(400, 3)), rng.normal(size=(40, 3)))) < 0.3


def test_mmd_is_zero_for_identical_samples_and_grows_with_the_shift():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 3))
    assert mmd(X, X) == pytest.approx(0.0, abs=1e-7)
    assert mmd(X, X, kernel="linear") == 0.0
    Y = rng.normal(size=(200, 3))
    values = [mmd(X, Y + shift, gamma=0.2) for shift in (0.0, 0.5, 1.0, 2.0)]
    assert values == sorted(values) and values[-1] > 5 * values[0]
    assert mmd(X, Y + 1.0, kernel="linear") == pytest.approx(np.linalg.norm(
        X.mean(0) - Y.mean(0) - 1.0))
    with pytest.raises(DataError):
        mmd(X, Y, kernel="cosine")


def test_gap_closed():
    assert gap_closed(0.5, 0.8, 0.9) == pytest.approx(0.75)
    assert gap_closed(0.5, 0.5, 0.9) == 0.0
    assert gap_closed(0.5, 0.4, 0.9) == pytest.approx(-0.25)  # negative transfer
    assert math.isnan(gap_closed(0.9, 0.95, 0.9))             # no gap to close
