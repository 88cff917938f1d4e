"""Frozen-backbone feature extraction: decode and run the fast path in parallel, cache.

``FrozenExtractor`` is the engine (used by the CLI and every feature-based method);
``FeatureExtractor`` wraps it as a scikit-learn transformer (image paths → features) so
it composes with ``Pipeline`` and ``GridSearchCV``.

On the ONNX path, each core runs a *lane*: a thread that decodes a small batch and runs
it through a one-thread ONNX Runtime session shared by all lanes (decoding, resizing and
ONNX Runtime release the GIL). Measured on 2 cores (benchmarks/RESULTS.md,
foundation-extraction), this beats decode workers feeding one multi-thread session:
that design idles cores while the network waits for decoded batches or the decoder for
the network, and its intra-op threads spin-wait, which on a busy machine burns the
cores other processes need. The eager path keeps decode worker processes (PyTorch
modules are not meant to run concurrently in threads).
"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import itertools
import json
import logging
import math
import os
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin

from transferkit.backbones import DEFAULT_BACKBONE, weights_fingerprint
from transferkit.data.dataset import as_paths
from transferkit.errors import DataError, ImageDecodeError, TransferkitError
from transferkit.features.cache import (
    FeatureCache,
    MemoBudget,
    file_digest,
    namespace_key,
    resolve_cache_dir,
)
from transferkit.outputs import write_bytes_atomic

if TYPE_CHECKING:
    from transferkit.backbones import Backbone

log = logging.getLogger(__name__)

DEFAULT_LAYER = "pre_logits"
# Execution paths of features.runtime, named here so that checking a saved model's
# settings imports no torch.
RUNTIMES = ("auto", "onnx", "eager")
# Images per ONNX Runtime call on one lane. Single-thread ONNX Runtime runs Lite0 at about
# the same speed per image from batch 4 to 32; small batches keep the lanes busy to the
# end of a run (a lane left with one last batch idles the other cores meanwhile).
LANE_BATCH = 8


def _layer_list(layer) -> list[str]:
    if isinstance(layer, str):
        return [part.strip() for part in layer.split(",") if part.strip()]
    return [str(part) for part in layer]


def _preprocess_or_reason(preprocess, path: Path) -> tuple[np.ndarray | None, str]:
    """The network's input for one image, or why there is none: a bad file is skipped,
    not a crash."""
    try:
        return preprocess(path), ""
    except ImageDecodeError as exc:
        return None, str(exc)
    except Exception as exc:  # a transform failing on an odd image is still "skip it"
        return None, f"{path}: {exc}"


class _DecodeDataset:
    """Decodes and preprocesses one image per item (for decode worker processes)."""

    def __init__(self, paths: list[Path], preprocess, input_shape):
        self.paths = paths
        self.preprocess = preprocess
        self.input_shape = input_shape

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        array, reason = _preprocess_or_reason(self.preprocess, self.paths[index])
        if array is None:
            array = np.zeros(self.input_shape, dtype=np.float32)
        return array, index, reason


@dataclass
class ExtractionResult:
    """Features of the readable images, in input order, and what was skipped."""

    features: np.ndarray          # (n_ok, total dim) float32: the layers concatenated
    ok: np.ndarray                # (n_input,) bool: which inputs have a row in features
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    n_cached: int = 0
    n_computed: int = 0
    seconds: float = 0.0
    runtime: str = ""
    layers: dict[str, slice] = field(default_factory=dict)  # columns of each layer
    # (n_input,) SHA-256 of each input file's bytes (the cache key); None: unreadable file
    digests: list[str | None] = field(default_factory=list)

    def layer(self, name: str) -> np.ndarray:
        """The columns of one tapped layer."""
        return self.features[:, self.layers[name]]


@functools.lru_cache(maxsize=4)
def shared_backbone(name: str | None, weights: str | None, arch: str | None) -> "Backbone":
    """Backbones are frozen, so estimators and CV clones may share one instance."""
    from transferkit.backbones import create_backbone

    return create_backbone(name, weights=weights, arch=arch)


class FrozenExtractor:
    """Extracts pooled features of one or more layers of a frozen backbone, with a cache.

    ``layer`` is one name, a comma-separated list, a list, or ``"stages"`` / ``"fne"`` /
    ``"all"`` / ``"all-conv"`` (see :mod:`transferkit.backbones.taps`); each keyword is part
    of the identity memo's key as written, so what it resolves to is never taken from a
    memo of another keyword; all layers come from one forward
    pass and are cached separately, so another combination of them costs no forward
    pass. ``pooling`` (avg, max, avgmax, gem) turns feature maps into vectors.
    ``num_workers``: parallel lanes of the ONNX path (threads that each decode and infer
    on one core) or decode worker processes of the eager path; None: one per core.
    ``jpeg_draft``: decode large JPEGs at reduced scale (see
    :mod:`transferkit.features.preprocess`); other features, so another cache namespace.
    ``onnx_threads``: ONNX Runtime's threads when there is one lane (default every core;
    a Ray actor holding one CPU asks for 1). ``device``: where the eager path runs (a GPU
    Ray actor asks for "cuda"; anything but "cpu" runs eager PyTorch).

    Give a built ``backbone``, or use :meth:`from_name`: then the network is built only
    when an image is missing from the cache. What identifies the features (weights
    digest, preprocessing, layer sizes) is memoised in the cache folder, keyed by the
    weights file's path, size and modification time, so a full cache hit imports no
    deep-learning code.
    """

    def __init__(self, backbone: "Backbone | None" = None, layer=DEFAULT_LAYER,
                 cache_dir: str | os.PathLike | None = None, use_cache: bool = True,
                 runtime: str = "auto", batch_size: int = 32, num_workers: int | None = None,
                 source: tuple[str | None, str | None, str | None] | None = None,
                 pooling: str = "avg", jpeg_draft: bool = False,
                 onnx_threads: int | None = None, device: str = "cpu"):
        from transferkit.backbones.taps import POOLINGS

        if pooling not in POOLINGS:
            raise TransferkitError(f"unknown pooling {pooling!r}; choose one of {', '.join(POOLINGS)}.")
        if not _layer_list(layer):
            raise TransferkitError("no layer given.")
        if backbone is None and source is None:
            source = (DEFAULT_BACKBONE, None, None)
        self._backbone = backbone
        self.source = source
        self.layer = layer
        self.pooling = pooling
        self.batch_size = int(batch_size)
        self.num_workers = num_workers
        self.runtime_name = runtime
        self.jpeg_draft = bool(jpeg_draft)
        self.onnx_threads = onnx_threads
        self.device = device
        self.cache_root = resolve_cache_dir(cache_dir)
        self.use_cache = use_cache
        self._caches: dict[str, FeatureCache] | None = None
        self._runtime = None
        self._transform = None
        self._preprocess = None
        self._identity: dict | None = None
        self._dims: dict[str, int] | None = None
        self.n_forward_images = 0  # images that went through the network (tests count it)

    @classmethod
    def from_name(cls, name: str | None = DEFAULT_BACKBONE, weights: str | None = None,
                  arch: str | None = None, **options) -> "FrozenExtractor":
        weights = None if weights is None else str(weights)
        return cls(None, source=(name or DEFAULT_BACKBONE, weights, arch), **options)

    @property
    def backbone(self) -> "Backbone":
        if self._backbone is None:
            self._backbone = shared_backbone(*self.source)
        return self._backbone

    @property
    def transform(self):
        if self._transform is None:
            self._transform = self.backbone.eval_transform()
        return self._transform

    @property
    def preprocess(self):
        """Image path → the network's input array (C, H, W): the eval transform's pixels."""
        if self._preprocess is None:
            from transferkit.features.preprocess import EvalPreprocess

            self._preprocess = EvalPreprocess(self.transform, jpeg_draft=self.jpeg_draft)
        return self._preprocess

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.backbone.data_config["input_size"])

    @property
    def layers(self) -> list[str]:
        """The resolved module names, in output order."""
        return list(self.dims)

    @property
    def dims(self) -> dict[str, int]:
        """Length of each layer's pooled vector."""
        if self._dims is None:
            self.identity()
        return self._dims

    @property
    def dim(self) -> int:
        return sum(self.dims.values())

    def _memo_path(self) -> Path | None:
        if self._backbone is not None or not self.use_cache:
            return None
        fingerprint = weights_fingerprint(*self.source)
        if fingerprint is None:
            return None
        versions = {pkg: importlib.metadata.version(pkg) for pkg in ("timm", "transferkit")}
        described = {"weights": fingerprint, "layer": _layer_list(self.layer),
                     "pooling": self.pooling, "versions": versions}
        if self.jpeg_draft:
            described["decode"] = "jpeg-draft"
        key = namespace_key(described)
        return self.cache_root / "identities" / f"{key}.json"

    def _layer_dims(self, names: list[str]) -> dict[str, int]:
        if names == ["pre_logits"]:
            return {"pre_logits": int(self.backbone.num_features)}
        from transferkit.backbones.taps import list_layers

        infos = {info.name: info for info in list_layers(self.backbone.model, self.input_shape, names)}
        factor = 2 if self.pooling == "avgmax" else 1
        return {name: infos[name].channels * (1 if name == "pre_logits" else factor)
                for name in names}

    def identity(self) -> dict:
        """What determines the features: backbone identity, layers, pooling, preprocessing."""
        if self._identity is not None:
            return self._identity
        memo = self._memo_path()
        if memo is not None and memo.is_file():
            try:
                saved = json.loads(memo.read_text())
                self._identity, self._dims = saved["identity"], dict(saved["dims"])
                return self._identity
            except (OSError, ValueError, KeyError, TypeError):
                pass  # a damaged memo is rebuilt below
        from transferkit.backbones.taps import resolve_layers, stage_layers

        names = resolve_layers(self.backbone.model, _layer_list(self.layer))
        self._dims = self._layer_dims(names)
        stages = [name for name in stage_layers(self.backbone.model) if name in names]
        self._identity = {"backbone": self.backbone.identity(), "layers": names, "stages": stages,
                          "pooling": self.pooling, "preprocessing": repr(self.transform)}
        if self.jpeg_draft:  # other pixels, other features; absent otherwise, so caches stay valid
            self._identity["decode"] = "jpeg-draft"
        if memo is not None:
            try:
                memo.parent.mkdir(parents=True, exist_ok=True)
                write_bytes_atomic(memo, json.dumps({"identity": self._identity,
                                                     "dims": self._dims}).encode())
            except OSError as exc:
                log.warning("cannot write %s (%s); the cache still works.", memo, exc)
        return self._identity

    def layer_identity(self, name: str) -> dict:
        """Identity of one layer's features: the cache namespace of that layer."""
        identity = self.identity()
        own = {"backbone": identity["backbone"], "layer": name,
               "preprocessing": identity["preprocessing"]}
        if "decode" in identity:
            own["decode"] = identity["decode"]
        if name != "pre_logits":  # pre_logits is pooled by the network itself
            own["pooling"] = identity["pooling"]
        return own

    @property
    def caches(self) -> dict[str, FeatureCache] | None:
        if self.use_cache and self._caches is None:
            memo = MemoBudget()  # shared by the layers' caches
            self._caches = {name: FeatureCache(self.cache_root, self.layer_identity(name), dim,
                                               memo)
                            for name, dim in self.dims.items()}
        return self._caches

    @property
    def cache(self) -> FeatureCache | None:
        """The cache of the first layer (the only one for single-layer extractors)."""
        caches = self.caches
        return None if caches is None else caches[self.layers[0]]

    @property
    def runtime(self):
        if self._runtime is None:
            from transferkit.backbones.taps import make_tap_module
            from transferkit.features.runtime import EXPORT_FORMAT, make_runtime

            network = {k: v for k, v in self.identity().items() if k != "decode"}
            key = namespace_key({**network, "export_format": EXPORT_FORMAT})
            onnx_path = self.cache_root / "onnx" / f"{key}.onnx"
            module = make_tap_module(self.backbone.model, self.layers, self.pooling)
            lanes = self._lanes()
            self._runtime = make_runtime(module, self.input_shape, self.runtime_name, onnx_path,
                                         threads=1 if lanes > 1 else self.onnx_threads,
                                         device=self.device)
        return self._runtime

    def _lanes(self) -> int:
        """Parallel decode-and-infer lanes of the ONNX path: ``num_workers``, else one per
        core; with one lane, ONNX Runtime uses every core itself."""
        from transferkit.features.runtime import cpu_threads

        if self.num_workers is not None:
            return max(1, int(self.num_workers))
        return cpu_threads()

    def _workers(self, n_images: int) -> int:
        """Decode worker processes of the eager path."""
        from transferkit.features.runtime import cpu_threads

        if self.num_workers is not None:
            return int(self.num_workers)
        # Worker start-up costs ~0.1 s each; only worth it for more than a few batches.
        return 0 if n_images <= 2 * self.batch_size else min(2, cpu_threads())

    def _batches_in_lanes(self, runtime, paths: list[Path]):
        """Yield ``(positions, outputs, reasons)`` per batch of ``paths``, in completion
        order: each lane decodes its batch and runs it on its own core."""
        lanes = self._lanes() if runtime.threads == 1 else 1
        size = max(1, min(self.batch_size, LANE_BATCH, math.ceil(len(paths) / lanes)))
        preprocess = self.preprocess

        def run_batch(first: int):
            arrays, positions, reasons = [], [], {}
            for position in range(first, min(first + size, len(paths))):
                array, reason = _preprocess_or_reason(preprocess, paths[position])
                if array is None:
                    reasons[position] = reason
                else:
                    arrays.append(array)
                    positions.append(position)
            return positions, (runtime(np.stack(arrays)) if arrays else []), reasons

        if lanes == 1:
            for first in range(0, len(paths), size):
                yield run_batch(first)
            return
        # At most two batches per lane queued or running: whatever stops the run (an
        # error, an interrupt, a caller that drops this generator) leaves only those to
        # finish, not the whole list running on in the background.
        starts = iter(range(0, len(paths), size))
        pool = ThreadPoolExecutor(lanes, thread_name_prefix="transferkit-lane")
        try:
            pending = {pool.submit(run_batch, first)
                       for first in itertools.islice(starts, 2 * lanes)}
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    result = future.result()
                    following = next(starts, None)
                    if following is not None:  # before the yield: lanes work on meanwhile
                        pending.add(pool.submit(run_batch, following))
                    yield result
        finally:  # an error or an interrupt: drop the batches not yet started
            pool.shutdown(wait=True, cancel_futures=True)

    def _batches_from_workers(self, runtime, paths: list[Path]):
        """Yield ``(positions, outputs, reasons)`` per batch: decode worker processes feed
        the runtime in this thread."""
        import torch
        from torch.utils.data import DataLoader

        dataset = _DecodeDataset(paths, self.preprocess, self.input_shape)
        workers = self._workers(len(paths))
        loader = DataLoader(dataset, batch_size=self.batch_size, shuffle=False,
                            num_workers=workers, persistent_workers=False,
                            prefetch_factor=4 if workers else None)
        for images, index, errors in loader:
            good = [j for j, err in enumerate(errors) if not err]
            reasons = {int(index[j]): err for j, err in enumerate(errors) if err}
            outputs = runtime(images[torch.as_tensor(good, dtype=torch.long)]) if good else []
            yield [int(index[j]) for j in good], outputs, reasons

    def _cached_row(self, key: str) -> list[np.ndarray] | None:
        """All layers' vectors of one image, or None if any is missing."""
        caches = self.caches
        if caches is None:
            return None
        parts = []
        for name in self.layers:
            vector = caches[name].get(key)
            if vector is None:
                return None
            parts.append(vector)
        return parts

    def extract(self, paths, progress: bool = False) -> ExtractionResult:
        from tqdm.auto import tqdm

        start = time.perf_counter()
        paths = [Path(p) for p in paths]
        rows: list[list[np.ndarray] | None] = [None] * len(paths)
        reasons: dict[int, str] = {}
        keys: list[str | None] = [None] * len(paths)
        for i, path in enumerate(paths):
            try:
                keys[i] = file_digest(path)
            except ImageDecodeError as exc:  # a FIFO, a device, a broken link...
                reasons[i] = str(exc)
                continue
            except OSError as exc:
                reasons[i] = f"{path}: cannot read file ({exc.strerror or exc})"
                continue
            rows[i] = self._cached_row(keys[i])
        n_cached = sum(row is not None for row in rows)
        todo = [i for i in range(len(paths)) if rows[i] is None and i not in reasons]
        runtime_name = "cache"
        if todo:
            from transferkit.features.runtime import OnnxRuntime

            runtime = self.runtime
            runtime_name = runtime.name
            caches = self.caches
            todo_paths = [paths[i] for i in todo]
            batches = (self._batches_in_lanes(runtime, todo_paths)
                       if isinstance(runtime, OnnxRuntime)
                       else self._batches_from_workers(runtime, todo_paths))
            # Closed on the way out, whatever the way: an error here must not leave lanes
            # or decode workers running while the traceback keeps this frame alive.
            with contextlib.closing(batches), \
                    tqdm(total=len(todo), desc=f"features ({runtime.name})", unit="img",
                         disable=not progress, leave=False) as bar:
                for positions, outputs, failures in batches:
                    for position, reason in failures.items():
                        reasons[todo[position]] = reason
                    self.n_forward_images += len(positions)
                    for row, position in enumerate(positions):
                        i = todo[position]
                        rows[i] = [np.asarray(out[row], dtype=np.float32) for out in outputs]
                        if caches is not None:
                            for name, vector in zip(self.layers, rows[i]):
                                caches[name].put(keys[i], vector)
                    bar.update(len(positions) + len(failures))
        ok = np.array([row is not None for row in rows], dtype=bool)
        features = (np.stack([np.concatenate(row) for row in rows if row is not None])
                    .astype(np.float32, copy=False)
                    if ok.any() else np.zeros((0, self.dim), dtype=np.float32))
        columns, offset = {}, 0
        for name, width in self.dims.items():
            columns[name] = slice(offset, offset + width)
            offset += width
        skipped = [(str(paths[i]), reasons[i]) for i in sorted(reasons)]
        return ExtractionResult(features, ok, skipped, n_cached, len(todo) - len(reasons),
                                time.perf_counter() - start, runtime_name, columns, keys)


