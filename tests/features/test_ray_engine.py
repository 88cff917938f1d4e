"""The Ray engine on a local 2-CPU Ray instance: the same shards as the local engine,
resume of missing shards only, corrupt images listed."""

import shutil

import numpy as np
import pytest

from builders import write_class_folder
from transferkit.features.shards import FeatureStore, feature_matrix
from transferkit.jobs import extract

ray = pytest.importorskip("ray")

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def ray_instance():
    """One local instance for the module: starting Ray costs seconds."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture
def images(tmp_path):
    root = write_class_folder(tmp_path / "images", per_class=10)
    (root / "red" / "3b.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    return root


def rows_of(out):
    rows = {}
    for table in FeatureStore.open(out).iter_shards():
        features, ok = feature_matrix(table)
        vectors = iter(features)
        for path, digest, error, good in zip(table.column("path").to_pylist(),
                                             table.column("sha256").to_pylist(),
                                             table.column("error").to_pylist(), ok):
            assert path not in rows, f"{path} written twice"
            rows[path] = (digest, error, next(vectors) if good else None)
    return rows


def assert_same_rows(a, b, atol):
    assert a.keys() == b.keys()
    for path in a:
        assert a[path][:2] == b[path][:2]
        if a[path][2] is None:
            assert b[path][2] is None
        else:
            np.testing.assert_allclose(a[path][2], b[path][2], rtol=0, atol=atol)


def test_ray_finishes_a_local_store_with_equal_features_and_lists_corrupt_images(
        ray_instance, images, tmp_path, tiny_checkpoint):
    """One Ray run (actors take seconds to start): it resumes a store the local engine
    left unfinished, so it checks resume, equality with the local engine and a corrupt
    image (red/3b.jpg lies in shard 3) together."""
    weights, arch = tiny_checkpoint
    options = dict(weights=str(weights), arch=arch, shard_rows=4)
    local = extract.run(images, tmp_path / "local", **options)
    assert local["n_shards"] == 6
    local_rows = rows_of(tmp_path / "local")

    resumed = tmp_path / "resumed"
    shutil.copytree(tmp_path / "local", resumed)
    (resumed / "skipped.txt").unlink()
    kept = {p.name: p.stat().st_mtime_ns for p in (resumed / "shards").iterdir()}
    for index in (1, 3):
        (resumed / "shards" / f"part-0000{index}.parquet").unlink()
    summary = extract.run(images, resumed, engine="ray", actors=2, **options)
    assert (summary["shards_written"], summary["shards_already_done"]) == (2, 4)
    assert (summary["images_extracted"], summary["actors"]) == (8, 2)
    for name, mtime in kept.items():
        if name not in ("part-00001.parquet", "part-00003.parquet"):
            assert (resumed / "shards" / name).stat().st_mtime_ns == mtime
    ray_rows = rows_of(resumed)  # asserts that no path appears twice
    assert ray_rows["red/3b.jpg"][2] is None and ray_rows["red/3b.jpg"][1]
    assert [s["path"] for s in summary["skipped"]] == ["red/3b.jpg"]
    assert (resumed / "skipped.txt").read_text().startswith("red/3b.jpg\t")
    assert_same_rows(ray_rows, local_rows, atol=1e-5)
    assert ray.is_initialized()  # an instance the caller started is left running
