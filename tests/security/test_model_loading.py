"""Loading a model never runs code that came with it.

Regression tests for: ``classifier.skops`` trusted every type under ``builtins.``,
``numpy.``, ``scipy.`` and ``sklearn.``, and skops calls a trusted callable with
arguments stored in the file, so a bundle whose schema called ``builtins.exec`` ran it
inside ``transferkit predict``. Each crafted file below is first shown to run its payload
when its types are trusted (a marker file appears); transferkit's loader must refuse it
with a one-line error and the marker must never appear. Every other loader (backbone
weights, training checkpoints, bundle weights, cached ONNX and feature files) is given a
pickle whose ``__reduce__`` would run code.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

import transferkit.features.classifiers as classifiers
from transferkit.bundle import load_bundle, save_bundle
from transferkit.cli import main
from transferkit.errors import BackboneError, BundleError, TransferkitError
from transferkit.features.classifiers import CLASSIFIERS, make_probe_pipeline
from transferkit.methods.linear_probe import TRUSTED_SKOPS_TYPES, LinearProbe, load_classifier
from transferkit.skops_io import skops_io

skops_io()  # skops imported as transferkit imports it (no estimator trusted by default)
import skops.io  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# -- the allow-list -------------------------------------------------------------------
def _types_in(pipeline) -> set[str]:
    return set(skops.io.get_untrusted_types(data=skops.io.dumps(pipeline)))


def _fitted(classifier: str, n_classes: int, per_class: int, **options):
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(n_classes), per_class)
    X = (rng.normal(size=(len(y), 6)) + 2 * y[:, None]).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return make_probe_pipeline(classifier, y, 2, 0, **options).fit(X, y)


def test_the_skops_allow_list_is_exactly_what_fit_can_write(monkeypatch):
    # A pipeline's file holds the union of its steps' types, and each step's types depend
    # on its own option only, so every classifier in every regime (one image per class:
    # no CV search; a few: CV search; 50: k-d tree, MLP early stopping) plus every
    # pre-processing option covers every pipeline. The grid's length changes no type.
    monkeypatch.setattr(classifiers, "C_GRID", classifiers.C_GRID[:2])
    found = set()
    for n_classes in (2, 3):
        for classifier in CLASSIFIERS:
            for per_class in (1, 4, 50):
                if classifier == "svm" and per_class == 1:
                    continue  # refused by make_probe_pipeline: no calibration possible
                found |= _types_in(_fitted(classifier, n_classes, per_class))
    for options in ({"normalise": "l2"}, {"embedding": "fne"}, {"pca": 2}, {"pca": 0.9}):
        found |= _types_in(_fitted("knn", 2, 4, **options))
    assert found == set(TRUSTED_SKOPS_TYPES)
    assert list(TRUSTED_SKOPS_TYPES) == sorted(TRUSTED_SKOPS_TYPES)
    assert not any(name.startswith(("builtins.", "os.", "subprocess.", "numpy.", "scipy."))
                   for name in TRUSTED_SKOPS_TYPES)


# -- crafted classifier files -----------------------------------------------------------
def _json(value) -> dict:
    """A JsonNode: skops always trusts it and rebuilds it with json.loads."""
    return {"__class__": "str", "__module__": "builtins", "__loader__": "JsonNode",
            "content": json.dumps(value), "is_json": True}


def _call(module: str, name: str, *args) -> dict:
    """A ConstructorFromReduceNode: while loading, skops imports ``module.name`` and calls
    it with ``args`` (nodes, or JSON values)."""
    items = [a if isinstance(a, dict) and "__loader__" in a else _json(a) for a in args]
    return {"__class__": name, "__module__": module, "__loader__": "ConstructorFromReduceNode",
            "content": {"__class__": "tuple", "__module__": "builtins",
                        "__loader__": "TupleNode", "content": items}}


def _touch_code(marker: Path) -> str:
    return f"open({str(marker)!r}, 'w').close()"


class Payload:
    """Unpickling this runs ``code``."""

    def __init__(self, code: str):
        self.code = code

    def __reduce__(self):
        return exec, (self.code,)


def _evil_pickle(path: Path, marker: Path, torch_file: bool = False) -> Path:
    import pickle

    payload = {"weight": torch.zeros(2), "x": Payload(_touch_code(marker))}
    if torch_file:
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload))
    return path


def _payloads(marker: Path, tmp_path: Path, monkeypatch) -> dict:
    """name -> (schema node that runs code while loading, the types skops reports)."""
    touch = _touch_code(marker)
    # eval returns its value: a string, so that the node can sit where a name is expected.
    side_effect = _call("builtins", "eval", f"{touch} or 'real'")
    module = tmp_path / "transferkit_payload_module.py"
    module.write_text(touch + "\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, module.stem, raising=False)
    return {
        "builtins.exec": (_call("builtins", "exec", touch), ["builtins.exec"]),
        "builtins.eval": (_call("builtins", "eval", touch), ["builtins.eval"]),
        "builtins.__import__": (_call("builtins", "__import__", module.stem),
                                ["builtins.__import__"]),
        "os.system": (_call("os", "system", f"touch '{marker}'"), ["os.system"]),
        "subprocess.Popen": (_call("subprocess", "Popen", ["touch", str(marker)]),
                             ["subprocess.Popen"]),
        "numpy.load": (_call("numpy", "load", str(_evil_pickle(tmp_path / "x.pkl", marker)),
                             None, True), ["numpy.load"]),
        "scipy.io.savemat": (_call("scipy.io", "savemat", str(marker), {}),
                             ["scipy.io.savemat"]),
        # Callables that run nothing by themselves: the code in their arguments runs as
        # soon as they are trusted, and they are refused even so.
        "builtins.getattr": (_call("builtins", "getattr", side_effect, "upper"),
                             ["builtins.eval", "builtins.getattr"]),
        "operator.attrgetter": ({"__class__": "attrgetter", "__module__": "operator",
                                 "__loader__": "OperatorFuncNode",
                                 "attrs": {"__class__": "tuple", "__module__": "builtins",
                                           "__loader__": "TupleNode", "content": [side_effect]}},
                                ["builtins.eval", "operator.attrgetter"]),
        "functools.partial": ({"__class__": "partial", "__module__": "functools",
                               "__loader__": "PartialNode",
                               "content": {"func": {"__class__": "print", "__module__": "builtins",
                                                    "__loader__": "FunctionNode"},
                                           "args": {"__class__": "tuple", "__module__": "builtins",
                                                    "__loader__": "TupleNode",
                                                    "content": [side_effect]},
                                           "kwds": _json({}), "namespace": _json(None)}},
                              ["builtins.eval", "builtins.print", "functools.partial"]),
        "method": ({"__class__": "eval", "__module__": "builtins", "__loader__": "MethodNode",
                    "content": {"func": "upper", "obj": side_effect}},
                   ["builtins.eval", "builtins.eval.upper"]),
    }


@pytest.fixture(scope="module")
def probe_file(tmp_path_factory) -> Path:
    """A real classifier.skops as a linear probe writes it."""
    path = tmp_path_factory.mktemp("skops") / "classifier.skops"
    skops.io.dump(_fitted("logreg", 2, 1), path)
    return path


def _with_payload(original: Path, node: dict, out: Path) -> Path:
    """``original`` with the pipeline's ``memory`` attribute replaced by ``node``."""
    with zipfile.ZipFile(original) as source, zipfile.ZipFile(out, "w") as target:
        for item in source.namelist():
            data = source.read(item)
            if item == "schema.json":
                schema = json.loads(data)
                schema["content"]["content"]["memory"] = node
                data = json.dumps(schema).encode()
            target.writestr(item, data)
    return out


