"""OnnxPredictor: predicts as the model folder does, imports no torch/timm/scikit-learn
(checked in a subprocess that cannot import them), and refuses tampered files in one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

from builders import REPO, write_class_folder
from transferkit.errors import BundleError, DataError
from transferkit.runtime import OnnxPredictor, load_predictor

BLOCKED = ("torch", "timm", "sklearn", "scipy", "torchvision", "skl2onnx", "skops")

# Runs a command with the heavy libraries unimportable: a meta-path finder ahead of all
# others raises ImportError for them (and their submodules).
BLOCKER = textwrap.dedent(f"""
    import importlib.abc, sys
    BLOCKED = {BLOCKED!r}
    class Blocker(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"{{name}} is blocked in this test")
            return None
    sys.meta_path.insert(0, Blocker())
""")


def _run_blocked(code: str, tmp_path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    return subprocess.run([sys.executable, "-c", BLOCKER + textwrap.dedent(code)],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)


def test_cli_predict_with_an_onnx_file_needs_no_torch_and_matches_the_folder(
        student_export, tmp_path, capsys):
    from transferkit.cli import main

    folder, exported, _ = student_export
    images = write_class_folder(tmp_path / "images", per_class=3, classes=("red", "blue"))
    (images / "red" / "broken.png").write_bytes(b"not a png")
    result = _run_blocked(f"""
        import sys
        from transferkit.cli import main
        code = main(["predict", {str(exported)!r}, {str(images)!r}, "--json"])
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
        assert not loaded, loaded
        sys.exit(code)
    """, tmp_path)
    assert result.returncode == 0, result.stderr
    from_file = json.loads(result.stdout)
    assert main(["predict", str(folder), str(images), "--json"]) == 0
    from_folder = json.loads(capsys.readouterr().out)
    assert set(from_file) == set(from_folder)
    assert from_file["method"] == from_folder["method"] == "distill"
    assert from_file["n_skipped"] == from_folder["n_skipped"] == 1
    assert len(from_file["predictions"]) == len(from_folder["predictions"]) == 6
    for a, b in zip(from_file["predictions"], from_folder["predictions"]):
        assert a["path"] == b["path"] and a["label"] == b["label"]
        assert a["probabilities"].keys() == b["probabilities"].keys()
        assert max(abs(a["probabilities"][c] - b["probabilities"][c])
                   for c in a["probabilities"]) < 1e-4


def test_python_api_needs_no_torch(student_export, tmp_path):
    _, exported, _ = student_export
    result = _run_blocked(f"""
        import sys
        import transferkit
        from PIL import Image
        predictor = transferkit.load_predictor({str(exported)!r})
        image = Image.new("RGB", (40, 30), (200, 30, 30))
        proba = predictor.predict_proba([image, image])
        assert proba.shape == (2, 2) and abs(proba.sum() - 2) < 1e-5
        assert predictor.classes == ["blue", "red"] and predictor.input_size == (16, 16)
        assert not [m for m in sys.modules if m.split(".")[0] in BLOCKED]
        print("ok")
    """, tmp_path)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


def test_predictor_takes_paths_and_pil_images_in_batches(student_export, tmp_path):
    folder, exported, _ = student_export
    from transferkit.bundle import load_bundle

    images = write_class_folder(tmp_path / "images", per_class=5, classes=("red", "blue"))
    paths = sorted(images.glob("*/*.png"))
    predictor = load_predictor(exported, batch_size=3)
    from_paths = predictor.predict_proba(paths)
    from_pil = predictor.predict_proba([Image.open(p) for p in paths])
    assert np.array_equal(from_paths, from_pil)
    expected = load_bundle(folder).predict_proba(paths)
    assert np.abs(from_paths - expected).max() < 1e-4
    assert predictor.predict(paths[0]) == [predictor.classes[int(expected[0].argmax())]]
    with pytest.raises(DataError, match="could not be read"):
        predictor.predict_proba([tmp_path / "missing.png"])


def test_metadata_round_trips(student_export):
    folder, exported, summary = student_export
    predictor = load_predictor(exported)
    config = json.loads((folder / "config.json").read_text())
    import transferkit

    assert predictor.classes == config["classes"]
    assert predictor.method == predictor.metadata["method"] == "distill"
    assert predictor.metadata["transferkit_version"] == transferkit.__version__
    assert predictor.metadata["metrics"] == {"val_accuracy": 0.9}
    assert predictor.input_size == (16, 16)
    assert predictor.inputs == summary["inputs"]
    assert predictor.metadata["export_check"]["same_top1"] is True


def _with_metadata(exported, target, **changes):
    import onnx

    model = onnx.load(str(exported))
    for prop in model.metadata_props:
        if prop.key in changes:
            prop.value = changes[prop.key]
    target.write_bytes(model.SerializeToString())
    return target


def _one_line_error(path) -> str:
    with pytest.raises(BundleError) as caught:
        OnnxPredictor(path)
    message = str(caught.value)
    assert "\n" not in message and str(path) in message
    return message


def test_tampered_or_foreign_files_are_refused_in_one_line(student_export, tmp_path):
    _, exported, _ = student_export
    data = exported.read_bytes()
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00\x01 definitely not protobuf" * 50)
    _one_line_error(garbage)
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(data[: len(data) // 2])
    _one_line_error(truncated)
    _one_line_error(tmp_path)  # a folder is not a model file
    cases = {
        "classes": ("[\"a\", ", "not JSON"),
        "input_size": ("[16, \"16\"]", "input_size"),
        "inputs": (json.dumps([{"name": "images", "resize_rule": {"resize": "zoom"}}]),
                   "resize_rule"),
        "transferkit_format": ("2", "format 2"),
    }
    for key, (value, expected) in cases.items():
        assert expected in _one_line_error(_with_metadata(exported, tmp_path / f"{key}.onnx",
                                                          **{key: value}))
    # Three class names for a graph with two outputs: the probe prediction catches it.
    assert "[2, 3]" in _one_line_error(_with_metadata(
        exported, tmp_path / "classes3.onnx", classes='["a", "b", "c"]'))


def test_a_file_without_our_metadata_is_refused(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    path = tmp_path / "other.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    assert "not a model written by `transferkit export`" in _one_line_error(path)


def test_external_data_references_are_refused(student_export, tmp_path, monkeypatch):
    """A file naming an external data file next to it (which ONNX Runtime would read from
    the working folder) is refused, with and without the onnx package."""
    import onnx
    from onnx import TensorProto

    _, exported, _ = student_export
    secret = tmp_path / "secret.bin"
    secret.write_bytes(os.urandom(4096))
    model = onnx.load(str(exported))
    tensor = model.graph.initializer[0]
    tensor.ClearField("raw_data")
    del tensor.float_data[:]
    tensor.data_location = TensorProto.EXTERNAL
    entry = tensor.external_data.add()
    entry.key, entry.value = "location", "secret.bin"
    path = tmp_path / "external.onnx"
    path.write_bytes(model.SerializeToString())
    monkeypatch.chdir(tmp_path)
    assert "external data" in _one_line_error(path)
    # Without the onnx package (the light install), ONNX Runtime is pointed at an empty folder.
    monkeypatch.setitem(sys.modules, "onnx", None)
    _one_line_error(path)


def _replace_output(exported, target, make_nodes):
    """The exported graph with its probabilities passed through ``make_nodes(old, new)``."""
    import onnx

    model = onnx.load(str(exported))
    output = model.graph.output[0].name
    for node in model.graph.node:
        node.output[:] = ["raw" if name == output else name for name in node.output]
    model.graph.node.extend(make_nodes("raw", output))
    target.write_bytes(model.SerializeToString())
    return target


def test_graphs_that_do_not_give_one_row_of_probabilities_per_image_are_refused(
        student_export, tmp_path):
    import onnx
    from onnx import helper

    _, exported, _ = student_export
    negated = _replace_output(exported, tmp_path / "negated.onnx",
                              lambda old, new: [helper.make_node("Neg", [old], [new])])
    assert "not probabilities" in _one_line_error(negated)
    # A batch dimension fixed at 1 passed a one-image probe, then failed on every batch.
    model = onnx.load(str(exported))
    for value in [*model.graph.input, *model.graph.output]:
        value.type.tensor_type.shape.dim[0].dim_value = 1
    fixed = tmp_path / "batch1.onnx"
    fixed.write_bytes(model.SerializeToString())
    assert "not uint8 [batch" in _one_line_error(fixed)


def test_class_names_must_stay_distinct_as_text(student_export, tmp_path):
    """predict and serve name each probability column str(label)."""
    _, exported, _ = student_export
    for number, classes in enumerate(('["1", 1]', "[true, false]", "[NaN, 1.5]")):
        path = _with_metadata(exported, tmp_path / f"classes{number}.onnx", classes=classes)
        message = _one_line_error(path)
        assert "classes" in message


def test_a_pil_image_is_turned_upright_as_a_file_is(student_export, tmp_path):
    """load_image applies the EXIF orientation; an opened PIL image must get it too."""
    _, exported, _ = student_export
    pixels = np.zeros((24, 48, 3), dtype=np.uint8)
    pixels[:, :16] = (230, 20, 20)
    pixels[:, 16:] = (20, 20, 230)
    picture = Image.fromarray(pixels)
    exif = picture.getexif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    path = tmp_path / "rotated.jpg"
    picture.save(path, exif=exif, quality=95)
    predictor = load_predictor(exported)
    from_path = predictor.predict_proba(path)
    with Image.open(path) as opened:
        from_pil = predictor.predict_proba(opened)
    assert np.array_equal(from_pil, from_path)
    sideways = predictor.predict_proba(Image.fromarray(pixels))  # the orientation matters
    assert np.abs(sideways - from_path).max() > 1e-3


def test_without_onnxruntime_predicting_is_one_error_line(student_export, tmp_path,
                                                          monkeypatch, capsys):
    from transferkit.cli import main

    _, exported, _ = student_export
    image = tmp_path / "a.png"
    Image.new("RGB", (20, 20), (200, 30, 30)).save(image)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    assert main(["predict", str(exported), str(image)]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and error.count("\n") == 1
    assert "pip install 'transferkit[runtime]'" in error


def test_a_graph_that_fails_on_other_batches_is_one_error_line(student_export, tmp_path):
    """The load-time probe is one batch of two images; a graph that runs only on that
    shape (here: reshaped to two rows) failed later inside ONNX Runtime with a traceback."""
    from onnx import TensorProto, helper

    _, exported, _ = student_export
    n_classes = len(OnnxPredictor(exported).classes)

    def two_rows_only(old, new):
        rows = helper.make_tensor("two_rows_value", TensorProto.INT64, [2], [2, n_classes])
        return [helper.make_node("Constant", [], ["two_rows"], value=rows),
                helper.make_node("Reshape", [old, "two_rows"], [new])]

    crafted = _replace_output(exported, tmp_path / "two-rows.onnx", two_rows_only)
    predictor = OnnxPredictor(crafted)  # the probe's batch of two passes
    image = tmp_path / "one.png"
    Image.new("RGB", (16, 16), (200, 30, 30)).save(image)
    with pytest.raises(BundleError) as caught:
        predictor.predict_proba([image])
    message = str(caught.value)
    assert "\n" not in message and str(crafted) in message and "failed on 1 image" in message
