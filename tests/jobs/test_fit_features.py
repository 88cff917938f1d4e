"""``transferkit fit DATA --features FEATURES_DIR``: a model trained from the shards
``transferkit extract`` wrote is the model ``fit`` trains from the images, it predicts and
exports like one, and a store that does not describe DATA is refused in one line."""

import json
import subprocess
import sys

import numpy as np
import pytest

from builders import colour_image, write_class_folder
from transferkit.bundle import load_bundle
from transferkit.cli import main
from transferkit.jobs import export, extract, fit, predict

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny(tiny_checkpoint):
    path, arch = tiny_checkpoint
    return {"weights": str(path), "arch": arch}


@pytest.fixture
def data_and_store(tmp_path, tiny_checkpoint):
    """Three classes of ten images (no val/ folder: fit holds out a seeded share) and their
    features in a store of five shards."""
    data = write_class_folder(tmp_path / "images", per_class=10, classes=("red", "blue", "green"))
    store = tmp_path / "features"
    extract.run(data, store, shard_rows=7, **tiny(tiny_checkpoint))
    return data, store


def _new_images(root):
    return write_class_folder(root, per_class=2, classes=("red", "blue", "green"), seed=7)


def _predictions(model, images) -> dict:
    summary = predict.run(model, [images])
    return {item["path"]: item for item in summary["predictions"]}


def test_fit_from_a_store_is_fit_from_the_images(data_and_store, tmp_path, tiny_checkpoint):
    data, store = data_and_store
    from_images = fit.run(data, tmp_path / "from-images", report=False, **tiny(tiny_checkpoint))
    from_store = fit.run(data, tmp_path / "from-store", features=str(store))
    assert from_store["features"] == str(store)
    for key in ("classes", "validation", "n_train", "n_val", "val_metrics", "classifier"):
        assert from_store[key] == from_images[key], key
    # The same model: the same features, the same solver, the same coefficients...
    a, b = load_bundle(tmp_path / "from-images"), load_bundle(tmp_path / "from-store")
    np.testing.assert_allclose(b.classifier_[-1].coef_, a.classifier_[-1].coef_, atol=1e-6)
    # ...saved with the settings that rebuild the extractor at predict time.
    configs = [json.loads((tmp_path / name / "config.json").read_text())
               for name in ("from-images", "from-store")]
    for key in ("backbone", "layers", "n_features", "classes"):
        assert configs[0][key] == configs[1][key], key
    for key in ("backbone", "weights", "arch", "layer", "pooling", "classifier"):
        assert configs[0]["params"].get(key) == configs[1]["params"].get(key), key
    assert (tmp_path / "from-store" / "report.html").is_file()

    # predict and export work on it exactly as on the model fitted from the images.
    new = _new_images(tmp_path / "new")
    expected, got = _predictions(tmp_path / "from-images", new), _predictions(tmp_path / "from-store", new)
    assert expected.keys() == got.keys() and len(got) == 6
    for path, item in got.items():
        assert item["label"] == expected[path]["label"]
        for name, value in item["probabilities"].items():
            assert value == pytest.approx(expected[path]["probabilities"][name], abs=1e-5)
    exported = export.run(tmp_path / "from-store", tmp_path / "model.onnx")
    assert exported["export_check"]["same_top1"]
    assert exported["export_check"]["max_abs_difference"] < 1e-4


def test_logreg_stream_and_the_memory_switch_over(data_and_store, tmp_path, tiny_checkpoint):
    data, store = data_and_store
    in_memory = fit.run(data, tmp_path / "in-memory", features=str(store), report=False)
    # A budget the training features exceed: the default logreg streams...
    switched = fit.run(data, tmp_path / "switched", features=str(store), max_memory=0.01)
    assert switched["classifier"].startswith("logreg-stream (C=0.1, L-BFGS over chunks, ")
    assert switched["val_metrics"] == in_memory["val_metrics"]
    a, b = load_bundle(tmp_path / "in-memory"), load_bundle(tmp_path / "switched")
    assert b.classifier == "logreg-stream"
    np.testing.assert_allclose(b.classifier_[-1].coef_, a.classifier_[-1].coef_, atol=2e-3)
    new = _new_images(tmp_path / "new")
    expected, got = _predictions(tmp_path / "in-memory", new), _predictions(tmp_path / "switched", new)
    assert {p: i["label"] for p, i in got.items()} == {p: i["label"] for p, i in expected.items()}
    # ...and the streamed model exports like any logreg.
    assert export.run(tmp_path / "switched", tmp_path / "switched.onnx")["export_check"]["same_top1"]
    # A classifier asked for by name that needs all features in memory is refused instead.
    with pytest.raises(Exception, match="needs them all in memory"):
        fit.run(data, tmp_path / "svm", features=str(store), max_memory=0.01, classifier="svm")
    assert not (tmp_path / "svm").exists()