PAYLOAD_NAMES = ["builtins.exec", "builtins.eval", "builtins.__import__", "os.system",
                 "subprocess.Popen", "numpy.load", "scipy.io.savemat", "builtins.getattr",
                 "operator.attrgetter", "functools.partial", "method"]


@pytest.mark.parametrize("name", PAYLOAD_NAMES)
def test_a_classifier_file_that_would_run_code_is_refused(name, probe_file, tmp_path,
                                                         monkeypatch):
    marker = tmp_path / "ran.mat"  # savemat would add .mat to any other name
    node, types = _payloads(marker, tmp_path, monkeypatch)[name]
    evil = _with_payload(probe_file, node, tmp_path / "classifier.skops")
    assert sorted(set(skops.io.get_untrusted_types(file=evil)) - set(TRUSTED_SKOPS_TYPES)) == types

    # The payload is real: trusting its types makes skops run it while loading.
    loaded = skops.io.load(evil, trusted=list(TRUSTED_SKOPS_TYPES) + types)
    if isinstance(loaded.memory, subprocess.Popen):
        loaded.memory.wait()
    assert marker.exists(), "the crafted payload did not run even when trusted"
    marker.unlink()
    sys.modules.pop("transferkit_payload_module", None)

    with pytest.raises(BundleError) as refused:
        load_classifier(evil)
    message = str(refused.value)
    assert "\n" not in message and all(t in message for t in types)
    assert not marker.exists()


