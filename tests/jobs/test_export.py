"""`transferkit export`: one file, --json, never over a file it did not write."""

from __future__ import annotations

import json

import pytest

from builders import write_class_folder
from transferkit.cli import main


@pytest.fixture(scope="module")
def student_folder(tmp_path_factory):
    import numpy as np

    from transferkit.bundle import save_bundle
    from transferkit.methods.distill import DistilledStudent

    root = tmp_path_factory.mktemp("export-job")
    images = sorted(write_class_folder(root / "images", per_class=6).glob("*/*.png"))
    labels = np.array([p.parent.name for p in images])
    student = DistilledStudent(student="tiny-cnn", image_size=16, epochs=1, device="cpu")
    return save_bundle(student.fit(images, labels), root / "student")


def test_export_writes_one_file_and_reports_it(student_folder, tmp_path, capsys):
    out = tmp_path / "student.onnx"
    assert main(["export", str(student_folder), "--out", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["out"] == str(out) and out.is_file() and summary["bytes"] == out.stat().st_size
    assert summary["method"] == "distill" and summary["classes"] == ["blue", "red"]
    assert summary["export_check"]["same_top1"] is True
    again = tmp_path / "again.onnx"
    assert main(["export", str(student_folder), "--out", str(again)]) == 0
    text = capsys.readouterr().out
    assert f"wrote {again}" in text and "16x16" in text and "same top-1 class: yes" in text


def test_export_never_replaces_a_file_it_did_not_write(student_folder, tmp_path, capsys):
    foreign = tmp_path / "notes.onnx"
    foreign.write_text("my own file")
    assert main(["export", str(student_folder), "--out", str(foreign), "--overwrite"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and error.count("\n") == 1
    assert "not written by transferkit" in error
    assert foreign.read_text() == "my own file"

    out = tmp_path / "model.onnx"
    assert main(["export", str(student_folder), "--out", str(out)]) == 0
    capsys.readouterr()
    first = out.read_bytes()
    assert main(["export", str(student_folder), "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["export", str(student_folder), "--out", str(out), "--overwrite"]) == 0
    from transferkit.runtime import load_predictor

    assert load_predictor(out).method == "distill"
    # A damaged file cannot be told from someone else's: refused even with --overwrite.
    out.write_bytes(first[: len(first) // 2])
    assert main(["export", str(student_folder), "--out", str(out), "--overwrite"]) == 2
    assert "not written by transferkit" in capsys.readouterr().err


def test_export_refuses_to_write_into_the_model_folder(student_folder, capsys):
    before = sorted(p.name for p in student_folder.iterdir())
    assert main(["export", str(student_folder), "--out", str(student_folder / "x.onnx")]) == 2
    assert "error: " in capsys.readouterr().err
    assert sorted(p.name for p in student_folder.iterdir()) == before


def test_predict_with_a_damaged_onnx_file_is_one_error_line(tmp_path, capsys):
    images = write_class_folder(tmp_path / "images", per_class=1)
    damaged = tmp_path / "model.onnx"
    damaged.write_bytes(b"\x08\x07garbage" * 100)
    assert main(["predict", str(damaged), str(images)]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"error: {damaged}: not a usable ONNX model") and error.count("\n") == 1


def test_a_converter_failure_is_one_error_line(student_folder, tmp_path, capsys, monkeypatch):
    import transferkit.export.network as network

    def broken(*args, **kwargs):
        raise RuntimeError("unsupported operator aten::frobnicate\nsecond line")

    monkeypatch.setattr(network, "export_network", broken)
    out = tmp_path / "x.onnx"
    assert main(["export", str(student_folder), "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert "cannot export the distill model (RuntimeError: unsupported operator" in error
    assert error.count("\n") == 1 and not out.exists()


def test_an_out_path_in_a_missing_folder_is_refused_before_the_export(
        student_folder, tmp_path, capsys, monkeypatch):
    import transferkit.bundle

    def not_reached(*args, **kwargs):
        raise AssertionError("the model was loaded before the output path was checked")

    monkeypatch.setattr(transferkit.bundle, "load_bundle", not_reached)
    out = tmp_path / "absent" / "sub" / "model.onnx"
    assert main(["export", str(student_folder), "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and error.count("\n") == 1
    assert "does not exist" in error and ".tmp" not in error
    assert not (tmp_path / "absent").exists()


def test_the_exported_file_names_no_folder_of_the_training_machine(
        student_folder, tmp_path, capsys):
    import shutil

    import onnx

    folder = tmp_path / "copy"
    shutil.copytree(student_folder, folder)
    (folder / "metrics.json").write_text(json.dumps({
        "out": "/home/alice/secret-project/models/student", "data": "photos/2024/cats",
        "teacher": "C:\\Users\\alice\\teacher", "val_accuracy": 0.75,
        "notes": ["/home/alice/secret-project/notes.txt"], "backbone": "hf-hub:timm/x"}))
    out = tmp_path / "student.onnx"
    assert main(["export", str(folder), "--out", str(out), "--quiet"]) == 0
    props = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert "alice" not in "".join(props.values()) and str(tmp_path) not in "".join(props.values())
    assert json.loads(props["metrics"]) == {
        "out": "student", "data": "cats", "teacher": "teacher", "val_accuracy": 0.75,
        "notes": ["notes.txt"], "backbone": "hf-hub:timm/x"}


def test_predict_with_a_missing_onnx_file_names_the_file(tmp_path, capsys):
    images = write_class_folder(tmp_path / "images", per_class=1)
    assert main(["predict", str(tmp_path / "absent.onnx"), str(images)]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"error: {tmp_path / 'absent.onnx'}: cannot read the model file")
    assert "model folder" not in error and error.count("\n") == 1
