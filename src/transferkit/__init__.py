"""transferkit: reuse a pretrained network for a small image classification task."""

__version__ = "0.1.0"

from transferkit.errors import (  # noqa: E402
    BackboneError,
    BundleError,
    CacheError,
    DataError,
    ImageDecodeError,
    TransferkitError,
)

__all__ = ["__version__", "TransferkitError", "DataError", "ImageDecodeError",
           "BackboneError", "BundleError", "CacheError"]