@pytest.mark.parametrize("estimator", ["sklearn.dummy.DummyClassifier",
                                       "sklearn.preprocessing.FunctionTransformer"])
def test_a_scikit_learn_estimator_transferkit_never_writes_is_refused(estimator, tmp_path):
    # skops trusts every scikit-learn estimator by default; transferkit imports skops so
    # that it trusts none beyond its own exact list (transferkit.skops_io). A
    # FunctionTransformer holds a callable: trusted, the file would choose what it calls.
    import importlib

    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    module, name = estimator.rsplit(".", 1)
    X, y = np.random.default_rng(0).normal(size=(20, 4)), np.repeat([0, 1], 10)
    steps = [getattr(importlib.import_module(module), name)()]
    if name != "DummyClassifier":
        steps.append(LogisticRegression())
    path = tmp_path / "classifier.skops"
    skops.io.dump(make_pipeline(*steps).fit(X, y), path)
    with pytest.raises(BundleError, match=f"holds .*{name}.*which transferkit never writes"):
        load_classifier(path)


def test_the_allow_list_holds_whatever_imported_skops_first(tmp_path):
    # skops imported before transferkit trusts every scikit-learn estimator by default;
    # load_classifier still checks every type the file names against its own lists.
    import subprocess
    import sys

    from sklearn.dummy import DummyClassifier
    from sklearn.pipeline import make_pipeline

    X, y = np.random.default_rng(0).normal(size=(20, 4)), np.repeat([0, 1], 10)
    path = tmp_path / "classifier.skops"
    skops.io.dump(make_pipeline(DummyClassifier()).fit(X, y), path)
    script = ("import skops.io, sys\nfrom pathlib import Path\n"
              "from transferkit.methods.linear_probe import load_classifier\n"
              "try:\n    load_classifier(Path(sys.argv[1]))\nexcept Exception as exc:\n"
              "    print(type(exc).__name__, exc)\nelse:\n    print('loaded')")
    result = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True,
                            text=True)
    assert result.stdout.startswith("BundleError") and "DummyClassifier" in result.stdout, \
        result.stdout + result.stderr


def test_an_estimator_carrying_other_types_than_it_is_written_with_is_refused(tmp_path):
    # skops trusts some scikit-learn internals and numpy types by default (loss objects,
    # random generators); no classifier transferkit writes holds them.
    from sklearn._loss.loss import HalfBinomialLoss
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    X, y = np.random.default_rng(0).normal(size=(20, 4)), np.repeat([0, 1], 10)
    pipeline = make_pipeline(LogisticRegression()).fit(X, y)
    pipeline[-1].extra_loss_ = HalfBinomialLoss()
    path = tmp_path / "classifier.skops"
    skops.io.dump(pipeline, path)
    with pytest.raises(BundleError, match="HalfBinomialLoss.*which transferkit never writes"):
        load_classifier(path)


