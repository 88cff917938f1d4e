"""Predict with an exported model file: ONNX Runtime, numpy and PIL, nothing else.

``transferkit export`` writes one ONNX file per model (see :mod:`transferkit.export`):
its graph takes uint8 RGB images already resized to the input size, ``(N, H, W, 3)``,
and returns class probabilities ``(N, C)``; its metadata names the classes and how to
resize (:mod:`transferkit.runtime.preprocessing`). This module reads such a file without
importing torch, timm or scikit-learn, so a server or a small install can hold one
:class:`OnnxPredictor` and call :meth:`OnnxPredictor.predict_proba` per request.

A file from elsewhere is untrusted: ONNX holds standard operators only (loading runs no
Python), external-data references are refused, and every metadata value is parsed as
JSON and checked before use; any failure is one :class:`~transferkit.errors.BundleError`.
"""

from __future__ import annotations

import json
import os
import stat
import tempfile
from pathlib import Path

import numpy as np

from transferkit.errors import BundleError, DataError, ImageDecodeError, TransferkitError
from transferkit.runtime.preprocessing import apply_rule, check_rule

FORMAT = 1
# Metadata keys an export writes (all values JSON text); transferkit_format marks the file.
FORMAT_KEY = "transferkit_format"
REQUIRED_KEYS = ("transferkit_format", "transferkit_version", "method", "classes",
                 "input_size", "inputs", "output")
OPTIONAL_KEYS = ("metrics", "normalisation", "export_check", "source", "task")
# What the graph's output is: class probabilities per image (the default, also of files
# exported before segmentation existed) or class logits per pixel.
CLASSIFICATION, SEGMENTATION = "classification", "segmentation"
TASKS = (CLASSIFICATION, SEGMENTATION)
MAX_FILE_BYTES = 2**31  # protobuf's own limit: larger exports would need external data
REDO_HINT = "Export the model again with `transferkit export MODEL_DIR`."


# Keys under which the commands' summaries (metrics.json) record files and folders.
PATH_KEYS = frozenset({"out", "data", "teacher", "model", "weights", "bundle", "reconstructions",
                       "path", "folder", "cache_dir"})


def _looks_like_a_local_path(text: str) -> bool:
    return (text.startswith(("/", "~", "\\\\", "./", "../"))
            or (len(text) > 2 and text[0].isalpha() and text[1] == ":" and text[2] in "/\\"))


