"""Kernel mean matching (methods/domain/kmm.py): source weights whose kernel mean matches
the target's."""

from __future__ import annotations

import numpy as np
import pytest

from domain_problems import covariate_shift, mean_accuracy
from transferkit.methods.domain._base import SourceOnly
from transferkit.methods.domain.kmm import KMM, kmm_weights


def test_kmm_beats_source_only_on_a_covariate_shift():
    source_only = mean_accuracy(SourceOnly, covariate_shift)
    adapted = mean_accuracy(lambda: KMM(), covariate_shift)
    assert adapted > source_only + 0.05, (adapted, source_only)


def test_kmm_weights_are_feasible_and_sum_to_n_source():
    Xs, _, Xt, *_ = covariate_shift(0)
    beta = kmm_weights(Xs, Xt, B=5.0, eps=0.01)
    assert beta.min() >= 0 and beta.max() <= 5.0 + 1e-9
    assert abs(beta.sum() - len(Xs)) <= 0.01 * len(Xs) + 1e-6
    # and they favour the source rows that look like the target (x1 near 1.2)
    near = np.abs(Xs[:, 0] - 1.2) < 0.4
    assert beta[near].mean() > 2 * beta[~near].mean()
    model = KMM(eps=0.05).fit(Xs, np.zeros(len(Xs)).astype(int) + (Xs[:, 0] > 0), Xt)
    assert abs(model.weights_.sum() - len(Xs)) <= 0.05 * len(Xs) + 1e-6


def test_kmm_subsamples_large_sources_with_a_warning():
    rng = np.random.default_rng(0)
    Xs, Xt = rng.normal(size=(120, 2)), rng.normal(1, 1, size=(50, 2))
    with pytest.warns(UserWarning, match="KMM"):
        model = KMM(max_source=60).fit(Xs, (Xs[:, 0] > 0).astype(int), Xt)
    assert len(model.weights_) == len(model.source_index_) == 60
