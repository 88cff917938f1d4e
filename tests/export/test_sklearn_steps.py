"""Every classifier fit offers either converts to ONNX with scikit-learn's probabilities
(within 1e-6) or is refused in one line naming those that convert; the FNE converter
reproduces the embedding exactly, constant features and threshold ties included."""

from __future__ import annotations

import numpy as np
import onnxruntime
import pytest

from transferkit.export.sklearn_steps import (
    INPUT_NAME,
    OUTPUT_NAME,
    UnfaithfulConversion,
    convert_classifier,
)
from transferkit.features.classifiers import CLASSIFIERS, make_probe_pipeline


def _features(n_classes: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(n_classes), 20)
    X = (rng.normal(size=(len(y), 30)) + 0.6 * y[:, None]).astype(np.float32)
    X[:, 0] = 1.5  # a constant feature: FNE maps it to 0 (its scale is infinite)
    return X, y


def _run(model, X):
    session = onnxruntime.InferenceSession(model.SerializeToString(),
                                           providers=["CPUExecutionProvider"])
    return session.run([OUTPUT_NAME], {INPUT_NAME: X})[0]


@pytest.mark.parametrize("n_classes", [2, 3])
@pytest.mark.parametrize("options", [{}, {"embedding": "fne"}, {"normalise": "l2", "pca": 5}],
                         ids=["plain", "fne", "l2-pca"])
@pytest.mark.parametrize("classifier", CLASSIFIERS)
def test_each_classifier_converts_faithfully_or_is_refused(classifier, options, n_classes):
    import warnings

    X, y = _features(n_classes)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipeline = make_probe_pipeline(classifier, y, **options).fit(X, y)
    held_out, _ = _features(n_classes, seed=1)
    try:
        model = convert_classifier(pipeline, X.shape[1])
    except UnfaithfulConversion as exc:
        message = str(exc)
        assert "\n" not in message and "logreg" in message and "mlp" in message
        assert classifier in message or type(pipeline[-1]).__name__ in message
        return
    for rows in (X, held_out):
        assert np.abs(_run(model, rows) - pipeline.predict_proba(rows)).max() < 1e-6


def test_fne_converter_matches_the_embedding_at_its_thresholds():
    from transferkit.features.fne import FullNetworkEmbedding

    X, _ = _features(2)
    fne = FullNetworkEmbedding().fit(X)
    # Rows whose standardised values sit exactly on the thresholds: > and < are strict.
    finite = np.isfinite(fne.scale_)  # the constant feature stays at its value
    on_low = np.where(finite, fne.mean_ + fne.low * fne.scale_, fne.mean_).astype(np.float32)
    on_high = np.where(finite, fne.mean_ + fne.high * fne.scale_, fne.mean_).astype(np.float32)
    rows = np.vstack([X, on_low, on_high, np.nextafter(on_high, np.inf)]).astype(np.float32)
    from sklearn.pipeline import make_pipeline
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    from transferkit.export.sklearn_steps import TARGET_OPSET, register_converters

    register_converters()
    model = convert_sklearn(make_pipeline(fne),
                            initial_types=[("x", FloatTensorType([None, 30]))],
                            target_opset=TARGET_OPSET)
    session = onnxruntime.InferenceSession(model.SerializeToString(),
                                           providers=["CPUExecutionProvider"])
    got = session.run(None, {"x": rows})[0]
    assert np.array_equal(got, fne.transform(rows))
    assert set(np.unique(got)) <= {-1.0, 0.0, 1.0} and (got[:, 0] == 0).all()
