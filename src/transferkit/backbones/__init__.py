"""Pretrained networks by name, with their preprocessing."""

from transferkit.backbones import efficientnet_lite  # noqa: F401  (registers bundled names)
from transferkit.backbones.registry import (
    DEFAULT_BACKBONE,
    Backbone,
    cached_hub_models,
    weights_fingerprint,
    create_backbone,
    list_backbones,
    read_checkpoint,
    register_backbone,
)

__all__ = ["DEFAULT_BACKBONE", "Backbone", "cached_hub_models", "create_backbone",
           "list_backbones", "read_checkpoint", "register_backbone", "weights_fingerprint"]
