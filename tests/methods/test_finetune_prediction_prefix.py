"""FineTuner predictions through the frozen prefix: the same probabilities, pre-logits and
readable-file mask as the whole network run eagerly, centre crops read from the cache
fit filled, kept out of it with use_cache=False, the cut saved with the model and
refused when edited."""

from __future__ import annotations

import json

import numpy as np
import pytest

import transferkit.features.runtime as runtime_module
from builders import write_class_folder
from transferkit.bundle import load_bundle, save_bundle
from transferkit.errors import BundleError
from transferkit.methods import FineTuner

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def files(root):
    paths = sorted(root.glob("*/*.png"))
    return [str(p) for p in paths], [p.parent.name for p in paths]


def tuner(tiny_checkpoint, **kw):
    path, arch = tiny_checkpoint
    params = dict(weights=str(path), arch=arch, image_size=48, batch_size=8, epochs=4, lr=3e-3,
                  lr_factor=0.5, dropout=0.0, num_workers=0, progress=False, strategy="gradual",
                  k=2, views=2)
    params.update(kw)
    return FineTuner(**params)


@pytest.fixture(scope="module")
def fitted(tiny_checkpoint, tmp_path_factory):
    root = tmp_path_factory.mktemp("colours")
    (x, y), test, (val_x, val_y) = (files(write_class_folder(root / "train", per_class=8)),
                                    files(write_class_folder(root / "test", per_class=5, seed=7)),
                                    files(write_class_folder(root / "val", per_class=3, seed=3)))
    cache = tmp_path_factory.mktemp("cache")
    model = tuner(tiny_checkpoint, cache_dir=str(cache)).fit(x, y, val_x, val_y)
    return model, (x, val_x, test[0])


