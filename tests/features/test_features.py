"""Frozen feature extraction: the cache, the fast path, bad files, the sklearn transformer."""

import shutil

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline

from builders import write_class_folder
from transferkit.backbones import create_backbone
from transferkit.data.dataset import list_image_files
from transferkit.errors import DataError
from transferkit.features import FeatureExtractor, FrozenExtractor
from transferkit.features.runtime import MATCH_TOLERANCE


@pytest.fixture(scope="module")
def tiny_backbone(tiny_checkpoint):
    path, arch = tiny_checkpoint
    return create_backbone(weights=path, arch=arch)


def _paths(folder):
    return list_image_files(folder)


def test_second_extraction_is_a_cache_hit_with_no_forward_pass(tiny_backbone, image_folder, tmp_path):
    paths = _paths(image_folder)
    first = FrozenExtractor(tiny_backbone, cache_dir=tmp_path / "c")
    cold = first.extract(paths)
    assert first.n_forward_images == len(paths) and cold.n_cached == 0
    second = FrozenExtractor(tiny_backbone, cache_dir=tmp_path / "c")
    warm = second.extract(paths)
    assert second.n_forward_images == 0 and warm.n_cached == len(paths)
    np.testing.assert_array_equal(cold.features, warm.features)
    # Content-addressed: a renamed copy of a seen image is still a hit.
    shutil.copy(paths[0], tmp_path / "renamed.png")
    second.extract([tmp_path / "renamed.png"])
    assert second.n_forward_images == 0


def test_the_same_extractor_reads_each_entry_from_disk_once(tiny_backbone, image_folder,
                                                            tmp_path, monkeypatch):
    paths = _paths(image_folder)
    FrozenExtractor(tiny_backbone, cache_dir=tmp_path / "c").extract(paths)
    warm = FrozenExtractor(tiny_backbone, cache_dir=tmp_path / "c")
    loads = []
    real_load = np.load
    monkeypatch.setattr(np, "load", lambda *a, **k: loads.append(1) or real_load(*a, **k))
    first = warm.extract(paths)
    assert len(loads) == len(paths)
    again = warm.extract(paths[::-1])  # fit's report reads the training features again
    assert len(loads) == len(paths) and warm.n_forward_images == 0
    np.testing.assert_array_equal(again.features, first.features[::-1])
    again.features[0] += 1  # the caller's array is its own: the remembered rows stay
    np.testing.assert_array_equal(warm.extract(paths).features, first.features)


def test_the_caches_of_one_extractor_share_one_memory_budget(tmp_path):
    from transferkit.features.cache import MEMO_ENTRY_BYTES, FeatureCache, MemoBudget

    budget = MemoBudget(limit=3 * (4 * 8 + MEMO_ENTRY_BYTES))  # three 8-float vectors
    caches = [FeatureCache(tmp_path, {"layer": name}, dim=8, memo=budget) for name in "ab"]
    for cache in caches:
        for key in ("k1", "k2"):
            cache.put(key * 32, np.full(8, 1.0, dtype=np.float32))
            cache.get(key * 32)
    assert sum(len(cache._memo) for cache in caches) == 3 and budget.left == 0
    # A put replaces what a get of the same key gives, memory returned to the budget.
    caches[0].put("k1" * 32, np.full(8, 2.0, dtype=np.float32))
    assert budget.left > 0 and caches[0].get("k1" * 32)[0] == 2.0


def test_cache_is_keyed_by_weights(tiny_backbone, image_folder, tmp_path):
    import torch

    paths = _paths(image_folder)[:3]
    FrozenExtractor(tiny_backbone, cache_dir=tmp_path / "c").extract(paths)
    other = create_backbone(weights=tiny_backbone.source.split(":", 1)[1], arch=tiny_backbone.arch)
    with torch.no_grad():
        other.model.conv_stem.weight.add_(0.1)
    from transferkit.backbones.registry import state_dict_digest

    other.weights_digest = state_dict_digest(other.model)
    changed = FrozenExtractor(other, cache_dir=tmp_path / "c")
    changed.extract(paths)
    assert changed.n_forward_images == 3


