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
from pathlib import Path

import numpy as np

from transferkit.errors import BundleError

HEAD_FILE = "classifier.safetensors"
FORMAT = "transferkit.linear-head/1"
# The step sequences written as tensors, named as make_pipeline names them.
STEP_SEQUENCES = (("standardscaler", "logisticregression"),
                  ("normalizer", "standardscaler", "logisticregression"))
_SETTINGS = ("C", "max_iter", "tol")  # the regression's, the others being its defaults
_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))
_INTEGERS = (np.dtype(np.int32), np.dtype(np.int64))


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
    if np.ndim(getattr(scaler, "n_samples_seen_", None)) != 0 or not np.array_equal(
            getattr(model, "classes_", None), np.arange(len(model.classes_))):
        return None  # NaN-aware counts per feature, or labels other than 0, 1, ...
    return names


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
    params = model.get_params()
    settings = {"C": float(params["C"]), "max_iter": int(params["max_iter"]),
                "tol": float(params["tol"])}
    metadata = {"format": FORMAT, "steps": json.dumps(list(names)),
                "settings": json.dumps(settings)}
    save_file({key: np.ascontiguousarray(value) for key, value in tensors.items()},
              str(path), metadata=metadata)


def _refuse(path: Path, why: str):
    from transferkit.bundle import REDO_HINT

    raise BundleError(f"{path}: {why}. {REDO_HINT}")


def _read(path: Path) -> tuple[dict, dict[str, np.ndarray]]:
    """The file's metadata and tensors; any fault in the file is one BundleError."""
    from safetensors import safe_open

    if not path.is_file():
        _refuse(path.parent, f"{path.name} is missing")
    try:
        with safe_open(str(path), framework="np") as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except Exception as exc:  # not safetensors, a truncated file, a garbled header...
        from transferkit.bundle import first_line

        _refuse(path, f"not a readable safetensors file ({type(exc).__name__}: "
                      f"{first_line(exc)})")
    return metadata, tensors


def _settings(path: Path, metadata: dict) -> tuple[tuple[str, ...], dict]:
    if set(metadata) != {"format", "steps", "settings"} or metadata["format"] != FORMAT:
        _refuse(path, f"its metadata is not that of a {FORMAT} file")
    try:
        names, settings = tuple(json.loads(metadata["steps"])), json.loads(metadata["settings"])
    except (ValueError, TypeError):
        _refuse(path, "its metadata is not valid JSON")
    if names not in STEP_SEQUENCES:
        _refuse(path, f"its steps {list(names)} are none that transferkit writes")
    if not isinstance(settings, dict) or set(settings) != set(_SETTINGS):
        _refuse(path, f"its settings must be exactly {', '.join(_SETTINGS)}")
    C, max_iter, tol = (settings[key] for key in _SETTINGS)
    if not (type(C) is float and math.isfinite(C) and C > 0 and type(max_iter) is int
            and max_iter >= 1 and type(tol) is float and math.isfinite(tol) and tol > 0):
        _refuse(path, f"its settings {settings} are out of range")
    return names, settings


def load_linear_head(path: str | Path):
    """The scikit-learn pipeline in a ``classifier.safetensors`` file, rebuilt from its
    numbers after every name, type, shape and value has been checked."""
    from sklearn.pipeline import make_pipeline

    path = Path(path)
    metadata, tensors = _read(path)
    names, settings = _settings(path, metadata)
    expected = {"standardscaler.mean", "standardscaler.var", "standardscaler.scale",
                "standardscaler.n_samples_seen", "logisticregression.coef",
                "logisticregression.intercept", "logisticregression.classes",
                "logisticregression.n_iter"}
    if set(tensors) != expected:
        _refuse(path, f"it holds tensors {sorted(tensors)}, not {sorted(expected)}")
    for key, value in tensors.items():
        allowed = _INTEGERS if key.endswith(("classes", "n_iter", "n_samples_seen")) else _FLOATS
        if value.dtype not in allowed:
            _refuse(path, f"{key} is {value.dtype}, not {' or '.join(map(str, allowed))}")
        if not np.isfinite(value).all():
            _refuse(path, f"{key} holds values that are not finite")
    mean, classes = tensors["standardscaler.mean"], tensors["logisticregression.classes"]
    width, n_classes = (mean.shape[0] if mean.ndim == 1 else 0), classes.shape[0]
    rows = 1 if n_classes == 2 else n_classes  # LogisticRegression's coef_ rows
    shapes = {"standardscaler.mean": (width,), "standardscaler.var": (width,),
              "standardscaler.scale": (width,), "standardscaler.n_samples_seen": (1,),
              "logisticregression.coef": (rows, width), "logisticregression.intercept": (rows,),
              "logisticregression.classes": (n_classes,), "logisticregression.n_iter": (1,)}
    for key, shape in shapes.items():
        if tensors[key].shape != shape:
            _refuse(path, f"{key} has shape {list(tensors[key].shape)}, not {list(shape)}")
    if width < 1 or n_classes < 2 or not np.array_equal(classes, np.arange(n_classes)):
        _refuse(path, f"it has {width} features and classes {classes.tolist()[:5]}; "
                      "transferkit writes at least one feature and classes 0, 1, ...")
    if (tensors["standardscaler.scale"] <= 0).any() or (tensors["standardscaler.var"] < 0).any():
        _refuse(path, "its standardisation divides by a scale that is not positive")
    if tensors["standardscaler.n_samples_seen"][0] < 1:
        _refuse(path, "its standardisation saw no training image")

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