class FusedExtractor:
    """Several backbones' features side by side (multi-backbone fusion)."""

    def __init__(self, extractors: list[FrozenExtractor]):
        self.extractors = extractors

    def identity(self) -> dict:
        parts = [extractor.identity() for extractor in self.extractors]
        return {"backbone": [part["backbone"] for part in parts],
                "layers": [part["layers"] for part in parts]}

    @property
    def layers(self) -> list[str]:
        return [f"{extractor.identity()['backbone']['name']}:{name}"
                for extractor in self.extractors for name in extractor.layers]

    @property
    def dims(self) -> dict[str, int]:
        return dict(zip(self.layers, (w for e in self.extractors for w in e.dims.values())))

    @property
    def dim(self) -> int:
        return sum(extractor.dim for extractor in self.extractors)

    @property
    def n_forward_images(self) -> int:
        return sum(extractor.n_forward_images for extractor in self.extractors)

    def extract(self, paths, progress: bool = False) -> ExtractionResult:
        paths = list(paths)
        results = [extractor.extract(paths, progress) for extractor in self.extractors]
        ok = np.logical_and.reduce([result.ok for result in results])
        blocks = [result.features[ok[result.ok]] for result in results]
        skipped = {path: reason for result in results for path, reason in result.skipped}
        columns, offset = {}, 0
        for name, width in self.dims.items():
            columns[name] = slice(offset, offset + width)
            offset += width
        return ExtractionResult(np.concatenate(blocks, axis=1), ok, sorted(skipped.items()),
                                min(r.n_cached for r in results), max(r.n_computed for r in results),
                                sum(r.seconds for r in results),
                                "+".join(r.runtime for r in results), columns,
                                results[0].digests)