def test_transferkit_imports_skops_without_scikit_learns_estimator_walk():
    # The walk imports every scikit-learn module, sklearn.utils._testing (and pytest) among
    # them; skipped, skops trusts no estimator by default and imports in a second less.
    import subprocess
    import sys

    script = ("import sys\nfrom transferkit.skops_io import skops_io\nskops_io()\n"
              "import skops.io._trusted_types as t\n"
              "print(len(t.SKLEARN_ESTIMATOR_TYPE_NAMES), 'sklearn.utils._testing' in sys.modules, "
              "'torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.stdout.split() == ["0", "False", "False"], result.stderr


def test_a_classifier_file_holding_a_kd_tree_is_refused(tmp_path):
    # A KD-tree is rebuilt from index arrays scikit-learn trusts without bounds checks: a
    # crafted one crashed the process on load (found by a hostile audit). k-NN probes are
    # brute force, so no file transferkit writes holds a tree, and one that does is refused.
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline

    X, y = np.random.default_rng(0).normal(size=(20, 4)), np.repeat([0, 1], 10)
    path = tmp_path / "classifier.skops"
    skops.io.dump(make_pipeline(KNeighborsClassifier(algorithm="kd_tree")).fit(X, y), path)
    with pytest.raises(BundleError, match="KDTree"):
        load_classifier(path)
    assert "algorithm='brute'" in repr(_fitted("knn", 2, 30)[-1])


def _as_a_skops_model(folder: Path) -> None:
    """A default linear probe's folder made to look like one whose classifier is
    ``classifier.skops`` (written next by the caller), as models were saved before
    ``classifier.safetensors`` existed."""
    (folder / "classifier.safetensors").unlink()
    config = json.loads((folder / "config.json").read_text())
    config["files"] = [name.replace("classifier.safetensors", "classifier.skops")
                       for name in config["files"]]
    (folder / "config.json").write_text(json.dumps(config))


def test_a_bundle_with_a_crafted_classifier_is_refused_by_predict(tmp_path, tiny_checkpoint,
                                                                  image_folder, capsys):
    path, arch = tiny_checkpoint
    paths = sorted(str(p) for p in image_folder.glob("*/*.png"))
    probe = LinearProbe(weights=str(path), arch=arch, runtime="eager",
                        cache_dir=str(tmp_path / "c")).fit(paths, [Path(p).parent.name for p in paths])
    folder = save_bundle(probe, tmp_path / "model")
    marker = tmp_path / "ran"
    # The default classifier is saved as classifier.safetensors (numbers only); a model
    # saved before that, or with another classifier, has a classifier.skops instead.
    _as_a_skops_model(folder)
    skops_file = folder / "classifier.skops"
    skops.io.dump(probe.classifier_, tmp_path / "good.skops")
    _with_payload(tmp_path / "good.skops", _call("builtins", "exec", _touch_code(marker)),
                  skops_file)
    assert main(["predict", str(folder), paths[0]]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "builtins.exec" in err
    assert "Traceback" not in err
    assert not marker.exists()


# -- pickles given to every other loader ------------------------------------------------
def test_backbone_weights_that_are_a_code_running_pickle_are_refused(tmp_path):
    marker = tmp_path / "ran"
    evil = _evil_pickle(tmp_path / "evil.pt", marker, torch_file=True)
    torch.load(evil, weights_only=False)  # the payload is real
    assert marker.exists()
    marker.unlink()
    with pytest.raises(BackboneError) as refused:
        from transferkit.backbones import create_backbone

        create_backbone(weights=evil, arch="test_efficientnet")
    message = str(refused.value)
    assert "\n" not in message and "(exec)" in message
    assert "weights_only=False" not in message  # torch's advice would run the payload
    assert not marker.exists()


def test_a_training_checkpoint_with_a_code_running_pickle_is_refused(tmp_path):
    from transferkit.train.checkpoint import CheckpointDir

    checkpoints = CheckpointDir(tmp_path / "run")
    state = {"w": torch.ones(2)}
    folder = checkpoints.save(1, state, None, False, {"step": torch.zeros(1)}, {"epoch": 1})
    assert checkpoints.load() is not None
    marker = tmp_path / "ran"
    _evil_pickle(folder / "state.pt", marker, torch_file=True)
    with pytest.raises(TransferkitError) as refused:
        checkpoints.load()
    assert "\n" not in str(refused.value) and "(exec)" in str(refused.value)
    assert not marker.exists()
    # An edited pointer cannot send the loader to files outside the run folder.
    (tmp_path / "run" / "latest.json").write_text(json.dumps({"checkpoint": "../elsewhere"}))
    with pytest.raises(TransferkitError, match="ckpt-NNNN"):
        checkpoints.load()


def test_a_finished_run_with_a_pickle_for_weights_is_refused(tmp_path):
    from transferkit.train.checkpoint import CheckpointDir

    checkpoints = CheckpointDir(tmp_path / "run")
    (tmp_path / "run").mkdir()
    checkpoints.save_final({"w": torch.ones(2)}, {"epochs": 1})
    marker = tmp_path / "ran"
    _evil_pickle(tmp_path / "run" / "final" / "model.safetensors", marker, torch_file=True)
    with pytest.raises(TransferkitError, match="final"):
        checkpoints.load_final()
    assert not marker.exists()


@pytest.fixture(scope="module")
def weight_bundles(tmp_path_factory, tiny_checkpoint):
    """Small real bundles of the three methods whose learned state is safetensors."""
    from transferkit.methods import FineTuner
    from transferkit.methods.distill import DistilledStudent
    from transferkit.methods.fewshot.siamese import SiameseSimilarity
    from builders import write_class_folder

    root = tmp_path_factory.mktemp("bundles")
    path, arch = tiny_checkpoint
    images = write_class_folder(root / "images", per_class=4)
    paths = sorted(str(p) for p in images.glob("*/*.png"))
    labels = [Path(p).parent.name for p in paths]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tuner = FineTuner(weights=str(path), arch=arch, image_size=32, batch_size=8, epochs=1,
                          strategy="head", val_fraction=0, num_workers=0, progress=False,
                          device="cpu").fit(paths, labels)
        rng = np.random.default_rng(0)
        pixels = rng.integers(0, 255, size=(6, 16, 16, 3)).astype(np.uint8)
        student = DistilledStudent(student="tiny-cnn", image_size=16, epochs=1, batch_size=8,
                                   device="cpu").fit(pixels, np.array(["a", "b"] * 3))
        features = rng.normal(size=(12, 8)).astype(np.float32)
        similarity = SiameseSimilarity(weights=str(path), arch=arch, epochs=1, hidden=8,
                                       embedding_dim=4, device="cpu").fit_features(
            features, np.repeat(np.arange(3), 4))
    return {"model.safetensors": save_bundle(tuner, root / "finetune"),
            "student.safetensors": save_bundle(student, root / "distill"),
            "embedding.safetensors": save_bundle(similarity, root / "siamese")}


@pytest.mark.parametrize("weights_file", ["model.safetensors", "student.safetensors",
                                          "embedding.safetensors"])
def test_bundle_weights_that_are_a_code_running_pickle_are_refused(weights_file, weight_bundles,
                                                                   tmp_path):
    folder = shutil.copytree(weight_bundles[weights_file], tmp_path / "model")
    load_bundle(folder)  # the untouched bundle loads
    marker = tmp_path / "ran"
    _evil_pickle(folder / weights_file, marker, torch_file=True)
    with pytest.raises(BundleError, match=weights_file) as refused:
        load_bundle(folder)
    assert "\n" not in str(refused.value)
    assert not marker.exists()


def test_a_bundle_config_pointing_at_a_pickle_for_backbone_weights_runs_nothing(
        tmp_path, weight_bundles):
    folder = shutil.copytree(weight_bundles["embedding.safetensors"], tmp_path / "model")
    marker = tmp_path / "ran"
    evil = _evil_pickle(tmp_path / "evil.pt", marker, torch_file=True)
    config = json.loads((folder / "config.json").read_text())
    config["params"]["weights"] = str(evil)
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(TransferkitError, match=r"\(exec\)") as refused:
        load_bundle(folder)
    assert "\n" not in str(refused.value)
    assert not marker.exists()


def test_a_cached_onnx_model_that_is_a_pickle_is_exported_again(tmp_path):
    from transferkit.features.runtime import make_runtime

    module = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1),
                                 torch.nn.Flatten())
    marker = tmp_path / "ran"
    onnx_path = _evil_pickle(tmp_path / "model.onnx", marker, torch_file=True)
    runtime = make_runtime(module, (3, 8, 8), "onnx", onnx_path=onnx_path)
    assert runtime.name == "onnx" and not marker.exists()
    assert onnx_path.read_bytes()[:2] != b"PK"  # replaced by a fresh export (not the zip)


