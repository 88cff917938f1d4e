"""A feature store (``transferkit extract``'s FEATURES_DIR) received from someone else, or
left odd by bad luck: loading it never runs code, a damaged one is refused in one line
(never a traceback, a hang or a silently wrong model), and extract never writes where it
must not.

Most stores here are made through the store's API with toy features (no network); the
two end-to-end checks use the tiny test backbone.
"""

from __future__ import annotations

import csv
import json
import os
import pickle
import shutil
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from builders import write_class_folder
from transferkit.outputs import OutputFolderError
from transferkit.features.shards import FeatureStore, FeatureStoreError, feature_matrix
from transferkit.jobs import extract, fit

pytestmark = pytest.mark.usefixtures("one_torch_thread")

IDENTITY = {"backbone": {"name": "toy"}, "layers": ["a"], "pooling": "avg"}
EXTRACTOR = {"backbone": "toy", "layer": "a", "pooling": "avg"}
LISTING = [(f"{label}/{i}.png", label, None) for label in ("blue", "red") for i in range(4)]
DIM = 4


def make_store(root, listing=LISTING, errors=None, digest=None) -> FeatureStore:
    """A complete toy store: 2 shards of 4 rows, features 1..n; ``digest(path)``: each
    row's sha256 (default: made up)."""
    store = FeatureStore.create(root, identity=IDENTITY, extractor=EXTRACTOR, dim=DIM,
                                layers={"a": (0, DIM)}, listing=listing, classes=None,
                                data="images/", shard_rows=4)
    for index in range(store.n_shards):
        rows = store.chunk(index)
        features = np.arange(len(rows) * DIM, dtype=np.float32).reshape(len(rows), DIM) + 1
        shard_errors = [None if errors is None else errors.get(path) for path, _, _ in rows]
        digests = [digest(path) if digest else f"{hash(path) & 0xffffffff:064x}"
                   for path, _, _ in rows]
        store.write_shard(index, digests, features, shard_errors)
    return store


def rewrite_column(path, name, array) -> None:
    table = pq.read_table(path)
    pq.write_table(table.set_column(table.column_names.index(name), name, array), path)


