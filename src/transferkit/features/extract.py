"""Frozen-backbone feature extraction: decode in workers, run the fast path, cache.

``FrozenExtractor`` is the engine (used by the CLI and every feature-based method);
``FeatureExtractor`` wraps it as a scikit-learn transformer (image paths → features) so
it composes with ``Pipeline`` and ``GridSearchCV``.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from sklearn.base import BaseEstimator, TransformerMixin
from torch import nn
from torch.utils.data import DataLoader, Dataset

from transferkit.backbones import DEFAULT_BACKBONE, Backbone, create_backbone
from transferkit.data.images import load_image
from transferkit.errors import DataError, ImageDecodeError, TransferkitError
from transferkit.features.cache import FeatureCache, file_digest, namespace_key, resolve_cache_dir
from transferkit.features.runtime import cpu_threads, make_runtime

log = logging.getLogger(__name__)

LAYERS = ("pre_logits",)


class PreLogits(nn.Module):
    """The pooled vector that feeds the classifier: timm's ``forward_head(pre_logits=True)``."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(self.model.forward_features(images), pre_logits=True)


class _DecodeDataset(Dataset):
    """Decodes and preprocesses one image per item; a bad file yields an error, not a crash."""

    def __init__(self, paths: list[Path], transform, input_shape):
        self.paths = paths
        self.transform = transform
        self.input_shape = input_shape

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        try:
            tensor = self.transform(load_image(self.paths[index]))
            return tensor, index, ""
        except ImageDecodeError as exc:
            return torch.zeros(self.input_shape), index, str(exc)
        except Exception as exc:  # a transform failing on an odd image is still "skip it"
            return torch.zeros(self.input_shape), index, f"{self.paths[index]}: {exc}"


@dataclass
class ExtractionResult:
    """Features of the readable images, in input order, and what was skipped."""

    features: np.ndarray          # (n_ok, dim) float32
    ok: np.ndarray                # (n_input,) bool: which inputs have a row in features
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    n_cached: int = 0
    n_computed: int = 0
    seconds: float = 0.0
    runtime: str = ""


@functools.lru_cache(maxsize=4)
def shared_backbone(name: str | None, weights: str | None, arch: str | None) -> Backbone:
    """Backbones are frozen, so estimators and CV clones may share one instance."""
    return create_backbone(name, weights=weights, arch=arch)


class FrozenExtractor:
    """Extracts one layer's features of a frozen backbone, with an on-disk cache."""

    def __init__(self, backbone: Backbone, layer: str = "pre_logits",
                 cache_dir: str | os.PathLike | None = None, use_cache: bool = True,
                 runtime: str = "auto", batch_size: int = 32, num_workers: int | None = None):
        if layer not in LAYERS:
            raise TransferkitError(f"unknown layer {layer!r}; available: {', '.join(LAYERS)}.")
        self.backbone = backbone
        self.layer = layer
        self.batch_size = int(batch_size)
        self.num_workers = num_workers
        self.runtime_name = runtime
        self.transform = backbone.eval_transform()
        self.input_shape = tuple(backbone.data_config["input_size"])
        self.dim = backbone.num_features
        self.cache_root = resolve_cache_dir(cache_dir)
        self.use_cache = use_cache
        self._cache: FeatureCache | None = None
        self._runtime = None
        self.n_forward_images = 0  # images that went through the network (tests count it)

    def identity(self) -> dict:
        return {"backbone": self.backbone.identity(), "layer": self.layer,
                "preprocessing": repr(self.transform)}

    @property
    def cache(self) -> FeatureCache | None:
        if self.use_cache and self._cache is None:
            self._cache = FeatureCache(self.cache_root, self.identity(), self.dim)
        return self._cache

    @property
    def runtime(self):
        if self._runtime is None:
            onnx_path = self.cache_root / "onnx" / f"{namespace_key(self.identity())}.onnx"
            self._runtime = make_runtime(PreLogits(self.backbone.model), self.input_shape,
                                         self.runtime_name, onnx_path)
        return self._runtime

    def _workers(self, n_images: int) -> int:
        if self.num_workers is not None:
            return int(self.num_workers)
        # Worker start-up costs ~0.1 s each; only worth it for more than a few batches.
        return 0 if n_images <= 2 * self.batch_size else min(2, cpu_threads())

    def extract(self, paths, progress: bool = False) -> ExtractionResult:
        from tqdm.auto import tqdm

        start = time.perf_counter()
        paths = [Path(p) for p in paths]
        rows: list[np.ndarray | None] = [None] * len(paths)
        reasons: dict[int, str] = {}
        keys: list[str | None] = [None] * len(paths)
        cache = self.cache
        for i, path in enumerate(paths):
            try:
                keys[i] = file_digest(path)
            except OSError as exc:
                reasons[i] = f"{path}: cannot read file ({exc.strerror or exc})"
                continue
            if cache is not None:
                rows[i] = cache.get(keys[i])
        n_cached = sum(row is not None for row in rows)
        todo = [i for i in range(len(paths)) if rows[i] is None and i not in reasons]
        runtime_name = "cache"
        if todo:
            runtime = self.runtime
            runtime_name = runtime.name
            dataset = _DecodeDataset([paths[i] for i in todo], self.transform, self.input_shape)
            workers = self._workers(len(todo))
            loader = DataLoader(dataset, batch_size=self.batch_size, shuffle=False,
                                num_workers=workers, persistent_workers=False,
                                prefetch_factor=4 if workers else None)
            with tqdm(total=len(todo), desc=f"features ({runtime.name})", unit="img",
                      disable=not progress, leave=False) as bar:
                for images, index, errors in loader:
                    good = [j for j, err in enumerate(errors) if not err]
                    for j, err in enumerate(errors):
                        if err:
                            reasons[todo[int(index[j])]] = err
                    if good:
                        output = runtime(images[good])
                        self.n_forward_images += len(good)
                        for row, j in zip(output, good):
                            i = todo[int(index[j])]
                            rows[i] = np.asarray(row, dtype=np.float32)
                            if cache is not None:
                                cache.put(keys[i], rows[i])
                    bar.update(len(errors))
        ok = np.array([row is not None for row in rows], dtype=bool)
        features = (np.stack([row for row in rows if row is not None]).astype(np.float32)
                    if ok.any() else np.zeros((0, self.dim), dtype=np.float32))
        skipped = [(str(paths[i]), reasons[i]) for i in sorted(reasons)]
        return ExtractionResult(features, ok, skipped, n_cached, len(todo) - len(reasons),
                                time.perf_counter() - start, runtime_name)