def test_a_cached_onnx_model_reading_other_files_is_refused(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    from transferkit.features.runtime import make_runtime

    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"0123456789abcdef")
    weight = helper.make_tensor("w", TensorProto.UINT8, [16], vals=bytes(16), raw=True)
    weight.ClearField("raw_data")
    weight.data_location = TensorProto.EXTERNAL
    for key, value in (("location", str(secret)), ("offset", "0"), ("length", "16")):
        entry = weight.external_data.add()
        entry.key, entry.value = key, value
    graph = helper.make_graph([helper.make_node("Identity", ["w"], ["y"])], "g",
                              [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.UINT8, [16])],
                              initializer=[weight])
    onnx_path = tmp_path / "model.onnx"
    onnx_path.write_bytes(helper.make_model(graph).SerializeToString())
    module = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1),
                                 torch.nn.Flatten())
    runtime = make_runtime(module, (3, 8, 8), "onnx", onnx_path=onnx_path)
    assert runtime.name == "onnx"
    exported = onnx.load(str(onnx_path))
    assert not any(init.external_data for init in exported.graph.initializer)


def test_a_cached_feature_vector_that_is_a_pickle_is_recomputed_not_run(tmp_path):
    from transferkit.features.cache import FeatureCache

    cache = FeatureCache(tmp_path / "cache", {"backbone": "x"}, dim=2)
    key = "ab" + "0" * 62
    cache.put(key, np.zeros(2))
    marker = tmp_path / "ran"
    evil = np.empty(1, dtype=object)
    evil[0] = Payload(_touch_code(marker))
    np.save(cache._path(key), evil, allow_pickle=True)
    with pytest.warns(UserWarning, match="unreadable"):
        assert cache.get(key) is None
    assert not marker.exists()


