"""A data set's features read from a feature store instead of computed by a network.

``transferkit fit DATA --features FEATURES_DIR`` trains on the shards ``transferkit
extract`` wrote (:mod:`transferkit.features.shards`). :class:`StoreFeatures` stands in
for the frozen extractor of a linear probe: it matches every image of DATA to a store row
by the SHA-256 of the file's bytes (so a copied, moved or re-listed DATA still matches,
and a changed image does not), then hands out their features either all at once
(:meth:`StoreFeatures.extract`, what the in-memory classifiers take) or one shard at a
time (:meth:`StoreFeatures.stream`, what the streaming classifier and the scoring of the
validation and test images take, so memory stays bounded by a shard).

A store row that records a skipped image (unreadable at extraction) makes that image
skipped here too, with the store's reason, exactly as ``fit`` on the images would skip
it; an image with no row at all means the store does not describe this DATA, and stops
the fit with one line. Nothing here imports a network library.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Iterator

import numpy as np

from transferkit.errors import DataError, ImageDecodeError

# How many paths an error message names before "and N more".
_NAMED = 3


def _named(paths: list[str]) -> str:
    more = f" and {len(paths) - _NAMED} more" if len(paths) > _NAMED else ""
    return ", ".join(paths[:_NAMED]) + more


class StoreFeatures:
    """The features of ``paths`` (DATA's images) in ``store``, matched by content.

    Built once for every image a fit will ask about (train, validation and test): it
    hashes each file and reads the store's ``sha256`` and ``error`` columns (not the
    features) to find each image's row. Offers what a linear probe asks of its extractor:
    ``identity()``, ``layers``, ``dims``, ``dim`` (from the store's manifest, so the
    saved model names the backbone and layers that made the features) and
    ``extract(paths)``, plus :meth:`locate`, :meth:`plan`, :meth:`read` and
    :meth:`stream` for reading one shard at a time.
    """

    def __init__(self, store, paths, data: str | None = None, progress: bool = False):
        from tqdm.auto import tqdm

        from transferkit.features.cache import file_digest
        from transferkit.features.shards import FeatureStoreError

        start = time.perf_counter()
        self.store = store
        self.n_forward_images = 0  # no network runs here
        missing_shards = store.missing()
        if missing_shards:
            raise FeatureStoreError(
                f"{store.root}: {len(missing_shards)} of {store.n_shards} shards are missing "
                "(an interrupted `transferkit extract`?); run the same extract command again "
                "to finish the store.")
        spans = sorted(store.layers.items(), key=lambda item: item[1][0])
        self._dims = {name: int(stop - start_) for name, (start_, stop) in spans}
        digests: dict[str, str] = {}
        self._skipped: dict[str, str] = {}  # path -> why it has no feature
        for path in tqdm([str(p) for p in paths], desc="hashing images", unit="img",
                         disable=not progress, leave=False):
            if path in digests or path in self._skipped:
                continue
            try:
                digests[path] = file_digest(path)
            except ImageDecodeError as exc:  # a FIFO, a device: skipped, as fit skips it
                self._skipped[path] = str(exc)
            except OSError as exc:
                self._skipped[path] = f"{path}: cannot read file ({exc.strerror or exc})"
        wanted = set(digests.values())
        rows: dict[str, tuple[int, int]] = {}
        failures: dict[str, str] = {}
        for index in range(store.n_shards):
            table = store.read_shard(index, ["sha256", "error"])
            for row, (digest, error) in enumerate(zip(table.column("sha256").to_pylist(),
                                                      table.column("error").to_pylist())):
                if digest not in wanted:
                    continue
                if error is None:
                    rows.setdefault(digest, (index, row))  # a duplicate image: its first row
                else:
                    failures.setdefault(digest, error)
        self._where: dict[str, tuple[int, int]] = {}
        absent = []
        for path, digest in digests.items():
            if digest in rows:
                self._where[path] = rows[digest]
            elif digest in failures:
                self._skipped[path] = " ".join(failures[digest].splitlines())
            else:
                absent.append(path)
        if absent:
            where = f" of {data}" if data is not None else ""
            raise DataError(f"{len(absent)} image(s){where} have no row in the feature store "
                            f"{store.root} ({_named(absent)}): they were added or changed "
                            "after it was extracted; run `transferkit extract` on this data "
                            "into a new folder.".replace("\n", " "))
        self.seconds = time.perf_counter() - start

    # -- what a linear probe asks of its extractor ---------------------------------------
    def identity(self) -> dict:
        return self.store.manifest["identity"]

    @property
    def dims(self) -> dict[str, int]:
        return dict(self._dims)

    @property
    def layers(self) -> list[str]:
        return list(self._dims)

    @property
    def dim(self) -> int:
        return int(self.store.dim)

    def locate(self, paths) -> tuple[np.ndarray, list[tuple[str, str]]]:
        """``(ok, skipped)``: which of ``paths`` have a feature, and ``(path, reason)``
        for those whose row records a skipped image."""
        paths = [str(p) for p in paths]
        unknown = [p for p in paths if p not in self._where and p not in self._skipped]
        if unknown:
            raise DataError(f"{len(unknown)} image(s) were not matched to the feature store "
                            f"({_named(unknown)}); only DATA's own images can be read from it.")
        ok = np.array([p in self._where for p in paths], dtype=bool)
        skipped = [(p, self._skipped[p]) for p in paths if p in self._skipped]
        return ok, skipped

    def plan(self, paths) -> list[tuple[int, np.ndarray, np.ndarray]]:
        """``(shard, rows, positions)`` for each shard holding any of ``paths``, in shard
        order: row ``rows[i]`` of that shard is the feature of ``paths[positions[i]]``.
        Skipped images are in no shard's entry. A streamed fit makes the plan once and
        reads it (:meth:`read`) on every pass."""
        paths = [str(p) for p in paths]
        ok, _ = self.locate(paths)
        where = np.array([self._where[paths[i]] for i in np.flatnonzero(ok)],
                         dtype=np.int64).reshape(-1, 2)
        positions = np.flatnonzero(ok)
        order = np.lexsort((where[:, 1], where[:, 0]))
        where, positions = where[order], positions[order]
        shards, starts = np.unique(where[:, 0], return_index=True)
        bounds = list(starts[1:]) + [len(where)]
        return [(int(shard), where[start:stop, 1], positions[start:stop])
                for shard, start, stop in zip(shards, starts, bounds)]

    def read(self, plan) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """``(positions, features)`` for each entry of a :meth:`plan`: ``features[i]``
        (float32) is the feature of the path at ``positions[i]``. One shard's features are
        in memory at a time."""
        from transferkit.features.shards import FeatureStoreError, feature_matrix

        for shard, rows, positions in plan:
            matrix, present = feature_matrix(self.store.read_shard(shard, ["feature"]))
            if not present[rows].all():
                # A row with no error must have a feature; without this check the compact
                # index below handed it its neighbour's feature, silently.
                raise FeatureStoreError(f"{self.store.shard_path(shard)}: a row that records no "
                                        "error has no feature (a damaged shard); delete it and "
                                        "run `transferkit extract` again.")
            compact = np.cumsum(present) - 1  # row of the shard -> row of matrix
            yield positions, matrix[compact[rows]]

    def stream(self, paths) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """:meth:`read` of the :meth:`plan` of ``paths``."""
        return self.read(self.plan(paths))

    def extract(self, paths, progress: bool = False):
        """The features of ``paths`` in one array (an
        :class:`~transferkit.features.extract.ExtractionResult`), read shard by shard."""
        from transferkit.features.extract import ExtractionResult

        start = time.perf_counter()
        paths = [str(p) for p in paths]
        ok, skipped = self.locate(paths)
        row_of = np.cumsum(ok) - 1  # position in paths -> row of the result
        features = np.zeros((int(ok.sum()), self.dim), dtype=np.float32)
        for positions, block in self.stream(paths):
            features[row_of[positions]] = block
        columns, offset = {}, 0
        for name, width in self._dims.items():
            columns[name] = slice(offset, offset + width)
            offset += width
        return ExtractionResult(features, ok, skipped, n_cached=int(ok.sum()), n_computed=0,
                                seconds=time.perf_counter() - start, runtime="feature store",
                                layers=columns)


def settings_from_store(manifest: dict, given: dict, fixed: dict | None = None) -> dict:
    """The extractor options of a fit from a store: the manifest's ``extractor`` settings,
    with ``given`` (the options the user passed) checked against them. ``fixed``: the
    options the method itself fixes (fne's layer), checked the same way. A mismatch is a
    :class:`DataError` in one line: those features were not made that way."""
    from transferkit.backbones.registry import DEFAULT_BACKBONE
    from transferkit.features.extract import DEFAULT_LAYER

    stored = manifest["extractor"]
    wanted = {"backbone": stored.get("backbone") or DEFAULT_BACKBONE,
              "weights": stored.get("weights"), "arch": stored.get("arch"),
              "layer": stored.get("layer") or DEFAULT_LAYER,
              "pooling": stored.get("pooling") or "avg"}
    resolved_layers = [name.split(":")[-1] for name in manifest.get("layers", {})]
    conflicts = []
    for name, value in {**(fixed or {}), **given}.items():
        if name not in wanted or value is None:
            continue
        have = wanted[name]
        if name == "weights":
            same = have is not None and Path(value).expanduser().resolve() == Path(have)
        elif name == "layer":
            asked = [part.strip() for part in str(value).split(",") if part.strip()]
            same = str(value) == str(have) or asked == resolved_layers
        else:
            same = str(value) == str(have)
        if not same:
            conflicts.append(f"{name} {value!r} (the store has {have!r})")
    if conflicts:
        raise DataError(f"the feature store was not extracted with {'; '.join(conflicts)}; drop "
                        "those options (a fit from a store uses its settings) or extract again "
                        "with them.")
    if stored.get("normalise") == "l2":
        # The stored vectors are already L2-normalised; so must be the model's input.
        wanted["normalise"] = "l2"
    return wanted
