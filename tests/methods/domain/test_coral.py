"""CORAL (methods/domain/coral.py): re-colouring the source to the target covariance."""

from __future__ import annotations

import numpy as np

from domain_problems import mean_accuracy, scaling_shift
from transferkit.methods.domain._base import SourceOnly
from transferkit.methods.domain.coral import CORAL, CORALTransformer


def test_coral_beats_source_only_on_a_scaling_shift():
    source_only = mean_accuracy(SourceOnly, scaling_shift)
    adapted = mean_accuracy(lambda: CORAL(), scaling_shift)
    assert adapted > source_only + 0.05, (adapted, source_only)


def test_coral_equalises_the_covariances():
    rng = np.random.default_rng(0)
    Xs = rng.normal(size=(500, 4)) @ rng.normal(size=(4, 4))
    Xt = rng.normal(size=(400, 4)) @ rng.normal(size=(4, 4)) + 5
    aligned = CORALTransformer(regularization=1e-6).fit(Xs, Xt=Xt).transform(Xs)
    np.testing.assert_allclose(np.cov(aligned, rowvar=False), np.cov(Xt, rowvar=False),
                               rtol=1e-4, atol=1e-4)
    # with the paper's λ = 1 it still moves the covariance most of the way
    loose = CORALTransformer().fit(Xs, Xt=Xt).transform(Xs)
    before = np.linalg.norm(np.cov(Xs, rowvar=False) - np.cov(Xt, rowvar=False))
    after = np.linalg.norm(np.cov(loose, rowvar=False) - np.cov(Xt, rowvar=False))
    assert after < 0.3 * before