# -- parts that do not fit together, and what a bundle keeps --------------------------------
@pytest.fixture(scope="module")
def probe_bundle(probe_model):
    """A real linear-probe bundle on the tiny checkpoint, and an image to predict."""
    folder, _, image = probe_model
    return folder, image


def test_a_classifier_whose_inner_steps_disagree_is_refused_at_load(probe_bundle, tmp_path,
                                                                    capsys):
    # The audit's evil_width: the scaler takes the bundle's 256 features, the classifier
    # behind it 10. Loading checked only the ends, so predict died with a traceback.
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    bundle, image = probe_bundle
    folder = shutil.copytree(bundle, tmp_path / "model")
    config = json.loads((folder / "config.json").read_text())
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(40, config["n_features"])), np.arange(40) % 2
    _as_a_skops_model(folder)
    skops.io.dump(Pipeline([("scale", StandardScaler().fit(X)),
                            ("classify", LogisticRegression().fit(X[:, :10], y))]),
                  folder / "classifier.skops")
    with pytest.raises(BundleError, match="steps do not fit together") as refused:
        load_bundle(folder)
    assert "\n" not in str(refused.value)
    capsys.readouterr()
    assert main(["predict", str(folder), image]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err


def test_a_classifier_claiming_more_features_than_its_file_holds_is_refused(tmp_path):
    # The probe row is as wide as the claim: a lie would allocate gigabytes before failing.
    pipeline = _fitted("logreg", 2, 4)
    pipeline[0].n_features_in_ = 10**9  # the pipeline reports its first step's
    path = tmp_path / "classifier.skops"
    skops.io.dump(pipeline, path)
    with pytest.raises(BundleError, match="claims 1000000000 input features"):
        load_classifier(path)


def _fit_with_relative_weights(kind: str, tiny_checkpoint, folder: Path, paths):
    from transferkit.methods.fewshot.siamese import SiameseSimilarity

    path, arch = tiny_checkpoint
    shutil.copy(path, folder / "tiny.safetensors")
    if kind == "siamese":
        rng = np.random.default_rng(0)
        return SiameseSimilarity(weights="tiny.safetensors", arch=arch, epochs=1, hidden=8,
                                 embedding_dim=4, device="cpu").fit_features(
            rng.normal(size=(12, 8)).astype(np.float32), np.repeat(np.arange(3), 4))
    return LinearProbe(weights="tiny.safetensors", arch=arch, runtime="eager").fit(
        paths, [Path(p).parent.name for p in paths])


@pytest.mark.parametrize("kind", ["linear_probe", "siamese"])
def test_a_relative_weights_path_is_saved_absolute(kind, tiny_checkpoint, image_folder, tmp_path,
                                                   monkeypatch):
    # Saved as given, "tiny.safetensors" pointed at a file of whatever folder predict ran in.
    paths = sorted(str(p) for p in image_folder.glob("*/*.png"))
    here, elsewhere = tmp_path / "here", tmp_path / "elsewhere"
    here.mkdir()
    elsewhere.mkdir()
    monkeypatch.chdir(here)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        folder = save_bundle(_fit_with_relative_weights(kind, tiny_checkpoint, here, paths),
                             tmp_path / "model")
    config = json.loads((folder / "config.json").read_text())
    assert config["params"]["weights"] == str(here / "tiny.safetensors")
    monkeypatch.chdir(elsewhere)
    assert load_bundle(folder).weights == str(here / "tiny.safetensors")

    # A bundle saved before keeps its relative path, and says what is missing (in a new
    # process: this one still holds the backbone built from "tiny.safetensors" in here/).
    from transferkit.features.extract import shared_backbone

    config["params"]["weights"] = "tiny.safetensors"
    (folder / "config.json").write_text(json.dumps(config))
    shared_backbone.cache_clear()
    with pytest.raises(BackboneError, match="tiny.safetensors does not exist") as missing:
        load_bundle(folder)
    assert "\n" not in str(missing.value)


def test_numpy_integers_in_params_are_saved_as_json_numbers(tiny_checkpoint, image_folder,
                                                            tmp_path):
    # json's default=str wrote them as "4" and "3", which loading then refused.
    path, arch = tiny_checkpoint
    paths = sorted(str(p) for p in image_folder.glob("*/*.png"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        probe = LinearProbe(weights=str(path), arch=arch, runtime="eager", pca=np.int64(4),
                            cv=np.int64(3), batch_size=np.int32(8)).fit(
            paths, [Path(p).parent.name for p in paths])
    folder = save_bundle(probe, tmp_path / "model")
    params = json.loads((folder / "config.json").read_text())["params"]
    assert (params["pca"], params["cv"], params["batch_size"]) == (4, 3, 8)
    loaded = load_bundle(folder)
    assert (loaded.pca, loaded.cv) == (4, 3)
    np.testing.assert_allclose(loaded.predict_proba(paths[:2]), probe.predict_proba(paths[:2]))


# -- images that cannot be read ---------------------------------------------------------------
def test_fit_with_no_readable_validation_image_stops_with_one_line(tmp_path, tiny_checkpoint,
                                                                   capsys):
    # The audit's tv/: good training images, one garbage .png per validation class. Scoring
    # gave scikit-learn an empty array: "ValueError: Found array with 0 sample(s)".
    from builders import write_class_folder

    path, arch = tiny_checkpoint
    data = tmp_path / "tv"
    write_class_folder(data / "train", per_class=4)
    for name in ("red", "blue"):
        (data / "val" / name).mkdir(parents=True)
        (data / "val" / name / "garbage.png").write_bytes(b"\x89PNG not an image")
    assert main(["fit", str(data), "--out", str(tmp_path / "o_tv"), "--weights", str(path),
                 "--arch", arch, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: none of the 2 validation images could be read")
    assert err.count("\n") == 1 and "Traceback" not in err
    assert str(data / "val" / "red" / "garbage.png") in err
    assert str(data / "val" / "blue" / "garbage.png") in err
    assert not (tmp_path / "o_tv" / "config.json").exists()  # nothing was saved


def test_predicting_only_unreadable_images_gives_no_rows(probe_bundle, tmp_path):
    bundle, _ = probe_bundle
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"not an image")
    proba, ok, skipped = load_bundle(bundle).predict_paths([str(garbage)])
    assert proba.shape == (0, 2) and not ok.any() and skipped[0][0] == str(garbage)