def block_the_prefix_runtime(monkeypatch):
    """Any prefix activation computed from now on fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError("a prefix activation was computed instead of read from the cache")

    monkeypatch.setattr(runtime_module, "make_runtime", refuse)


def with_unreadable_file_in_the_middle(paths, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image at all")
    middle = len(paths) // 2
    return paths[:middle] + [str(broken)] + paths[middle:], middle


def test_prefix_predictions_and_pre_logits_equal_the_eager_network(fitted, tmp_path):
    model, (_, _, test_x) = fitted
    assert model.prediction_prefix_["cut"].startswith("blocks.")
    assert model._frozen_prefix() is not None  # the prefix path is the one taken
    paths, middle = with_unreadable_file_in_the_middle(test_x, tmp_path)
    for pre_logits in (False, True):
        fast, fast_ok = model._predict_files(paths, pre_logits=pre_logits)
        eager, eager_ok = model._predict_files_eager(paths, pre_logits=pre_logits)
        np.testing.assert_array_equal(fast_ok, eager_ok)
        assert not fast_ok[middle] and fast_ok.sum() == len(test_x)
        assert fast.shape == eager.shape == (len(test_x), model.n_features_ if pre_logits else 2)
        np.testing.assert_allclose(fast, eager, rtol=0, atol=1e-4)
    _, _, skipped = model.predict_paths(paths)
    assert [path for path, _ in skipped] == [paths[middle]]


def test_predicting_the_fitted_images_reads_the_centre_crops_fit_cached(fitted, monkeypatch):
    model, (x, val_x, test_x) = fitted
    reference = model._predict_files_eager(test_x)[0]
    first = model.predict_proba(test_x)  # computes the test images' centre crops once
    block_the_prefix_runtime(monkeypatch)
    np.testing.assert_array_equal(model.predict_proba(test_x), first)
    np.testing.assert_allclose(first, reference, rtol=0, atol=1e-4)
    # Training and validation images: the cut and eval transform fit used, so no new work.
    features, ok = model.embed_paths(x + val_x)
    assert ok.all() and features.shape == (len(x) + len(val_x), model.n_features_)


def test_use_cache_false_computes_without_writing(fitted, tmp_path):
    model, (_, _, test_x) = fitted
    empty, cache_dir = tmp_path / "unused-cache", model.cache_dir
    model.set_params(use_cache=False, cache_dir=str(empty))
    try:
        proba = model.predict_proba(test_x)
    finally:
        model.set_params(use_cache=True, cache_dir=cache_dir)
    assert not empty.exists()
    np.testing.assert_allclose(proba, model._predict_files_eager(test_x)[0], rtol=0, atol=1e-4)


def test_a_loaded_bundle_predicts_through_the_same_prefix(fitted, tmp_path, monkeypatch):
    model, (x, _, test_x) = fitted
    folder = save_bundle(model, tmp_path / "bundle")
    assert json.loads((folder / "config.json").read_text())["prefix"] == model.prediction_prefix_
    loaded = load_bundle(folder)
    assert loaded.prediction_prefix_ == model.prediction_prefix_
    assert loaded._frozen_prefix() is not None
    loaded.set_params(cache_dir=model.cache_dir)  # the cache is machine-local, not saved
    expected = model.predict_proba(test_x)
    block_the_prefix_runtime(monkeypatch)  # the fitted model's cache entries serve it
    np.testing.assert_allclose(loaded.predict_proba(test_x), expected, rtol=0, atol=1e-6)
    np.testing.assert_allclose(loaded.embed_paths(x)[0], model.embed_paths(x)[0], rtol=0, atol=1e-6)


@pytest.mark.parametrize("edit, match", [
    (lambda prefix: {**prefix, "cut": "blocks.0"}, "not the ones fit recorded"),
    (lambda prefix: {**prefix, "cut": "conv_stem"}, "not a layer boundary"),
    (lambda prefix: {**prefix, "cut": "no.such.layer"}, "not a layer boundary"),
    (lambda prefix: {**prefix, "weights": "0" * 64}, "not the ones fit recorded"),
    (lambda prefix: {"cut": prefix["cut"]}, "config.json"),
    (lambda prefix: {**prefix, "cut": 3}, "config.json"),
])
def test_an_edited_prefix_cut_is_refused_in_one_line(fitted, tmp_path, edit, match):
    model, _ = fitted
    folder = save_bundle(model, tmp_path / "bundle")
    config = json.loads((folder / "config.json").read_text())
    config["prefix"] = edit(config["prefix"])
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(BundleError, match=match) as caught:
        load_bundle(folder)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("params", [dict(strategy="full"), dict(views=0)])
def test_no_prefix_when_the_early_layers_trained_or_no_chain_was_used(tiny_checkpoint, fitted,
                                                                      params, tmp_path):
    model = tuner(tiny_checkpoint, epochs=1, cache_dir=str(tmp_path / "cache"), **params)
    x, val_x, test_x = fitted[1]
    y = [p.split("/")[-2] for p in x]
    model.fit(x, y)
    assert model.prediction_prefix_ is None and model._frozen_prefix() is None
    folder = save_bundle(model, tmp_path / "bundle")
    assert "prefix" not in json.loads((folder / "config.json").read_text())
    assert load_bundle(folder).prediction_prefix_ is None


def test_head_strategy_predicts_from_the_pooled_features(tiny_checkpoint, fitted, tmp_path):
    x, val_x, test_x = fitted[1]
    model = tuner(tiny_checkpoint, strategy="head", epochs=2, cache_dir=str(tmp_path / "cache"))
    model.fit(x, [p.split("/")[-2] for p in x])
    assert model.prediction_prefix_["cut"] == "pooled"
    for pre_logits in (False, True):
        fast, ok = model._predict_files(test_x, pre_logits=pre_logits)
        eager, eager_ok = model._predict_files_eager(test_x, pre_logits=pre_logits)
        assert ok.all() and eager_ok.all()
        np.testing.assert_allclose(fast, eager, rtol=0, atol=1e-4)
