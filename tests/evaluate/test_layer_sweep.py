"""The layer-transferability sweep."""

import json

import numpy as np
import pytest

from builders import write_class_folder
from transferkit.cli import main
from transferkit.evaluate.layer_sweep import sweep_features


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
    assert {r.layer for r in rows if r.depth < 0} == {"fused stages", "full-network embedding"}


def test_layers_command_writes_table_and_plot(tmp_path, capsys, tiny_checkpoint):
    path, arch = tiny_checkpoint
    data = write_class_folder(tmp_path / "data", per_class=6)
    out = tmp_path / "sweep"
    code = main(["layers", str(data), "--weights", str(path), "--arch", arch, "--folds", "3",
                 "--out", str(out), "--json"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["best_layer"] in {row["layer"] for row in result["rows"]}
    assert (out / "layers.csv").read_text().startswith("layer,depth,dim")
    assert (out / "layers.png").stat().st_size > 1000
