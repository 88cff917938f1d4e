"""The Ray engine of ``transferkit extract``: frozen features on a Ray Data pipeline.

The listing of the shards still missing becomes a dataset of ``(shard, row, path)`` rows
in blocks of :data:`BATCH` images; ``map_batches`` runs them on a fixed pool of actors,
each holding the network once (ONNX Runtime on one CPU through the same
:class:`~transferkit.features.extract.FrozenExtractor` as the local engine, so the
features are the same; eager PyTorch with one GPU per actor when the cluster has GPUs).
An actor decodes its images itself: with every CPU of the budget held by an actor,
separate decode tasks would have no CPU to run on, and passing decoded float arrays
(600 kB an image at 224 px) through the object store costs more than the decoding.
The driver gathers the rows of each shard and writes it through
:class:`~transferkit.features.shards.FeatureStore` as soon as it is whole, so only the
driver writes FEATURES_DIR and a stopped run loses at most the shards in flight.

On a cluster, DATA must be readable at the same path on every node (a shared file
system), and transferkit installed in every node's Python.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from transferkit.errors import TransferkitError

# Images per actor call (and per block of the input dataset): small enough to spread a
# few thousand images over the actors evenly, large enough that per-call overhead is small.
BATCH = 64


def import_ray():
    """``ray`` with Ray Data, or a one-line error saying how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as exc:
        raise TransferkitError("--engine ray needs Ray Data, which is not installed: "
                               "pip install 'transferkit[ray]'.") from exc
    return ray


def connect(address: str | None, actors: int | None) -> bool:
    """Join the cluster at ``address`` (``auto``, ``ray://host:port``) or start a local
    instance with ``actors`` CPUs (default every core); returns whether this call
    connected (and so should disconnect). An already initialised Ray is used as it is."""
    ray = import_ray()
    if ray.is_initialized():
        return False
    import logging

    options = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    try:
        if address:
            ray.init(address=address, **options)
        else:
            from transferkit.features.runtime import cpu_threads

            ray.init(num_cpus=actors or cpu_threads(), **options)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = f"the Ray cluster at {address!r}" if address else "a local Ray instance"
        raise TransferkitError(f"cannot start or reach {where} ({_first_line(exc)}).") from exc
    return True


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


class ShardExtractor:
    """The Ray Data actor: holds one extractor and turns a batch of ``(shard, row, path)``
    into ``(shard, row, sha256, feature, error)`` (a pyarrow table)."""

    def __init__(self, settings: dict, root: str, normalise: str | None, cache_dir: str | None,
                 device: str, cpus: int):
        from transferkit.features.extract import build_extractor

        self.root = Path(root)
        self.normalise = normalise
        # The per-image cache stays off: the shards are this run's store. With one CPU,
        # one lane and a one-thread ONNX Runtime session, as each local lane runs.
        gpu = device != "cpu"
        self.extractor = build_extractor(**settings, cache_dir=cache_dir, use_cache=False,
                                         runtime="eager" if gpu else "auto",
                                         num_workers=None if gpu else cpus,
                                         onnx_threads=1, device=device)

    def __call__(self, batch):
        import pyarrow as pa

        from transferkit.features.shards import extract_chunk, utf8_text

        # Bytes (see _input_blocks), back to the str Python gave the file name.
        paths = [path.decode("utf-8", "surrogateescape")
                 for path in batch.column("path").to_pylist()]
        digests, features, errors = extract_chunk(
            self.extractor, self.root, [(p, None, None) for p in paths], self.normalise)
        dim = features.shape[1]
        return pa.table({
            "shard": batch.column("shard"), "row": batch.column("row"),
            "sha256": pa.array(digests, type=pa.string()),
            "feature": pa.FixedSizeListArray.from_arrays(pa.array(features.reshape(-1)), dim),
            "error": pa.array([None if e is None else utf8_text(e) for e in errors],
                              type=pa.string())})


def _input_blocks(store, missing: list[int], pool: int):
    """The rows to extract, as pyarrow tables of at most :data:`BATCH` rows each (one
    block each: Ray Data gives a block to one actor at a time), smaller for a small run so
    that every actor gets a few."""
    import math

    import pyarrow as pa

    shards, rows, paths = [], [], []
    for index in missing:
        for row, (path, _, _) in enumerate(store.chunk(index)):
            shards.append(index)
            rows.append(row)
            paths.append(path)
    table = pa.table({"shard": pa.array(shards, type=pa.int64()),
                      "row": pa.array(rows, type=pa.int64()),
                      # Bytes, not strings: a file name need not be valid UTF-8 (Linux
                      # allows any bytes), and an Arrow string must be.
                      "path": pa.array([path.encode("utf-8", "surrogateescape") for path in paths],
                                       type=pa.binary())})
    size = max(1, min(BATCH, math.ceil(table.num_rows / (4 * pool))))
    return [table.slice(first, size) for first in range(0, table.num_rows, size)]