class FeatureExtractor(TransformerMixin, BaseEstimator):
    """Image paths → frozen features of a pretrained backbone (a scikit-learn transformer).

    Parameters mirror the CLI: ``backbone`` (registry or timm name), ``weights`` and
    ``arch`` for a local checkpoint, ``layer``, ``batch_size``, ``runtime``
    (auto/onnx/eager), ``cache_dir`` (None: ``$TRANSFERKIT_CACHE_DIR`` or
    ``~/.cache/transferkit``), ``use_cache``, ``num_workers``, ``progress``.

    ``transform`` raises :class:`DataError` naming unreadable images, because a
    transformer must return one row per input.
    """

    def __init__(self, backbone: str = DEFAULT_BACKBONE, weights: str | None = None,
                 arch: str | None = None, layer: str = "pre_logits", batch_size: int = 32,
                 runtime: str = "auto", cache_dir: str | None = None, use_cache: bool = True,
                 num_workers: int | None = None, progress: bool = False):
        self.backbone = backbone
        self.weights = weights
        self.arch = arch
        self.layer = layer
        self.batch_size = batch_size
        self.runtime = runtime
        self.cache_dir = cache_dir
        self.use_cache = use_cache
        self.num_workers = num_workers
        self.progress = progress

    def fit(self, X=None, y=None):
        backbone = shared_backbone(self.backbone, None if self.weights is None else str(self.weights),
                                   self.arch)
        self.extractor_ = FrozenExtractor(backbone, self.layer, self.cache_dir, self.use_cache,
                                          self.runtime, self.batch_size, self.num_workers)
        self.n_features_out_ = self.extractor_.dim
        return self

    def transform(self, X) -> np.ndarray:
        if not hasattr(self, "extractor_"):
            self.fit()
        result = self.extractor_.extract(_as_paths(X), progress=self.progress)
        if result.skipped:
            names = "; ".join(reason for _, reason in result.skipped[:5])
            raise DataError(f"{len(result.skipped)} image(s) could not be read: {names}")
        return result.features

    def get_feature_names_out(self, input_features=None):
        return np.array([f"{self.layer}_{i}" for i in range(self.n_features_out_)], dtype=object)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False
        tags.input_tags.string = True
        tags.requires_fit = False
        return tags


def _as_paths(X) -> list[Path]:
    if isinstance(X, (str, os.PathLike)):
        X = [X]
    array = np.asarray(X, dtype=object).reshape(-1)
    if array.size == 0:
        raise DataError("no images given.")
    return [Path(str(p)) for p in array]