def without_local_paths(value, key: str | None = None):
    """``value`` (a metrics object) with each file or folder path cut to its last part:
    an exported file and ``GET /model`` go to other people, who need not learn where the
    model was trained or is served from."""
    if isinstance(value, dict):
        return {k: without_local_paths(v, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [without_local_paths(v) for v in value]
    if isinstance(value, str) and (key in PATH_KEYS or _looks_like_a_local_path(value)):
        return value.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]
    return value


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def _read_model_bytes(path: Path) -> bytes:
    try:
        info = os.stat(path)
    except OSError as exc:
        raise BundleError(f"{path}: cannot read the model file ({exc.strerror or exc}).") from exc
    if not stat.S_ISREG(info.st_mode):
        raise BundleError(f"{path}: not a regular file; give an .onnx file written by "
                          "`transferkit export`.")
    if info.st_size > MAX_FILE_BYTES:
        raise BundleError(f"{path}: {info.st_size / 2**30:.1f} GiB is larger than any model "
                          f"transferkit exports. {REDO_HINT}")
    with open(path, "rb") as handle:
        return handle.read()


def _refuse_external_data(path: Path, data: bytes) -> None:
    """Where the ``onnx`` package is installed, refuse a file naming external data files
    (ours never do); ONNX Runtime is also pointed at an empty folder for them below."""
    try:
        import onnx
        from onnx.external_data_helper import _get_all_tensors, uses_external_data
    except ImportError:  # the light install: ONNX Runtime's own check and the empty folder
        return
    try:
        model = onnx.load_model_from_string(data)
    except Exception as exc:
        raise BundleError(f"{path}: not a usable ONNX model ({_first_line(exc)}). "
                          f"{REDO_HINT}") from exc
    if any(uses_external_data(tensor) for tensor in _get_all_tensors(model)):
        raise BundleError(f"{path} refers to external data files, which transferkit never "
                          f"writes; refusing it. {REDO_HINT}")


def _are_probabilities(rows: np.ndarray) -> bool:
    return bool(np.isfinite(rows).all() and (rows >= -1e-6).all() and (rows <= 1 + 1e-6).all()
                and np.allclose(rows.sum(axis=1), 1.0, atol=1e-3))


def _is_int_list(value, length: int | None = None) -> bool:
    return (isinstance(value, list) and (length is None or len(value) == length)
            and all(type(v) is int and v > 0 for v in value))


def _parse_metadata(path: Path, raw: dict[str, str]) -> dict:
    """The file's metadata, each value JSON-parsed and checked; a BundleError otherwise."""
    def bad(reason: str):
        return BundleError(f"{path}: metadata {reason}; the file was edited or is not a "
                           f"transferkit export. {REDO_HINT}")

    if FORMAT_KEY not in raw:
        raise BundleError(f"{path}: not a model written by `transferkit export` (no "
                          f"{FORMAT_KEY} in its metadata).")
    metadata = {}
    for key in REQUIRED_KEYS + OPTIONAL_KEYS:
        if key not in raw:
            if key in REQUIRED_KEYS:
                raise bad(f"lacks {key}")
            continue
        try:
            metadata[key] = json.loads(raw[key])
        except (ValueError, RecursionError) as exc:
            raise bad(f"{key} is not JSON ({_first_line(exc)})") from exc
    if type(metadata[FORMAT_KEY]) is not int or metadata[FORMAT_KEY] != FORMAT:
        raise BundleError(f"{path}: export format {metadata[FORMAT_KEY]!r} is not supported "
                          f"by this transferkit (format {FORMAT}).")
    for key in ("transferkit_version", "method", "output"):
        if not isinstance(metadata[key], str):
            raise bad(f"{key} is not a string")
    classes = metadata["classes"]
    # Labels are str or int as the bundles hold them; predict and serve name a column by
    # str(label), so two labels with one spelling ("1" and 1) would share a name.
    if not (isinstance(classes, list) and len(classes) >= 2
            and all(type(c) in (str, int) for c in classes)):
        raise bad("classes is not a list of at least two names")
    if len({str(c) for c in classes}) != len(classes):
        raise bad("classes repeat")
    if not _is_int_list(metadata["input_size"], 2):
        raise bad("input_size is not [height, width]")
    inputs = metadata["inputs"]
    if not (isinstance(inputs, list) and inputs and all(isinstance(i, dict) for i in inputs)):
        raise bad("inputs is not a list of objects")
    for number, spec in enumerate(inputs):
        if set(spec) != {"name", "resize_rule"} or not isinstance(spec["name"], str):
            raise bad(f"inputs[{number}] is not an object with name and resize_rule")
        if reason := check_rule(spec["resize_rule"]):
            raise bad(f"inputs[{number}].resize_rule {reason}")
    if inputs[0]["resize_rule"]["crop"] != metadata["input_size"]:
        raise bad("input_size disagrees with the first input's crop")
    for key in ("metrics", "export_check", "source"):
        if key in metadata and not isinstance(metadata[key], dict):
            raise bad(f"{key} is not an object")
    if metadata.setdefault("task", CLASSIFICATION) not in TASKS:
        raise bad(f"task is not one of {', '.join(TASKS)}")
    return metadata


class OnnxPredictor:
    """An exported transferkit model, ready to predict.

    ``classes``: class names, in the order of the probability columns; ``input_size``:
    ``(height, width)`` of the (first) network input; ``inputs``: every graph input with
    its resize rule (a model fusing backbones of different input sizes has several);
    ``metadata``: everything the file records (method, transferkit version, training
    metrics, the export-time check). ``threads``: ONNX Runtime's intra-op threads
    (default: the CPUs this process may use).
    """

    TASK = CLASSIFICATION

    def __init__(self, path: str | os.PathLike, threads: int | None = None,
                 batch_size: int = 32):
        try:
            import onnxruntime
        except ImportError as exc:
            raise TransferkitError(f"{path}: predicting with an exported model needs "
                                   "onnxruntime: pip install 'transferkit[runtime]'.") from exc

        self.path = Path(path)
        self.batch_size = int(batch_size)
        data = _read_model_bytes(self.path)
        _refuse_external_data(self.path, data)
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3
        if threads is None:
            try:
                threads = len(os.sched_getaffinity(0))
            except AttributeError:
                threads = os.cpu_count() or 1
        options.intra_op_num_threads = max(1, int(threads))
        try:
            with tempfile.TemporaryDirectory(prefix="transferkit-onnx-") as empty:
                # A model read from bytes would look for external data files relative to
                # the working folder; an empty folder gives it none to find.
                options.add_session_config_entry(
                    "session.model_external_initializers_file_folder_path", empty)
                self.session = onnxruntime.InferenceSession(
                    data, options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # not ONNX, truncated, unknown operators, external data
            raise BundleError(f"{self.path}: not a usable ONNX model ({_first_line(exc)}). "
                              f"{REDO_HINT}") from exc
        meta = self.session.get_modelmeta()
        self.metadata = _parse_metadata(self.path, dict(meta.custom_metadata_map))
        if self.metadata["task"] != self.TASK:
            raise TransferkitError(
                f"{self.path} is an exported {self.metadata['task']} model: "
                + ("use `transferkit segment predict` or `segment evaluate` "
                   "(transferkit.runtime.OnnxSegmenter)." if self.metadata["task"] == SEGMENTATION
                   else "use `transferkit predict` (transferkit.runtime.OnnxPredictor)."))
        self.classes = list(self.metadata["classes"])
        self.method = self.metadata["method"]
        self.input_size = tuple(self.metadata["input_size"])
        self.inputs = [dict(spec) for spec in self.metadata["inputs"]]
        self._check_graph()

    def _check_graph(self) -> None:
        """The graph's inputs and output are what the metadata says, and it gives one row
        of probabilities per image (tried on black images)."""
        self._check_inputs()
        # Two images (black, white) in one batch: one row of probabilities each.
        probe = self._run([np.stack([np.zeros((*spec["resize_rule"]["crop"], 3), np.uint8),
                                     np.full((*spec["resize_rule"]["crop"], 3), 255, np.uint8)])
                           for spec in self.inputs], check=False)
        if probe.shape != (2, len(self.classes)):
            raise self._mismatch(f"it gives {list(probe.shape)} values for two images, not "
                                 f"[2, {len(self.classes)}]")
        if not _are_probabilities(probe):
            raise self._mismatch("its outputs are not probabilities (finite, 0 to 1, summing "
                                 "to 1 per image)")

    def _mismatch(self, reason: str) -> BundleError:
        return BundleError(f"{self.path}: {reason}; the graph and its metadata do not belong "
                           f"together. {REDO_HINT}")

    def _check_inputs(self) -> None:
        """Each graph input is the metadata's, uint8 [batch, H, W, 3] with a free batch;
        the metadata's output is among the graph's."""
        bad = self._mismatch
        graph_inputs = {item.name: item for item in self.session.get_inputs()}
        named = [spec["name"] for spec in self.inputs]
        if sorted(graph_inputs) != sorted(named):
            raise bad(f"the graph takes {sorted(graph_inputs)}, the metadata names {named}")
        for spec in self.inputs:
            item = graph_inputs[spec["name"]]
            height, width = spec["resize_rule"]["crop"]
            # The batch dimension must be free: predict_proba stacks up to batch_size images.
            if item.type != "tensor(uint8)" or len(item.shape) != 4 or \
                    isinstance(item.shape[0], int) or list(item.shape[1:]) != [height, width, 3]:
                raise bad(f"input {item.name} is {item.type} {item.shape}, not uint8 "
                          f"[batch, {height}, {width}, 3]")
        outputs = [item.name for item in self.session.get_outputs()]
        if self.metadata["output"] not in outputs:
            raise bad(f"the graph has no output {self.metadata['output']!r}")

    def _run(self, arrays: list[np.ndarray], check: bool = True) -> np.ndarray:
        feeds = {spec["name"]: array for spec, array in zip(self.inputs, arrays)}
        try:
            (outputs,) = self.session.run([self.metadata["output"]], feeds)
        except Exception as exc:  # a graph that fails on some inputs (ONNX Runtime's errors)
            raise BundleError(f"{self.path}: the model failed on {len(arrays[0])} image(s) "
                              f"({_first_line(exc)}). {REDO_HINT}") from exc
        outputs = np.asarray(outputs, dtype=np.float64)
        if check and outputs.shape != (len(arrays[0]), len(self.classes)):
            raise BundleError(f"{self.path}: the graph gave {list(outputs.shape)} values "
                              f"for {len(arrays[0])} images. {REDO_HINT}")
        if check and not _are_probabilities(outputs):
            raise BundleError(f"{self.path}: the graph gave values that are not probabilities "
                              f"(finite, 0 to 1, summing to 1 per image). {REDO_HINT}")
        return outputs

    # -- images --------------------------------------------------------------------------
    def preprocess(self, image) -> list[np.ndarray]:
        """One image (a path or a decoded PIL image) as the graph's inputs take it: one
        uint8 ``(H, W, 3)`` array per input."""
        from PIL import ImageOps

        from transferkit.data.images import load_image, to_rgb

        if isinstance(image, (str, os.PathLike)):
            picture = load_image(image)
        else:
            # As load_image does for a file: upright by its EXIF tag (an image already
            # transposed has no tag left), then RGB.
            picture = to_rgb(ImageOps.exif_transpose(image))
        return [apply_rule(picture, spec["resize_rule"]) for spec in self.inputs]

    def _predict_arrays(self, rows: list[list[np.ndarray]]) -> np.ndarray:
        if not rows:
            return np.zeros((0, len(self.classes)))
        batches = []
        for start in range(0, len(rows), self.batch_size):
            chunk = rows[start:start + self.batch_size]
            batches.append(self._run([np.stack([row[i] for row in chunk])
                                      for i in range(len(self.inputs))]))
        return np.concatenate(batches)

    def predict_paths(self, images):
        """(probabilities of the readable images, ok mask, skipped ``(path, reason)`` list),
        as the estimators' ``predict_paths``: unreadable files are skipped, not fatal."""
        images = list(images)
        rows, ok, skipped = [], np.zeros(len(images), dtype=bool), []
        for index, image in enumerate(images):
            try:
                rows.append(self.preprocess(image))
            except ImageDecodeError as exc:
                skipped.append((str(image), str(exc)))
                continue
            ok[index] = True
        return self._predict_arrays(rows), ok, skipped

    def predict_proba(self, images) -> np.ndarray:
        """Class probabilities ``(N, C)`` of ``images``: paths or decoded PIL images (a
        single one is taken as a list of one), in batches of ``batch_size``."""
        if isinstance(images, (str, os.PathLike)) or hasattr(images, "getpixel"):
            images = [images]
        proba, _, skipped = self.predict_paths(images)
        if skipped:
            raise DataError(f"{len(skipped)} image(s) could not be read: "
                            + "; ".join(reason for _, reason in skipped[:5]))
        return proba

    def predict(self, images) -> list:
        """The most probable class of each image."""
        return [self.classes[int(i)] for i in self.predict_proba(images).argmax(axis=1)]

    def __repr__(self) -> str:
        return (f"OnnxPredictor({str(self.path)!r}, method={self.method!r}, "
                f"classes={len(self.classes)}, input_size={self.input_size})")


def load_predictor(path: str | os.PathLike, **options) -> OnnxPredictor:
    """The exported model at ``path`` (an ``.onnx`` file from ``transferkit export``)."""
    return OnnxPredictor(path, **options)