def test_damaged_cache_entry_is_recomputed(tiny_backbone, image_folder, tmp_path):
    paths = _paths(image_folder)[:2]
    extractor = FrozenExtractor(tiny_backbone, cache_dir=tmp_path / "c")
    reference = extractor.extract(paths).features
    entries = sorted(extractor.cache.folder.glob("*/*.npy"))
    assert len(entries) == 2
    np.save(entries[0], np.zeros(7, dtype=np.float32))      # wrong shape
    entries[1].write_bytes(b"truncated")                      # unreadable
    again = FrozenExtractor(tiny_backbone, cache_dir=tmp_path / "c")
    with pytest.warns(UserWarning, match="recomputing"):
        result = again.extract(paths)
    assert again.n_forward_images == 2
    np.testing.assert_allclose(result.features, reference, atol=MATCH_TOLERANCE)
    assert not list(extractor.cache.folder.glob("*/.*.tmp"))  # atomic writes leave no debris


def test_corrupt_files_are_skipped_and_named(tiny_backbone, image_folder):
    (image_folder / "red" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    (image_folder / "blue" / "readme.txt").write_text("not an image")
    paths = _paths(image_folder)
    result = FrozenExtractor(tiny_backbone, num_workers=2, batch_size=4).extract(paths)
    skipped = {p.split("/")[-1] for p, _ in result.skipped}
    assert skipped == {"broken.jpg", "readme.txt"}
    assert result.ok.sum() == len(paths) - 2 == len(result.features)
    assert not result.ok[paths.index(image_folder / "red" / "broken.jpg")]


def test_fast_path_matches_eager_on_real_weights(image_folder, tmp_path):
    backbone = create_backbone("efficientnet_lite0")
    paths = _paths(image_folder)[:6]
    fast = FrozenExtractor(backbone, cache_dir=tmp_path / "a", runtime="onnx").extract(paths)
    eager = FrozenExtractor(backbone, cache_dir=tmp_path / "b", runtime="eager").extract(paths)
    assert fast.runtime == "onnx" and eager.runtime == "eager"
    assert fast.features.shape == (6, 1280)
    assert np.abs(fast.features - eager.features).max() <= MATCH_TOLERANCE


def test_feature_extractor_composes_with_pipeline_and_grid_search(tiny_checkpoint, tmp_path):
    path, arch = tiny_checkpoint
    root = write_class_folder(tmp_path / "imgs", per_class=6)
    paths = np.array([str(p) for p in _paths(root)])
    labels = np.array([p.split("/")[-2] for p in paths])
    pipeline = make_pipeline(FeatureExtractor(weights=str(path), arch=arch),
                             LogisticRegression(max_iter=2000))
    search = GridSearchCV(pipeline, {"logisticregression__C": [0.1, 1.0]}, cv=2).fit(paths, labels)
    assert search.best_score_ > 0.8  # colours are trivially separable
    assert search.predict(paths[:2]).shape == (2,)
    with pytest.raises(DataError, match="could not be read"):
        (tmp_path / "bad.png").write_bytes(b"bad")
        search.best_estimator_.predict([str(tmp_path / "bad.png")])


def test_named_extractor_full_hit_builds_no_network(tiny_checkpoint, image_folder, tmp_path, monkeypatch):
    from safetensors.torch import load_file, save_file

    import transferkit.features.extract as extract

    weights = tmp_path / "w.safetensors"
    shutil.copy(tiny_checkpoint[0], weights)
    paths = _paths(image_folder)
    first = FrozenExtractor.from_name(weights=weights, arch=tiny_checkpoint[1], cache_dir=tmp_path / "c")
    reference = first.extract(paths).features
    extract.shared_backbone.cache_clear()

    def no_backbone(*args):
        raise AssertionError("the backbone was built for a full cache hit")

    monkeypatch.setattr(extract, "shared_backbone", no_backbone)
    warm = FrozenExtractor.from_name(weights=weights, arch=tiny_checkpoint[1], cache_dir=tmp_path / "c")
    np.testing.assert_array_equal(warm.extract(paths).features, reference)
    monkeypatch.undo()

    # New weights in the same file: the memo no longer matches, so features are recomputed.
    state = load_file(str(weights))
    state["conv_stem.weight"] = state["conv_stem.weight"] * 1.5
    save_file(state, str(weights))
    changed = FrozenExtractor.from_name(weights=weights, arch=tiny_checkpoint[1], cache_dir=tmp_path / "c")
    result = changed.extract(paths)
    assert changed.n_forward_images == len(paths)
    assert np.abs(result.features - reference).max() > 1e-3
