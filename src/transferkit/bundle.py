"""A trained model as one folder: ``config.json`` + weights + ``metrics.json``.

Every method's estimator implements two hooks:

* ``_save_artifacts(folder) -> dict``: write its learned state (safetensors for tensors,
  skops for scikit-learn objects; never pickle) and return the JSON-able config it needs;
* classmethod ``_load_artifacts(folder, config) -> estimator``.

The method name in ``config.json`` picks the class on load through :data:`METHODS`, so
this module knows no method by itself.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

from transferkit.errors import BundleError

FORMAT_VERSION = 1
METHODS: dict[str, type] = {}


def register_method(name: str):
    """Class decorator: make ``name`` loadable from a bundle."""

    def decorate(cls):
        METHODS[name] = cls
        cls.bundle_method = name
        return cls

    return decorate


def _versions() -> dict:
    # Read from package metadata: importing torch just to print its version costs seconds.
    from importlib.metadata import PackageNotFoundError, version

    versions = {"python": platform.python_version()}
    for package in ("transferkit", "torch", "timm", "scikit-learn", "numpy", "onnxruntime"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = None
    return versions


def write_json_atomic(path: Path, payload) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(payload, handle, indent=2, sort_keys=True, default=str)
    os.replace(tmp, path)


def save_bundle(estimator, folder: str | os.PathLike, metrics: dict | None = None,
                extra: dict | None = None) -> Path:
    """Write ``estimator`` to ``folder``; the folder appears complete or not at all."""
    folder = Path(folder)
    method = getattr(estimator, "bundle_method", None)
    if method is None:
        raise BundleError(f"{type(estimator).__name__} cannot be saved as a bundle.")
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.partial-"))
    try:
        config = {"format_version": FORMAT_VERSION, "method": method,
                  "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "versions": _versions()}
        config.update(estimator._save_artifacts(staging))
        if extra:
            config.update(extra)
        write_json_atomic(staging / "config.json", config)
        write_json_atomic(staging / "metrics.json", metrics or {})
        # Keep extra files a run wrote into the old folder (plots, metrics.csv) only if
        # the new bundle has none of that name; the old model itself is replaced whole.
        if folder.exists():
            backup = folder.with_name(f".{folder.name}.old-{os.getpid()}")
            os.replace(folder, backup)
            os.replace(staging, folder)
            shutil.rmtree(backup, ignore_errors=True)
        else:
            os.replace(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return folder


def read_config(folder: str | os.PathLike) -> dict:
    folder = Path(folder)
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise BundleError(f"{folder}: not a transferkit model folder (no config.json). "
                          "Give the --out folder of `transferkit fit`.")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{config_path}: damaged ({exc}). Re-run `transferkit fit`.") from exc
    if config.get("format_version") != FORMAT_VERSION:
        raise BundleError(f"{folder}: bundle format {config.get('format_version')} is not "
                          f"supported by this transferkit (format {FORMAT_VERSION}).")
    return config


def load_bundle(folder: str | os.PathLike):
    """Load the estimator saved in ``folder`` by :func:`save_bundle`."""
    # Importing the methods package registers every method class.
    import transferkit.methods  # noqa: F401

    folder = Path(folder)
    config = read_config(folder)
    cls = METHODS.get(config.get("method"))
    if cls is None:
        raise BundleError(f"{folder}: unknown method {config.get('method')!r} "
                          f"(known: {sorted(METHODS)}).")
    try:
        return cls._load_artifacts(folder, config)
    except BundleError:
        raise
    except (OSError, KeyError, ValueError) as exc:
        raise BundleError(f"{folder}: cannot load the saved model ({type(exc).__name__}: {exc}).") from exc
