"""Every transferkit estimator that takes arrays keeps scikit-learn's estimator contract.

The one place for the ``parametrize_with_checks`` lists. Estimators whose ``fit`` takes
image *paths* (LinearProbe, FineTuner, RawPixelClassifier, AnomalyDetector,
SiameseSimilarity, the multitask model) are out of scope: scikit-learn's checks feed
numeric matrices. The deep domain-adaptation family takes 32×32 image arrays and trains a
CNN, so it gets targeted tests (not fitted, sparse input) instead of the whole suite.

scikit-learn's checks call ``fit(X, y)`` and never pass a target domain, so a
domain-adaptation classifier is checked through a subclass that adapts the source to
itself (``Xt = X``, the no-shift problem): everything but the adaptation is exercised,
and the adaptation itself is tested in tests/methods/domain/. ZeroShotClassifier likewise
gets one-hot class vectors for the classes it is given.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.sparse as sp
import sklearn
from sklearn.exceptions import NotFittedError
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer
from sklearn.utils.estimator_checks import parametrize_with_checks

from transferkit.errors import DataError
from transferkit.features.classifiers import LbfgsLinearSVC
from transferkit.features.fne import FullNetworkEmbedding
from transferkit.methods.domain._base import IsotropicScaler, SourceOnly, TargetOracle
from transferkit.methods.domain.coral import CORAL, CORALTransformer
from transferkit.methods.domain.kmm import KMM
from transferkit.methods.domain.reweight import ImportanceReweighting
from transferkit.methods.domain.subspace import SubspaceAlignment, SubspaceAlignmentTransformer
from transferkit.methods.domain.tca import TCA, TCATransformer
from transferkit.methods.fewshot.prototypes import PrototypeClassifier
from transferkit.methods.zeroshot import ZeroShotClassifier


class _AdaptsToItself:
    """Harness: with no ``Xt`` the source is its own target (and, for the oracle, ``y``
    its target labels), so scikit-learn's ``fit(X, y)`` calls reach the real code."""

    def fit(self, X, y, Xt=None, yt=None):
        if Xt is None:
            Xt, yt = X, (y if isinstance(self, TargetOracle) else yt)
        return super().fit(X, y, Xt, yt)


class SelfTargetOracle(_AdaptsToItself, TargetOracle):
    pass


class SelfTargetCORAL(_AdaptsToItself, CORAL):
    pass


class SelfTargetSubspaceAlignment(_AdaptsToItself, SubspaceAlignment):
    pass


class SelfTargetTCA(_AdaptsToItself, TCA):
    pass


class SelfTargetKMM(_AdaptsToItself, KMM):
    pass


class SelfTargetImportanceReweighting(_AdaptsToItself, ImportanceReweighting):
    pass


class OneHotZeroShot(ZeroShotClassifier):
    """Harness: each class of ``y`` gets a one-hot semantic vector when none are given."""

    def fit(self, X, y, class_embeddings=None):
        if class_embeddings is None and y is not None:
            classes = np.unique(np.asarray(y)).tolist()
            class_embeddings = {c: np.eye(len(classes))[i] for i, c in enumerate(classes)}
        return super().fit(X, y, class_embeddings)


# Tiny settings: KMM's and TCA's kernels are n × n, ZeroShot's "auto" runs a CV grid.
# The transformers need no harness: without Xt they are plain transformers (CORAL: the
# identity, SA: the PCA projection, TCA: kernel PCA).
ESTIMATORS = [
    SourceOnly(),
    SelfTargetOracle(),
    SelfTargetCORAL(),
    SelfTargetSubspaceAlignment(),
    SelfTargetTCA(n_components=2, max_samples=60),
    SelfTargetKMM(max_iter=30),
    SelfTargetImportanceReweighting(),
    OneHotZeroShot(alpha=1.0, beta=1.0, calibration=0.0),
    PrototypeClassifier(),
    PrototypeClassifier("euclidean", "nearest"),
    CORALTransformer(),
    IsotropicScaler(),
    SubspaceAlignmentTransformer(),
    TCATransformer(n_components=2, max_samples=60),
    FullNetworkEmbedding(),
    LbfgsLinearSVC(),
]

TCA_SUBSAMPLES = ("TCA solves on at most max_samples rows: beyond them the fitted model "
                  "depends on which rows are drawn, not on their order alone")


def expected_failed_checks(estimator) -> dict[str, str]:
    if isinstance(estimator, TargetOracle):
        return {
            # The check's binary labels are the strings "-1" and "1", and -1 in yt marks
            # an unlabelled target row (scikit-learn's semi-supervised convention).
            "check_classifiers_classes": "yt = '-1' marks an unlabelled target row",
            "check_requires_y_none": "the harness's y is the oracle's yt, whose absence "
                                     "raises TargetOracle's own DataError",
        }
    if isinstance(estimator, ZeroShotClassifier):
        binary = ("decision_function has one cosine column per candidate class, also for "
                  "two classes")
        # Class names of any kind, seen and unseen, live in an object array; these checks
        # compare predictions with assert_allclose, which cannot read object arrays.
        names = "predictions are an object array of class names"
        return {"check_classifiers_train": binary, "check_classifiers_classes": binary,
                **{check: names for check in (
                    "check_estimators_pickle", "check_classifier_data_not_an_array",
                    "check_supervised_y_2d", "check_methods_sample_order_invariance",
                    "check_methods_subset_invariance", "check_fit_idempotent")}}
    return {}


@parametrize_with_checks(ESTIMATORS, expected_failed_checks=expected_failed_checks,
                         xfail_strict=True)
