"""``skops.io`` without PyTorch: the one way transferkit imports skops.

Importing ``skops.io`` lists every scikit-learn estimator (``sklearn.utils.all_estimators``,
for its default trusted types), and that walk imports every sub-package of scikit-learn,
``sklearn.externals.array_api_compat.torch`` among them, which imports PyTorch whenever it
is installed: seconds of start-up, and a warm ``fit`` on cached features (or a
``predict`` with a cached model) needs no network at all. Those array-API shims are only
used when scikit-learn's array API dispatch is switched on, which transferkit never does,
so they are kept out while skops is imported (the walk skips a package that raises
ImportError); a later import of them, by anyone, works as usual because a failed import
leaves nothing in ``sys.modules``.

The walk itself is skipped too: while skops is imported, ``all_estimators`` answers an
empty list, which spares the import the walk through all of scikit-learn (0.3 s here, and
pytest, which the walk pulls in), and leaves scikit-learn's estimators out of the types
skops trusts by default. What a bundle may hold does not depend on it:
:func:`transferkit.methods.linear_probe.load_classifier` checks every type a file names
against transferkit's own lists, whoever imported skops first.
"""

from __future__ import annotations

import importlib
import sys

# The array-API backends scikit-learn vendors shims for; each imports its library.
_HEAVY_SHIMS = ("torch", "cupy", "dask", "jax", "ndonnx", "sparse")
_SHIM_PACKAGE = "sklearn.externals.array_api_compat."


class _SkipArrayApiShims:
    """A meta-path finder that refuses the vendored array-API shims of heavy libraries."""

    def find_spec(self, name, path=None, target=None):
        if name.startswith(_SHIM_PACKAGE) and name[len(_SHIM_PACKAGE):].split(".")[0] in _HEAVY_SHIMS:
            raise ImportError(f"{name} is not needed to save or load a classifier")
        return None


def _no_estimators(*args, **kwargs) -> list:
    return []


def skops_io():
    """The ``skops.io`` module, imported without importing PyTorch, JAX, CuPy or Dask, and
    without trusting every scikit-learn estimator by default."""
    if "skops.io" in sys.modules:
        return sys.modules["skops.io"]
    import sklearn.utils

    finder = _SkipArrayApiShims()
    listing = sklearn.utils.all_estimators
    sys.meta_path.insert(0, finder)
    sklearn.utils.all_estimators = _no_estimators  # skops reads it once, at import
    try:
        return importlib.import_module("skops.io")
    finally:
        sklearn.utils.all_estimators = listing
        sys.meta_path.remove(finder)
