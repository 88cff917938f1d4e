"""Anomaly detection on transferred features: planted outliers, images, CLI, bad input."""

import json

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.metrics import roc_auc_score

from builders import write_class_folder
from transferkit import run
from transferkit.cli import main
from transferkit.errors import DataError
from transferkit.methods.anomaly import SCORERS, AnomalyDetector


def planted(seed=0, n_train=150, n_normal=60, n_outliers=15, dim=20):
    """Gaussian normals (correlated), outliers shifted far away along random directions."""
    rng = np.random.default_rng(seed)
    mixing = rng.normal(size=(dim, dim)) / np.sqrt(dim)
    train = rng.normal(size=(n_train, dim)) @ mixing + 3.0
    normal = rng.normal(size=(n_normal, dim)) @ mixing + 3.0
    directions = rng.normal(size=(n_outliers, dim))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    outliers = rng.normal(size=(n_outliers, dim)) @ mixing + 3.0 + 8.0 * directions
    test = np.vstack([normal, outliers])
    truth = np.r_[np.zeros(n_normal), np.ones(n_outliers)]
    return train, test, truth


@pytest.mark.parametrize("scorer", SCORERS)
def test_planted_outliers_get_auc_near_one(scorer):
    train, test, truth = planted()
    detector = AnomalyDetector(scorer=scorer).fit_features(train)
    scores = detector.score_features(test)
    assert scores.shape == (len(test),)
    assert roc_auc_score(truth, scores) >= 0.99
    # The threshold comes from normal training scores only and flags most outliers and
    # few held-out normals.
    flagged = detector.predict_features(test)
    assert set(np.unique(flagged)) <= {0, 1}
    assert flagged[truth == 1].mean() >= 0.9
    assert flagged[truth == 0].mean() <= 0.25


def test_mahalanobis_hand_check():
    """The mean of the normal data scores 0, below every training image; the score is
    the Mahalanobis distance under the Ledoit-Wolf covariance of standardised features."""
    from sklearn.covariance import LedoitWolf

    train, _, _ = planted(n_train=80)
    detector = AnomalyDetector(scorer="mahalanobis").fit_features(train)
    centre = detector.score_features(train.mean(axis=0))
    assert centre.shape == (1,) and centre[0] == pytest.approx(0.0, abs=1e-6)
    assert centre[0] < detector.score_features(train).min()
    z = (train - train.mean(0)) / train.std(0)
    precision = np.linalg.inv(LedoitWolf().fit(z).covariance_)
    by_hand = np.sqrt(np.einsum("ij,jk,ik->i", z, precision, z))
    assert np.allclose(detector.score_features(train), by_hand, rtol=1e-6)
    # Further from the centre along any direction means a higher score.
    step = np.zeros(train.shape[1])
    step[0] = train[:, 0].std()
    assert (detector.score_features(train.mean(0) + step)[0]
            < detector.score_features(train.mean(0) + 3 * step)[0])


def test_threshold_is_a_quantile_of_out_of_fold_normal_scores():
    train, _, _ = planted(n_train=100)
    detector = AnomalyDetector(scorer="knn", threshold_quantile=0.9).fit_features(train)
    assert detector.threshold_ == pytest.approx(np.quantile(detector.oof_scores_, 0.9))
    # In-sample k-NN scores count each image as its own neighbour: lower than out-of-fold.
    assert detector.train_scores_.mean() < detector.oof_scores_.mean()
    # sklearn contract: hyper-parameters stored unchanged, clone works, seeded.
    again = clone(detector).fit_features(train)
    assert again.get_params() == detector.get_params()
    assert again.threshold_ == detector.threshold_


@pytest.mark.parametrize("kwargs, features, message", [
    ({"scorer": "isolation"}, np.zeros((5, 3)), "unknown anomaly scorer"),
    ({}, np.zeros((0, 3)), "no images"),
    ({}, np.zeros((1, 3)), "at least 2"),
    ({}, np.array([[0.0, np.nan], [1.0, 2.0]]), "NaN"),
    ({"threshold_quantile": 1.5}, np.zeros((5, 3)), "threshold_quantile"),
])
def test_bad_features_raise_data_error(kwargs, features, message):
    with pytest.raises(DataError, match=message):
        AnomalyDetector(**kwargs).fit_features(features)


def test_score_needs_matching_width():
    detector = AnomalyDetector().fit_features(np.random.default_rng(0).normal(size=(10, 4)))
    with pytest.raises(DataError, match="columns"):
        detector.score_features(np.zeros((2, 5)))


@pytest.fixture
def tiny(tiny_checkpoint):
    path, arch = tiny_checkpoint
    return {"weights": str(path), "arch": arch}


