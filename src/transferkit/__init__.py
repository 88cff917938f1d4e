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
           "BackboneError", "BundleError", "CacheError", "load_predictor"]


def __getattr__(name: str):
    # PEP 562: `transferkit.load_predictor` imports ONNX Runtime only when asked for.
    if name == "load_predictor":
        from transferkit.runtime import load_predictor

        return load_predictor
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
