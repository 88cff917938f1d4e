"""classifier.safetensors: the default pipelines round-trip exactly; the others stay skops."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from transferkit.features.classifiers import array_chunks, fit_logreg_streaming, make_probe_pipeline
from transferkit.features.linear_head import head_steps, load_linear_head, save_linear_head


def _data(n_classes: int, n: int = 60, dim: int = 12, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % n_classes
    X = (rng.normal(size=(n, dim)) + y[:, None] * 0.8).astype(np.float32)
    return X, y


@pytest.mark.parametrize("n_classes", [2, 4])
@pytest.mark.parametrize("normalise", [None, "l2"])
def test_the_default_pipeline_round_trips_bit_for_bit(tmp_path, n_classes, normalise):
    X, y = _data(n_classes)
    fitted = make_probe_pipeline("logreg", y, normalise=normalise).fit(X, y)
    assert head_steps(fitted) is not None
    save_linear_head(fitted, tmp_path / "classifier.safetensors")
    loaded = load_linear_head(tmp_path / "classifier.safetensors")
    assert [name for name, _ in loaded.steps] == [name for name, _ in fitted.steps]
    assert loaded.get_params(deep=True).keys() == fitted.get_params(deep=True).keys()
    for (_, mine), (_, theirs) in zip(loaded.steps, fitted.steps):
        assert repr(mine) == repr(theirs)
        for attribute in ("mean_", "var_", "scale_", "n_samples_seen_", "coef_", "intercept_",
                          "classes_", "n_iter_", "n_features_in_"):
            if hasattr(theirs, attribute):
                np.testing.assert_array_equal(getattr(mine, attribute), getattr(theirs, attribute))
    probe = np.random.default_rng(1).normal(size=(7, X.shape[1])).astype(np.float32)
    np.testing.assert_array_equal(loaded.predict_proba(probe), fitted.predict_proba(probe))


def test_the_streamed_pipeline_round_trips(tmp_path):
    X, y = _data(3)
    fitted, _ = fit_logreg_streaming(array_chunks(X, y, 16), 3)
    save_linear_head(fitted, tmp_path / "head.safetensors")
    loaded = load_linear_head(tmp_path / "head.safetensors")
    np.testing.assert_array_equal(loaded.predict_proba(X), fitted.predict_proba(X))
    assert loaded[-1].get_params() == fitted[-1].get_params()


@pytest.mark.parametrize("classifier,options", [
    ("svm", {}), ("knn", {}), ("mlp", {}), ("logreg-cv", {}), ("logreg", {"pca": 3}),
    ("logreg", {"embedding": "fne"})])
def test_other_pipelines_are_left_to_skops(classifier, options):
    X, y = _data(2)
    fitted = make_probe_pipeline(classifier, y, **options).fit(X, y)
    assert head_steps(fitted) is None


def test_a_regression_with_other_settings_is_left_to_skops():
    from sklearn.linear_model import LogisticRegression

    X, y = _data(2)
    plain = make_pipeline(StandardScaler(), LogisticRegression(C=0.1)).fit(X, y)
    assert head_steps(plain) == ("standardscaler", "logisticregression")
    # Anything the file does not record must be at its default, or the rebuilt model differs.
    for changed in (LogisticRegression(C=0.1, fit_intercept=False),
                    LogisticRegression(C=0.1, class_weight="balanced")):
        assert head_steps(make_pipeline(StandardScaler(), changed).fit(X, y)) is None
    assert head_steps(make_pipeline(StandardScaler(with_mean=False),
                                    LogisticRegression()).fit(X, y)) is None
    labelled = make_pipeline(StandardScaler(), LogisticRegression()).fit(X, np.array(["a", "b"])[y])
    assert head_steps(labelled) is None  # the probe's labels are 0, 1, ...; these are not
    # Settings scikit-learn takes but the loader refuses, and a weighted scaler (whose
    # count of images seen is not a whole number) stay with skops, which keeps them.
    for odd in (LogisticRegression(C=np.inf), LogisticRegression(max_iter=0)):
        assert head_steps(make_pipeline(StandardScaler(), odd).fit(X, y)) is None
    assert head_steps(make_pipeline(StandardScaler(), LogisticRegression())) is None  # unfitted
    weighted = make_pipeline(StandardScaler(), LogisticRegression())
    weighted.fit(X, y, standardscaler__sample_weight=np.full(len(y), 0.3))
    assert head_steps(weighted) is None