@pytest.fixture
def colour_sets(tmp_path):
    """normal/red (training), test/normal (other red images), test/blue, test/green."""
    normal = write_class_folder(tmp_path / "train", per_class=24, classes=("red",), seed=1) / "red"
    test = tmp_path / "test"
    write_class_folder(test, per_class=12, classes=("red", "blue", "green"), seed=2)
    (test / "red").rename(test / "normal")
    return normal, test


def test_images_one_colour_normal_other_colours_anomalous(colour_sets, tiny):
    normal, test = colour_sets
    detector = AnomalyDetector(scorer="mahalanobis", **tiny).fit(sorted(normal.glob("*.png")))
    scores = detector.score_samples(sorted((test / "normal").glob("*.png"))
                                    + sorted((test / "blue").glob("*.png")))
    truth = np.r_[np.zeros(12), np.ones(12)]
    assert roc_auc_score(truth, scores) > 0.9
    assert detector.predict(sorted((test / "blue").glob("*.png"))).mean() > 0.5

    for scorer in SCORERS:
        result = run.anomaly(normal, test, scorer=scorer, **tiny)
        assert result["auc"] > 0.9, scorer
        assert result["n_normal_train"] == 24 and result["n_test"] == 36
        assert result["n_anomalous"] == 24 and result["n_test_normal"] == 12
        assert 0.0 <= result["eer"] <= 0.2


def test_cli_json_round_trip(colour_sets, tiny, tmp_path, capsys):
    normal, test = colour_sets
    (test / "blue" / "corrupt.jpg").write_bytes(b"\xff\xd8 broken")
    out = tmp_path / "result"
    argv = ["anomaly", "--normal", str(normal), "--test", str(test), "--scorer", "knn",
            "--weights", tiny["weights"], "--arch", tiny["arch"], "--out", str(out),
            "--cache-dir", str(tmp_path / "c")]
    assert main([*argv, "--json"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("\n") == 1, "--json must print exactly one JSON object"
    result = json.loads(printed)
    for key in ("auc", "eer", "eer_threshold", "threshold", "n_normal_train", "n_test",
                "n_anomalous", "scores", "skipped", "seconds"):
        assert key in result
    assert result["auc"] > 0.9 and result["scorer"] == "knn"
    assert result["n_skipped"] == 1 and result["skipped"][0]["path"].endswith("corrupt.jpg")
    assert len(result["scores"]) == result["n_test"] == 36
    row = result["scores"][0]
    assert set(row) == {"path", "group", "score", "is_anomaly_true", "flagged"}
    assert all(r["is_anomaly_true"] == (r["group"] != "normal") for r in result["scores"])
    assert all(r["flagged"] == (r["score"] >= result["threshold"]) for r in result["scores"])
    saved = json.loads((out / "anomaly.json").read_text())
    assert saved["auc"] == result["auc"]
    assert (out / "scores.csv").read_text().count("\n") == 37
    assert (tmp_path / "c" / "features").is_dir()

    # Human-readable output: the headline numbers and the per-folder table.
    assert main(argv[:-4] + ["--cache-dir", str(tmp_path / "c")]) == 0
    text = capsys.readouterr().out
    assert "AUC" in text and "EER" in text and "blue" in text


def test_normal_folder_inside_the_test_tree_is_held_out(tmp_path, tiny):
    """`--normal data/red --test data`: the red images are split, never scored in-sample."""
    data = write_class_folder(tmp_path / "data", per_class=20, classes=("red", "blue"))
    result = run.anomaly(data / "red", data, holdout=0.25, **tiny)
    assert result["n_held_out_normal"] == 5
    assert result["n_normal_train"] == 15 and result["n_test_normal"] == 5
    tested = {r["path"] for r in result["scores"] if not r["is_anomaly_true"]}
    assert len(tested) == 5 and all("/red/" in path for path in tested)
    assert result["auc"] > 0.9


@pytest.mark.parametrize("setup, message", [
    (lambda n, t: (n.mkdir(), write_class_folder(t, 3, ("red", "blue"))), "no image files"),
    (lambda n, t: (write_class_folder(n.parent, 4, ("red",)),
                   write_class_folder(t, 3, ("red", "blue"), seed=3),
                   (t / "blue").rename(t / "normal"), (t / "red").rename(t / "good")),
     "no anomalous sub-folder"),
    (lambda n, t: (write_class_folder(n.parent, 4, ("red",)),
                   write_class_folder(t, 3, ("blue", "green"))), "no normal sub-folder"),
    (lambda n, t: write_class_folder(n.parent, 4, ("red",)), "not a folder"),
])
def test_bad_input_gives_one_line_error(tmp_path, capsys, tiny, setup, message):
    normal, test = tmp_path / "n" / "red", tmp_path / "test"
    normal.parent.mkdir()
    setup(normal, test)
    code = main(["anomaly", "--normal", str(normal), "--test", str(test),
                 "--weights", tiny["weights"], "--arch", tiny["arch"]])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error:") and message in err, err
    assert err.count("\n") == 1 and "Traceback" not in err

