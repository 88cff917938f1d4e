"""A trained model as one folder: ``config.json`` + weights + ``metrics.json``.

Every method's estimator implements two hooks:

* ``_save_artifacts(folder) -> dict``: write its learned state (safetensors for tensors,
  skops for scikit-learn objects; never pickle) and return the JSON-able config it needs;
* classmethod ``_load_artifacts(folder, config) -> estimator``;

and :data:`METHOD_FILES` lists the file names its ``_save_artifacts`` writes.

The method name in ``config.json`` picks the class on load through the method registry
(:mod:`transferkit.methods.registry`), so this module imports no method.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import time
from pathlib import Path

from transferkit.errors import BundleError
from transferkit.outputs import write_json_atomic

FORMAT_VERSION = 1

# The files each bundle-saving method's ``_save_artifacts`` writes, its weights first, and
# those every bundle has. Overwriting a model replaces or removes only these names (with the
# marker and the work folder): a marker or config.json listing more was edited, and what it
# lists may be the user's (see :func:`transferkit.outputs.own_entries`). save_bundle refuses
# a method that writes a name missing here, so the list cannot fall behind the methods.
COMMON_FILES = ("config.json", "metrics.json")
# A linear probe writes one of these: classifier.safetensors for the default pipelines,
# classifier.skops for the others (transferkit.features.linear_head).
CLASSIFIER_FILES = ("classifier.safetensors", "classifier.skops")
METHOD_FILES = {
    "linear_probe": CLASSIFIER_FILES,
    "fne": CLASSIFIER_FILES,  # saved as linear_probe; listed since it saves bundles too
    "finetune": ("model.safetensors", "metrics.csv", "learning_curves.png"),
    "siamese": ("embedding.safetensors",),
    "distill": ("student.safetensors",),
    "segment": ("segmenter.safetensors", "metrics.csv", "learning_curves.png"),
}


def weight_files(method: str) -> tuple[str, ...]:
    """The names of which a saved model of ``method`` has one: its weights."""
    files = METHOD_FILES[method]
    return files if files == CLASSIFIER_FILES else files[:1]


def bundle_file_names() -> set[str]:
    """Every name a saved model has in its folder, whatever its method."""
    return {*COMMON_FILES, *(name for files in METHOD_FILES.values() for name in files)}


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


def save_bundle(estimator, folder: str | os.PathLike, metrics: dict | None = None,
                extra: dict | None = None, overwrite: bool = False) -> Path:
    """Write ``estimator`` to ``folder``; the model appears complete or not at all.

    ``folder`` must be new, empty or written by transferkit (see :mod:`transferkit.outputs`);
    a saved model or finished run there is replaced only with ``overwrite=True``. Only
    entries transferkit wrote are replaced or removed: files a user added are kept.
    """
    from transferkit import outputs

    from transferkit.methods.registry import bundle_name_of

    method = bundle_name_of(estimator)
    if method is None:
        raise BundleError(f"{type(estimator).__name__} cannot be saved as a bundle.")
    shown = folder
    folder = outputs.check_output_folder(folder, overwrite=overwrite)
    exists = folder.is_dir()
    if exists:
        staging_parent, prefix = folder, f"{outputs.OWN_PREFIX}-staging-"
        own_before = outputs.own_entries(folder)
        marker_before = outputs.read_marker(folder) or {}
        config_before = outputs.bundle_config(folder)
    else:
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging_parent, prefix = folder.parent, f".{folder.name}.partial-"
        own_before, marker_before, config_before = set(), {}, None
    staging = outputs.make_staging_folder(staging_parent, prefix)
    try:
        config = {"format_version": FORMAT_VERSION, "method": method,
                  "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "versions": _versions()}
        config.update(estimator._save_artifacts(staging))
        unknown = sorted({p.name for p in staging.iterdir()}
                         - {*COMMON_FILES, *METHOD_FILES.get(method, ())})
        if unknown:
            raise BundleError(f"{type(estimator).__name__} wrote {', '.join(unknown)}, which "
                              f"transferkit.bundle.METHOD_FILES does not list for {method!r}; "
                              "add them there, or an overwrite could not replace them.")
        if extra:
            config.update(extra)
        write_json_atomic(staging / "metrics.json", metrics or {})
        names = sorted({p.name for p in staging.iterdir()} | {"config.json", outputs.MARKER})
        config["files"] = names
        write_json_atomic(staging / "config.json", config)
        outputs.mark_output_folder(staging, marker_before.get("command") or "save_bundle",
                                   set(names) | outputs.marked_files(marker_before))
        outputs.apply_default_modes(staging)
        if not exists:
            try:
                os.replace(staging, folder)
            except OSError as exc:  # the folder appeared meanwhile with something in it
                raise BundleError(f"{shown}: appeared while the model was being saved "
                                  f"({exc.strerror}); save to another folder.") from exc
            return folder
        if marker_before == {} and config_before is not None and "files" not in config_before:
            # A model saved before bundles listed their files wrote these names too.
            own_before |= set(names)
        _install_in_place(staging, folder, names, own_before, shown)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return folder


def _install_in_place(staging: Path, folder: Path, names: list[str], own_before: set[str],
                      shown) -> None:
    """Move the staged bundle into the existing ``folder`` (which may be the working
    directory, so it is never renamed). ``config.json`` goes first out and last in: in
    between the folder reads as an unfinished run, never as a mix of two models."""
    from transferkit.outputs import LAYOUTS, MARKER, OWN_PREFIX, remove_entry

    foreign = [n for n in names if n != MARKER and os.path.lexists(folder / n)
               and n not in own_before]
    if foreign:
        raise BundleError(f"{shown}: {', '.join(foreign)} here was not written by transferkit "
                          "and the model needs that name; move it away, then save again "
                          "(nothing was changed).")
    (folder / "config.json").unlink(missing_ok=True)
    for name in names:
        if name != "config.json":
            target = folder / name
            if os.path.lexists(target) and (target.is_dir() or (staging / name).is_dir()):
                remove_entry(target)  # os.replace cannot put a folder over a file or folder
            os.replace(staging / name, target)
    # What the previous run left and this model does not replace: the old model's other
    # files, the training work folder (its weights are in the model now). Nothing else,
    # even if transferkit wrote it (a demo's data, say): saving a model replaces a model.
    stale = {name for name in own_before - set(names)
             if name.startswith(OWN_PREFIX) or name in bundle_file_names()
             or name in LAYOUTS["fit"].entries}
    for name in sorted(stale):
        if os.path.lexists(folder / name):
            remove_entry(folder / name)
    os.replace(staging / "config.json", folder / "config.json")


# -- loading ----------------------------------------------------------------------------
# A model folder may come from anyone, so everything in it is untrusted input: the config
# is checked against its method's schema, the parts against each other, and any failure
# becomes one BundleError naming the folder (the CLI prints one line, not a traceback).

REDO_HINT = "Get the model folder again from where it came, or re-run `transferkit fit`."
# The most classes a model folder may name: weights are read in the shapes config.json
# gives (a linear probe's: classes × features), so the class count bounds what a crafted
# folder can make a load allocate (1 GB for the default 1280 features in float64).
MAX_CLASSES = 100_000

# JSON's types as json.loads returns them. bool subclasses int in Python but is no
# integer in JSON, so only "boolean" matches it.
_JSON_TYPES = {"object": dict, "array": list, "string": str, "integer": int,
               "number": (int, float), "boolean": bool, "null": type(None)}
JSON_SCALAR = "string|integer|number|boolean|null"
CLASS_NAMES = ["string|integer|number|boolean"]
BACKBONE_IDENTITY = {"name": "string", "arch": "string", "weights_digest": "string",
                     "data_config": "object"}
# sklearn's convention lets a seed be None even where the default is a number.
_NULLABLE_PARAMS = ("random_state",)


def _json_type(value) -> str:
    if isinstance(value, bool):
        return "boolean"
    for name, types in _JSON_TYPES.items():
        if name != "number" and isinstance(value, types):
            return name
    return "number" if isinstance(value, float) else type(value).__name__


def _kinds(spec) -> set[str]:
    if isinstance(spec, str):
        kinds = set(spec.split("|"))
        return kinds | {"integer"} if "number" in kinds else kinds
    if isinstance(spec, tuple):
        return set().union(*map(_kinds, spec))
    return {"array"} if isinstance(spec, list) else {"object"}


def _mismatch(value, spec, where: str) -> str | None:
    """Why ``value`` does not match ``spec``, or None when it does.

    The notation: a string names JSON types (``"integer|null"``); ``[spec]`` is an array
    whose items all match ``spec``; a dict is an object whose keys are all required, or
    optional when written with a trailing ``?``, and which may hold no other key; a tuple
    lists alternatives.
    """
    if _json_type(value) not in _kinds(spec):
        shown = sorted(_kinds(spec) - ({"integer"} if "number" in _kinds(spec) else set()))
        return f"{where} should be {' or '.join(shown)}, not {_json_type(value)}"
    if isinstance(spec, tuple):
        fitting = [s for s in spec if _json_type(value) in _kinds(s)]
        reasons = [_mismatch(value, s, where) for s in fitting]
        return None if None in reasons else reasons[0]
    if isinstance(spec, list):
        return next((reason for i, item in enumerate(value)
                     if (reason := _mismatch(item, spec[0], f"{where}[{i}]"))), None)
    if isinstance(spec, dict):
        return _object_mismatch(value, spec, where, closed=True)
    return None


def _object_mismatch(value: dict, spec: dict, where: str, closed: bool) -> str | None:
    prefix = f"{where}." if where else ""
    for key, item_spec in spec.items():
        name = key.removesuffix("?")
        if name not in value:
            if key.endswith("?"):
                continue
            return f"{prefix}{name} is missing"
        if reason := _mismatch(value[name], item_spec, prefix + name):
            return reason
    unknown = sorted(set(value) - {key.removesuffix("?") for key in spec}) if closed else []
    return f"{where} has unexpected key(s) {', '.join(map(str, unknown))}" if unknown else None


def _params_mismatch(params: dict, cls: type, not_saved: tuple[str, ...]) -> str | None:
    """``params`` go to ``cls(**params)``: only the parameters ``cls`` itself saves, each
    with the JSON type of its default (any scalar or list where the default is None)."""
    import inspect

    signature = inspect.signature(cls.__init__).parameters
    allowed = {name for name, p in signature.items()
               if name != "self" and p.kind is p.POSITIONAL_OR_KEYWORD and name not in not_saved}
    unknown = sorted(set(params) - allowed)
    if unknown:
        return f"params has {', '.join(unknown)}, which {cls.__name__} never saves"
    for name, value in params.items():
        default = signature[name].default
        if isinstance(default, bool):
            spec = "boolean"
        elif isinstance(default, int):
            spec = "integer"
        elif isinstance(default, float):
            spec = "number"
        elif isinstance(default, str):
            spec = ("string", ["string"])
        else:
            spec = (JSON_SCALAR, [JSON_SCALAR])
        if name in _NULLABLE_PARAMS and isinstance(spec, str):
            spec += "|null"
        if reason := _mismatch(value, spec, f"params.{name}"):
            return reason
    return None


def check_config(folder: Path, config: dict, schema: dict, cls: type,
                 not_saved: tuple[str, ...] = ()) -> None:
    """Refuse a ``config.json`` that does not match ``schema`` (notation: :func:`_mismatch`;
    keys it does not name are ignored at the top level) or whose ``params`` are not
    constructor parameters ``cls`` saves (``not_saved``: those it leaves out on purpose,
    such as ``run_dir``, which a config must never be able to set)."""
    reason = _object_mismatch(config, {**schema, "params": "object"}, "", closed=False)
    reason = reason or _params_mismatch(config["params"], cls, not_saved)
    if reason:
        raise BundleError(f"{Path(folder) / 'config.json'}: {reason}; the file was edited or "
                          f"damaged. {REDO_HINT}")


def check_classes(folder: Path, classes: list, count: int | None = None, source: str = "") -> None:
    """The class names of ``config.json`` are distinct, at least two, and (``count``) as
    many as ``source`` has."""
    config_path = Path(folder) / "config.json"
    if len(set(classes)) != len(classes):
        repeated = sorted({str(c) for c in classes if classes.count(c) > 1})
        raise BundleError(f"{config_path}: class names repeat ({', '.join(repeated)}); the file "
                          f"was edited. {REDO_HINT}")
    if len(classes) < 2:
        raise BundleError(f"{config_path} names {len(classes)} class(es); a classifier has at "
                          f"least two. The file was edited. {REDO_HINT}")
    if len(classes) > MAX_CLASSES:
        raise BundleError(f"{config_path} names {len(classes)} classes, more than the "
                          f"{MAX_CLASSES} transferkit loads; the file was edited. {REDO_HINT}")
    if count is not None and len(classes) != count:
        raise BundleError(f"{config_path} names {len(classes)} classes but {source} has "
                          f"{count}; they come from different models or were edited. {REDO_HINT}")


def check_width(folder: Path, n_features: int, width: int, source: str) -> None:
    if n_features != width:
        raise BundleError(f"{Path(folder) / 'config.json'} says {n_features} features but "
                          f"{source} takes {width}; they come from different models or were "
                          f"edited. {REDO_HINT}")


def check_same_features(folder: Path, config: dict, extractor, consumer: str) -> None:
    """The features ``extractor`` (built from the bundle's params) computes here are the
    ones the bundle was trained on: the same backbone weights and the same layers.
    ``consumer`` names what would see different features ("its classifier")."""
    saved = config["backbone"] if isinstance(config["backbone"], list) else [config["backbone"]]
    # An unknown params.layer fails here, as at fit.
    here = check_own_params(folder, extractor.identity)["backbone"]
    here = here if isinstance(here, list) else [here]
    if len(saved) != len(here):
        raise BundleError(f"{folder}/config.json lists {len(saved)} backbone(s) but its "
                          f"params name {len(here)}; the file was edited. {REDO_HINT}")
    for old, new in zip(saved, here):
        if old.get("weights_digest") != new.get("weights_digest"):
            raise BundleError(
                f"{folder} was trained on backbone weights {old.get('weights_digest')} but "
                f"{old.get('name')} here has weights {new.get('weights_digest')}; {consumer} "
                "would see different features. Install the same weights or train it again.")
    if config["layers"] != extractor.layers:
        raise BundleError(f"{folder}/config.json lists the layers {config['layers']} but its "
                          f"params.layer gives {extractor.layers}; the file was edited. "
                          f"{REDO_HINT}")


def check_param_values(folder: Path, params: dict, choices: dict | None = None,
                       positive: tuple[str, ...] = ()) -> None:
    """The values of ``params`` the schema cannot judge: each of ``choices``' names one of
    its allowed values (what fit accepts for it), each of ``positive`` an integer >= 1.
    A parameter left out of ``params`` takes the constructor's default, which is valid."""
    for name, allowed in (choices or {}).items():
        if name in params and not any(_same_json(params[name], value) for value in allowed):
            shown = ", ".join("none" if value is None else repr(value) for value in allowed)
            raise BundleError(f"{Path(folder) / 'config.json'}: params.{name} is "
                              f"{params[name]!r}, not one of {shown}; the file was edited. "
                              f"{REDO_HINT}")
    for name in positive:
        value = params.get(name, 1)
        if _json_type(value) != "integer" or value < 1:
            raise BundleError(f"{Path(folder) / 'config.json'}: params.{name} is {value!r}, not "
                              f"a positive integer; the file was edited. {REDO_HINT}")


def _same_json(value, allowed) -> bool:
    # 1 == True and 0 == False in Python; in JSON they are different values.
    return _json_type(value) == _json_type(allowed) and value == allowed


def check_own_params(folder: Path, check):
    """``check()``'s result: an estimator's own check of its parameters (or a step that
    checks them, as building the feature extractor checks the layer names) run on what
    ``config.json`` gave it. What fit refuses, loading refuses too, as a BundleError."""
    from transferkit.errors import BackboneError, TransferkitError

    try:
        return check()
    except (BundleError, BackboneError):
        raise  # a backbone that cannot be built here: its own message says why
    except TransferkitError as exc:
        raise BundleError(f"{Path(folder) / 'config.json'}: {first_line(exc)} The file was "
                          f"edited. {REDO_HINT}") from exc


def check_backbone_names(folder: Path, names, where: str = "params") -> None:
    """Refuse a backbone or architecture name that is neither a bundled backbone nor a
    timm architecture when it holds ``/`` or ``:``: timm reads such a name as a place
    ("hf-hub:owner/repo", "local-dir:/path") and would fetch or read its files while the
    model loads. ``names``: (field, name) pairs; a field may join names with ``+``."""
    from transferkit.backbones import list_backbones

    bundled = {backbone["name"] for backbone in list_backbones()}
    for field, value in names:
        # None: the default backbone, or no checkpoint architecture. The schema lets a list
        # of strings stand for a string; building fails on it, but without fetching.
        joined = "+".join(v for v in value if isinstance(v, str)) if isinstance(value, list) \
            else value if isinstance(value, str) else ""
        for name in (part.strip() for part in joined.split("+") if part.strip()):
            # "timm/NAME" is how the timm hub names NAME's weights (see create_backbone).
            plain = name.removeprefix("timm/")
            if ("/" in name or ":" in name) and name not in bundled and not (
                    "/" not in plain and ":" not in plain and _is_timm_model(plain)):
                raise BundleError(f"{Path(folder) / 'config.json'}: {where}.{field} names "
                                  f"{name!r}, which is neither a bundled backbone nor a timm "
                                  "architecture; loading it would fetch files from elsewhere. "
                                  f"The file was edited. {REDO_HINT}")


def _is_timm_model(name: str) -> bool:
    import timm  # only for names that look like places: a plain name costs no timm import

    return timm.is_model(name)


def saved_params(estimator, not_saved: tuple[str, ...] = ()) -> dict:
    """``estimator.get_params()`` as ``config.json`` keeps them: JSON values (numpy scalars
    as Python numbers, paths as strings) and the ``weights`` checkpoint as an absolute
    path, so the model also loads from another working folder."""
    import numpy as np

    params = {}
    for name, value in estimator.get_params().items():
        if name in not_saved:
            continue
        if isinstance(value, np.generic):
            value = value.item()
        elif isinstance(value, os.PathLike):
            value = os.fspath(value)
        if name == "weights" and value is not None:
            value = str(Path(value).resolve())
        params[name] = value
    return params


def read_tensors(folder: Path, filename: str) -> dict:
    """The tensors of a bundle's safetensors file (a format that cannot hold code)."""
    from safetensors.torch import load_file

    path = Path(folder) / filename
    if not path.is_file():
        raise BundleError(f"{folder}: {filename} is missing. {REDO_HINT}")
    try:
        return load_file(str(path))
    except Exception as exc:  # truncated, garbled or not safetensors at all
        raise BundleError(f"{path}: not a readable safetensors file ({type(exc).__name__}: "
                          f"{first_line(exc)}). {REDO_HINT}") from exc


def check_weight_shapes(folder: Path, filename: str, model, state: dict, what: str) -> None:
    """Every tensor ``model`` (built from ``config.json``, possibly on the meta device) has
    is in ``state`` with the same shape: a head with another number of classes, or a
    layer of another width, means the weights and the config do not belong together."""
    expected = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    found = {key: tuple(value.shape) for key, value in state.items()}
    path = Path(folder) / filename

    def some(keys: list[str]) -> str:
        return ", ".join(keys[:3]) + (" ..." if len(keys) > 3 else "")

    missing, unexpected = sorted(set(expected) - set(found)), sorted(set(found) - set(expected))
    if missing or unexpected:
        detail = "; ".join(([f"missing {some(missing)}"] if missing else [])
                           + ([f"unexpected {some(unexpected)}"] if unexpected else []))
        raise BundleError(f"{path} does not hold the weights of {what} ({detail}). {REDO_HINT}")
    for key, shape in expected.items():
        if found[key] != shape:
            raise BundleError(f"{path}: {key} has shape {list(found[key])} but {what}, as "
                              f"config.json describes it, needs {list(shape)}; the weights and "
                              f"the config do not belong together. {REDO_HINT}")


def load_weights(folder: Path, filename: str, model, state: dict, what: str) -> None:
    """:func:`check_weight_shapes`, then load ``state`` into ``model``."""
    check_weight_shapes(folder, filename, model, state, what)
    model.load_state_dict(state, strict=True)


def first_line(exc: BaseException) -> str:
    """The first line of ``exc``'s message: errors shown to a user stay one line."""
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else "no details"


def read_config(folder: str | os.PathLike) -> dict:
    folder = Path(folder)
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise BundleError(f"{folder}: not a transferkit model folder (no config.json). "
                          "Give the --out folder of `transferkit fit`.")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:  # ValueError: bad JSON or UTF-8
        raise BundleError(f"{config_path}: damaged ({type(exc).__name__}: {first_line(exc)}). "
                          f"{REDO_HINT}") from exc
    if not isinstance(config, dict):
        raise BundleError(f"{config_path}: damaged (a JSON {_json_type(config)}, not an object). "
                          f"{REDO_HINT}")
    version = config.get("format_version")
    # true and 1.0 both equal 1 in Python; transferkit only ever wrote the integer.
    if type(version) is not int or version != FORMAT_VERSION:
        raise BundleError(f"{folder}: bundle format {config.get('format_version')!r} is not "
                          f"supported by this transferkit (format {FORMAT_VERSION}).")
    if not isinstance(config.get("method"), str):
        raise BundleError(f"{config_path}: method should be a string, not "
                          f"{_json_type(config.get('method'))}; the file was edited or damaged. "
                          f"{REDO_HINT}")
    return config


def load_bundle(folder: str | os.PathLike, method: str | None = None):
    """Load the estimator saved in ``folder`` by :func:`save_bundle` (of ``method``, when
    given). Any failure is a :class:`BundleError` saying which folder and what is wrong."""
    from transferkit.errors import TransferkitError
    from transferkit.methods.registry import bundle_class, list_methods

    folder = Path(folder)
    config = read_config(folder)
    if method is not None and config["method"] != method:
        raise BundleError(f"{folder} holds a {config['method']!r} model, not a {method!r} one.")
    cls = bundle_class(config["method"])
    if cls is None:
        raise BundleError(f"{folder}: unknown method {config['method']!r} (known: "
                          f"{', '.join(list_methods(saves_bundle=True))}).")
    try:
        return cls._load_artifacts(folder, config)
    except TransferkitError:
        raise  # already one line that says what to do
    except Exception as exc:  # the folder is untrusted input: whatever breaks is its fault
        raise BundleError(f"{folder}: cannot load the saved model ({type(exc).__name__}: "
                          f"{first_line(exc)}). {REDO_HINT}") from exc