class FeatureExtractor(TransformerMixin, BaseEstimator):
    """Image paths → frozen features of a pretrained backbone (a scikit-learn transformer).

    Parameters mirror the CLI: ``backbone`` (registry or timm name), ``weights`` and
    ``arch`` for a local checkpoint, ``layer`` (one or several, comma-separated, or
    ``stages``/``fne``/``all``/``all-conv``; several are concatenated), ``pooling``, ``batch_size``, ``runtime``
    (auto/onnx/eager), ``cache_dir`` (None: ``$TRANSFERKIT_CACHE_DIR`` or
    ``~/.cache/transferkit``), ``use_cache``, ``num_workers``, ``progress``, ``jpeg_draft``
    (decode large JPEGs at reduced scale: faster, slightly different features).

    ``transform`` raises :class:`DataError` naming unreadable images, because a
    transformer must return one row per input.
    """

    def __init__(self, backbone: str = DEFAULT_BACKBONE, weights: str | None = None,
                 arch: str | None = None, layer: str = DEFAULT_LAYER, pooling: str = "avg",
                 batch_size: int = 32, runtime: str = "auto", cache_dir: str | None = None,
                 use_cache: bool = True, num_workers: int | None = None, progress: bool = False,
                 jpeg_draft: bool = False):
        self.backbone = backbone
        self.weights = weights
        self.arch = arch
        self.layer = layer
        self.pooling = pooling
        self.batch_size = batch_size
        self.runtime = runtime
        self.cache_dir = cache_dir
        self.use_cache = use_cache
        self.num_workers = num_workers
        self.progress = progress
        self.jpeg_draft = jpeg_draft

    def fit(self, X=None, y=None):
        self.extractor_ = FrozenExtractor.from_name(
            self.backbone, self.weights, self.arch, layer=self.layer, pooling=self.pooling,
            cache_dir=self.cache_dir,
            use_cache=self.use_cache, runtime=self.runtime, batch_size=self.batch_size,
            num_workers=self.num_workers, jpeg_draft=self.jpeg_draft)
        self.n_features_out_ = self.extractor_.dim
        return self

    def transform(self, X) -> np.ndarray:
        if not hasattr(self, "extractor_"):
            self.fit()
        result = self.extractor_.extract(as_paths(X), progress=self.progress)
        if result.skipped:
            names = "; ".join(reason for _, reason in result.skipped[:5])
            raise DataError(f"{len(result.skipped)} image(s) could not be read: {names}")
        return result.features

    def get_feature_names_out(self, input_features=None):
        return np.array([f"{name}_{i}" for name, width in self.extractor_.dims.items()
                         for i in range(width)], dtype=object)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False
        tags.input_tags.string = True
        tags.requires_fit = False
        return tags


