"""Feature shards: frozen features of a whole data set as a folder of Parquet files.

Written by ``transferkit extract`` (local or Ray engine), read by ``transferkit fit
--features``. The folder (a *store*)::

    FEATURES_DIR/
      manifest.json              what the features are (schema-checked; written first)
      listing.json               the fixed listing [[path, label, split], ...] cut into shards
      shards/part-00000.parquet  rows of listing[0 : shard_rows], then the next chunk...
      skipped.txt                unreadable images, one "path<TAB>reason" a line (at the end)

A shard holds exactly the listing chunk it is named after, every image once, skipped or
not, so a shard that exists is a shard that is done. Shards are written to a temporary
name and moved into place (``os.replace``): a killed run leaves no partial shard, and a
restart writes only the missing ones, never a duplicate row. Columns, in order: ``path``
(relative to DATA, POSIX separators), ``sha256`` (of the file's bytes; rows are matched
to images by content, so a moved copy of DATA still matches), ``label``, ``split``,
``feature`` (fixed-size list of float32, null for a skipped image) and ``error`` (null,
or why the image was skipped).

A store is refused rather than mixed: another extractor's features or another listing
of the data never go into it, and a folder that is not a store is never written into.
Only numpy and the standard library are imported here; pyarrow is imported when a shard
is read or written.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from transferkit.errors import DataError
from transferkit.outputs import write_bytes_atomic, write_json_atomic

SHARD_ROWS = 1024
FORMAT = "transferkit-features"
VERSION = 1
MANIFEST = "manifest.json"
LISTING = "listing.json"
SHARDS = "shards"
SKIPPED = "skipped.txt"
COLUMNS = ("path", "sha256", "label", "split", "feature", "error")
SPLITS = ("train", "val", "test")
# write_bytes_atomic's temporary names for shard files: ".part-00000.parquet.<random>.tmp".
# Only a run killed between creating and renaming one leaves it behind; it is ours.
_LEFTOVER = re.compile(r"^\.part-\d+\.parquet\..+\.tmp$")

ListingRow = tuple[str, "str | None", "str | None"]
# A shard row's text (path, digest, label, split, error) takes at most this many bytes,
# generously: a path is at most 4096 bytes on Linux, an error names it and says why.
_TEXT_BYTES_PER_ROW = 64 * 1024
# Control characters (a newline, a tab) are legal in file names; written raw into the
# line-per-image skipped.txt they would split one image's line in two, or forge a line.
# (str.splitlines also splits at U+0085, U+2028 and U+2029.)
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


class FeatureStoreError(DataError):
    """A feature store is missing, damaged, or holds other features than asked for."""


def escape_control(text: str) -> str:
    """``text`` with each control character written as Python escapes it (a newline as
    ``\\n``, a tab as ``\\t``): one line, one column, for skipped.txt and the terminal."""
    return _CONTROL.sub(lambda found: repr(found.group())[1:-1], text)


def utf8_text(text: str) -> str:
    """``text`` as valid UTF-8: a file name that is not (Linux allows any bytes; Python
    reads them as lone surrogates) has its odd bytes written as ``\\xff``. Parquet
    strings must be UTF-8, and the shard's path, label and error columns are for people
    (rows are matched by sha256, chunks are cut from listing.json, which keeps the bytes)."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def shard_name(index: int) -> str:
    return f"part-{index:05d}.parquet"


def listing_digest(listing: Sequence[ListingRow]) -> str:
    """SHA-256 of the listing's sorted ``path<TAB>label<TAB>split`` lines: the same images
    with the same labels and splits give the same digest whatever order they came in."""
    lines = sorted("\t".join("" if part is None else str(part) for part in row)
                   for row in listing)
    return hashlib.sha256("\n".join(lines).encode("utf-8", "surrogateescape")).hexdigest()


