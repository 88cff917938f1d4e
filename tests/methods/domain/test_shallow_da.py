"""Shallow (feature-level) domain adaptation: each method beats source-only where it should.

Every toy problem is a shift that the method's rule is built to undo; accuracy is the
mean over three seeds on a held-out labelled target sample.
"""

from __future__ import annotations

import numpy as np
import pytest

from transferkit.errors import DataError
from transferkit.methods.domain._base import SourceOnly, TargetOracle
from transferkit.methods.domain.coral import CORAL, CORALTransformer
from transferkit.methods.domain.kmm import KMM, kmm_weights
from transferkit.methods.domain.reweight import ImportanceReweighting
from transferkit.methods.domain.subspace import SubspaceAlignment, SubspaceAlignmentTransformer
from transferkit.methods.domain.tca import TCA, TCATransformer

SEEDS = (0, 1, 2)


def covariate_shift(seed, n=200):
    """y = 1 iff |x1| > 1: source x1 ~ N(0, 1.5²), target x1 ~ N(1.2, 0.3²).

    P(y|x) is shared and not linear: a linear model fitted to the whole source is wrong
    near the target, one fitted to the re-weighted source learns the boundary x1 = 1.
    """
    rng = np.random.default_rng(seed)

    def draw(mean, sd):
        x = np.c_[rng.normal(mean, sd, n), rng.normal(0, 1, n)]
        return x, (np.abs(x[:, 0]) > 1).astype(int)

    Xs, ys = draw(0.0, 1.5)
    Xt, yt = draw(1.2, 0.3)
    Xtest, ytest = draw(1.2, 0.3)
    return Xs, ys, Xt, yt, Xtest, ytest


def _blobs(rng, n, means, sd):
    y = rng.integers(0, len(means), n)
    return np.asarray(means, float)[y] + rng.normal(0, 1, (n, len(means[0]))) * sd, y


def scaling_shift(seed, n=200):
    """Three blobs on the axes; the target rescales the axes by (3, 0.4, 1.5)."""
    rng = np.random.default_rng(seed)
    means = [[3, 0, 0], [0, 3, 0], [0, 0, 3]]
    scale = np.array([3.0, 0.4, 1.5])
    Xs, ys = _blobs(rng, n, means, 1.0)
    Xt, yt = _blobs(rng, n, means, 1.0)
    Xtest, ytest = _blobs(rng, n, means, 1.0)
    return Xs, ys, Xt * scale, yt, Xtest * scale, ytest


def rotation_shift(seed, n=200, angle=60.0):
    """Classes along the principal axis; the target is rotated by 60° and translated."""
    rng = np.random.default_rng(seed)
    means, sd = [[-2, 0, 0], [2, 0, 0]], np.array([1.0, 0.5, 0.2])
    a = np.deg2rad(angle)
    R = np.array([[np.cos(a), np.sin(a), 0], [-np.sin(a), np.cos(a), 0], [0, 0, 1]])
    shift = np.array([2.0, -1.0, 1.0])
    Xs, ys = _blobs(rng, n, means, sd)
    Xt, yt = _blobs(rng, n, means, sd)
    Xtest, ytest = _blobs(rng, n, means, sd)
    return Xs, ys, Xt @ R + shift, yt, Xtest @ R + shift, ytest


def translation_shift(seed, n=80):
    """Classes along x1; the target is translated by (3, 3): x1 − x2 still separates."""
    rng = np.random.default_rng(seed)
    means, shift = [[-2, 0], [2, 0]], np.array([3.0, 3.0])
    Xs, ys = _blobs(rng, n, means, 0.7)
    Xt, yt = _blobs(rng, n, means, 0.7)
    Xtest, ytest = _blobs(rng, n, means, 0.7)
    return Xs, ys, Xt + shift, yt, Xtest + shift, ytest


def mean_accuracy(make, problem) -> float:
    scores = []
    for seed in SEEDS:
        Xs, ys, Xt, _, Xtest, ytest = problem(seed)
        scores.append(make().fit(Xs, ys, Xt).score(Xtest, ytest))
    return float(np.mean(scores))


@pytest.mark.parametrize("make, problem", [
    (lambda: ImportanceReweighting(), covariate_shift),
    (lambda: KMM(), covariate_shift),
    (lambda: CORAL(), scaling_shift),
    (lambda: SubspaceAlignment(n_components=2), rotation_shift),
    (lambda: TCA(n_components=1, kernel="linear", mu=1.0), translation_shift),
], ids=["reweight-covariate", "kmm-covariate", "coral-scaling", "sa-rotation", "tca-translation"])
def test_method_beats_source_only(make, problem):
    source_only = mean_accuracy(SourceOnly, problem)
    adapted = mean_accuracy(make, problem)
    assert adapted > source_only + 0.05, (adapted, source_only)


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


def test_importance_weights_follow_the_density_ratio():
    Xs, ys, Xt, *_ = covariate_shift(0)
    model = ImportanceReweighting().fit(Xs, ys, Xt)
    assert np.isclose(model.weights_.mean(), 1.0)
    assert np.corrcoef(Xs[:, 0], model.weights_)[0, 1] > 0.5


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


def test_subspace_alignment_maps_the_source_basis_onto_the_target_basis():
    Xs, ys, Xt, *_ = rotation_shift(0)
    sa = SubspaceAlignmentTransformer(n_components=2).fit(Xs, Xt=Xt)
    aligned_basis = sa.source_components_.T @ sa.alignment_
    target_basis = sa.target_components_.T
    assert np.linalg.norm(aligned_basis - target_basis) < np.linalg.norm(
        sa.source_components_.T - target_basis)
    assert sa.transform(Xs).shape == sa.transform_target(Xt).shape == (len(Xs), 2)


def test_tca_embeds_new_target_rows_like_the_training_ones():
    Xs, ys, Xt, yt, Xtest, _ = translation_shift(0, n=60)
    tca = TCATransformer(n_components=3, kernel="rbf", mu=0.5).fit(Xs, Xt=Xt)
    K = tca._kernel(tca.support_, tca.support_)
    np.testing.assert_allclose(tca.transform(Xt), (K @ tca.components_)[len(Xs):], atol=1e-8)
    assert tca.transform(Xtest).shape == (len(Xtest), 3)
    # the transfer components shrink the distance between the domain means
    gap_raw = np.linalg.norm(Xs.mean(0) - Xt.mean(0)) / np.linalg.norm(np.r_[Xs, Xt].std(0))
    lin = TCATransformer(n_components=1).fit(Xs, Xt=Xt)
    Zs, Zt = lin.transform(Xs), lin.transform(Xt)
    gap_tca = np.linalg.norm(Zs.mean(0) - Zt.mean(0)) / np.linalg.norm(np.r_[Zs, Zt].std(0))
    assert gap_tca < 0.2 * gap_raw


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
