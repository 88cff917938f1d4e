"""The default linear probe's classifier as tensors: ``classifier.safetensors``.

The pipelines ``logreg`` and ``logreg-stream`` fit (an optional L2 normalisation,
standardisation, logistic regression) are a handful of arrays. Written as safetensors,
with the steps and the regression's settings in the file's metadata, they load without
skops and without any object graph to trust: reading parses a length-checked JSON header
and copies numbers, and the pipeline is rebuilt from those numbers by the code below, as
:func:`~transferkit.features.classifiers.fit_logreg_streaming` builds its fitted model.
Saving needs no skops either, whose import (it walks numpy's and SciPy's functions for
its trusted types) was a tenth of a warm ``fit`` (issue 16).

Every other pipeline (PCA, the FNE embedding, the SVM, k-NN, MLP, the CV search) is
saved with skops and loaded against transferkit's list of exact trusted types
(:func:`transferkit.methods.linear_probe.load_classifier`).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np

from transferkit.errors import BundleError

HEAD_FILE = "classifier.safetensors"
FORMAT = "transferkit.linear-head/1"
# The step sequences written as tensors, named as make_pipeline names them.
STEP_SEQUENCES = (("standardscaler", "logisticregression"),
                  ("normalizer", "standardscaler", "logisticregression"))
_SETTINGS = ("C", "max_iter", "tol")  # the regression's, the others being its defaults


def _plain_steps():
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import Normalizer, StandardScaler

    return {"normalizer": Normalizer, "standardscaler": StandardScaler,
            "logisticregression": LogisticRegression}


def head_steps(pipeline) -> tuple[str, ...] | None:
    """The step names if ``pipeline`` (fitted) can be written as tensors: one of
    :data:`STEP_SEQUENCES` with every setting at its default but the regression's
    :data:`_SETTINGS`; otherwise None (it is then saved with skops)."""
    steps = getattr(pipeline, "steps", None)
    if not isinstance(steps, list):
        return None
    names = tuple(name for name, _ in steps)
    if names not in STEP_SEQUENCES:
        return None
    kinds = _plain_steps()
    for name, step in steps:
        if type(step) is not kinds[name]:
            return None
        params = step.get_params()
        settings = {key: params[key] for key in _SETTINGS} if name == "logisticregression" else {}
        if params != kinds[name](**settings).get_params():
            return None
    scaler, model = pipeline.steps[-2][1], pipeline.steps[-1][1]
    seen, classes = getattr(scaler, "n_samples_seen_", None), getattr(model, "classes_", None)
    if (seen is None or np.ndim(seen) != 0 or seen < 1 or seen != int(seen) or classes is None
            or not np.array_equal(classes, np.arange(len(classes)))):
        return None  # unfitted, counts per feature or weighted, or labels other than 0, 1, ...
    if _settings_fault(_settings_of(model)) is not None:
        return None  # valid for scikit-learn, but not what the probe fits or the loader takes
    return names


def _settings_of(model) -> dict:
    params = model.get_params()
    return {"C": float(params["C"]), "max_iter": params["max_iter"], "tol": float(params["tol"])}


def _settings_fault(settings) -> str | None:
    """Why ``settings`` are not a regression's :data:`_SETTINGS` in range, or None."""
    if not isinstance(settings, dict) or set(settings) != set(_SETTINGS):
        return f"its settings must be exactly {', '.join(_SETTINGS)}"
    C, max_iter, tol = (settings[key] for key in _SETTINGS)
    if not (type(C) is float and math.isfinite(C) and C > 0 and type(max_iter) is int
            and 1 <= max_iter <= 10**9 and type(tol) is float and math.isfinite(tol) and tol > 0):
        return f"its settings {settings} are out of range"
    return None


def save_linear_head(pipeline, path: str | Path) -> None:
    """Write ``pipeline`` (fitted; :func:`head_steps` must accept it) to ``path``."""
    from safetensors.numpy import save_file

    names = head_steps(pipeline)
    if names is None:
        raise ValueError(f"{pipeline!r} is not a pipeline {HEAD_FILE} can hold")
    steps = dict(pipeline.steps)
    scaler, model = steps["standardscaler"], steps["logisticregression"]
    tensors = {
        "standardscaler.mean": scaler.mean_, "standardscaler.var": scaler.var_,
        "standardscaler.scale": scaler.scale_,
        "standardscaler.n_samples_seen": np.atleast_1d(np.asarray(scaler.n_samples_seen_,
                                                                  dtype=np.int64)),
        "logisticregression.coef": model.coef_, "logisticregression.intercept": model.intercept_,
        "logisticregression.classes": np.asarray(model.classes_, dtype=np.int64),
        "logisticregression.n_iter": np.asarray(model.n_iter_, dtype=np.int64),
    }
    settings = _settings_of(model)
    metadata = {"format": FORMAT, "steps": json.dumps(list(names)),
                "settings": json.dumps(settings)}
    save_file({key: np.ascontiguousarray(value) for key, value in tensors.items()},
              str(path), metadata=metadata)


def _refuse(path: Path, why: str):
    from transferkit.bundle import REDO_HINT

    raise BundleError(f"{path}: {why}. {REDO_HINT}")


def _settings(path: Path, metadata: dict) -> tuple[tuple[str, ...], dict]:
    if set(metadata) != {"format", "steps", "settings"} or metadata["format"] != FORMAT:
        _refuse(path, f"its metadata is not that of a {FORMAT} file")
    try:
        names, settings = json.loads(metadata["steps"]), json.loads(metadata["settings"])
    except (ValueError, TypeError, RecursionError):
        _refuse(path, "its metadata is not valid JSON")
    if not isinstance(names, list) or tuple(names) not in STEP_SEQUENCES:
        _refuse(path, f"its steps {str(names)[:200]} are none that transferkit writes")
    if (fault := _settings_fault(settings)) is not None:
        _refuse(path, fault[:300])
    return tuple(names), settings