def _plain(value):
    """``value`` as JSON gives it back (tuples become lists): what a manifest compares."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def _check_listing(listing) -> list[ListingRow]:
    rows = []
    for row in listing:
        if not (isinstance(row, (list, tuple)) and len(row) == 3):
            raise FeatureStoreError(f"a listing row must be (path, label, split), got {row!r}.")
        path, label, split = row
        if not isinstance(path, str) or not path:
            raise FeatureStoreError(f"a listing path must be a non-empty string, got {path!r}.")
        if label is not None and not isinstance(label, str):
            raise FeatureStoreError(f"a listing label must be a string or null, got {label!r}.")
        if split is not None and split not in SPLITS:
            raise FeatureStoreError(f"a listing split must be one of {SPLITS} or null, "
                                    f"got {split!r}.")
        rows.append((path, label, split))
    if not rows:
        raise FeatureStoreError("the listing is empty: there are no images to extract.")
    return rows


def _is_int(value, low: int = 0) -> bool:
    return type(value) is int and value >= low


def _manifest_problem(manifest) -> str | None:
    """What is wrong with a manifest, or None when it follows the schema."""
    if not isinstance(manifest, dict):
        return "it is not a JSON object"
    if manifest.get("format") != FORMAT:
        return f"its format is {manifest.get('format')!r}, not {FORMAT!r}"
    if manifest.get("version") != VERSION or type(manifest.get("version")) is not int:
        return f"its version is {manifest.get('version')!r}; this transferkit reads {VERSION}"
    for key in ("identity", "extractor", "layers"):
        if not isinstance(manifest.get(key), dict):
            return f"{key!r} is missing or not an object"
    for key, low in (("dim", 1), ("shard_rows", 1), ("n_images", 1), ("n_shards", 1)):
        if not _is_int(manifest.get(key), low):
            return f"{key!r} is missing or not an integer >= {low}"
    if manifest["n_shards"] != math.ceil(manifest["n_images"] / manifest["shard_rows"]):
        return "'n_shards' does not match 'n_images' and 'shard_rows'"
    stops = []
    for name, span in manifest["layers"].items():
        if not (isinstance(span, list) and len(span) == 2 and all(_is_int(v) for v in span)
                and span[0] < span[1]):
            return f"layer {name!r} has no valid [start, stop] column range"
        stops.append(tuple(span))
    if not stops or max(stop for _, stop in stops) != manifest["dim"]:
        return "'layers' do not cover 'dim' columns"
    digest = manifest.get("listing_digest")
    if not (isinstance(digest, str) and re.fullmatch(r"[0-9a-f]{64}", digest)):
        return "'listing_digest' is not a SHA-256 hex digest"
    classes = manifest.get("classes")
    if classes is not None and not (isinstance(classes, list)
                                    and all(isinstance(c, str) for c in classes)):
        return "'classes' is neither null nor a list of names"
    if not isinstance(manifest.get("data"), str):
        return "'data' is missing or not a string"
    return None


def _read_json(path: Path, what: str):
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError, RecursionError) as exc:  # RecursionError: "[[[[..." nested deep
        raise FeatureStoreError(f"{path}: cannot read the {what} ({exc}); this feature store is "
                                "damaged: extract again into a new folder.") from exc


# Writer locks this process holds: real path of a store → [descriptor, holders].
_WRITER_LOCKS: dict[str, list] = {}


class FeatureStore:
    """One folder of feature shards (see the module docstring). Build it with
    :meth:`create` (to write) or :meth:`open` (to read)."""

    def __init__(self, root: Path, manifest: dict, listing: list[ListingRow] | None = None):
        self.root = Path(root)
        self.manifest = manifest
        self.dim: int = manifest["dim"]
        self.layers: dict[str, tuple[int, int]] = {k: tuple(v) for k, v in manifest["layers"].items()}
        self.n_shards: int = manifest["n_shards"]
        self.shard_rows: int = manifest["shard_rows"]
        self.n_images: int = manifest["n_images"]
        self._listing = listing

    # -- opening -------------------------------------------------------------------------

    @classmethod
    def open(cls, root) -> "FeatureStore":
        """The store in ``root``; :class:`FeatureStoreError` if ``root`` holds none or a
        damaged one."""
        root = Path(root)
        if not root.is_dir():
            raise FeatureStoreError(f"{root}: no such folder; give a folder written by "
                                    "`transferkit extract`.")
        if not (root / MANIFEST).is_file():
            raise FeatureStoreError(f"{root}: not a feature store (no {MANIFEST}); give a folder "
                                    "written by `transferkit extract`.")
        manifest = _read_json(root / MANIFEST, "manifest")
        problem = _manifest_problem(manifest)
        if problem is not None:
            raise FeatureStoreError(f"{root / MANIFEST}: not a valid feature-store manifest "
                                    f"({problem}); extract again into a new folder.")
        return cls(root, manifest)

    @classmethod
    def create(cls, root, *, identity: dict, extractor: dict, dim: int,
               layers: dict, listing, classes, data, shard_rows: int = SHARD_ROWS) -> "FeatureStore":
        """A store in ``root`` for these features of ``listing`` (``(path, label, split)``
        rows in a fixed order): created when ``root`` is new or empty, reopened (to resume)
        when it holds a store of the same identity, extractor settings, shard size and
        listing; anything else is refused with :class:`FeatureStoreError`."""
        root = Path(root)
        listing = _check_listing(listing)
        if not _is_int(shard_rows, 1):
            raise FeatureStoreError(f"shard_rows must be a positive integer, got {shard_rows!r}.")
        spans = {}
        for name, span in layers.items():
            if isinstance(span, slice):
                span = (span.start, span.stop)
            spans[str(name)] = [int(span[0]), int(span[1])]
        manifest = _plain({
            "format": FORMAT, "version": VERSION, "identity": identity, "extractor": extractor,
            "dim": int(dim), "layers": spans, "shard_rows": int(shard_rows),
            "n_images": len(listing), "n_shards": math.ceil(len(listing) / shard_rows),
            "listing_digest": listing_digest(listing),
            "classes": None if classes is None else [str(c) for c in classes],
            "data": str(data)})
        problem = _manifest_problem(manifest)
        if problem is not None:  # a caller's mistake (dim 0, layers not covering dim...)
            raise FeatureStoreError(f"cannot create a feature store: {problem}.")
        if root.is_symlink() or (root.exists() and not root.is_dir()):
            raise FeatureStoreError(f"{root}: exists and is not a folder; give a new or empty "
                                    "folder for the features (nothing was changed).")
        entries = sorted(p.name for p in root.iterdir()) if root.is_dir() else []
        if entries:
            store = cls._reopen(root, manifest, entries)
        else:
            root.mkdir(parents=True, exist_ok=True)
            write_json_atomic(root / MANIFEST, manifest)  # first: it marks the folder as ours
            store = cls(root, manifest, listing)
        store._hold_writer_lock()
        store._write_listing_if_missing(listing)
        (root / SHARDS).mkdir(exist_ok=True)
        store._remove_leftover_temporaries()
        return store

    def _hold_writer_lock(self) -> None:
        """One writing process per store: a second ``extract`` into the same folder while
        the first runs would remove the first one's temporary shard files as leftovers.
        The lock is an advisory ``flock`` on the manifest, taken once per process and
        store (objects of one process share it) and released by the OS when the process
        ends, however it ends."""
        import fcntl

        key = os.path.realpath(self.root)
        if key in _WRITER_LOCKS:
            _WRITER_LOCKS[key][1] += 1
        else:
            flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
            try:
                handle = os.open(self.root / MANIFEST, flags)
            except OSError as exc:
                raise FeatureStoreError(f"{self.root / MANIFEST}: cannot open it "
                                        f"({exc.strerror}); this feature store is damaged: "
                                        "extract again into a new folder.") from exc
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(handle)
                raise FeatureStoreError(f"{self.root}: another `transferkit extract` is writing "
                                        "this feature store now; wait for it to finish "
                                        "(nothing was changed).") from exc
            _WRITER_LOCKS[key] = [handle, 1]
        self._writer_lock = key

    def release(self) -> None:
        """Let another process write (the end of an ``extract`` run)."""
        key, self._writer_lock = getattr(self, "_writer_lock", None), None
        held = _WRITER_LOCKS.get(key) if key is not None else None
        if held is not None:
            held[1] -= 1
            if held[1] == 0:
                del _WRITER_LOCKS[key]
                os.close(held[0])  # closing the descriptor drops its flock

    def __del__(self):
        self.release()

    @classmethod
    def _reopen(cls, root: Path, wanted: dict, entries: list[str]) -> "FeatureStore":
        if MANIFEST not in entries:
            shown = ", ".join(entries[:3]) + (f" and {len(entries) - 3} more" if len(entries) > 3 else "")
            raise FeatureStoreError(f"{root}: this folder is not empty ({shown}) and is not a "
                                    "feature store; give a new or empty folder (nothing was "
                                    "changed).")
        store = cls.open(root)
        have = store.manifest
        for key, what in (("identity", "another backbone, layer, pooling or preprocessing"),
                          ("extractor", "other extraction settings"),
                          ("listing_digest", "another listing of the images (files added, "
                                             "removed, relabelled or moved between splits)"),
                          ("shard_rows", "another shard size")):
            if have[key] != wanted[key]:
                raise FeatureStoreError(f"{root}: holds features of {what}; give a new folder "
                                        "for these features (nothing was changed).")
        for name in (SHARDS, LISTING):
            if os.path.islink(root / name):
                raise FeatureStoreError(f"{root / name}: is a symbolic link, and transferkit "
                                        "never writes through one; remove it (nothing was "
                                        "changed).")
        # A store from elsewhere may hold a folder where a file of ours goes, or a file
        # where the shards folder goes: os.replace / mkdir would then fail with a
        # traceback, after the extraction work. Refused now, in one line.
        wrong = [root / name for name, folder in ((LISTING, False), (SKIPPED, False),
                                                  (SHARDS, True))
                 if os.path.lexists(root / name) and not os.path.islink(root / name)
                 and (root / name).is_dir() != folder]
        if (root / SHARDS).is_dir() and not wrong:
            wrong = [entry for entry in (root / SHARDS).iterdir()
                     if re.fullmatch(r"part-\d+\.parquet", entry.name)
                     and entry.is_dir() and not entry.is_symlink()]
        if wrong:
            raise FeatureStoreError(f"{wrong[0]}: is not what a feature store holds there (a "
                                    "folder for a file, or a file for the shards folder); "
                                    "remove it or give a new folder (nothing was changed).")
        return store

    def _write_listing_if_missing(self, listing: list[ListingRow]) -> None:
        path = self.root / LISTING
        if path.is_file():
            return  # the store's own listing stays the truth: it fixed the shards' chunks
        # Missing only when a run was killed right after the manifest was written.
        write_bytes_atomic(path, json.dumps([list(row) for row in listing]).encode("utf-8",
                                                                                     "surrogateescape"))
        self._listing = listing

    def _remove_leftover_temporaries(self) -> None:
        for entry in (self.root / SHARDS).iterdir():
            if _LEFTOVER.match(entry.name) and entry.is_file() and not entry.is_symlink():
                entry.unlink(missing_ok=True)

    # -- the listing ---------------------------------------------------------------------

    @property
    def listing(self) -> list[ListingRow]:
        """The whole listing (read once from ``listing.json``, checked against the manifest)."""
        if self._listing is None:
            raw = _read_json(self.root / LISTING, "listing")
            try:
                rows = _check_listing(raw)
            except FeatureStoreError as exc:
                raise FeatureStoreError(f"{self.root / LISTING}: damaged ({exc}); extract again "
                                        "into a new folder.") from exc
            if (len(rows) != self.n_images
                    or listing_digest(rows) != self.manifest["listing_digest"]):
                raise FeatureStoreError(f"{self.root / LISTING}: does not match the manifest "
                                        "(edited?); extract again into a new folder.")
            self._listing = rows
        return self._listing

    def _check_index(self, index: int) -> int:
        if not (type(index) is int or isinstance(index, np.integer)) or not 0 <= index < self.n_shards:
            raise IndexError(f"shard index {index!r} out of range 0..{self.n_shards - 1}")
        return int(index)

    def chunk(self, index: int) -> list[ListingRow]:
        """The listing rows of shard ``index``."""
        index = self._check_index(index)
        return self.listing[index * self.shard_rows:(index + 1) * self.shard_rows]

    def shard_path(self, index: int) -> Path:
        return self.root / SHARDS / shard_name(self._check_index(index))

    def missing(self) -> list[int]:
        """Indices of the shards not written yet."""
        # The listing first: it checks the manifest's n_images (so n_shards), which a
        # tampered manifest could set to billions, each one a stat() call here.
        self.listing  # noqa: B018 (read and checked once; every caller reads it anyway)
        return [i for i in range(self.n_shards) if not self.shard_path(i).is_file()]

    def complete(self) -> bool:
        return not self.missing()

    # -- writing -------------------------------------------------------------------------

    def write_shard(self, index: int, sha256: Sequence[str | None], features,
                    errors: Sequence[str | None]) -> Path:
        """Write shard ``index``: one row per image of :meth:`chunk`, in its order.

        ``features``: a ``(n, dim)`` array (rows of skipped images are ignored) or a
        sequence of ``(dim,)`` vectors and ``None``; ``errors[i]`` is None for an image
        with a feature, else why it was skipped. The file appears complete or not at all.
        """
        import pyarrow as pa
        import pyarrow.parquet as pq

        rows = self.chunk(index)
        n = len(rows)
        if len(sha256) != n or len(errors) != n or len(features) != n:
            raise ValueError(f"shard {index} has {n} images; got {len(sha256)} digests, "
                             f"{len(features)} feature rows and {len(errors)} errors")
        valid = np.array([error is None for error in errors], dtype=bool)
        matrix = np.zeros((n, self.dim), dtype=np.float32)
        for i, (row, error) in enumerate(zip(features, errors)):
            if error is not None:
                continue
            vector = np.asarray(row, dtype=np.float32).reshape(-1) if row is not None else None
            if vector is None or vector.shape[0] != self.dim:
                shape = None if vector is None else vector.shape
                raise ValueError(f"shard {index}, row {i}: expected a feature of {self.dim} "
                                 f"values, got {shape}")
            matrix[i] = vector
        flat = pa.array(matrix.reshape(-1), type=pa.float32())
        feature = pa.FixedSizeListArray.from_arrays(flat, self.dim, mask=pa.array(~valid))
        table = pa.table({
            "path": pa.array([utf8_text(row[0]) for row in rows], type=pa.string()),
            "sha256": pa.array(list(sha256), type=pa.string()),
            "label": pa.array([None if row[1] is None else utf8_text(row[1]) for row in rows],
                              type=pa.string()),
            "split": pa.array([row[2] for row in rows], type=pa.string()),
            "feature": feature,
            "error": pa.array([None if e is None else utf8_text(str(e)) for e in errors],
                              type=pa.string()),
        })
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        path = self.shard_path(index)
        write_bytes_atomic(path, sink.getvalue().to_pybytes())
        return path

    def write_skipped_file(self) -> Path | None:
        """``skipped.txt``: every skipped image with its reason (None and no file when none)."""
        skipped = self.skipped()
        path = self.root / SKIPPED
        if not skipped:
            if path.is_file() and not path.is_symlink():
                path.unlink()  # ours, from an earlier run of this store
            return None
        text = "".join(f"{escape_control(p)}\t{escape_control(reason)}\n" for p, reason in skipped)
        write_bytes_atomic(path, text.encode("utf-8", "surrogateescape"))
        return path

    # -- reading -------------------------------------------------------------------------

    def read_shard(self, index: int, columns=None):
        """One shard as a ``pyarrow.Table`` (``columns``: a subset, in the given order)."""
        import pyarrow.parquet as pq

        path = self.shard_path(index)
        expected = len(self.chunk(index))
        names = list(COLUMNS if columns is None else columns)
        try:
            # The footer first: rows, columns, types and size are checked before any data
            # is loaded, so a shard from elsewhere that declares a billion rows (a few kB
            # compressed) is refused without filling memory.
            metadata = pq.read_metadata(path)
            schema = metadata.schema.to_arrow_schema()
            self._check_shard_metadata(path, metadata, schema, expected)
            table = pq.read_table(path, columns=names)
        except FeatureStoreError:
            raise  # a DataError, hence a ValueError: not to be re-worded below
        except FileNotFoundError as exc:
            raise FeatureStoreError(f"{path}: missing; the store is incomplete: run "
                                    "`transferkit extract` again to finish it.") from exc
        except (OSError, ValueError, KeyError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise FeatureStoreError(f"{path}: not a readable shard ({first}); delete it and run "
                                    "`transferkit extract` again to rewrite it.") from exc
        if (table.num_rows != expected or table.column_names != names
                or table.schema.types != [schema.field(name).type for name in names]):
            raise FeatureStoreError(f"{path}: does not read as its footer says; delete it and "
                                    "run `transferkit extract` again.")
        if "feature" in names:
            # extract never writes a NaN or an infinity (nor a null inside a vector, which
            # reads as NaN): the in-memory solvers would stop with a traceback, and the
            # streamed one would silently save a model fitted to NaN.
            values = table.column("feature").combine_chunks().flatten()
            if not np.isfinite(values.to_numpy(zero_copy_only=False)).all():
                raise FeatureStoreError(f"{path}: holds features that are NaN, infinite or "
                                        "missing; delete it and run `transferkit extract` "
                                        "again.")
        return table

    def _check_shard_metadata(self, path: Path, metadata, schema, expected: int) -> None:
        """Refuse a shard whose footer does not describe what :meth:`write_shard` writes:
        ``expected`` rows, :data:`COLUMNS` with their types, and no more bytes than such
        rows can take."""
        import pyarrow as pa

        if metadata.num_rows != expected:
            raise FeatureStoreError(f"{path}: holds {metadata.num_rows} rows where its chunk has "
                                    f"{expected}; delete it and run `transferkit extract` again.")
        if schema.names != list(COLUMNS):
            raise FeatureStoreError(f"{path}: has the columns {schema.names}, expected "
                                    f"{list(COLUMNS)}; delete it and run `transferkit extract` "
                                    "again.")
        # Every column's exact type, checked before any value is read: a shard from
        # elsewhere may declare an extension type, and Ray's "ray.data.arrow_pickled_object"
        # (registered in any process that imported ray.data, as the Ray engine's driver
        # has) unpickles each value that to_pylist() reads, which runs arbitrary code.
        for field in schema:
            if field.name != "feature" and field.type != pa.string():
                raise FeatureStoreError(f"{path}: its {field.name} column is {field.type}, "
                                        "expected strings; delete it and run `transferkit "
                                        "extract` again.")
        kind = schema.field("feature").type
        if not (pa.types.is_fixed_size_list(kind) and kind.list_size == self.dim
                and pa.types.is_float32(kind.value_type)):
            raise FeatureStoreError(f"{path}: its feature column is {kind}, expected "
                                    f"{self.dim} float32 values; delete it and run "
                                    "`transferkit extract` again.")
        declared = sum(metadata.row_group(i).total_byte_size
                       for i in range(metadata.num_row_groups))
        if declared > expected * (4 * self.dim + _TEXT_BYTES_PER_ROW) + (1 << 20):
            raise FeatureStoreError(f"{path}: declares {declared} bytes of data for {expected} "
                                    "rows, far more than a shard holds; delete it and run "
                                    "`transferkit extract` again.")

    def iter_shards(self, columns=None) -> Iterator:
        """Every shard as a ``pyarrow.Table``, in index order, one in memory at a time."""
        for index in range(self.n_shards):
            yield self.read_shard(index, columns)

    def skipped(self) -> list[tuple[str, str]]:
        """``(path, reason)`` of every skipped image in the written shards."""
        found = []
        for index in range(self.n_shards):
            if not self.shard_path(index).is_file():
                continue
            table = self.read_shard(index, ["path", "error"])
            for path, error in zip(table.column("path").to_pylist(),
                                   table.column("error").to_pylist()):
                if error is not None:
                    found.append((path, error))
        return found


def feature_matrix(table) -> tuple[np.ndarray, np.ndarray]:
    """``(features, ok)`` of one shard table: a ``(n_ok, dim)`` float32 array of the rows
    with a feature, and the ``(n,)`` mask of those rows."""
    column = table.column("feature").combine_chunks()
    ok = ~np.asarray(column.is_null().to_numpy(zero_copy_only=False), dtype=bool)
    # flatten() honours the array's offset and leaves out null rows' slots.
    values = column.flatten().to_numpy(zero_copy_only=False)
    return values.reshape(-1, column.type.list_size).astype(np.float32, copy=False), ok


# -- what goes into a store --------------------------------------------------------------

def data_listing(data) -> tuple[Path, list[ListingRow], list[str] | None]:
    """``(root, listing, classes)`` of DATA, read as every command reads it: a folder of
    class sub-folders (optionally inside train/ val/ test/: the split of each image), a
    CSV with path,label columns (paths as the CSV gives them, relative to its folder), or
    a folder of images without sub-folders (unlabelled: label and classes None). Paths in
    the listing are relative to ``root`` with POSIX separators; the order is fixed (split,
    then class, then file name)."""
    from transferkit.data.dataset import (
        TEST_FOLDER_NAMES,
        VAL_FOLDER_NAMES,
        _find_child,
        is_visible,
        list_image_files,
        read_csv,
        read_image_folder,
    )

    source = Path(data)
    if not source.exists():
        raise DataError(f"{source}: no such file or folder.")

    def relative(path: Path, root: Path) -> str:
        try:
            return path.relative_to(root).as_posix()
        except ValueError:  # an absolute path in a CSV, outside its folder
            return path.as_posix()

    if source.is_file():
        if source.suffix.lower() != ".csv":
            raise DataError(f"{source}: give a folder of images, of class sub-folders, or a "
                            ".csv file.")
        images = read_csv(source)
        root = source.parent
        rows = [(relative(p, root), images.classes[int(y)], None)
                for p, y in zip(images.paths, images.labels)]
        return root, rows, list(images.classes)
    root = source
    train_dir = _find_child(root, ("train",))
    if train_dir is not None:
        train = read_image_folder(train_dir)
        parts = [("train", train)]
        for split, names in (("val", VAL_FOLDER_NAMES), ("test", TEST_FOLDER_NAMES)):
            folder = _find_child(root, names)
            if folder is not None:
                parts.append((split, read_image_folder(folder, train.classes)))
        rows = [(relative(p, root), images.classes[int(y)], split)
                for split, images in parts for p, y in zip(images.paths, images.labels)]
        return root, rows, list(train.classes)
    if any(p.is_dir() and is_visible(p) for p in root.iterdir()):
        images = read_image_folder(root)
        rows = [(relative(p, root), images.classes[int(y)], None)
                for p, y in zip(images.paths, images.labels)]
        return root, rows, list(images.classes)
    files = list_image_files(root)
    if not files:
        raise DataError(f"{root}: no images found.")
    return root, [(relative(p, root), None, None) for p in files], None


def extractor_settings(backbone: str | None = None, weights=None, arch: str | None = None,
                       layer: str | None = None, pooling: str = "avg",
                       normalise: str | None = None) -> dict:
    """The manifest's ``extractor``: what :func:`~transferkit.features.extract.build_extractor`
    needs to rebuild the extractor (with ``normalise`` applied to its output)."""
    from transferkit.backbones.registry import DEFAULT_BACKBONE
    from transferkit.features.extract import DEFAULT_LAYER

    if normalise not in (None, "l2"):
        raise DataError(f"unknown normalisation {normalise!r}; use 'l2' or none.")
    return {"backbone": backbone or DEFAULT_BACKBONE,
            "weights": None if weights is None else str(Path(weights).expanduser().resolve()),
            "arch": arch, "layer": layer or DEFAULT_LAYER, "pooling": pooling,
            "normalise": normalise}


def extract_chunk(extractor, root: Path, rows: Sequence[ListingRow],
                  normalise: str | None = None, progress: bool = False):
    """``(digests, features, errors)`` of listing ``rows`` (paths relative to ``root``):
    one :meth:`~transferkit.features.extract.FrozenExtractor.extract` call, so the
    features are the normal extraction path's; ``features`` is ``(n, dim)`` float32 with
    zero rows where ``errors`` holds why an image was skipped."""
    paths = [Path(root) / path for path, _, _ in rows]
    result = extractor.extract(paths, progress=progress)
    features = np.zeros((len(paths), result.features.shape[1]), dtype=np.float32)
    kept = result.features
    if normalise == "l2" and len(kept):
        from sklearn.preprocessing import normalize  # the probe's Normalizer, exactly

        kept = normalize(kept, norm="l2")
    features[result.ok] = kept
    reasons = dict(result.skipped)
    errors = [None if ok else reasons.get(str(path), f"{path}: skipped")
              for path, ok in zip(paths, result.ok)]
    return list(result.digests), features, errors


def write_missing_shards(store: FeatureStore, extractor, root, normalise: str | None = None,
                         progress: bool = False) -> int:
    """The local engine: each missing shard of ``store`` extracted by ``extractor`` (one
    ``extract`` call per shard: ONNX lanes on every core, the feature cache) and written;
    returns the number of images extracted."""
    from tqdm.auto import tqdm

    missing = store.missing()
    total = sum(len(store.chunk(i)) for i in missing)
    done = 0
    with tqdm(total=total, desc="extract (local)", unit="img", disable=not progress) as bar:
        for index in missing:
            rows = store.chunk(index)
            store.write_shard(index, *extract_chunk(extractor, Path(root), rows, normalise))
            done += len(rows)
            bar.update(len(rows))
    return done
