"""Full-Network Embedding: golden discretisation, training-only statistics, sklearn contract."""

import numpy as np
import pytest

from builders import write_class_folder
from transferkit import run
from transferkit.features.fne import FullNetworkEmbedding, discretise
from transferkit.jobs.fit import render


def test_discretisation_matches_the_hand_worked_example():
    values = [[0.1, 0.2, -0.3, 0.5], [-0.6, 0.5, 0.4, 0.1]]
    expected = [[0, 1, -1, 1], [-1, 1, 1, 0]]
    np.testing.assert_array_equal(discretise(values, -0.25, 0.15), expected)


def test_thresholds_are_parameters():
    np.testing.assert_array_equal(discretise([[0.1, -0.1]], low=-0.05, high=0.05), [[1, -1]])
    with pytest.raises(ValueError):
        discretise([[0.0]], low=0.5, high=0.1)


def test_standardisation_uses_training_statistics_only():
    rng = np.random.default_rng(0)
    train = rng.normal(0.0, 1.0, size=(200, 3))
    shifted_test = rng.normal(10.0, 1.0, size=(50, 3))
    fne = FullNetworkEmbedding().fit(train)
    np.testing.assert_allclose(fne.mean_, train.mean(axis=0))
    # With training statistics a +10 shift is far above the high threshold everywhere; had
    # the test set's own statistics leaked in, about a third would be -1 or 0.
    assert (fne.transform(shifted_test) == 1).all()
    # A feature constant in training maps to 0, not to inf/nan.
    constant = np.c_[train, np.ones(len(train))]
    out = FullNetworkEmbedding().fit(constant).transform(constant + 5)
    assert np.isfinite(out).all() and (out[:, -1] == 0).all()


def test_fne_method_learns_and_round_trips(tmp_path, tiny_checkpoint):
    data = write_class_folder(tmp_path / "data", per_class=10, classes=("red", "blue", "green"))
    path, arch = tiny_checkpoint
    summary = run.fit(data, tmp_path / "model", method="fne", weights=str(path), arch=arch,
                      progress=True)
    assert summary["val_accuracy"] >= 0.8  # chance 1/3
    assert summary["classifier"].startswith("svm (LinearSVC one-vs-rest, C=")
    assert summary["classifier"].endswith("full-network embedding (-0.25 / 0.15)")
    assert f"classifier: {summary['classifier']}" in render(summary)
    again = run.evaluate(tmp_path / "model", data)
    assert again["n"] == 30