def build_extractor(backbone: str | None = None, weights=None, arch: str | None = None,
                    **options) -> "FrozenExtractor | FusedExtractor":
    """The extractor an estimator asks for: one backbone name, or several joined by ``+``
    (their features side by side). ``options`` go to every :class:`FrozenExtractor`
    (layer, pooling, cache_dir, use_cache, runtime, batch_size, num_workers)."""
    names = [name.strip() for name in (backbone or DEFAULT_BACKBONE).split("+")]
    if len(names) > 1 and weights is not None:
        raise DataError("--weights applies to one backbone; fuse bundled or timm names.")
    extractors = [FrozenExtractor.from_name(name, weights, arch, **options) for name in names]
    return extractors[0] if len(extractors) == 1 else FusedExtractor(extractors)


class FrozenFeaturesMixin:
    """``_extractor()`` / ``extract(X)`` for estimators whose parameters name a frozen
    backbone (backbone, weights, arch, layer, pooling, cache_dir, use_cache, runtime,
    batch_size, num_workers, progress); the extractor is built once, on first use."""

    def _extractor(self) -> "FrozenExtractor | FusedExtractor":
        if getattr(self, "extractor_", None) is None:
            self.extractor_ = build_extractor(
                self.backbone, self.weights, self.arch, layer=self.layer, pooling=self.pooling,
                cache_dir=self.cache_dir, use_cache=self.use_cache, runtime=self.runtime,
                batch_size=self.batch_size, num_workers=self.num_workers)
        return self.extractor_

    def extract(self, X):
        """Features of the readable images of ``X`` (an :class:`ExtractionResult`)."""
        return self._extractor().extract(as_paths(X), progress=self.progress)
