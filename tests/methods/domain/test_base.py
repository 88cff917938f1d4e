"""The shared domain-adaptation base (methods/domain/_base.py): the source-only and
target-oracle bounds, few target labels, input checks and the parameter contract."""

from __future__ import annotations

import numpy as np
import pytest

from domain_problems import scaling_shift, translation_shift
from transferkit.errors import DataError
from transferkit.methods.domain._base import SourceOnly, TargetOracle
from transferkit.methods.domain.coral import CORAL
from transferkit.methods.domain.kmm import KMM
from transferkit.methods.domain.reweight import ImportanceReweighting
from transferkit.methods.domain.subspace import SubspaceAlignment
from transferkit.methods.domain.tca import TCA


def test_target_oracle_trains_on_target_labels_and_bounds_the_problem():
    Xs, ys, Xt, yt, Xtest, ytest = scaling_shift(0)
    oracle = TargetOracle().fit(Xs, ys, Xt, yt)
    assert oracle.score(Xtest, ytest) >= SourceOnly().fit(Xs, ys, Xt).score(Xtest, ytest)
    with pytest.raises(DataError):
        TargetOracle().fit(Xs, ys, Xt)


def test_few_target_labels_join_the_training_set():
    Xs, ys, Xt, yt, Xtest, ytest = translation_shift(0)
    few = np.full(len(yt), -1)
    few[:10] = yt[:10]
    model = CORAL().fit(Xs, ys, Xt, few)
    assert model.estimator_[-1].n_features_in_ == 2
    assert model.score(Xtest, ytest) >= CORAL().fit(Xs, ys, Xt).score(Xtest, ytest)


def test_inputs_are_checked():
    Xs, ys, Xt, *_ = translation_shift(0, n=20)
    with pytest.raises(DataError, match="columns"):
        CORAL().fit(Xs, ys, Xt[:, :1])
    with pytest.raises(DataError, match="labels"):
        KMM().fit(Xs, ys[:-1], Xt)
    with pytest.raises(DataError, match="two classes"):
        TCA().fit(Xs, np.zeros(len(Xs), int), Xt)


def test_estimators_keep_the_parameter_contract():
    from sklearn.base import clone

    for model in (SourceOnly(), TargetOracle(), ImportanceReweighting(max_weight=3.0), KMM(B=7.0),
                  CORAL(regularization=0.5), SubspaceAlignment(n_components=3),
                  TCA(kernel="rbf", mu=0.1)):
        assert clone(model).get_params() == model.get_params()