class _ShardAssembler:
    """Gathers the rows of each shard as batches arrive (in any order) and writes a shard
    once all its rows are in: one partly filled shard per shard in flight."""

    def __init__(self, store):
        self.store = store
        self.open: dict[int, dict] = {}
        self.written = 0

    def add(self, table) -> int:
        from transferkit.features.shards import feature_matrix

        features, _ = feature_matrix(table)  # zero rows for skipped images, so all rows
        shards = table.column("shard").to_numpy()
        rows = table.column("row").to_numpy()
        digests = table.column("sha256").to_pylist()
        errors = table.column("error").to_pylist()
        for i, (index, row) in enumerate(zip(shards.tolist(), rows.tolist())):
            entry = self.open.get(index)
            if entry is None:
                n = len(self.store.chunk(index))
                entry = self.open[index] = {"digests": [None] * n, "errors": [None] * n,
                                            "features": np.zeros((n, self.store.dim), np.float32),
                                            "seen": np.zeros(n, bool)}
            entry["digests"][row] = digests[i]
            entry["errors"][row] = errors[i]
            entry["features"][row] = features[i]
            entry["seen"][row] = True
            if entry["seen"].all():
                self.store.write_shard(index, entry["digests"], entry["features"], entry["errors"])
                del self.open[index]
                self.written += 1
        return len(rows)


def write_missing_shards_with_ray(store, root, settings: dict, normalise: str | None = None,
                                  address: str | None = None, actors: int | None = None,
                                  cache_dir: str | None = None, progress: bool = False) -> dict:
    """Extract and write every missing shard of ``store`` on Ray. ``settings``: what
    :func:`~transferkit.features.extract.build_extractor` takes (backbone, weights, arch,
    layer, pooling). ``actors``: the pool's size (default one per CPU, or per GPU when
    the cluster has GPUs). Returns ``{"images", "actors", "startup_seconds", "seconds"}``."""
    from tqdm.auto import tqdm

    start = time.perf_counter()
    missing = store.missing()
    ray = import_ray()
    connected = connect(address, actors)
    try:
        resources = ray.cluster_resources()
        gpus = int(resources.get("GPU", 0))
        device = "cuda" if gpus else "cpu"
        pool = actors or (gpus if gpus else max(1, int(resources.get("CPU", 1))))
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # ours counts images, not Ray's blocks
        import logging

        logging.getLogger("ray.data").setLevel(logging.ERROR)  # per-run INFO lines
        blocks = _input_blocks(store, missing, pool)
        n_images = sum(block.num_rows for block in blocks)
        dataset = ray.data.from_arrow(blocks).map_batches(
            ShardExtractor, batch_size=None, batch_format="pyarrow", zero_copy_batch=True,
            fn_constructor_kwargs={"settings": settings, "root": str(Path(root).resolve()),
                                   "normalise": normalise, "cache_dir": cache_dir,
                                   "device": device, "cpus": 1},
            concurrency=pool, **({"num_gpus": 1} if gpus else {"num_cpus": 1}))
        assembler = _ShardAssembler(store)
        startup = None
        with tqdm(total=n_images, desc=f"extract (ray, {pool} actors)", unit="img",
                  disable=not progress) as bar:
            batches = iter(dataset.iter_batches(batch_size=None, batch_format="pyarrow"))
            while True:
                try:
                    table = next(batches)
                except StopIteration:
                    break
                except (KeyboardInterrupt, TransferkitError):
                    raise
                except Exception as exc:  # an actor failed: say why, in one line
                    raise TransferkitError(f"the Ray pipeline failed: {_cause(exc)}") from exc
                if startup is None:
                    startup = time.perf_counter() - start
                bar.update(assembler.add(table))
        if assembler.open:  # every row came back once, so nothing can be left open
            raise TransferkitError(f"the Ray pipeline returned incomplete shards "
                                   f"{sorted(assembler.open)}; run extract again to redo them.")
        return {"images": n_images, "actors": pool, "startup_seconds": startup or 0.0,
                "seconds": time.perf_counter() - start}
    finally:
        if connected:
            ray.shutdown()


def _cause(exc: BaseException) -> str:
    """The first line of the innermost error (Ray wraps an actor's error in its own)."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException):
        exc = cause
    return f"{type(exc).__name__}: {_first_line(exc)}"
