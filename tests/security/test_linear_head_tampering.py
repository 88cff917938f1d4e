"""A tampered ``classifier.safetensors`` is refused with one BundleError line.

The default linear probe's classifier is saved as numbers (:mod:`transferkit.features.
linear_head`); the file may come from anyone, so every name, type, shape and value in it
is checked before a pipeline is built from it. Also: a model folder holding both classifier
files, or neither, and an older model folder holding only ``classifier.skops``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import save_file

from builders import write_class_folder
from transferkit.bundle import load_bundle
from transferkit.cli import main
from transferkit.errors import BundleError
from transferkit.features.classifiers import make_probe_pipeline
from transferkit.features.linear_head import HEAD_FILE, load_linear_head, save_linear_head

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def good_head(tmp_path_factory) -> Path:
    rng = np.random.default_rng(0)
    y = np.arange(30) % 3
    X = rng.normal(size=(30, 5)) + y[:, None]
    path = tmp_path_factory.mktemp("head") / HEAD_FILE
    save_linear_head(make_probe_pipeline("logreg", y).fit(X, y), path)
    return path


def _parts(path: Path) -> tuple[dict, dict]:
    with safe_open(str(path), framework="np") as handle:
        return dict(handle.metadata()), {key: handle.get_tensor(key) for key in handle.keys()}


def _rewrite(good: Path, out: Path, metadata=None, tensors=None) -> Path:
    meta, arrays = _parts(good)
    if metadata:
        metadata(meta)
    if tensors:
        tensors(arrays)
    save_file(arrays, str(out), metadata=meta)
    return out


def _settings(**changes):
    def edit(meta):
        settings = json.loads(meta["settings"])
        settings.update(changes)
        meta["settings"] = json.dumps(settings)
    return edit


def _tensor(key, value):
    def edit(arrays):
        arrays[key] = value(arrays[key]) if callable(value) else value
    return edit


CASES = [
    ("another format", dict(metadata=lambda m: m.update(format="skops")), "metadata"),
    ("no metadata key", dict(metadata=lambda m: m.pop("settings")), "metadata"),
    ("extra metadata key", dict(metadata=lambda m: m.update(code="exec")), "metadata"),
    ("steps not JSON", dict(metadata=lambda m: m.update(steps="[not json")), "not valid JSON"),
    ("unknown step", dict(metadata=lambda m: m.update(steps='["pca", "logisticregression"]')),
     "none that transferkit writes"),
    ("extra setting", dict(metadata=_settings(solver="newton-cg")), "exactly C, max_iter, tol"),
    ("negative C", dict(metadata=_settings(C=-1.0)), "out of range"),
    ("C as text", dict(metadata=_settings(C="0.1")), "out of range"),
    ("C not finite", dict(metadata=lambda m: m.update(
        settings='{"C": NaN, "max_iter": 1000, "tol": 0.0001}')), "out of range"),
    ("max_iter a boolean", dict(metadata=_settings(max_iter=True)), "out of range"),
    ("extra tensor", dict(tensors=_tensor("evil", np.zeros(1))), "it holds tensors"),
    ("missing tensor", dict(tensors=lambda a: a.pop("logisticregression.intercept")),
     "it holds tensors"),
    ("half-precision weights", dict(tensors=_tensor("logisticregression.coef",
                                                    lambda v: v.astype(np.float16))),
     "F16, not"),
    ("integer weights", dict(tensors=_tensor("standardscaler.mean",
                                             lambda v: v.astype(np.int64))), "I64, not"),
    ("NaN weights", dict(tensors=_tensor("logisticregression.coef",
                                         lambda v: np.full_like(v, np.nan))), "not finite"),
    ("narrower coefficients", dict(tensors=_tensor("logisticregression.coef",
                                                   lambda v: v[:, :-1].copy())), "has shape"),
    ("scaler of another width", dict(tensors=_tensor("standardscaler.scale",
                                                     lambda v: np.ones(9))), "has shape"),
    ("classes renumbered", dict(tensors=_tensor("logisticregression.classes",
                                                lambda v: v * 2)), "classes 0, 1"),
    ("one class", dict(tensors=lambda a: a.update({
        "logisticregression.classes": np.zeros(1, dtype=np.int64),
        "logisticregression.coef": a["logisticregression.coef"][:1].copy(),
        "logisticregression.intercept": a["logisticregression.intercept"][:1].copy()})),
     "classes 0, 1"),
    ("zero scale", dict(tensors=_tensor("standardscaler.scale", np.zeros_like)), "not positive"),
    ("no training image", dict(tensors=_tensor("standardscaler.n_samples_seen",
                                               np.zeros_like)), "saw no training image"),
]


@pytest.mark.parametrize("edits,expected", [pytest.param(e, x, id=c) for c, e, x in CASES])
def test_a_tampered_head_is_refused_with_one_line(good_head, tmp_path, edits, expected):
    path = _rewrite(good_head, tmp_path / HEAD_FILE, **edits)
    with pytest.raises(BundleError, match=expected) as refused:
        load_linear_head(path)
    assert "\n" not in str(refused.value) and str(path) in str(refused.value)


@pytest.mark.parametrize("content", [b"", b"\x00" * 8, b"\xff" * 64,
                                     (2**40).to_bytes(8, "little") + b"{}"],
                         ids=["empty", "zero header", "garbage", "huge header length"])
def test_a_file_that_is_not_safetensors_is_refused(tmp_path, content):
    path = tmp_path / HEAD_FILE
    path.write_bytes(content)
    with pytest.raises(BundleError, match="not a readable safetensors file"):
        load_linear_head(path)


def test_a_truncated_head_is_refused(good_head, tmp_path):
    path = tmp_path / HEAD_FILE
    path.write_bytes(good_head.read_bytes()[:-40])
    with pytest.raises(BundleError, match="not a readable safetensors file"):
        load_linear_head(path)


def test_the_untouched_head_loads(good_head):
    assert load_linear_head(good_head).predict_proba(np.zeros((1, 5))).shape == (1, 3)


# -- through a model folder and the CLI -------------------------------------------------------
@pytest.fixture(scope="module")
def probe_folder(probe_model):
    return probe_model


def _refused_by_predict(folder: Path, image: str, capsys, expected: str) -> None:
    with pytest.raises(BundleError, match=expected):
        load_bundle(folder)
    capsys.readouterr()
    assert main(["predict", str(folder), image]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err


def test_the_classifier_file_config_lists_is_the_one_loaded(probe_folder, tmp_path, capsys):
    bundle, probe, image = probe_folder
    assert (bundle / HEAD_FILE).is_file() and not (bundle / "classifier.skops").exists()
    folder = shutil.copytree(bundle, tmp_path / "model")
    # A file of the other name beside the model is not the model's (a user's, or left by
    # an older transferkit): config.json lists the one that is.
    (folder / "classifier.skops").write_text("my notes\n")
    np.testing.assert_array_equal(load_bundle(folder).predict_proba([image]),
                                  probe.predict_proba([image]))
    # A config listing both (edited) leaves no way to tell: refused.
    config = json.loads((folder / "config.json").read_text())
    config["files"].append("classifier.skops")
    (folder / "config.json").write_text(json.dumps(config))
    _refused_by_predict(folder, image, capsys, "holds both")


def test_a_user_file_at_the_other_classifier_name_survives_an_overwrite(tiny_checkpoint,
                                                                        tmp_path):
    from transferkit.jobs import fit

    path, arch = tiny_checkpoint
    data = write_class_folder(tmp_path / "data", per_class=4)
    model = tmp_path / "model"
    tiny = dict(weights=str(path), arch=arch, cache_dir=str(tmp_path / "cache"), report=False)
    fit.run(data, model, **tiny)
    (model / "classifier.skops").write_text("my notes\n")
    fit.run(data, model, overwrite=True, **tiny)
    assert (model / "classifier.skops").read_text() == "my notes\n"
    assert load_bundle(model).classifier == "logreg"


@pytest.mark.parametrize("classifier", ["logreg", "svm"])
def test_a_model_folder_without_its_marker_is_still_a_model(tiny_checkpoint, tmp_path,
                                                             classifier):
    # Saved before folders had markers, or copied with `cp model/* elsewhere/`: replacing it
    # with --overwrite must still be allowed, whichever classifier file it holds.
    from transferkit.jobs import fit
    from transferkit.outputs import MARKER

    path, arch = tiny_checkpoint
    data = write_class_folder(tmp_path / "data", per_class=4)
    tiny = dict(weights=str(path), arch=arch, cache_dir=str(tmp_path / "cache"), report=False)
    fit.run(data, tmp_path / "model", classifier=classifier, **tiny)
    copy = tmp_path / "copy"
    copy.mkdir()
    for entry in (tmp_path / "model").iterdir():
        if entry.name != MARKER:
            shutil.copy(entry, copy / entry.name)
    fit.run(data, copy, overwrite=True, **tiny)
    assert load_bundle(copy).classifier == "logreg"


def test_a_folder_with_no_classifier_file_is_refused(probe_folder, tmp_path, capsys):
    bundle, _, image = probe_folder
    folder = shutil.copytree(bundle, tmp_path / "model")
    (folder / HEAD_FILE).unlink()
    _refused_by_predict(folder, image, capsys, "classifier.safetensors is missing")
    config = json.loads((folder / "config.json").read_text())
    config.pop("files")  # as models saved before bundles listed their files
    (folder / "config.json").write_text(json.dumps(config))
    _refused_by_predict(folder, image, capsys, r"classifier \(classifier.safetensors or "
                                               r"classifier.skops\) is missing")


def test_a_model_saved_with_skops_before_still_loads_and_predicts_the_same(probe_folder,
                                                                          tmp_path):
    from transferkit.skops_io import skops_io

    bundle, probe, image = probe_folder
    folder = shutil.copytree(bundle, tmp_path / "model")
    (folder / HEAD_FILE).unlink()  # how models were saved before classifier.safetensors
    skops_io().dump(probe.classifier_, folder / "classifier.skops")
    config = json.loads((folder / "config.json").read_text())
    config["files"] = [name.replace(HEAD_FILE, "classifier.skops") for name in config["files"]]
    (folder / "config.json").write_text(json.dumps(config))
    old, new = load_bundle(folder), load_bundle(bundle)
    np.testing.assert_array_equal(old.predict_proba([image]), new.predict_proba([image]))


def test_an_overwrite_swaps_one_classifier_file_for_the_other(tiny_checkpoint, tmp_path):
    from transferkit.jobs import fit

    path, arch = tiny_checkpoint
    data = write_class_folder(tmp_path / "data", per_class=4)
    model = tmp_path / "model"
    tiny = dict(weights=str(path), arch=arch, cache_dir=str(tmp_path / "cache"), report=False)
    fit.run(data, model, classifier="svm", **tiny)
    assert (model / "classifier.skops").is_file() and not (model / HEAD_FILE).exists()
    fit.run(data, model, overwrite=True, **tiny)  # the default logreg
    assert (model / HEAD_FILE).is_file() and not (model / "classifier.skops").exists()
    assert load_bundle(model).classifier == "logreg"
    fit.run(data, model, overwrite=True, classifier="knn", **tiny)
    assert (model / "classifier.skops").is_file() and not (model / HEAD_FILE).exists()


def _sparse_head(path: Path, width: int) -> Path:
    """A classifier.safetensors whose header declares ``width`` features (gigabytes for a
    large one) over a sparse file that takes no room on disk."""
    import struct

    shapes = {"standardscaler.mean": ("F64", [width]), "standardscaler.var": ("F64", [width]),
              "standardscaler.scale": ("F64", [width]),
              "standardscaler.n_samples_seen": ("I64", [1]),
              "logisticregression.coef": ("F64", [1, width]),
              "logisticregression.intercept": ("F64", [1]),
              "logisticregression.classes": ("I64", [2]), "logisticregression.n_iter": ("I64", [1])}
    header, offset = {"__metadata__": {
        "format": "transferkit.linear-head/1", "steps": '["standardscaler", "logisticregression"]',
        "settings": '{"C": 0.1, "max_iter": 1000, "tol": 0.0001}'}}, 0
    for key, (dtype, shape) in sorted(shapes.items()):
        size = 8 * int(np.prod(shape))
        header[key] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header).encode()
    with open(path, "wb") as handle:
        handle.write(struct.pack("<Q", len(text)) + text)
        handle.truncate(8 + len(text) + offset)
    return path


def test_a_head_declaring_gigabytes_is_refused_before_a_byte_is_read(tmp_path):
    # 2**27 features: 4 GiB of float64 declared by a file that takes a few kilobytes.
    import subprocess
    import sys

    path = _sparse_head(tmp_path / HEAD_FILE, 2**27)
    assert path.stat().st_blocks * 512 < 2**20
    # The peak from /proc (VmHWM, kB): ru_maxrss would include the forking pytest's.
    script = ("import re, sys\n"
              "from transferkit.features.linear_head import load_linear_head\n"
              "try:\n    load_linear_head(sys.argv[1], width=1280, n_classes=2)\n"
              "except Exception as exc:\n    print(type(exc).__name__, exc)\n"
              "status = open('/proc/self/status').read()\n"
              "print(re.search(r'VmHWM:\\s+(\\d+)', status).group(1))\n")
    done = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True,
                          text=True, timeout=120)
    message, peak_kib = done.stdout.strip().rsplit("\n", 1)
    assert message.startswith("BundleError") and "has shape [134217728], not [1280]" in message
    assert int(peak_kib) < 600 * 1024, "the declared tensors were read"


def test_finite_weights_that_overflow_give_an_error_not_nan_probabilities(probe_folder,
                                                                          tmp_path, capsys):
    bundle, probe, image = probe_folder
    folder = shutil.copytree(bundle, tmp_path / "model")
    meta, arrays = _parts(folder / HEAD_FILE)
    coef = arrays["logisticregression.coef"]
    big = np.finfo(coef.dtype).max
    coef[...] = np.where(np.arange(coef.size).reshape(coef.shape) % 2, big, -big)
    arrays["standardscaler.scale"][...] = 1e-3
    save_file(arrays, str(folder / HEAD_FILE), metadata=meta)
    model = load_bundle(folder)  # the zero row it is checked on gives finite numbers
    with pytest.raises(BundleError, match="not finite"):
        model.predict_proba([image])
    capsys.readouterr()
    assert main(["predict", str(folder), image, "--json"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    # export blames the model folder too, not the file it wrote from it
    assert main(["export", str(folder), "--out", str(tmp_path / "model.onnx")]) == 2
    err = capsys.readouterr().err
    assert "not finite" in err and err.count("\n") == 1 and not (tmp_path / "model.onnx").exists()


@pytest.mark.parametrize("kind", ["fifo", "folder"])
def test_a_head_that_is_not_a_regular_file_is_named_so(tmp_path, kind):
    import os

    path = tmp_path / HEAD_FILE
    os.mkfifo(path) if kind == "fifo" else path.mkdir()
    with pytest.raises(BundleError, match="is not a regular file"):
        load_linear_head(path)


def test_overwriting_a_skops_model_saved_before_files_were_listed_replaces_its_classifier(
        tiny_checkpoint, tmp_path):
    from transferkit.jobs import fit
    from transferkit.outputs import MARKER

    path, arch = tiny_checkpoint
    data = write_class_folder(tmp_path / "data", per_class=4)
    model = tmp_path / "model"
    tiny = dict(weights=str(path), arch=arch, cache_dir=str(tmp_path / "cache"), report=False)
    fit.run(data, model, classifier="knn", **tiny)
    (model / MARKER).unlink()  # as saved before markers and file lists
    config = json.loads((model / "config.json").read_text())
    config.pop("files")
    (model / "config.json").write_text(json.dumps(config))
    fit.run(data, model, overwrite=True, **tiny)
    assert (model / HEAD_FILE).is_file() and not (model / "classifier.skops").exists()
    fit.run(data, model, overwrite=True, classifier="knn", **tiny)  # and back
    assert load_bundle(model).classifier == "knn"


def test_a_config_naming_too_many_classes_is_refused_before_the_classifier_is_read(
        probe_folder, tmp_path, capsys):
    from transferkit.bundle import MAX_CLASSES

    bundle, _, image = probe_folder
    folder = shutil.copytree(bundle, tmp_path / "model")
    config = json.loads((folder / "config.json").read_text())
    config["classes"] = [f"c{i}" for i in range(MAX_CLASSES + 1)]
    (folder / "config.json").write_text(json.dumps(config))
    _refused_by_predict(folder, image, capsys, f"more than the {MAX_CLASSES}")
