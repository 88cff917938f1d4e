"""Frozen features: extraction, execution paths, the on-disk cache."""

from transferkit.features.cache import FeatureCache, default_cache_dir
from transferkit.features.extract import (
    ExtractionResult,
    FeatureExtractor,
    FrozenExtractor,
    shared_backbone,
)

__all__ = ["FeatureCache", "default_cache_dir", "ExtractionResult", "FeatureExtractor",
           "FrozenExtractor", "shared_backbone"]
