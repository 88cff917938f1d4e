"""Shallow classifiers: accurate on many classes, shaped to scale, described, announced."""

import time
import warnings

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegressionCV
from sklearn.svm import LinearSVC

from transferkit.errors import TransferkitError
from transferkit.features.classifiers import (
    CLASSIFIERS,
    LbfgsLinearSVC,
    SWEEP_CLASSIFIERS,
    announce_fit,
    describe_classifier,
    make_probe_pipeline,
)


def _classes(n_classes, per_class, dim=40, seed=0, spread=1.2):
    """Gaussian classes that overlap enough for regularisation to matter."""
    rng = np.random.default_rng(seed)
    means = rng.normal(scale=spread, size=(n_classes, dim))
    y = np.repeat(np.arange(n_classes), per_class)
    return (means[y] + rng.normal(size=(len(y), dim))).astype(np.float32), y, means


def _held_out(means, per_class, seed):
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(len(means)), per_class)
    return (means[y] + rng.normal(size=(len(y), means.shape[1]))).astype(np.float32), y


def _fit(name, X, y, **options):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return make_probe_pipeline(name, y, **options).fit(X, y)


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_every_classifier_learns_thirty_classes_with_calibrated_probabilities(name):
    X, y, means = _classes(30, 12)
    X_test, y_test = _held_out(means, 10, seed=1)
    model = _fit(name, X, y)
    proba = model.predict_proba(X_test)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-6)
    assert (model.predict(X_test) == y_test).mean() >= 0.8  # chance is 1/30


def test_fixed_c_logreg_is_as_accurate_as_the_cross_validated_search():
    X, y, means = _classes(25, 10, dim=80, spread=0.6)
    X_test, y_test = _held_out(means, 40, seed=1)
    fixed = (_fit("logreg", X, y).predict(X_test) == y_test).mean()
    searched = (_fit("logreg-cv", X, y).predict(X_test) == y_test).mean()
    assert fixed >= searched - 0.02
    assert 0.3 < searched < 0.98  # a problem where C matters, not a trivial one


def test_logreg_cv_searches_c_on_the_training_folds_only():
    X, y, _ = _classes(4, 10)
    model = _fit("logreg-cv", X, y, cv=3)
    search = model[-1]
    assert isinstance(search, LogisticRegressionCV) and search.cv.n_splits == 3
    assert float(np.ravel(search.C_)[0]) in search.Cs_
    # A class with one image leaves no fold to search on: the fixed default is used.
    one = np.r_[y[:-10], 3]
    single = _fit("logreg-cv", X[:len(one)], one)
    assert describe_classifier(single).startswith("logreg (C=")


def test_svm_is_one_vs_rest_with_a_single_calibration():
    n_classes = 12
    X, y, _ = _classes(n_classes, 9)
    calibrated = _fit("svm", X, y)[-1]
    # One SVM (refitted on every image) and one calibrator, not one per fold or grid point;
    # one weight row per class (one-vs-rest), not one per pair of classes.
    assert len(calibrated.calibrated_classifiers_) == 1
    svm = calibrated.calibrated_classifiers_[0].estimator
    assert svm.coef_.shape == (n_classes, X.shape[1])
    assert calibrated.cv.n_splits == 3


def test_svm_needs_two_images_per_class():
    with pytest.raises(TransferkitError, match="two training images per class"):
        make_probe_pipeline("svm", np.array([0, 0, 1]))


def test_mlp_stops_early_once_every_class_can_spare_validation_images():
    X, y, _ = _classes(5, 20)
    stopped = _fit("mlp", X, y)[-1]
    assert stopped.early_stopping and stopped.n_iter_ < stopped.max_iter
    few = _fit("mlp", X[::4], y[::4])[-1]  # five images per class: nothing to hold out
    assert not few.early_stopping


def test_description_names_the_classifier_its_settings_and_what_it_chose():
    X, y, _ = _classes(3, 12)
    assert describe_classifier(make_probe_pipeline("logreg", y)) == "logreg (C=0.1), standardised"
    assert describe_classifier(make_probe_pipeline("svm", y, embedding="fne")) == (
        "svm (LinearSVC one-vs-rest, C=0.001, sigmoid calibration, 3 folds), "
        "full-network embedding (-0.25 / 0.15)")
    chosen = describe_classifier(_fit("logreg-cv", X, y, normalise="l2", pca=5))
    assert chosen.startswith("logreg-cv (C=") and "chosen by 5-fold CV from 13 values" in chosen
    assert chosen.endswith("L2-normalised, standardised, PCA 5 components")
    assert "epochs" in describe_classifier(_fit("mlp", X, y))
    assert describe_classifier(make_probe_pipeline("knn", y)).startswith("knn (k=5, distance")
    ridge = describe_classifier(_fit("ridge", X, y))
    assert ridge.startswith("ridge (alpha=") and "leave-one-out" in ridge
    for name in SWEEP_CLASSIFIERS:  # every classifier has its own words, no class name
        assert describe_classifier(make_probe_pipeline(name, y)).startswith(name)


