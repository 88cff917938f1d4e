"""A content-addressed on-disk cache of frozen features.

An entry's address is the SHA-256 of the image file's bytes inside a namespace named
by everything else that determines the feature: backbone name, architecture, weights
digest, layer and preprocessing. Renaming or moving an image keeps its entry; changing
one pixel, the weights or the crop makes a new one. Entries are single ``.npy`` files
written atomically (temporary file + ``os.replace``), so an interrupted run leaves no
half-written entry, and two runs may share a cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path

import numpy as np

from transferkit.data.images import open_regular_file
from transferkit.errors import CacheError, DataError
from transferkit.outputs import write_bytes_atomic

CACHE_ENV = "TRANSFERKIT_CACHE_DIR"
# The FeatureCaches of one extractor (one per layer) keep the vectors they have read in
# this process, by content hash, up to this many bytes together: a command that reads the
# same images twice (a warm fit reads the training features again for its report's map)
# then loads each entry from disk once, and a large data set is not held twice in memory.
MEMO_BYTES = 128 * 2**20
MEMO_ENTRY_BYTES = 256  # what a kept entry costs beyond its numbers (array, key, dict slot)


class MemoBudget:
    """The bytes the FeatureCaches sharing this object may still keep in memory."""

    def __init__(self, limit: int = MEMO_BYTES):
        self.left = limit


def default_cache_dir() -> Path:
    """``$TRANSFERKIT_CACHE_DIR``, else ``$XDG_CACHE_HOME/transferkit``, else ``~/.cache/transferkit``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "transferkit"


def resolve_cache_dir(cache_dir: str | os.PathLike | None) -> Path:
    return Path(cache_dir).expanduser() if cache_dir else default_cache_dir()


def file_digest(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """SHA-256 of a regular file's bytes; anything else (a FIFO, ``/dev/zero``) would never
    end, so it raises :class:`~transferkit.errors.ImageDecodeError` saying what it is."""
    digest = hashlib.sha256()
    with open_regular_file(path) as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def namespace_key(identity: dict) -> str:
    """A short stable hash of a JSON-able description of the feature extractor."""
    text = json.dumps(identity, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def namespace_folder(parent: Path, identity: dict, meta_name: str, what: str) -> Path:
    """``parent/namespace_key(identity)``, created, with ``identity`` written beside the
    entries as ``meta_name`` (for whoever looks inside the cache)."""
    folder = Path(parent) / namespace_key(identity)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CacheError(f"cannot create the {what} in {folder} ({exc}). "
                         "Pass --cache-dir (cache_dir) to a writable folder.") from exc
    meta = folder / meta_name
    if not meta.exists():
        write_bytes_atomic(meta, json.dumps(identity, indent=2, sort_keys=True,
                                            default=str).encode())
    return folder


class FeatureCache:
    """Feature vectors of one extractor, addressed by image content hash."""

    def __init__(self, root: str | os.PathLike, identity: dict, dim: int | None = None,
                 memo: MemoBudget | None = None):
        self.root = Path(root).expanduser()
        self.identity = identity
        self.dim = dim
        self.folder = namespace_folder(self.root / "features", identity, "extractor.json",
                                       "feature cache")
        self.n_invalid = 0
        self._memo: dict[str, np.ndarray] = {}
        self._budget = memo if memo is not None else MemoBudget()

    def _remember(self, key: str, vector: np.ndarray) -> None:
        cost = vector.nbytes + MEMO_ENTRY_BYTES
        if cost <= self._budget.left:
            vector.flags.writeable = False  # shared by every later get of the same key
            self._memo[key] = vector
            self._budget.left -= cost

    def _forget(self, key: str) -> None:
        if (vector := self._memo.pop(key, None)) is not None:
            self._budget.left += vector.nbytes + MEMO_ENTRY_BYTES

    def _path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.npy"

    def get(self, key: str) -> np.ndarray | None:
        """The cached vector (read-only), or None when absent or unusable (it is then
        recomputed)."""
        if (vector := self._memo.get(key)) is not None:
            return vector
        path = self._path(key)
        if not path.exists():
            return None
        try:
            with open_regular_file(path) as handle:
                vector = np.load(handle, allow_pickle=False)
        # An entry is only a shortcut: whatever is wrong with it (empty, truncated, a header
        # declaring a huge array, not a regular file), the vector is recomputed.
        except (OSError, ValueError, EOFError, MemoryError, DataError) as exc:
            self.n_invalid += 1
            warnings.warn(f"feature cache entry {path} is unreadable ({exc}); recomputing it.")
            return None
        if vector.ndim != 1 or (self.dim is not None and vector.shape[0] != self.dim):
            self.n_invalid += 1
            warnings.warn(f"feature cache entry {path} has shape {vector.shape}, expected "
                          f"({self.dim},); recomputing it.")
            return None
        self._remember(key, vector)
        return vector

    def put(self, key: str, vector: np.ndarray) -> None:
        self._forget(key)  # a later get reads what this put wrote
        path = self._path(key)
        path.parent.mkdir(exist_ok=True)
        from io import BytesIO

        buffer = BytesIO()
        np.save(buffer, np.ascontiguousarray(vector, dtype=np.float32), allow_pickle=False)
        try:
            write_bytes_atomic(path, buffer.getvalue(), durable=False)
        except OSError as exc:
            raise CacheError(f"cannot write the feature cache entry {path} ({exc}).") from exc
