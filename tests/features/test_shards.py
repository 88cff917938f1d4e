"""The feature-shard store: round trip, atomic shards and resume, refusal of other folders."""

import json
import os

import numpy as np
import pytest

from transferkit.features.shards import (
    FeatureStore,
    FeatureStoreError,
    feature_matrix,
    listing_digest,
)

IDENTITY = {"backbone": {"name": "toy", "weights": "abc"}, "layers": ["a", "b"], "pooling": "avg"}
EXTRACTOR = {"backbone": "toy", "layer": "a,b", "pooling": "avg"}
LISTING = [(f"{label}/{i}.png", label, "train" if i < 3 else "val")
           for label in ("blue", "red") for i in range(5)]


def make_store(root, listing=LISTING, identity=IDENTITY, shard_rows=4, **changes):
    options = dict(identity=identity, extractor=EXTRACTOR, dim=6,
                   layers={"a": slice(0, 4), "b": (4, 6)}, listing=listing,
                   classes=["blue", "red"], data="images/", shard_rows=shard_rows)
    options.update(changes)
    return FeatureStore.create(root, **options)


def shard_inputs(store, index, seed=0, bad=()):
    rows = store.chunk(index)
    features = np.random.default_rng(seed + index).normal(size=(len(rows), 6)).astype(np.float32)
    errors = [f"{path}: cannot decode" if path in bad else None for path, _, _ in rows]
    digests = [None if path in bad else f"{i:064x}" for i, (path, _, _) in enumerate(rows)]
    return digests, features, errors


def test_round_trip_keeps_every_row_in_listing_order(tmp_path):
    store = make_store(tmp_path / "features")
    assert (store.n_shards, store.shard_rows, store.dim) == (3, 4, 6)
    assert [len(store.chunk(i)) for i in range(3)] == [4, 4, 2]
    written = {}
    for index in range(store.n_shards):
        inputs = shard_inputs(store, index, bad={"blue/1.png"})
        store.write_shard(index, *inputs)
        written[index] = inputs
    assert store.complete() and store.missing() == []

    reopened = FeatureStore.open(tmp_path / "features")
    assert reopened.layers == {"a": (0, 4), "b": (4, 6)}
    assert reopened.manifest["listing_digest"] == listing_digest(LISTING)
    tables = list(reopened.iter_shards())
    assert [t.column_names for t in tables] == [["path", "sha256", "label", "split", "feature",
                                                 "error"]] * 3
    assert sum((t.column("path").to_pylist() for t in tables), []) == [p for p, _, _ in LISTING]
    assert sum((t.column("split").to_pylist() for t in tables), []) == [s for _, _, s in LISTING]
    for index, table in enumerate(tables):
        digests, features, errors = written[index]
        matrix, ok = feature_matrix(table)
        np.testing.assert_array_equal(ok, [e is None for e in errors])
        np.testing.assert_array_equal(matrix, features[ok])  # float32 stored exactly
        assert table.column("sha256").to_pylist() == digests
        assert table.column("error").to_pylist() == errors
    assert reopened.skipped() == [("blue/1.png", "blue/1.png: cannot decode")]
    assert (tmp_path / "features" / "skipped.txt").exists() is False
    reopened.write_skipped_file()
    assert (tmp_path / "features" / "skipped.txt").read_text() == \
        "blue/1.png\tblue/1.png: cannot decode\n"
    # Reading a subset of the columns, in the order asked for.
    assert next(reopened.iter_shards(["error", "path"])).column_names == ["error", "path"]


