"""logreg-stream: logreg's model solved over chunks of features, with a chunk in memory at a
time: the same model as the in-memory solve, trained from a store of several shards."""

import tracemalloc
import warnings

import numpy as np
import pytest

from transferkit.features.classifiers import (
    array_chunks,
    fit_logreg_streaming,
    make_probe_pipeline,
)
from transferkit.features.from_store import StoreFeatures
from transferkit.features.shards import FeatureStore
from transferkit.methods.linear_probe import LinearProbe


def _classes(n_classes, n, dim, seed=0, spread=1.0):
    rng = np.random.default_rng(seed)
    means = rng.normal(scale=spread, size=(n_classes, dim))
    y = np.arange(n) % n_classes
    return (means[y] + rng.normal(size=(n, dim))).astype(np.float32), y, means


@pytest.mark.parametrize("n_classes", [2, 5])
def test_the_streamed_solve_finds_the_in_memory_logistic_regression(n_classes):
    X, y, means = _classes(n_classes, 300, 20, spread=0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        whole = make_probe_pipeline("logreg", y).fit(X, y)
    streamed, passes = fit_logreg_streaming(array_chunks(X, y, 37), n_classes)
    # The same objective and solver settings: the same model to the solver's tolerance.
    assert streamed[-1].coef_.shape == whole[-1].coef_.shape
    np.testing.assert_allclose(streamed[0].mean_, whole[0].mean_, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(streamed[0].scale_, whole[0].scale_, rtol=1e-5)
    np.testing.assert_allclose(streamed[-1].coef_, whole[-1].coef_, atol=2e-3)
    held_out = (means[np.arange(200) % n_classes]
                + np.random.default_rng(1).normal(size=(200, 20))).astype(np.float32)
    np.testing.assert_allclose(streamed.predict_proba(held_out), whole.predict_proba(held_out),
                               atol=2e-3)
    assert passes > 2  # one pass for the scaler, then one per function evaluation


def test_l2_normalisation_is_applied_to_every_chunk():
    X, y, _ = _classes(3, 120, 10)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        whole = make_probe_pipeline("logreg", y, normalise="l2").fit(X, y)
    streamed, _ = fit_logreg_streaming(array_chunks(X, y, 50), 3, normalise="l2")
    assert [type(step).__name__ for _, step in streamed.steps] == \
        ["Normalizer", "StandardScaler", "LogisticRegression"]
    np.testing.assert_allclose(streamed.predict_proba(X), whole.predict_proba(X), atol=2e-3)


def _store_of(tmp_path, X, y, shard_rows):
    """A feature store of ``X`` (labels ``y``) with one small file per row standing in for
    an image (rows are matched by content, and nothing here decodes an image)."""
    data = tmp_path / "data"
    paths, listing = [], []
    for i, label in enumerate(y):
        path = data / f"c{label}" / f"{i}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(f"image {i}".encode())
        paths.append(path)
        listing.append((f"c{label}/{i}.bin", f"c{label}", None))
    from transferkit.features.cache import file_digest

    store = FeatureStore.create(tmp_path / "store", identity={"backbone": {"name": "synthetic"}},
                                extractor={"backbone": "synthetic", "weights": None, "arch": None,
                                           "layer": "pre_logits", "pooling": "avg",
                                           "normalise": None},
                                dim=X.shape[1], layers={"pre_logits": (0, X.shape[1])},
                                listing=listing, classes=sorted({f"c{v}" for v in y}),
                                data=str(data), shard_rows=shard_rows)
    for index in range(store.n_shards):
        rows = range(index * shard_rows, min((index + 1) * shard_rows, len(y)))
        store.write_shard(index, [file_digest(paths[i]) for i in rows], X[list(rows)],
                          [None] * len(rows))
    return store, paths


def _streamed_fit(tmp_path, n_shards, shard_rows=64, dim=512, n_classes=4):
    """A logreg-stream fit on a store of ``n_shards`` shards (every fifth image held out):
    (model, source, paths, labels, training mask, traced peak of the fit)."""
    X, y, _ = _classes(n_classes, n_shards * shard_rows, dim, spread=0.15)
    store, paths = _store_of(tmp_path, X, y, shard_rows)
    labels = np.array([f"c{v}" for v in y])
    train = np.arange(len(y)) % 5 != 0
    source = StoreFeatures(store, paths)
    train_paths = [p for p, keep in zip(paths, train) if keep]
    tracemalloc.start()
    try:
        model = LinearProbe(classifier="logreg-stream").use_feature_store(source)
        model.fit(train_paths, labels[train])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return model, source, paths, labels, train, peak


def test_a_store_of_many_shards_trains_logreg_stream_one_shard_at_a_time(tmp_path, monkeypatch):
    rows_read = []
    read_shard = FeatureStore.read_shard

    def counting(self, index, columns=None):
        table = read_shard(self, index, columns)
        if columns is None or "feature" in columns:
            rows_read.append(table.num_rows)
        return table

    monkeypatch.setattr(FeatureStore, "read_shard", counting)
    shard_rows, dim = 64, 512
    small = _streamed_fit(tmp_path / "small", 8, shard_rows, dim)
    rows_read.clear()
    streamed, source, paths, labels, train, peak = _streamed_fit(tmp_path / "large", 24,
                                                                 shard_rows, dim)
    # Never more than a shard of features read at once, every pass over all of them...
    assert max(rows_read) <= shard_rows
    assert len(rows_read) == 24 * (1 + streamed.stream_passes_)
    # ...so three times the images cost far less than their features (what grows is the
    # list of paths the caller passes): memory does not grow with the training features.
    extra_features = (train.sum() - small[4].sum()) * dim * 4
    assert peak - small[5] < 0.5 * extra_features

    train_paths = [p for p, keep in zip(paths, train) if keep]
    in_memory = LinearProbe().use_feature_store(source).fit(train_paths, labels[train])
    held_out = [p for p, keep in zip(paths, train) if not keep]
    truth = labels[~train]
    accuracy = {name: float(np.mean(model.predict(held_out) == truth))
                for name, model in (("streamed", streamed), ("in memory", in_memory))}
    assert 0.6 < accuracy["in memory"] < 0.99  # not trivial: regularisation matters
    assert accuracy["streamed"] >= accuracy["in memory"] - 0.02
    np.testing.assert_allclose(streamed.classifier_[-1].coef_, in_memory.classifier_[-1].coef_,
                               atol=2e-3)
    # Scoring from a store is also one shard at a time.
    rows_read.clear()
    proba, ok, skipped = streamed.predict_paths(held_out)
    assert ok.all() and not skipped and proba.shape == (len(held_out), 4)
    assert max(rows_read) <= shard_rows
    assert streamed.describe_classifier().startswith("logreg-stream (C=0.1, L-BFGS over chunks, ")


def test_pca_and_fne_are_refused_by_the_streamed_solve(tmp_path):
    X, y, _ = _classes(2, 40, 8)
    with pytest.raises(Exception, match="need every training feature in memory"):
        LinearProbe(classifier="logreg-stream", pca=3).fit_features(X, y)
