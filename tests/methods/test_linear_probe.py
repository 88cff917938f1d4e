"""LinearProbe: learns, skips unreadable training images, round-trips through a bundle."""

import json

import numpy as np
import pytest

from builders import write_class_folder
from transferkit.bundle import load_bundle, save_bundle
from transferkit.data.dataset import list_image_files
from transferkit.errors import BundleError, DataError
from transferkit.features.classifiers import CLASSIFIERS
from transferkit.methods import LinearProbe


def _data(root, per_class=8, seed=0, classes=("red", "blue", "green")):
    write_class_folder(root, per_class=per_class, classes=classes, seed=seed)
    paths = list_image_files(root)
    return paths, np.array([p.parent.name for p in paths])


@pytest.fixture
def probe_kwargs(tiny_checkpoint):
    path, arch = tiny_checkpoint
    return {"weights": str(path), "arch": arch}


@pytest.mark.parametrize("classifier", CLASSIFIERS)
def test_every_classifier_beats_chance_on_held_out_images(tmp_path, probe_kwargs, classifier):
    train, y_train = _data(tmp_path / "train", seed=1)
    val, y_val = _data(tmp_path / "val", seed=2)
    probe = LinearProbe(classifier=classifier, **probe_kwargs).fit(train, y_train)
    assert set(probe.classes_) == {"red", "blue", "green"}
    assert probe.score(val, y_val) >= 0.8  # chance is 1/3
    proba = probe.predict_proba(val)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-6)
    assert probe.describe_classifier().startswith(classifier + " (")


def test_unreadable_training_images_are_skipped_with_a_warning(tmp_path, probe_kwargs):
    train, y_train = _data(tmp_path / "train", classes=("red", "blue"))
    bad = tmp_path / "train" / "red" / "bad.jpg"
    bad.write_bytes(b"garbage")
    train = train + [bad]
    y_train = np.append(y_train, "red")
    with pytest.warns(UserWarning, match="bad.jpg"):
        probe = LinearProbe(**probe_kwargs).fit(train, y_train)
    assert [p for p, _ in probe.skipped_] == [str(bad)]
    with pytest.raises(DataError, match="bad.jpg"):
        probe.predict([bad])


def test_labels_must_match_images(tmp_path, probe_kwargs):
    train, y_train = _data(tmp_path / "train", classes=("red", "blue"))
    with pytest.raises(DataError, match="labels"):
        LinearProbe(**probe_kwargs).fit(train, y_train[:-1])
    with pytest.raises(DataError, match="two classes"):
        LinearProbe(**probe_kwargs).fit(train, ["red"] * len(train))


def test_bundle_round_trip_gives_identical_predictions(tmp_path, probe_kwargs):
    train, y_train = _data(tmp_path / "train")
    val, _ = _data(tmp_path / "val", seed=5)
    probe = LinearProbe(**probe_kwargs).fit(train, y_train)
    folder = save_bundle(probe, tmp_path / "model", metrics={"note": 1})
    config = json.loads((folder / "config.json").read_text())
    assert config["method"] == "linear_probe" and config["classes"] == ["blue", "green", "red"]
    assert "torch" in config["versions"]
    loaded = load_bundle(folder)
    np.testing.assert_array_equal(loaded.predict_proba(val), probe.predict_proba(val))
    # Overwriting a bundle replaces it whole and leaves no staging folders behind.
    save_bundle(probe, folder, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_damaged_or_foreign_bundles_are_refused(tmp_path, probe_kwargs):
    train, y_train = _data(tmp_path / "train", classes=("red", "blue"))
    folder = save_bundle(LinearProbe(**probe_kwargs).fit(train, y_train), tmp_path / "model")
    with pytest.raises(BundleError, match="no config.json"):
        load_bundle(tmp_path / "train")
    config = json.loads((folder / "config.json").read_text())
    config["backbone"]["weights_digest"] = "0" * 20
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(BundleError, match="different features"):
        load_bundle(folder)
    (folder / "config.json").write_text("{ not json")
    with pytest.raises(BundleError, match="damaged"):
        load_bundle(folder)
