"""``transferkit extract`` with the local engine: shards equal to the normal extraction path,
corrupt images listed, a killed run resumed without duplicate rows."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from builders import colour_image, write_class_folder
from transferkit.cli import main
from transferkit.data.dataset import list_image_files
from transferkit.features import FrozenExtractor
from transferkit.features.cache import file_digest
from transferkit.features.shards import FeatureStore, feature_matrix
from transferkit.jobs import extract

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def split_folder(tmp_path):
    """train/ and val/ class folders, with a corrupt image and an empty file among them."""
    root = tmp_path / "images"
    write_class_folder(root / "train", per_class=5)
    write_class_folder(root / "val", per_class=2, seed=1)
    (root / "train" / "red" / "3b.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    (root / "val" / "blue" / "0a.png").write_bytes(b"")
    return root


def tiny(tiny_checkpoint):
    path, arch = tiny_checkpoint
    return {"weights": str(path), "arch": arch}


def store_rows(out):
    store = FeatureStore.open(out)
    rows = {}
    for table in store.iter_shards():
        features, ok = feature_matrix(table)
        vectors = iter(features)
        for path, digest, label, split, error, good in zip(
                *(table.column(c).to_pylist() for c in ("path", "sha256", "label", "split",
                                                        "error")), ok):
            assert path not in rows, f"{path} written twice"
            rows[path] = (digest, label, split, next(vectors) if good else None, error)
    return store, rows


def test_local_shards_equal_the_extraction_path_and_list_corrupt_images(
        split_folder, tmp_path, tiny_checkpoint):
    out = tmp_path / "features"
    summary = extract.run(split_folder, out, shard_rows=4, **tiny(tiny_checkpoint))
    assert (summary["n_images"], summary["n_shards"], summary["shards_written"]) == (16, 4, 4)
    assert {item["path"] for item in summary["skipped"]} == {"train/red/3b.jpg", "val/blue/0a.png"}
    skipped_lines = (out / "skipped.txt").read_text().splitlines()
    assert sorted(line.split("\t")[0] for line in skipped_lines) == ["train/red/3b.jpg",
                                                                     "val/blue/0a.png"]

    store, rows = store_rows(out)
    assert store.manifest["classes"] == ["blue", "red"]
    assert store.manifest["extractor"]["layer"] == "pre_logits"
    paths = list_image_files(split_folder)
    reference = FrozenExtractor.from_name(None, **tiny(tiny_checkpoint),
                                          cache_dir=tmp_path / "other-cache").extract(paths)
    assert store.manifest["identity"] == json.loads(json.dumps(
        FrozenExtractor.from_name(None, **tiny(tiny_checkpoint)).identity()))
    vectors = iter(reference.features)
    for path, ok in zip(paths, reference.ok):
        relative = path.relative_to(split_folder).as_posix()
        digest, label, split, feature, error = rows[relative]
        assert label == path.parent.name and split == path.parts[-3]
        if ok:
            assert error is None and digest == file_digest(path)
            np.testing.assert_allclose(feature, next(vectors), rtol=0, atol=1e-6)
        else:
            assert feature is None and error
    assert len(rows) == len(paths)


def test_unlabelled_folder_and_l2_normalise(tmp_path, tiny_checkpoint):
    folder = tmp_path / "flat"
    folder.mkdir()
    for i in range(3):
        colour_image((200, 40, 40), seed=i).save(folder / f"{i}.png")
    out = tmp_path / "features"
    extract.run(folder, out, normalise="l2", **tiny(tiny_checkpoint))
    store, rows = store_rows(out)
    assert store.manifest["classes"] is None and store.manifest["extractor"]["normalise"] == "l2"
    assert {row[1] for row in rows.values()} == {None} and {row[2] for row in rows.values()} == {None}
    norms = [np.linalg.norm(row[3]) for row in rows.values()]
    np.testing.assert_allclose(norms, 1.0, rtol=1e-5)


KILL_AFTER_FIRST_SHARD = textwrap.dedent("""
    import os, signal, sys
    import transferkit.outputs as outputs
    from transferkit.cli import main

    real_replace = os.replace

    def replace(src, dst, *args, **kwargs):
        # Shard 0 lands; shard 1's temporary file is written, then the process dies (no
        # cleanup runs, as with kill -9) before renaming it.
        if os.path.basename(dst) == "part-00001.parquet":
            os.kill(os.getpid(), signal.SIGKILL)
        return real_replace(src, dst, *args, **kwargs)

    outputs.os.replace = replace
    sys.exit(main(sys.argv[1:]))