def _errors(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]


def test_a_store_that_does_not_describe_data_is_refused_in_one_line(data_and_store, tmp_path,
                                                                    capsys):
    data, store = data_and_store
    base = ["fit", str(data), "--features", str(store), "--quiet"]
    out = tmp_path / "model"
    assert main([*base, "--out", str(out), "--layer", "stages"]) == 2
    assert main([*base, "--out", str(out), "--pooling", "max"]) == 2
    assert main([*base, "--out", str(out), "--backbone", "efficientnet_lite2"]) == 2
    assert main([*base, "--out", str(out), "--method", "fne"]) == 2  # fne's: all-conv or fne
    assert main([*base, "--out", str(out), "--method", "finetune"]) == 2
    assert main(["fit", str(data), "--features", str(data), "--out", str(out)]) == 2
    assert main(["fit", str(data), "--max-memory", "10", "--out", str(out)]) == 2
    errors = _errors(capsys)
    assert len(errors) == 7
    assert "not extracted with layer 'stages'" in errors[0]
    assert "pooling 'max'" in errors[1] and "backbone 'efficientnet_lite2'" in errors[2]
    assert "not 'pre_logits'" in errors[3] and "linear_probe or fne" in errors[4]
    assert "not a feature store" in errors[5] and "applies to --features" in errors[6]

    # Images added or changed after the extraction have no row: named, counted, one line.
    colour_image((200, 40, 40), seed=99).save(data / "red" / "new.png")
    colour_image((40, 40, 200), seed=98).save(data / "blue" / "0.png")  # other pixels
    assert main([*base, "--out", str(out)]) == 2
    errors = _errors(capsys)
    assert len(errors) == 1
    assert "2 image(s)" in errors[0] and "new.png" in errors[0] and "0.png" in errors[0]
    assert "no row in the feature store" in errors[0]
    assert not out.exists()  # nothing written


def test_an_incomplete_store_is_refused(data_and_store, tmp_path):
    data, store = data_and_store
    (store / "shards" / "part-00002.parquet").rename(tmp_path / "moved.parquet")
    with pytest.raises(Exception, match="1 of 5 shards are missing"):
        fit.run(data, tmp_path / "model", features=str(store))


def test_an_image_skipped_at_extraction_is_skipped_as_fit_skips_it(tmp_path, tiny_checkpoint):
    data = write_class_folder(tmp_path / "images", per_class=8)
    (data / "red" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    store = tmp_path / "features"
    extract.run(data, store, shard_rows=5, **tiny(tiny_checkpoint))
    from_images = fit.run(data, tmp_path / "a", report=False, **tiny(tiny_checkpoint))
    from_store = fit.run(data, tmp_path / "b", report=False, features=str(store))
    assert [item["path"] for item in from_store["skipped"]] == \
        [item["path"] for item in from_images["skipped"]] != []
    assert "broken.jpg" in from_store["skipped"][0]["reason"]
    for key in ("n_train", "n_val", "val_metrics"):
        assert from_store[key] == from_images[key]


_RUN_AND_LIST = """
import json, sys
from transferkit.cli import main
code = main(sys.argv[1:])
heavy = sorted({name.split('.')[0] for name in sys.modules}
               & {"torch", "timm", "torchvision", "skops"})
print(json.dumps({"code": code, "heavy": heavy}), file=sys.stderr)
"""


def test_fit_from_a_store_imports_no_network_library(data_and_store, tmp_path):
    import os

    data, store = data_and_store
    env = {**os.environ, "TRANSFERKIT_CACHE_DIR": str(tmp_path / "empty-cache")}
    result = subprocess.run([sys.executable, "-c", _RUN_AND_LIST, "fit", str(data), "--features",
                             str(store), "--out", str(tmp_path / "model"), "--quiet"],
                            capture_output=True, text=True, env=env)
    report = json.loads(result.stderr.strip().splitlines()[-1])
    assert report == {"code": 0, "heavy": []}, result.stderr
    assert (tmp_path / "model" / "classifier.safetensors").is_file()