class _RunsCode:
    """Unpickling it creates ``marker``: proof that loading ran code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_shard_with_rays_pickled_object_column_runs_no_code(tmp_path):
    # The Ray engine's driver imports ray.data, which registers the extension type
    # "ray.data.arrow_pickled_object": each value read from such a column is unpickled.
    # Reading a received store there (extract --engine ray resuming it lists its skipped
    # images from every shard) ran the sender's code.
    pytest.importorskip("ray.data")
    from ray.data._internal.object_extensions.arrow import ArrowPythonObjectType

    store = make_store(tmp_path / "features")
    marker = tmp_path / "code-ran"
    payload = pickle.dumps(_RunsCode(marker))
    for column in ("error", "path", "label"):
        shard = store.shard_path(0)
        backup = shard.read_bytes()
        rewrite_column(shard, column, ArrowPythonObjectType().wrap_array(
            pa.array([payload] * 4, type=pa.large_binary())))
        reads = [lambda: store.read_shard(0)]
        if column != "label":  # what the driver reads: the skipped images' paths and errors
            reads += [store.skipped, lambda: list(store.iter_shards(["path", "error"]))]
        for read in reads:
            with pytest.raises(FeatureStoreError, match=f"its {column} column is extension"):
                read()
            assert not marker.exists(), f"reading a pickled {column} column ran code"
        shard.write_bytes(backup)
    assert store.skipped() == []  # the intact store still reads


@pytest.mark.parametrize("column, array", [
    ("error", pa.array([b"x"] * 4, type=pa.binary())),
    ("sha256", pa.array(range(4), type=pa.int64())),
    ("path", pa.array([["a"]] * 4, type=pa.list_(pa.string()))),
])
def test_a_column_of_another_type_is_refused_in_one_line(tmp_path, column, array):
    # Bytes where the error text goes stopped write_skipped_file with a TypeError traceback.
    store = make_store(tmp_path / "features")
    rewrite_column(store.shard_path(0), column, array)
    with pytest.raises(FeatureStoreError, match=f"its {column} column is .*expected strings"):
        store.read_shard(0)


@pytest.mark.parametrize("bad", ["nan", "inf", "null inside a vector"])
def test_nan_or_infinite_features_are_refused(tmp_path, bad):
    # The in-memory solvers stopped with a traceback; the streamed one (logreg-stream)
    # saved a model fitted to NaN without a word (see the end-to-end test below).
    store = make_store(tmp_path / "features")
    features, _ = feature_matrix(store.read_shard(1))
    values = pa.array(features.reshape(-1).copy(), type=pa.float32())
    if bad == "null inside a vector":
        values = pa.array([None if i == 5 else float(v) for i, v in enumerate(values.to_pylist())],
                          type=pa.float32())
    else:
        raw = values.to_numpy().copy()
        raw[5] = np.nan if bad == "nan" else -np.inf
        values = pa.array(raw, type=pa.float32())
    rewrite_column(store.shard_path(1), "feature", pa.FixedSizeListArray.from_arrays(values, DIM))
    with pytest.raises(FeatureStoreError, match="part-00001.parquet: holds features that are NaN"):
        store.read_shard(1, ["feature"])
    store.read_shard(0, ["feature"])  # the other shard is fine


def test_fit_from_a_store_with_a_nan_feature_stops_in_one_line(tmp_path, tiny_checkpoint):
    data = write_class_folder(tmp_path / "images", per_class=6)
    weights, arch = tiny_checkpoint
    extract.run(data, tmp_path / "features", shard_rows=5, weights=str(weights), arch=arch)
    shard = tmp_path / "features" / "shards" / "part-00000.parquet"
    features, _ = feature_matrix(pq.read_table(shard))
    features = features.copy()
    features[0, :] = np.nan
    rewrite_column(shard, "feature", pa.FixedSizeListArray.from_arrays(
        pa.array(features.reshape(-1), type=pa.float32()), features.shape[1]))
    for n, classifier in enumerate(("logreg", "logreg-stream")):
        out = tmp_path / f"model-{n}"
        with pytest.raises(FeatureStoreError, match="NaN"):
            fit.run(data, out, features=str(tmp_path / "features"), report=False,
                    classifier=classifier)
        assert not out.exists() or not list(out.iterdir())  # no model fitted to NaN is saved


def test_a_huge_declared_n_images_is_refused_at_once(tmp_path):
    # n_shards = 10^9 made missing() stat a billion names (hours) before anything said no.
    store = make_store(tmp_path / "features")
    manifest = json.loads((store.root / "manifest.json").read_text())
    manifest.update(n_images=4 * 10**9, n_shards=10**9)
    (store.root / "manifest.json").write_text(json.dumps(manifest))
    start = time.perf_counter()
    with pytest.raises(FeatureStoreError, match="listing.json: does not match the manifest"):
        FeatureStore.open(store.root).missing()
    assert time.perf_counter() - start < 30  # a guard against a hang, not a timing claim


@pytest.mark.parametrize("where", ["shards/part-00001.parquet", "listing.json", "skipped.txt",
                                   "shards"])
def test_resuming_a_store_with_a_folder_or_file_in_the_wrong_place_is_refused(tmp_path, where):
    # A folder where a shard (or listing.json, skipped.txt) goes made the resumed extract
    # fail with IsADirectoryError after its work; a file named shards, FileExistsError.
    store = make_store(tmp_path / "features")
    target = store.root / where
    keep = None
    if where.startswith("shards/"):
        target.unlink()
        target.mkdir()
        keep = target / "user-notes.txt"
        keep.write_text("mine")
    elif where == "shards":
        shutil.rmtree(target)
        target.write_text("mine")
    else:
        target.unlink(missing_ok=True)
        target.mkdir()
    with pytest.raises(FeatureStoreError, match="is not what a feature store holds there"):
        FeatureStore.create(store.root, identity=IDENTITY, extractor=EXTRACTOR, dim=DIM,
                            layers={"a": (0, DIM)}, listing=LISTING, classes=None,
                            data="images/", shard_rows=4)
    assert keep is None or keep.read_text() == "mine"


def test_skipped_txt_keeps_one_line_per_image_whatever_the_names(tmp_path):
    # A newline in a file name split its line in two (or forged another image's line).
    odd = ["blue/new\nline.png", "blue/tab\there.png", "red/sep\u2028arator.png"]
    listing = [(path, path.split("/")[0], None) for path in odd] + LISTING
    store = make_store(tmp_path / "features", listing=listing,
                       errors={path: f"/data/{path}: not an image" for path in odd})
    lines = store.write_skipped_file().read_text(encoding="utf-8").split("\n")
    assert lines[-1] == "" and len(lines) == len(odd) + 1
    fields = [line.split("\t") for line in lines[:-1]]
    assert [f[0] for f in fields] == ["blue/new\\nline.png", "blue/tab\\there.png",
                                      "red/sep\\u2028arator.png"]
    assert all(len(f) == 2 for f in fields)
    rendered = extract.render({"n_images": 11, "n_shards": 3, "out": "f", "shards_written": 3,
                               "shards_already_done": 0, "images_extracted": 11,
                               "images_per_second": None, "engine": "local",
                               "n_skipped": 1, "skipped_file": "f/skipped.txt",
                               "skipped": [{"path": odd[0], "reason": "bad"}]})
    assert "new\\nline.png\tbad" in rendered and len(rendered.splitlines()) == 3


def test_a_file_name_that_is_not_utf8_is_stored(tmp_path):
    # Linux allows any bytes in a name; Python reads them as lone surrogates, which an
    # Arrow string refuses: write_shard stopped with UnicodeEncodeError, on every rerun.
    odd = os.fsdecode(b"red/caf\xe9.png")
    listing = [*LISTING[:3], (odd, "red", None), *LISTING[4:]]
    store = make_store(tmp_path / "features", listing=listing, errors={odd: f"/x/{odd}: bad"})
    reopened = FeatureStore.open(store.root)
    assert reopened.listing[3][0] == odd  # listing.json keeps the name's bytes
    assert reopened.read_shard(0).column("path").to_pylist()[3] == "red/caf\\xe9.png"
    assert reopened.skipped() == [("red/caf\\xe9.png", "/x/red/caf\\xe9.png: bad")]

    from transferkit.features.ray_engine import _input_blocks

    blocks = _input_blocks(reopened, [0], pool=1)  # the Ray engine's input: bytes
    paths = [p for block in blocks for p in block.column("path").to_pylist()]
    assert paths[3].decode("utf-8", "surrogateescape") == odd


def test_extract_from_a_csv_never_writes_among_the_images_it_lists(tmp_path, tiny_checkpoint):
    # The CSV's folder was checked, not the folders its absolute paths point into.
    images = write_class_folder(tmp_path / "images", per_class=2)
    (tmp_path / "lists").mkdir()
    with open(tmp_path / "lists" / "data.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label"])
        for path in sorted(images.rglob("*.png")):
            writer.writerow([str(path), path.parent.name])
    weights, arch = tiny_checkpoint
    out = images / "red" / "features"
    with pytest.raises(OutputFolderError, match="lies inside the input"):
        extract.run(tmp_path / "lists" / "data.csv", out, weights=str(weights), arch=arch)
    assert not out.exists()


def test_a_row_with_neither_feature_nor_error_is_refused(tmp_path):
    # The row -> feature index skipped null rows, so such a row was silently handed its
    # neighbour's feature (fit trained and scored on it without a word).
    from transferkit.features.cache import file_digest
    from transferkit.features.from_store import StoreFeatures

    data = tmp_path / "images"
    for i, (path, _, _) in enumerate(LISTING):
        (data / path).parent.mkdir(parents=True, exist_ok=True)
        (data / path).write_bytes(f"image {i}".encode())  # hashed, never decoded here
    store = make_store(tmp_path / "features", digest=lambda path: file_digest(data / path))
    shard = store.shard_path(0)
    features, _ = feature_matrix(pq.read_table(shard))
    rewrite_column(shard, "feature", pa.FixedSizeListArray.from_arrays(
        pa.array(features.reshape(-1), type=pa.float32()), DIM,
        mask=pa.array([False, False, True, False])))
    paths = [data / path for path, _, _ in LISTING]
    source = StoreFeatures(FeatureStore.open(store.root), paths)
    with pytest.raises(FeatureStoreError, match="records no error has no feature"):
        source.extract(paths)
    with pytest.raises(FeatureStoreError, match="records no error has no feature"):
        list(source.stream(paths[:3]))
    assert len(source.extract(paths[4:]).features) == 4  # the intact shard still reads


def test_extract_refuses_zero_images_per_shard(tmp_path, tiny_checkpoint):
    # --shard-rows 0 was taken for the default (1024) without a word.
    data = write_class_folder(tmp_path / "images", per_class=2)
    weights, arch = tiny_checkpoint
    with pytest.raises(FeatureStoreError, match="shard_rows must be a positive integer, got 0"):
        extract.run(data, tmp_path / "features", shard_rows=0, weights=str(weights), arch=arch)


@pytest.mark.parametrize("bomb", ["rows", "bytes"])
def test_a_shard_bomb_is_refused_before_its_data_is_loaded(tmp_path, monkeypatch, bomb):
    # The whole table was read, then its row count checked: a shard of a few kB that
    # declares millions of rows (or one huge string) filled memory first.
    store = make_store(tmp_path / "features")
    n = 2_000_000 if bomb == "rows" else 4
    text = "x" if bomb == "rows" else "x" * (8 << 20)  # 8 MB paths, compressed to kB
    table = pa.table({
        "path": pa.array([text] * n, type=pa.string()),
        **{name: pa.array([None] * n, type=pa.string()) for name in ("sha256", "label", "split")},
        "feature": pa.FixedSizeListArray.from_arrays(pa.array(np.ones(n * DIM, np.float32)), DIM),
        "error": pa.array([None] * n, type=pa.string())})
    pq.write_table(table, store.shard_path(0), compression="zstd")
    del table
    assert store.shard_path(0).stat().st_size < 2 << 20

    def no_data_read(*args, **kwargs):
        raise AssertionError("the shard's data was read before its footer was checked")

    monkeypatch.setattr(pq, "read_table", no_data_read)
    match = "holds 2000000 rows where its chunk has 4" if bomb == "rows" else "declares .* bytes"
    with pytest.raises(FeatureStoreError, match=match):
        store.read_shard(0, ["path", "error"])


@pytest.mark.parametrize("name", ["manifest.json", "listing.json"])
def test_a_deeply_nested_json_file_is_refused_in_one_line(tmp_path, name):
    # json.load raises RecursionError (not a ValueError) on "[[[[...]]]]": a traceback.
    store = make_store(tmp_path / "features")
    (store.root / name).write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(FeatureStoreError, match=f"{name}: cannot read the"):
        FeatureStore.open(store.root).missing()
