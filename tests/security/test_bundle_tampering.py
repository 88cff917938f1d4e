"""A damaged or tampered model folder gives one BundleError line, never a traceback.

Regression tests for: truncated or garbled ``classifier.skops`` / ``*.safetensors`` and
malformed ``config.json`` crashed with BadZipFile, SafetensorError, TypeError,
AttributeError...; ``config.json`` was never checked against the files beside it, so a
changed class list or feature width loaded without complaint, and its ``params`` could
pass any keyword (``run_dir``, ``cache_dir``, unknown names) to the estimator.
Each case is checked through ``load_bundle`` and through ``transferkit predict``.
"""

from __future__ import annotations

import io
import json
import shutil
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest

from builders import write_class_folder
from transferkit.bundle import load_bundle, save_bundle
from transferkit.cli import main
from transferkit.errors import BundleError
from transferkit.methods.registry import bundle_name_of
from transferkit.skops_io import skops_io

skops_io()  # skops imported as transferkit imports it (no estimator trusted by default)
import skops.io  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def bundles(tmp_path_factory, tiny_checkpoint):
    """One small real bundle of each method that saves one, and an image to predict."""
    from transferkit.methods import FineTuner, LinearProbe
    from transferkit.methods.distill import DistilledStudent
    from transferkit.methods.fewshot.siamese import SiameseSimilarity

    root = tmp_path_factory.mktemp("bundles")
    path, arch = tiny_checkpoint
    images = write_class_folder(root / "images", per_class=4)
    paths = sorted(str(p) for p in images.glob("*/*.png"))
    labels = [Path(p).parent.name for p in paths]
    rng = np.random.default_rng(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        probe = LinearProbe(weights=str(path), arch=arch, runtime="eager",
                            cache_dir=str(root / "cache")).fit(paths, labels)
        # Any classifier but the default logistic regression is saved with skops.
        svm_probe = LinearProbe(weights=str(path), arch=arch, runtime="eager", classifier="svm",
                                cache_dir=str(root / "cache")).fit(paths, labels)
        tuner = FineTuner(weights=str(path), arch=arch, image_size=32, batch_size=8, epochs=1,
                          strategy="head", val_fraction=0, num_workers=0, progress=False,
                          device="cpu").fit(paths, labels)
        pixels = rng.integers(0, 255, size=(6, 16, 16, 3)).astype(np.uint8)
        student = DistilledStudent(student="tiny-cnn", image_size=16, epochs=1, batch_size=8,
                                   device="cpu").fit(pixels, np.array(["a", "b"] * 3))
        similarity = SiameseSimilarity(weights=str(path), arch=arch, epochs=1, hidden=8,
                                       embedding_dim=4, device="cpu").fit_features(
            rng.normal(size=(12, 8)).astype(np.float32), np.repeat(np.arange(3), 4))
    return {"linear_probe": save_bundle(probe, root / "linear_probe"),
            "linear_probe_skops": save_bundle(svm_probe, root / "linear_probe_skops"),
            "finetune": save_bundle(tuner, root / "finetune"),
            "distill": save_bundle(student, root / "distill"),
            "siamese": save_bundle(similarity, root / "siamese"),
            "image": paths[0]}


WEIGHTS = {"linear_probe": "classifier.safetensors", "linear_probe_skops": "classifier.skops",
           "finetune": "model.safetensors", "distill": "student.safetensors",
           "siamese": "embedding.safetensors"}
NOT_SAVED = {"linear_probe": "cache_dir", "linear_probe_skops": "cache_dir",
             "finetune": "run_dir", "distill": "run_dir", "siamese": "run_dir"}
MISSING = {"linear_probe": "classes", "linear_probe_skops": "classes", "finetune": "head",
           "distill": "student", "siamese": "threshold"}
CLASSIFIERS = ("linear_probe", "linear_probe_skops", "finetune", "distill")


def _edit_config(change):
    def edit(folder: Path, kind: str) -> None:
        config = json.loads((folder / "config.json").read_text())
        change(config, kind)
        (folder / "config.json").write_text(json.dumps(config))
    return edit


def _write(name: str, data):
    def edit(folder: Path, kind: str) -> None:
        target = folder / (WEIGHTS[kind] if name == "weights" else name)
        content = data(target) if callable(data) else data
        target.write_bytes(content if isinstance(content, bytes) else content.encode())
    return edit


def _set(*keys_and_value):
    *keys, value = keys_and_value

    def change(config, kind):
        holder = config
        for key in keys[:-1]:
            holder = holder[key]
        holder[keys[-1]] = value(holder[keys[-1]]) if callable(value) else value
    return _edit_config(change)


def _garbled(target: Path) -> bytes:
    return np.random.default_rng(1).integers(0, 256, target.stat().st_size, dtype=np.uint8).tobytes()


def _another_skops_object(target: Path) -> bytes:
    return skops.io.dumps({"not": "a pipeline"})


def _schema(text: str, compression: int = zipfile.ZIP_STORED):
    def skops_file(target: Path) -> bytes:
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", compression=compression) as archive:
            archive.writestr("schema.json", text)
        return buffer.getvalue()
    return skops_file


def _strategy(name):
    def change(config, kind):
        config["strategy"] = config["params"]["strategy"] = name
    return change


def _add_class(config, kind):
    config["classes"] = config["classes"] + ["extra"]


def _duplicate_class(config, kind):
    config["classes"][1] = config["classes"][0]


def _wider(config, kind):
    if kind == "finetune":
        config["head"]["n_features"] += 1
    else:
        config["n_features"] += 1


# (case, kinds it applies to, edit, what the one-line error must say)
CASES = [
    ("config not JSON", "all", _write("config.json", "{ not json"), "damaged"),
    ("config nested too deep", "all", _write("config.json", "[" * 100_000), "damaged"),
    ("config a list", "all", _write("config.json", "[1, 2, 3]"), "not an object"),
    ("no method", "all", _edit_config(lambda c, k: c.pop("method")), "method should be a string"),
    ("key missing", "all", _edit_config(lambda c, k: c.pop(MISSING[k])), "is missing"),
    ("params a list", "all", _set("params", []), "params should be object"),
    ("run-local param", "all", _edit_config(lambda c, k: c["params"].update({NOT_SAVED[k]: "/tmp"})),
     "never saves"),
    ("unknown param", "all", _set("params", "bogus", 1), "bogus, which"),
    ("param of wrong type", "all", _set("params", "batch_size", "32"),
     "params.batch_size should be integer"),
    ("classes a string", CLASSIFIERS, _set("classes", "red,blue"), "classes should be array"),
    ("class of wrong type", CLASSIFIERS, _set("classes", [["red"], "blue"]), r"classes\[0\]"),
    ("class added", CLASSIFIERS, _edit_config(_add_class), "3 classes but|has shape"),
    ("class repeated", CLASSIFIERS, _edit_config(_duplicate_class), "repeat"),
    ("feature width changed", ("linear_probe", "linear_probe_skops", "finetune", "siamese"),
     _edit_config(_wider),
     "features but|has shape"),
    ("n_features not a number", ("linear_probe", "siamese"), _set("n_features", "8"),
     "n_features should be integer"),
    ("backbone list of two", ("linear_probe",),
     _set("backbone", lambda b: [b, b]), "2 backbone"),
    ("backbone digest not a string", ("linear_probe", "siamese"),
     _set("backbone", "weights_digest", 5), "backbone.weights_digest should be string"),
    ("arch from the internet", ("finetune",), _set("arch", "hf-hub:someone/model"),
     "timm architecture"),
    ("another arch", ("finetune",), _set("arch", "resnet18"), "classifier|does not hold"),
    ("head of unknown kind", ("finetune",), _set("head", "kind", "conv"), "head kind"),
    ("head with an extra key", ("finetune",), _set("head", "extra", 1), "unexpected key"),
    ("data_config extra keyword", ("finetune",), _set("data_config", "evil", 1), "unexpected key"),
    ("student swapped", ("distill",), _set("student", "small-cnn"), "disagree"),
    ("student unknown", ("distill",), _set("params", "student", "huge-cnn"),
     "config.json: unknown student"),
    ("much wider hidden layer", ("siamese",), _set("params", "hidden", 10**7), "has shape"),
    ("weights empty", "all", _write("weights", b""), "not a readable"),
    ("weights truncated", "all", _write("weights", lambda t: t.read_bytes()[: t.stat().st_size // 2]),
     "not a readable|cannot rebuild"),
    ("weights garbled", "all", _write("weights", _garbled), "not a readable"),
    ("skops schema not JSON", ("linear_probe_skops",), _write("weights", _schema("{ not json")),
     "not a readable"),
    ("skops schema incomplete", ("linear_probe_skops",),
     _write("weights", _schema('{"__class__": "Pipeline", "protocol": 2}')), "not a readable"),
    ("skops zip bomb", ("linear_probe_skops",),
     _write("weights", _schema(" " * 30_000_000, zipfile.ZIP_DEFLATED)), "would unpack"),
    ("skops of another object", ("linear_probe_skops",), _write("weights", _another_skops_object),
     "not the classifier pipeline"),
    # Values the schema's types let through (hostile audit): each is refused as fit would.
    ("format version a boolean", "all", _set("format_version", True), "bundle format True"),
    ("format version a float", "all", _set("format_version", 1.0), "bundle format 1.0"),
    ("unknown classifier", ("linear_probe",), _set("params", "classifier", "ridge"),
     "params.classifier is 'ridge', not one of"),
    ("unknown embedding", ("linear_probe",), _set("params", "embedding", "pca"),
     "params.embedding"),
    ("unknown normalisation", ("linear_probe",), _set("params", "normalise", "l1"),
     "params.normalise"),
    ("pca negative", ("linear_probe",), _set("params", "pca", -3), "params.pca"),
    ("unknown pooling", ("linear_probe", "siamese"), _set("params", "pooling", "median"),
     "params.pooling"),
    ("unknown runtime", ("linear_probe", "siamese"), _set("params", "runtime", "fast"),
     "params.runtime"),
    ("batch size zero", "all", _set("params", "batch_size", 0), "batch_size"),
    ("batch size negative", "all", _set("params", "batch_size", -8), "batch_size"),
    ("unknown layer", ("linear_probe", "siamese"), _set("params", "layer", "no_such_layer"),
     "config.json: unknown layer"),
    ("layers other than params.layer", ("linear_probe", "siamese"), _set("layers", ["bn1"]),
     "params.layer gives"),
    ("arch a hub repository", ("linear_probe", "siamese", "finetune"),
     _set("params", "arch", "hf-hub:attacker/evil"), "params.arch names 'hf-hub:attacker/evil'"),
    ("backbone a hub repository", ("linear_probe", "siamese", "finetune"),
     _set("params", "backbone", "hf-hub:attacker/evil"), "params.backbone names"),
    ("backbone a local folder", ("linear_probe",),
     _set("params", "backbone", "efficientnet_lite0+local-dir:/tmp"), "'local-dir:/tmp'"),
    ("strategy disagrees", ("finetune",), _set("strategy", "full"), "disagrees"),
    ("unknown strategy", ("finetune",), _edit_config(_strategy("sideways")), "unknown strategy"),
    ("head disagrees", ("finetune",), _set("params", "head", "mlp"), "disagrees"),
    ("unknown precision", ("finetune",), _set("params", "precision", "fp8"), "precision"),
    ("unknown device", ("distill",), _set("params", "device", "tpu"), "params.device"),
]
PARAMS = [pytest.param(kind, edit, expected, id=f"{kind}: {case}")
          for case, kinds, edit, expected in CASES
          for kind in (WEIGHTS if kinds == "all" else kinds)]


@pytest.mark.parametrize("kind,edit,expected", PARAMS)
def test_a_damaged_or_tampered_bundle_gives_one_bundle_error_line(kind, edit, expected, bundles,
                                                                  tmp_path, capsys):
    folder = shutil.copytree(bundles[kind], tmp_path / "model")
    edit(folder, kind)
    with pytest.raises(BundleError, match=expected) as refused:
        load_bundle(folder)
    assert "\n" not in str(refused.value) and str(folder) in str(refused.value)
    capsys.readouterr()
    assert main(["predict", str(folder), bundles["image"]]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("error: ") and captured.err.count("\n") == 1
    assert "Traceback" not in captured.err + captured.out


@pytest.mark.parametrize("kind", list(WEIGHTS))
def test_untouched_bundles_still_load(kind, bundles, tmp_path):
    folder = shutil.copytree(bundles[kind], tmp_path / "model")
    assert bundle_name_of(load_bundle(folder)) == kind.removesuffix("_skops")


def test_weights_of_another_model_are_refused(bundles, tmp_path):
    folder = shutil.copytree(bundles["finetune"], tmp_path / "model")
    shutil.copy(bundles["distill"] / "student.safetensors", folder / "model.safetensors")
    with pytest.raises(BundleError, match="does not hold the weights of"):
        load_bundle(folder)


def test_a_distilled_student_loads_only_through_the_checked_path(bundles, tmp_path):
    from transferkit.methods.distill import DistilledStudent

    folder = shutil.copytree(bundles["distill"], tmp_path / "model")
    (folder / "student.safetensors").write_bytes(b"garbage")
    with pytest.raises(BundleError, match="not a readable"):
        DistilledStudent.load(folder)
    with pytest.raises(BundleError, match="not a 'distill' one"):
        DistilledStudent.load(bundles["finetune"])