_TENSORS = ("standardscaler.mean", "standardscaler.var", "standardscaler.scale",
            "standardscaler.n_samples_seen", "logisticregression.coef",
            "logisticregression.intercept", "logisticregression.classes",
            "logisticregression.n_iter")
_INTEGER_TENSORS = ("standardscaler.n_samples_seen", "logisticregression.classes",
                    "logisticregression.n_iter")
# safetensors' names of the dtypes each kind of tensor may have (compared as names: numpy
# takes None for float64 in a dtype comparison)
_FLOAT_NAMES, _INTEGER_NAMES = ("F32", "F64"), ("I32", "I64")


def _check_layout(path: Path, handle, width: int | None, n_classes: int | None) -> None:
    """Names, dtypes and shapes, read from the header alone: a file declaring gigabytes
    (a sparse file takes no room on disk) is refused before any of it is read."""
    keys = set(handle.keys())
    if keys != set(_TENSORS):
        _refuse(path, f"it holds tensors {sorted(keys)[:12]}, not {sorted(_TENSORS)}")
    layout = {}
    for key in _TENSORS:
        part = handle.get_slice(key)
        allowed = _INTEGER_NAMES if key in _INTEGER_TENSORS else _FLOAT_NAMES
        if part.get_dtype() not in allowed:
            _refuse(path, f"{key} is {part.get_dtype()}, not {' or '.join(allowed)}")
        layout[key] = tuple(part.get_shape())
    given = "" if width is None and n_classes is None else \
        " (config.json's n_features and classes)"
    mean, classes = layout["standardscaler.mean"], layout["logisticregression.classes"]
    width = (mean[0] if len(mean) == 1 else 0) if width is None else width
    n_classes = (classes[0] if len(classes) == 1 else 0) if n_classes is None else n_classes
    rows = 1 if n_classes == 2 else n_classes  # LogisticRegression's coef_ rows
    expected = {"standardscaler.mean": (width,), "standardscaler.var": (width,),
                "standardscaler.scale": (width,), "standardscaler.n_samples_seen": (1,),
                "logisticregression.coef": (rows, width), "logisticregression.intercept": (rows,),
                "logisticregression.classes": (n_classes,), "logisticregression.n_iter": (1,)}
    for key, shape in expected.items():
        if layout[key] != shape:
            _refuse(path, f"{key} has shape {list(layout[key])}, not {list(shape)}{given}")


def _read(path: Path, width: int | None, n_classes: int | None):
    """(step names, settings, tensors), every one checked; any fault is one BundleError."""
    from safetensors import safe_open

    from transferkit.bundle import first_line

    if not path.is_file():
        what = "is missing" if not os.path.lexists(path) else "is not a regular file"
        _refuse(path.parent, f"{path.name} {what}")
    try:
        with safe_open(str(path), framework="np") as handle:
            names, settings = _settings(path, handle.metadata() or {})
            _check_layout(path, handle, width, n_classes)
            tensors = {key: handle.get_tensor(key) for key in _TENSORS}
    except BundleError:
        raise
    except Exception as exc:  # not safetensors, a truncated file, a garbled header...
        _refuse(path, f"not a readable safetensors file ({type(exc).__name__}: "
                      f"{first_line(exc)})")
    return names, settings, tensors


def load_linear_head(path: str | Path, width: int | None = None, n_classes: int | None = None):
    """The scikit-learn pipeline in a ``classifier.safetensors`` file, rebuilt from its
    numbers after every name, type, shape and value has been checked; ``width`` and
    ``n_classes``, when given (a model folder's config.json), are the shapes it must have."""
    from sklearn.pipeline import make_pipeline

    path = Path(path)
    names, settings, tensors = _read(path, width, n_classes)
    for key, value in tensors.items():
        if not np.isfinite(value).all():
            _refuse(path, f"{key} holds values that are not finite")
    classes = tensors["logisticregression.classes"]
    width, n_classes = tensors["standardscaler.mean"].shape[0], classes.shape[0]
    if width < 1 or n_classes < 2 or not np.array_equal(classes, np.arange(n_classes)):
        _refuse(path, f"it has {width} features and classes {classes[:5].tolist()}; "
                      "transferkit writes at least one feature and classes 0, 1, ...")
    if (tensors["standardscaler.scale"] <= 0).any() or (tensors["standardscaler.var"] < 0).any():
        _refuse(path, "its standardisation divides by a scale that is not positive")
    if tensors["standardscaler.n_samples_seen"][0] < 1 or tensors["logisticregression.n_iter"][0] < 0:
        _refuse(path, "its counts are negative or it saw no training image")

    kinds = _plain_steps()
    steps = []
    if names[0] == "normalizer":
        normaliser = kinds["normalizer"]()
        normaliser.n_features_in_ = width
        steps.append(normaliser)
    scaler = kinds["standardscaler"]()
    scaler.mean_, scaler.var_ = tensors["standardscaler.mean"], tensors["standardscaler.var"]
    scaler.scale_ = tensors["standardscaler.scale"]
    scaler.n_samples_seen_ = int(tensors["standardscaler.n_samples_seen"][0])
    scaler.n_features_in_ = width
    model = kinds["logisticregression"](**settings)
    model.coef_, model.intercept_ = tensors["logisticregression.coef"], \
        tensors["logisticregression.intercept"]
    model.classes_, model.n_iter_ = classes, tensors["logisticregression.n_iter"].astype(np.int32)
    model.n_features_in_ = width
    return make_pipeline(*steps, scaler, model)