def test_a_classifier_fit_is_announced_on_stderr_only_with_progress(capsys):
    X, y, _ = _classes(3, 6)
    model = make_probe_pipeline("logreg", y)
    with announce_fit(model, len(y), 3, progress=False):
        model.fit(X, y)
    assert capsys.readouterr().err == ""
    with announce_fit(model, len(y), 3, progress=True):  # a quick fit: nothing to say
        model.fit(X, y)
    assert capsys.readouterr().err == ""
    with announce_fit(model, len(y), 3, progress=True, after_seconds=0.05):
        model.fit(X, y)
        time.sleep(0.2)  # a fit that outlasts the delay
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "fitting classifier logreg (C=0.1), standardised on 18 images of 3 classes" in captured.err
    assert "classifier fitted in" in captured.err


@pytest.mark.parametrize("n_classes", [2, 4])
def test_lbfgs_linear_svc_finds_liblinears_solution(n_classes):
    X, y, _ = _classes(n_classes, 15, dim=20)
    reference = LinearSVC(C=0.01, tol=1e-7, max_iter=100_000).fit(X, y)
    ours = LbfgsLinearSVC(C=0.01, tol=1e-7).fit(X, y)
    assert ours.coef_.shape == reference.coef_.shape  # one row for two classes, as liblinear
    np.testing.assert_allclose(ours.coef_, reference.coef_, atol=1e-5)
    np.testing.assert_allclose(ours.intercept_, reference.intercept_, atol=1e-5)
    np.testing.assert_array_equal(ours.predict(X), reference.predict(X))


def test_lbfgs_linear_svc_refuses_settings_it_does_not_solve():
    X, y, _ = _classes(2, 5)
    with pytest.raises(ValueError, match="does not support"):
        LbfgsLinearSVC(penalty="l1", dual=False).fit(X, y)
    with pytest.raises(ValueError, match="does not support"):  # was solved as one-vs-rest
        LbfgsLinearSVC(multi_class="crammer_singer").fit(X, y)


@pytest.mark.parametrize("n_classes", [2, 3])
def test_lbfgs_linear_svc_weights_images_as_liblinear_does(n_classes):
    """CalibratedClassifierCV passes a caller's sample_weight through; an array there
    crashed the parameter check with numpy's "truth value ... is ambiguous"."""
    X, y, _ = _classes(n_classes, 15, dim=20)
    weights = np.random.default_rng(3).uniform(0.2, 3.0, len(y))
    for class_weight in ({label: 1.0 + label for label in range(n_classes)}, "balanced"):
        reference = LinearSVC(C=0.01, tol=1e-8, max_iter=200_000, class_weight=class_weight)
        ours = LbfgsLinearSVC(C=0.01, tol=1e-8, max_iter=10_000, class_weight=class_weight)
        reference.fit(X, y, sample_weight=weights)
        ours.fit(X, y, sample_weight=weights)
        np.testing.assert_allclose(ours.coef_, reference.coef_, atol=1e-4)
        np.testing.assert_allclose(ours.intercept_, reference.intercept_, atol=1e-4)


@pytest.mark.parametrize("n_classes", [2, 4])
def test_lbfgs_linear_svc_solves_the_dual_when_features_outnumber_images(n_classes, monkeypatch):
    """Fewer images than features (the every-layer Full-Network Embedding): the dual
    solve must give liblinear's model, weighted images included (weight 0: the image
    takes no part), and the primal solve's (which stops less close to the optimum: its
    steps are L-BFGS on 300 × classes weights rather than 24 × classes variables)."""
    import transferkit.features.classifiers as classifiers

    X, y, _ = _classes(n_classes, 12, dim=300)
    weights = np.random.default_rng(4).uniform(0.2, 3.0, len(y))
    weights[:2] = 0.0
    for C in (1e-3, 1.0):
        reference = LinearSVC(C=C, tol=1e-10, max_iter=500_000, class_weight="balanced")
        reference.fit(X, y, sample_weight=weights)
        dual = LbfgsLinearSVC(C=C, tol=1e-8, class_weight="balanced").fit(X, y, sample_weight=weights)
        monkeypatch.setattr(classifiers, "DUAL_MAX_IMAGES", 0)  # the primal solve
        primal = LbfgsLinearSVC(C=C, tol=1e-8, max_iter=20_000, class_weight="balanced")
        primal.fit(X, y, sample_weight=weights)
        monkeypatch.undo()
        scale = np.abs(reference.coef_).max()
        np.testing.assert_allclose(dual.coef_ / scale, reference.coef_ / scale, atol=1e-6)
        np.testing.assert_allclose(dual.intercept_, reference.intercept_, atol=1e-6)
        np.testing.assert_allclose(primal.coef_ / scale, dual.coef_ / scale, atol=1e-2)
        # An image of weight 0 is outside the model: moving it changes nothing.
        moved = X.copy()
        moved[0] += 50.0
        again = LbfgsLinearSVC(C=C, tol=1e-8, class_weight="balanced").fit(moved, y, sample_weight=weights)
        np.testing.assert_allclose(again.coef_, dual.coef_, atol=1e-6 * max(1, scale))