def test_a_failed_write_leaves_no_shard_and_a_restart_writes_only_missing_ones(tmp_path, monkeypatch):
    store = make_store(tmp_path / "features")
    store.write_shard(0, *shard_inputs(store, 0))

    def killed(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        store.write_shard(1, *shard_inputs(store, 1))
    monkeypatch.undo()
    assert store.missing() == [1, 2]
    # What a SIGKILL between writing and renaming leaves: a temporary file of ours.
    leftover = tmp_path / "features" / "shards" / ".part-00001.parquet.k3j_x.tmp"
    leftover.write_bytes(b"half a shard")
    before = (tmp_path / "features" / "shards" / "part-00000.parquet").stat().st_mtime_ns

    resumed = make_store(tmp_path / "features", listing=list(reversed(LISTING)))  # same images
    assert not leftover.exists()
    assert resumed.missing() == [1, 2]
    # The store's own listing fixes the chunks, whatever order the caller lists images in.
    assert resumed.chunk(0) == store.chunk(0)
    for index in resumed.missing():
        resumed.write_shard(index, *shard_inputs(resumed, index))
    assert (tmp_path / "features" / "shards" / "part-00000.parquet").stat().st_mtime_ns == before
    paths = [p for t in resumed.iter_shards(["path"]) for p in t.column("path").to_pylist()]
    assert sorted(paths) == sorted(p for p, _, _ in LISTING)  # each image once


def test_shard_rows_must_match_the_chunk(tmp_path):
    store = make_store(tmp_path / "features")
    digests, features, errors = shard_inputs(store, 2)
    with pytest.raises(ValueError, match="2 images"):
        store.write_shard(2, digests + ["x"], features, errors)
    with pytest.raises(ValueError, match="6 values"):
        store.write_shard(2, digests, features[:, :5], errors)
    with pytest.raises(IndexError):
        store.write_shard(3, digests, features, errors)
    assert store.missing() == [0, 1, 2]


def test_foreign_and_mismatched_folders_are_refused_and_left_untouched(tmp_path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(FeatureStoreError, match="not a feature store"):
        make_store(foreign)
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(FeatureStoreError, match="not a folder"):
        make_store(a_file)

    store_root = tmp_path / "features"
    make_store(store_root)
    (store_root / "notes.txt").write_text("a user's file in a store is kept")
    before = {p.name: p.stat().st_mtime_ns for p in store_root.iterdir()}
    other_identity = {**IDENTITY, "pooling": "max"}
    with pytest.raises(FeatureStoreError, match="another backbone"):
        make_store(store_root, identity=other_identity)
    with pytest.raises(FeatureStoreError, match="another listing"):
        make_store(store_root, listing=LISTING[:-1])
    relabelled = [(p, "red", s) for p, _, s in LISTING]
    with pytest.raises(FeatureStoreError, match="another listing"):
        make_store(store_root, listing=relabelled)
    with pytest.raises(FeatureStoreError, match="another shard size"):
        make_store(store_root, shard_rows=5)
    assert {p.name: p.stat().st_mtime_ns for p in store_root.iterdir()} == before
    make_store(store_root)  # the same store reopens
    assert (store_root / "notes.txt").read_text() == "a user's file in a store is kept"


@pytest.mark.parametrize("tamper, message", [
    (lambda m: "{not json", "cannot read the manifest"),
    (lambda m: json.dumps({**m, "format": "something-else"}), "format"),
    (lambda m: json.dumps({**m, "version": 99}), "version"),
    (lambda m: json.dumps({**m, "dim": "6"}), "'dim'"),
    (lambda m: json.dumps({**m, "n_shards": 7}), "'n_shards'"),
    (lambda m: json.dumps({**m, "layers": {"a": [0, 9]}}), "'layers'"),
    (lambda m: json.dumps({**m, "listing_digest": "0" * 10}), "listing_digest"),
    (lambda m: json.dumps([m]), "not a JSON object"),
])
def test_a_tampered_manifest_is_one_line_error(tmp_path, tamper, message):
    root = tmp_path / "features"
    make_store(root)
    manifest = json.loads((root / "manifest.json").read_text())
    (root / "manifest.json").write_text(tamper(manifest))
    with pytest.raises(FeatureStoreError, match=message) as caught:
        FeatureStore.open(root)
    assert "\n" not in str(caught.value)


def test_a_tampered_listing_or_shard_is_refused(tmp_path):
    root = tmp_path / "features"
    store = make_store(root)
    store.write_shard(0, *shard_inputs(store, 0))
    listing = json.loads((root / "listing.json").read_text())
    listing[0][1] = "red"
    (root / "listing.json").write_text(json.dumps(listing))
    with pytest.raises(FeatureStoreError, match="does not match the manifest"):
        FeatureStore.open(root).chunk(0)
    (root / "listing.json").write_text(json.dumps(listing[1:]))
    with pytest.raises(FeatureStoreError, match="does not match the manifest"):
        FeatureStore.open(root).chunk(0)

    root2 = tmp_path / "features2"
    store = make_store(root2)
    store.write_shard(0, *shard_inputs(store, 0))
    (root2 / "shards" / "part-00000.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(FeatureStoreError, match="not a readable shard") as caught:
        list(FeatureStore.open(root2).iter_shards())
    assert "\n" not in str(caught.value)
    with pytest.raises(FeatureStoreError, match="not a feature store"):
        FeatureStore.open(tmp_path)


def test_a_second_process_cannot_write_a_store_another_one_is_writing(tmp_path):
    # A second extract into the same folder would remove the first run's temporary shard
    # files as "leftovers" and make its rename fail: it is refused, and the file stays.
    import subprocess
    import sys

    store = make_store(tmp_path / "features")
    temporary = tmp_path / "features" / "shards" / ".part-00001.parquet.inflight.tmp"
    temporary.write_bytes(b"being written")
    script = ("import sys; sys.path.insert(0, sys.argv[2]); from test_shards import make_store; "
              "from transferkit.features.shards import FeatureStoreError\n"
              "try:\n    make_store(sys.argv[1])\nexcept FeatureStoreError as e:\n    print(e)")
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "features"),
                           os.path.dirname(__file__)], capture_output=True, text=True, timeout=120)
    assert "another `transferkit extract` is writing this feature store" in done.stdout, done.stderr
    assert temporary.read_bytes() == b"being written"
    store.release()  # the run ends: the next one may write (and clears what is left over)
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "features"),
                           os.path.dirname(__file__)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout == "", done.stderr
    assert not temporary.exists()
