"""The method registry: every name builds an estimator, bundle-saving ones round-trip, and
listing methods imports none of them."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from sklearn.base import BaseEstimator

from transferkit.bundle import load_bundle, save_bundle
from transferkit.methods.registry import (
    FAMILIES,
    bundle_name_of,
    create_method,
    list_methods,
    method_spec,
    register_method,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("name", list_methods(include_baselines=True))
def test_every_registered_name_builds_an_unfitted_estimator(name):
    estimator = create_method(name)
    assert isinstance(estimator, BaseEstimator)
    assert method_spec(name).family in FAMILIES
    # scikit-learn's contract: parameters are stored unchanged, nothing learnt yet.
    assert not [key for key in vars(estimator) if key.endswith("_") and not key.startswith("_")]


def test_families_give_the_command_choices():
    assert list_methods(family="classifier") == ["linear_probe", "fne", "finetune"]
    assert list_methods(family="domain-deep") == ["dann", "cdan", "mcc", "shot", "dan", "deep-coral",
                                                  "adda", "domain-confusion", "drcn"]
    assert list_methods(family="domain-shallow") == ["coral", "subspace", "tca", "kmm",
                                                     "reweight"]
    assert list_methods(family="classifier", refits_cheaply=True) == ["linear_probe", "fne"]
    assert list_methods(family="domain-deep", semi_supervised=True) == ["domain-confusion"]
    assert "source-only" in list_methods(family="domain-shallow", include_baselines=True)


def test_unknown_name_is_a_one_line_error():
    from transferkit.errors import TransferkitError

    with pytest.raises(TransferkitError, match="unknown method 'nope'; choose one of"):
        create_method("nope")


def test_listing_methods_imports_no_method_and_no_torch():
    code = ("import sys; from transferkit.methods import list_methods; list_methods(); "
            "import transferkit.cli; transferkit.cli.build_parser(); "
            "print(sorted(m for m in sys.modules if m == 'torch' or "
            "(m.startswith('transferkit.methods.') and m != 'transferkit.methods.registry')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_decorated_class_registers_itself(monkeypatch):
    from transferkit.methods import registry

    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))

    @register_method("my-shallow", family="domain-shallow")
    class MyShallow(BaseEstimator):
        pass

    assert "my-shallow" in list_methods(family="domain-shallow")
    assert method_spec("my-shallow").entry.endswith(":test_a_decorated_class_registers_itself."
                                                    "<locals>.MyShallow")


def _fitted(name, image_folder, tiny_checkpoint):
    path, arch = tiny_checkpoint
    paths = sorted(image_folder.rglob("*.png"))
    labels = np.array([p.parent.name for p in paths])
    if name in ("linear_probe", "fne", "finetune"):
        options = {"weights": str(path), "arch": arch}
        if name == "finetune":
            options.update(epochs=1, batch_size=8, strategy="head", progress=False)
        return create_method(name, **options).fit(paths, labels), paths
    if name == "siamese":
        rng = np.random.default_rng(0)
        features = rng.normal(size=(24, 6)) + np.repeat(np.eye(3, 6) * 4, 8, axis=0)
        estimator = create_method(name, weights=str(path), arch=arch, epochs=2, progress=False)
        return estimator.fit_features(features, np.repeat(["a", "b", "c"], 8)), None
    if name == "distill":
        estimator = create_method(name, epochs=1, progress=False, image_size=16)
        return estimator.fit(paths, labels), paths
    if name == "segment":  # all-background masks: the round trip, not the learning
        from PIL import Image

        masks = image_folder.parent / "masks"
        masks.mkdir(exist_ok=True)
        for i, image in enumerate(paths[:4]):
            Image.new("L", Image.open(image).size).save(masks / f"{i}.png")
        estimator = create_method(name, weights=str(path), arch=arch, epochs=1, image_size=32,
                                  strategy="head", progress=False)
        return estimator.fit(paths[:4], sorted(masks.glob("*.png"))), None
    raise AssertionError(f"no recipe for {name}: add one")


@pytest.mark.parametrize("name", list_methods(saves_bundle=True))
def test_every_bundle_saving_method_round_trips(name, tmp_path, image_folder, tiny_checkpoint):
    estimator, paths = _fitted(name, image_folder, tiny_checkpoint)
    expected = "linear_probe" if name == "fne" else name
    assert bundle_name_of(estimator) == expected
    folder = save_bundle(estimator, tmp_path / "model")
    loaded = load_bundle(folder)
    assert bundle_name_of(loaded) == expected
    if hasattr(estimator, "classes_"):
        assert list(loaded.classes_) == list(estimator.classes_)
    if paths is not None:
        np.testing.assert_allclose(loaded.predict_proba(paths), estimator.predict_proba(paths),
                                   atol=1e-5)