""")


def test_a_killed_run_resumes_with_only_the_missing_shards(split_folder, tmp_path,
                                                           tiny_checkpoint):
    out = tmp_path / "features"
    weights, arch = tiny_checkpoint
    args = ["extract", str(split_folder), "--out", str(out), "--weights", str(weights),
            "--arch", arch, "--shard-rows", "4", "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    killed = subprocess.run([sys.executable, "-c", KILL_AFTER_FIRST_SHARD, *args], env=env,
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr
    shards = out / "shards"
    assert sorted(p.name for p in shards.iterdir() if not p.name.startswith(".")) == \
        ["part-00000.parquet"]
    leftovers = [p for p in shards.iterdir() if p.name.startswith(".part-00001")]
    assert leftovers, "the killed run should have left its temporary shard file"
    first = (shards / "part-00000.parquet").stat().st_mtime_ns

    summary = extract.run(split_folder, out, shard_rows=4, use_cache=False,
                          **tiny(tiny_checkpoint))
    assert (summary["shards_written"], summary["shards_already_done"]) == (3, 1)
    assert summary["images_extracted"] == 16 - 4
    assert (shards / "part-00000.parquet").stat().st_mtime_ns == first
    assert not any(p.exists() for p in leftovers)
    _, rows = store_rows(out)  # asserts no path appears twice
    assert len(rows) == 16

    again = extract.run(split_folder, out, shard_rows=4, **tiny(tiny_checkpoint))
    assert (again["shards_written"], again["images_extracted"]) == (0, 0)

    clean = tmp_path / "clean"
    extract.run(split_folder, clean, shard_rows=4, **tiny(tiny_checkpoint))
    _, clean_rows = store_rows(clean)
    for path, (digest, label, split, feature, error) in clean_rows.items():
        assert rows[path][:3] == (digest, label, split) and rows[path][4] == error
        if feature is not None:
            np.testing.assert_allclose(rows[path][3], feature, rtol=0, atol=1e-6)


def test_refusals_are_one_line_errors(split_folder, tmp_path, tiny_checkpoint, capsys):
    weights, arch = tiny_checkpoint
    base = ["extract", str(split_folder), "--weights", str(weights), "--arch", arch]
    inside = split_folder / "train" / "features"
    assert main([*base, "--out", str(inside)]) == 2
    assert not inside.exists()
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep")
    assert main([*base, "--out", str(foreign)]) == 2
    assert main([*base, "--out", str(tmp_path / "f"), "--actors", "2"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 3
    assert "input" in errors[0] and "not a feature store" in errors[1] and "--engine ray" in errors[2]
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]

    out = tmp_path / "features"
    assert main([*base, "--out", str(out), "--quiet"]) == 0
    assert main([*base, "--out", str(out), "--pooling", "max", "--quiet"]) == 2
    assert "another backbone, layer, pooling" in capsys.readouterr().err


def test_the_ray_engine_without_ray_is_a_one_line_install_hint(monkeypatch):
    from transferkit.errors import TransferkitError
    from transferkit.features.ray_engine import import_ray

    monkeypatch.setitem(sys.modules, "ray", None)  # what an absent package looks like
    with pytest.raises(TransferkitError, match=r"pip install 'transferkit\[ray\]'") as caught:
        import_ray()
    assert "\n" not in str(caught.value)


def test_under_a_launcher_only_the_main_process_extracts(split_folder, tmp_path, monkeypatch):
    # torchrun runs the command in every process: a second one would redo the whole
    # extraction into the same store. It returns at once and writes nothing.
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert extract.run(split_folder, tmp_path / "features") == {}
    assert not (tmp_path / "features").exists()