def test_scikit_learn_estimator_checks(estimator, check):
    with warnings.catch_warnings():
        # TCA / KMM announce their subsampling; the checks' tiny data sets trigger it.
        warnings.simplefilter("ignore", UserWarning)
        check(estimator)


# -- the target domain in Pipeline and GridSearchCV ----------------------------------------

def scaling_shift(seed, n=150):
    """Three blobs on the axes; the target rescales the axes by (3, 0.4, 1.5)."""
    rng = np.random.default_rng(seed)
    means = np.array([[3.0, 0, 0], [0, 3.0, 0], [0, 0, 3.0]])
    scale = np.array([3.0, 0.4, 1.5])

    def draw():
        y = rng.integers(0, 3, n)
        return means[y] + rng.normal(size=(n, 3)), y

    (Xs, ys), (Xt, _), (Xtest, ytest) = draw(), draw(), draw()
    return Xs, ys, Xt * scale, Xtest * scale, ytest


@pytest.fixture(params=[False, True], ids=["legacy-fit-params", "metadata-routing"])
def routing(request):
    with sklearn.config_context(enable_metadata_routing=request.param):
        yield request.param


def test_grid_search_over_a_domain_adaptation_classifier_adapts(routing):
    Xs, ys, Xt, Xtest, ytest = scaling_shift(0)
    # Both values adapt: source-risk selection (held-out *source* rows) favours the one
    # that moves the source least, so a grid should hold only values that adapt.
    search = GridSearchCV(CORAL(), {"regularization": [0.1, 1.0]}, cv=3)
    search.fit(Xs, ys, Xt=Xt)
    assert np.isfinite(search.cv_results_["mean_test_score"]).all()
    best = search.best_estimator_
    source_only = SourceOnly().fit(Xs, ys).score(Xtest, ytest)
    assert best.score(Xtest, ytest) > source_only + 0.05
    # The refit aligned the source to the whole target, exactly as a direct fit does.
    direct = CORAL(**search.best_params_).fit(Xs, ys, Xt)
    np.testing.assert_allclose(best.transformer_.coral_matrix_, direct.transformer_.coral_matrix_)


def test_pipeline_routes_the_target_to_the_adaptation_step(routing):
    Xs, ys, Xt, Xtest, ytest = scaling_shift(1)
    # A fixed feature map before the step: Xt is given in the space the step sees.
    rotation = np.linalg.qr(np.random.default_rng(0).normal(size=(3, 3)))[0]
    features = FunctionTransformer(lambda X: X @ rotation)
    target = {"Xt": features.transform(Xt)} if routing else {
        "coral__Xt": features.transform(Xt)}
    pipe = make_pipeline(features, CORAL()).fit(Xs, ys, **target)
    plain = make_pipeline(features, SourceOnly()).fit(Xs, ys)
    assert pipe.score(Xtest, ytest) > plain.score(Xtest, ytest) + 0.1


@pytest.mark.parametrize("method", [CORAL, SubspaceAlignment, TCA, KMM, ImportanceReweighting,
                                    TargetOracle])
def test_a_missing_target_names_the_ways_to_pass_it(method):
    Xs, ys, *_ = scaling_shift(0, n=20)
    with pytest.raises(DataError, match=r"Xt=\.\.\.") as error:
        method().fit(Xs, ys)
    assert "\n" not in str(error.value)


def test_sparse_input_is_refused_by_name():
    Xs, ys, Xt, *_ = scaling_shift(0, n=20)
    with pytest.raises(DataError, match="Sparse data was passed for Xt"):
        CORAL().fit(Xs, ys, sp.csr_matrix(Xt))
    with pytest.raises(DataError, match="Sparse data was passed for X"):
        KMM().fit(sp.csr_matrix(Xs), ys, Xt)
    fitted = CORAL().fit(Xs, ys, Xt)
    with pytest.raises(DataError, match="Sparse data"):
        fitted.predict(sp.csr_matrix(Xt))


def test_kmm_reports_its_solver_iterations():
    Xs, ys, Xt, *_ = scaling_shift(0, n=40)
    assert 1 <= KMM(max_iter=3).fit(Xs, ys, Xt).n_iter_ <= 3
    converged = KMM().fit(Xs, ys, Xt)
    assert 1 <= converged.n_iter_ < converged.max_iter


# -- the deep family: 32×32 image arrays, a CNN per fit ------------------------------------

def _deep_methods():
    from transferkit.methods.domain._deep_base import DeepSourceOnly
    from transferkit.methods.domain.adda import ADDA
    from transferkit.methods.domain.dan import DAN
    from transferkit.methods.domain.dann import DANN
    from transferkit.methods.domain.deep_coral import DeepCORAL
    from transferkit.methods.domain.domain_confusion import DomainConfusionSoftLabels
    from transferkit.methods.domain.drcn import ReconstructionDA

    return [DeepSourceOnly, DANN, DAN, DeepCORAL, ADDA, DomainConfusionSoftLabels,
            ReconstructionDA]


@pytest.mark.parametrize("method", _deep_methods(), ids=lambda cls: cls.__name__)
def test_deep_methods_refuse_use_before_fit_and_sparse_images(method):
    images = np.zeros((4, 32, 32), dtype=np.uint8)
    model = method(epochs=1)
    for use in ("predict", "predict_proba", "transform", "transform_source"):
        with pytest.raises(NotFittedError):
            getattr(model, use)(images)
    flat = sp.csr_matrix(images.reshape(4, -1))
    labels = np.array([0, 1, 0, 1])
    with pytest.raises(DataError, match="sparse"):
        method(epochs=1).fit(flat, labels)
    with pytest.raises(DataError, match="sparse"):
        method(epochs=1).fit(images, labels, flat)
