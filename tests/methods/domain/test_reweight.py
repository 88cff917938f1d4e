"""Importance re-weighting (methods/domain/reweight.py): source rows weighted by the
estimated density ratio p_target / p_source."""

from __future__ import annotations

import numpy as np

from domain_problems import covariate_shift, mean_accuracy
from transferkit.methods.domain._base import SourceOnly
from transferkit.methods.domain.reweight import ImportanceReweighting


def test_importance_reweighting_beats_source_only_on_a_covariate_shift():
    source_only = mean_accuracy(SourceOnly, covariate_shift)
    adapted = mean_accuracy(lambda: ImportanceReweighting(), covariate_shift)
    assert adapted > source_only + 0.05, (adapted, source_only)


def test_importance_weights_follow_the_density_ratio():
    Xs, ys, Xt, *_ = covariate_shift(0)
    model = ImportanceReweighting().fit(Xs, ys, Xt)
    assert np.isclose(model.weights_.mean(), 1.0)
    assert np.corrcoef(Xs[:, 0], model.weights_)[0, 1] > 0.5
