"""Every kind fit can save exports to one ONNX file whose probabilities match the model
folder's within 1e-4, with the same top-1 class, on real photographs and generated images;
classifiers without a faithful conversion are refused by name."""

from __future__ import annotations

import json

import numpy as np
import pytest

from builders import SHARED_DATASETS, write_class_folder
from transferkit.bundle import load_bundle, save_bundle
from transferkit.errors import BundleError, TransferkitError
from transferkit.export import export_model
from transferkit.runtime import load_predictor

pytestmark = pytest.mark.usefixtures("one_torch_thread")
CLASSES = ("red", "blue", "green")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Training images (generated colours) and images to compare on: held-out generated
    ones and, where the shared data sets are, real photographs of every shape."""
    root = tmp_path_factory.mktemp("data")
    train = sorted(write_class_folder(root / "train", per_class=8, classes=CLASSES)
                   .glob("*/*.png"))
    compare = sorted(write_class_folder(root / "test", per_class=2, classes=CLASSES,
                                        seed=5).glob("*/*.png"))
    for folder in ("hymenoptera/val/ants", "hymenoptera/val/bees", "sign_language_digits/all/4"):
        compare += sorted((SHARED_DATASETS / folder).glob("*"))[:3]
    return train, [p.parent.name for p in train], compare


def assert_export_matches(folder, exported, images):
    predictor = load_predictor(exported)
    expected, ok, skipped = load_bundle(folder).predict_paths(images)
    got, got_ok, got_skipped = predictor.predict_paths(images)
    assert np.array_equal(ok, got_ok) and len(skipped) == len(got_skipped)
    assert got.shape == expected.shape and len(got) >= 6
    assert np.abs(got - expected).max() < 1e-4
    assert np.array_equal(got.argmax(axis=1), np.asarray(expected).argmax(axis=1))
    return predictor


PROBES = {
    "logreg": {"classifier": "logreg"},
    "fne-svm": {"method": "fne"},
    "mlp-stages-gem-l2-pca": {"classifier": "mlp", "layer": "stages", "pooling": "gem",
                              "normalise": "l2", "pca": 5},
    "svm-avgmax-taps": {"classifier": "svm", "layer": "blocks.1,features,pre_logits",
                        "pooling": "avgmax"},
}


@pytest.mark.parametrize("kind", PROBES)
def test_linear_probes_export_faithfully(kind, data, tiny_checkpoint, tmp_path):
    from transferkit.methods import create_method

    train, labels, compare = data
    path, arch = tiny_checkpoint
    params = dict(PROBES[kind])
    method = params.pop("method", "linear_probe")
    probe = create_method(method, weights=str(path), arch=arch, use_cache=False, **params)
    folder = save_bundle(probe.fit(train, labels), tmp_path / "model",
                         metrics={"val_accuracy": 1.0})
    summary = export_model(folder)
    assert summary["out"] == str(tmp_path / "model.onnx")
    assert summary["export_check"]["max_abs_difference"] < 1e-4
    predictor = assert_export_matches(folder, tmp_path / "model.onnx", compare)
    assert predictor.classes == sorted(CLASSES) and predictor.method == "linear_probe"
    assert predictor.input_size == (160, 160)  # test_efficientnet's input
    assert predictor.inputs[0]["resize_rule"] == {
        "resize": "shorter_side", "resize_to": [168, 168], "crop": [160, 160],
        "interpolation": "bicubic"}
    assert predictor.metadata["metrics"] == {"val_accuracy": 1.0}


def test_classifiers_without_a_faithful_conversion_are_refused(data, tiny_checkpoint, tmp_path):
    from transferkit.methods import LinearProbe

    train, labels, _ = data
    path, arch = tiny_checkpoint
    probe = LinearProbe(weights=str(path), arch=arch, classifier="knn", use_cache=False)
    folder = save_bundle(probe.fit(train, labels), tmp_path / "model")
    if probe.classifier_[-1].weights == "uniform":
        pytest.skip("the knn probe weighs neighbours uniformly now, which converts faithfully")
    with pytest.raises(TransferkitError) as caught:
        export_model(folder)
    message = str(caught.value)
    assert "\n" not in message and "no faithful ONNX conversion" in message
    assert "logreg" in message and "svm" in message and "mlp" in message
    assert not (tmp_path / "model.onnx").exists()


@pytest.mark.parametrize("head", ["linear", "mlp"])
def test_fine_tuned_networks_export_faithfully(head, data, tiny_checkpoint, tmp_path):
    from transferkit.methods import FineTuner

    train, labels, compare = data
    path, arch = tiny_checkpoint
    tuner = FineTuner(weights=str(path), arch=arch, image_size=48, batch_size=8, epochs=2,
                      lr=3e-3, head=head, num_workers=0, progress=False, strategy="full")
    folder = save_bundle(tuner.fit(train, labels), tmp_path / "tuned")
    export_model(folder, tmp_path / "tuned.onnx")
    predictor = assert_export_matches(folder, tmp_path / "tuned.onnx", compare)
    assert predictor.method == "finetune" and predictor.input_size == (48, 48)


def test_distilled_students_export_faithfully(data, tmp_path):
    from transferkit.methods.distill import DistilledStudent

    train, labels, compare = data
    student = DistilledStudent(student="tiny-cnn", image_size=24, epochs=2, device="cpu")
    folder = save_bundle(student.fit(train, labels), tmp_path / "student")
    export_model(folder, tmp_path / "student.onnx")
    predictor = assert_export_matches(folder, tmp_path / "student.onnx", compare)
    assert predictor.inputs[0]["resize_rule"]["resize"] == "exact"


def test_models_export_does_not_cover_are_refused(tmp_path):
    folder = tmp_path / "similarity"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"format_version": 1, "method": "siamese"}))
    with pytest.raises(BundleError, match="which export does not cover; it covers"):
        export_model(folder)


@pytest.mark.slow
def test_fused_bundled_backbones_export_with_one_input_each(data, tmp_path):
    """Lite0 (224 px) + Lite1 (240 px): two graph inputs, each resized its own way."""
    from transferkit.methods import LinearProbe

    train, labels, compare = data
    probe = LinearProbe(backbone="efficientnet_lite0+efficientnet_lite1", use_cache=False)
    folder = save_bundle(probe.fit(train, labels), tmp_path / "fused")
    export_model(folder)
    predictor = assert_export_matches(folder, tmp_path / "fused.onnx", compare)
    assert [spec["resize_rule"]["crop"] for spec in predictor.inputs] == [[224, 224], [240, 240]]
    assert [spec["name"] for spec in predictor.inputs] == ["images", "images_1"]


def test_a_segmentation_export_tolerates_ties_but_not_flipped_decided_pixels(monkeypatch):
    """Where the folder's two most probable classes tie, rounding decides the class, in
    the folder as in the file: such a pixel may differ. Anywhere else it may not."""
    import numpy as np

    import transferkit.export.exporter as exporter
    import transferkit.runtime.onnx_segmenter as onnx_segmenter

    def compare(folder_map, file_map):
        class Folder:
            def predict_proba_paths(self, paths):
                return [folder_map], np.ones(1, bool), []

        class File:
            def __init__(self, path):
                pass

            def predict_proba_paths(self, paths):
                return [file_map], np.ones(1, bool), []

        monkeypatch.setattr(onnx_segmenter, "OnnxSegmenter", File)
        return exporter._compare_segmentation(Folder(), None, [None])

    def maps(p0, p1):
        return np.stack([np.full((3, 4), p0), np.full((3, 4), p1)]).astype(np.float64)

    # An exact tie in the folder, class 1 by 1e-7 in the file: every pixel flips, excused.
    check = compare(maps(0.5, 0.5), maps(0.5, 0.5 + 1e-7))
    assert check["same_top1"] is True and check["same_class_pixels"] == 0.0
    # Classes 6e-4 apart (more than twice the tolerance): a flip fails the check.
    check = compare(maps(0.5003, 0.4997), maps(0.4997, 0.5003))
    assert check["same_top1"] is False and check["same_class_pixels"] == 0.0
    check = compare(maps(0.9, 0.1), maps(0.9, 0.1))
    assert check["same_top1"] is True and check["same_class_pixels"] == 1.0
