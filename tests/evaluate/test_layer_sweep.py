"""The layer-transferability sweep."""

import json

import numpy as np
import pytest

from builders import write_class_folder
from transferkit.cli import main
from transferkit.evaluate.layer_sweep import paired_comparison, sweep_features


@pytest.mark.parametrize("classifier", ["ridge", "logreg", "svm"])
def test_sweep_ranks_the_layer_with_planted_signal_first(classifier):
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1, 2], 20)
    noise_a = rng.normal(size=(60, 8))
    signal = rng.normal(size=(60, 8)) * 0.5
    signal[np.arange(60), labels] += 3.0          # class written into three features
    noise_b = rng.normal(size=(60, 8))
    features = np.hstack([noise_a, signal, noise_b])
    columns = {"low": slice(0, 8), "middle": slice(8, 16), "high": slice(16, 24)}
    rows = sweep_features(features, labels, columns, stages=["low", "middle", "high"], folds=4,
                          classifier=classifier)
    singles = sorted((r for r in rows if r.depth >= 0), key=lambda r: -r.balanced_accuracy_mean)
    assert singles[0].layer == "middle" and singles[0].balanced_accuracy_mean > 0.9
    assert max(r.balanced_accuracy_mean for r in singles[1:]) < 0.6  # chance is 1/3
    assert {r.layer for r in rows if r.depth < 0} == {"fused stages",
                                                      "full-network embedding (stages)"}
    # Asked for, the FNE of every convolutional layer is one more row over its columns.
    rows = sweep_features(features, labels, columns, stages=["low", "middle"], folds=4,
                          classifier=classifier, conv_layers=["low", "middle", "high"],
                          singles=["high"])
    assert [(r.layer, r.dim) for r in rows] == [
        ("high", 8), ("fused stages", 16), ("full-network embedding (stages)", 16),
        ("full-network embedding (all-conv)", 24)]


def test_fold_scores_are_balanced_accuracies_on_the_same_20_folds():
    from sklearn.linear_model import RidgeClassifierCV
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.model_selection import StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(1)
    labels = np.repeat([0, 1], [20, 60])  # imbalanced, as PH2's 40 melanoma / 160 nevi
    features = rng.normal(size=(80, 6))
    features[:, 0] += 1.2 * labels
    rows = sweep_features(features, labels, {"a": slice(0, 3), "b": slice(3, 6)}, stages=[],
                          folds=20, classifier="ridge", random_state=3)
    folds = StratifiedKFold(n_splits=20, shuffle=True, random_state=3).split(features, labels)
    by_hand = []
    for train, test in folds:
        model = make_pipeline(StandardScaler(), RidgeClassifierCV(alphas=np.logspace(-2, 4, 13)))
        predicted = model.fit(features[train, :3], labels[train]).predict(features[test, :3])
        # Per fold: the mean of the recalls of the two classes (1 and 3 test images each).
        recalls = [np.mean(predicted[labels[test] == c] == c) for c in (0, 1)]
        by_hand.append(np.mean(recalls))
        assert by_hand[-1] == pytest.approx(balanced_accuracy_score(labels[test], predicted))
    assert rows[0].fold_scores == pytest.approx(by_hand)
    assert rows[0].balanced_accuracy_mean == pytest.approx(np.mean(by_hand))
    assert rows[0].balanced_accuracy_std == pytest.approx(np.std(by_hand))
    assert len(rows[1].fold_scores) == 20


def test_paired_comparison_matches_a_hand_computation():
    # Differences 0.1, 0, 0.1, 0.2: mean 0.1, variance 0.02 / 3; 4 folds, so n_test/n_train
    # = 1/3 and t = 0.1 / sqrt((1/4 + 1/3) · 0.02/3) = 1.6036 on 3 degrees of freedom.
    result = paired_comparison([0.9, 0.8, 1.0, 0.9], [0.8, 0.8, 0.9, 0.7])
    assert result["difference"] == pytest.approx(0.1)
    assert result["difference_sd"] == pytest.approx(np.sqrt(0.02 / 3))
    assert (result["wins"], result["losses"], result["ties"]) == (3, 0, 1)
    assert result["t"] == pytest.approx(1.6036, abs=1e-4)
    assert result["p_value"] == pytest.approx(0.2071, abs=1e-3)  # t table, 3 df, two-sided
    same = paired_comparison([0.5, 0.7], [0.5, 0.7])
    assert (same["difference"], same["p_value"]) == (0.0, 1.0)


def test_layers_command_writes_table_and_plot(tmp_path, capsys, tiny_checkpoint):
    path, arch = tiny_checkpoint
    data = write_class_folder(tmp_path / "data", per_class=6)
    out = tmp_path / "sweep"
    code = main(["layers", str(data), "--weights", str(path), "--arch", arch, "--folds", "3",
                 "--out", str(out), "--json"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["best_layer"] in {row["layer"] for row in result["rows"]}
    dims = {row["layer"]: row["dim"] for row in result["rows"]}
    # test_efficientnet: its 7 stage taps (464 features) and its 13 convolutional layers
    # (1264, see tests/features/test_fne_layers.py), from the same forward pass.
    assert dims["full-network embedding (stages)"] == 464
    assert dims["full-network embedding (all-conv)"] == 1264
    assert len(result["comparisons"]) == len(result["rows"]) - 1
    assert all(len(row["fold_scores"]) == 3 for row in result["rows"])
    assert (out / "layers.csv").read_text().startswith("layer,depth,dim")
    assert (out / "layers.png").stat().st_size > 1000
