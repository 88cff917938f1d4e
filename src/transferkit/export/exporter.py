"""One self-contained ONNX file per saved model (``transferkit export``).

The graph takes uint8 RGB images already resized and cropped to the model's input size,
``(N, H, W, 3)``, normalises them itself and returns class probabilities ``(N, C)``.
The metadata (every value JSON text) names the classes, the input size, the resize rule
of each input (:mod:`transferkit.runtime.preprocessing`), the method, the transferkit
version, the training metrics, and the check made before writing: the bundle and the
exported file predicted a few generated images, and the file is written only when their
probabilities agree within :data:`TOLERANCE` with the same top-1 class.

A segmentation model (``segment``) is one ``torch.onnx`` graph from uint8 images
stretched to its square input to per-pixel class logits ``(N, C, S, S)``; the runtime
(:class:`transferkit.runtime.OnnxSegmenter`) resizes them to each image's size and applies
the softmax, as the model folder does, and the check compares per-pixel probabilities.

Per kind: a linear probe (any layer taps, pooling, L2, PCA, fused backbones, the
Full-Network Embedding) is its feature network (``torch.onnx``) joined to its
scikit-learn pipeline (``skl2onnx``) with ``onnx.compose.merge_models``; a fine-tuned
network and a distilled student are one ``torch.onnx`` graph ending in a softmax.
"""

from __future__ import annotations

import copy
import json
import os
import tempfile
from pathlib import Path

import numpy as np

from transferkit import __version__
from transferkit.errors import BundleError, TransferkitError
from transferkit.runtime.onnx_predictor import (
    CLASSIFICATION,
    FORMAT,
    FORMAT_KEY,
    SEGMENTATION,
    OnnxPredictor,
    without_local_paths,
)
from transferkit.runtime.preprocessing import rule_from_data_config, stretch_rule

EXPORTABLE_METHODS = ("linear_probe", "finetune", "distill", "segment")
TOLERANCE = 1e-4
OUTPUT_NAME = "probabilities"
LOGITS_NAME = "logits"  # a segmentation graph's output
# Sizes (width, height) of the generated images the export is checked on: landscape,
# portrait, smaller than the input (upscaled) and square.
CHECK_IMAGE_SIZES = ((320, 240), (200, 300), (97, 61), (224, 224))


def default_output(model_dir) -> Path:
    """``models/flowers`` → ``models/flowers.onnx``, beside the model folder."""
    folder = Path(model_dir).resolve()
    return folder.with_name(folder.name + ".onnx")


def is_exported_model(path: Path) -> bool:
    """Whether ``path`` holds an ONNX file `transferkit export` wrote (so it may be
    replaced with ``overwrite``)."""
    import onnx

    try:
        if path.stat().st_size > 2**31:
            return False
        model = onnx.load_model_from_string(path.read_bytes())
    except Exception:  # unreadable or not ONNX: not ours
        return False
    return model.producer_name == "transferkit" and any(
        prop.key == FORMAT_KEY for prop in model.metadata_props)


# -- the graphs ---------------------------------------------------------------------------

def _input_names(count: int) -> list[str]:
    return ["images"] + [f"images_{i}" for i in range(1, count)]


def _probe_graph(estimator):
    """Linear probe / FNE: feature network + classifier, joined."""
    from transferkit.backbones.taps import make_tap_module
    from transferkit.export.network import ImagesToFeatures, NormaliseImages, export_network
    from transferkit.export.sklearn_steps import INPUT_NAME, convert_classifier
    from transferkit.features.extract import FusedExtractor, build_extractor

    classifier = convert_classifier(estimator.classifier_, int(estimator.n_features_in_))
    extractor = build_extractor(estimator.backbone, estimator.weights, estimator.arch,
                                layer=estimator.layer, pooling=estimator.pooling,
                                use_cache=False, runtime="eager")
    extractors = extractor.extractors if isinstance(extractor, FusedExtractor) else [extractor]
    rules, parts = [], []
    for part in extractors:
        backbone = part.backbone
        rule = rule_from_data_config(backbone.data_config)
        if rule not in rules:  # backbones with the same resize share one graph input
            rules.append(rule)
        # A copy: the taps hook the network, and the original is shared (lru_cache).
        taps = make_tap_module(copy.deepcopy(backbone.model).eval(), part.layers, part.pooling)
        parts.append((rules.index(rule),
                      NormaliseImages(backbone.data_config["mean"], backbone.data_config["std"]),
                      taps))
    names = _input_names(len(rules))
    network = export_network(ImagesToFeatures(parts), names, [r["crop"] for r in rules],
                             INPUT_NAME)
    return _join(network, classifier), list(zip(names, rules))


def _join(network, classifier):
    """network → classifier as one model: inputs ``images…``, output ``probabilities``."""
    from onnx import compose, version_converter

    from transferkit.export.sklearn_steps import INPUT_NAME

    opset = {entry.domain or "": entry.version for entry in network.opset_import}[""]
    if {e.domain or "": e.version for e in classifier.opset_import}.get("", opset) != opset:
        # skl2onnx declares the lowest opset its operators need; merge_models wants one.
        classifier = version_converter.convert_version(classifier, opset)
    for part in (network, classifier):
        # Shape annotations are optional; left in, add_prefix would rename the graph
        # output through them despite rename_outputs=False.
        del part.graph.value_info[:]
    network = compose.add_prefix(network, "network/", rename_inputs=False)
    classifier = compose.add_prefix(classifier, "classifier/", rename_outputs=False)
    # merge_models wants one IR version; the newer one reads the older's graph unchanged.
    network.ir_version = classifier.ir_version = max(network.ir_version, classifier.ir_version)
    model = compose.merge_models(network, classifier,
                                 io_map=[(f"network/{INPUT_NAME}", f"classifier/{INPUT_NAME}")],
                                 outputs=[OUTPUT_NAME])
    return model


def _finetune_graph(estimator):
    from transferkit.export.network import ImagesToProbabilities, NormaliseImages, export_network

    config = estimator.data_config_
    rule = rule_from_data_config(config)
    module = ImagesToProbabilities(NormaliseImages(config["mean"], config["std"]),
                                   copy.deepcopy(estimator.model_).eval())
    return export_network(module, ["images"], [rule["crop"]], OUTPUT_NAME), [("images", rule)]


def _distill_graph(estimator):
    from transferkit.export.network import ImagesToProbabilities, StudentNormalise, export_network

    # The student reads images as load_small_images decodes them: a plain bilinear resize.
    rule = stretch_rule(int(estimator.image_size), "bilinear")
    module = ImagesToProbabilities(StudentNormalise(), copy.deepcopy(estimator.model_).eval())
    return export_network(module, ["images"], [rule["crop"]], OUTPUT_NAME), [("images", rule)]


def _segment_graph(estimator):
    from transferkit.export.network import ImagesToLogits, NormaliseImages, export_network

    # The model folder stretches every image to image_size² (bilinear) before the network.
    rule = stretch_rule(int(estimator.image_size), "bilinear")
    config = estimator.data_config_
    module = ImagesToLogits(NormaliseImages(config["mean"], config["std"]),
                            copy.deepcopy(estimator.model_).eval())
    return export_network(module, ["images"], [rule["crop"]], LOGITS_NAME), [("images", rule)]


GRAPH_BUILDERS = {"linear_probe": _probe_graph, "finetune": _finetune_graph,
                  "distill": _distill_graph, "segment": _segment_graph}
TASK_OF_METHOD = {"segment": SEGMENTATION}


# -- metadata and the check --------------------------------------------------------------

def _read_metrics(model_dir: Path) -> dict:
    """metrics.json of the bundle if it is a JSON object (it is informative only), its
    paths cut to their last part: the file goes where this machine's folders are nobody's
    business."""
    try:
        metrics = json.loads((model_dir / "metrics.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return {}
    return without_local_paths(metrics) if isinstance(metrics, dict) else {}


def _set_metadata(model, values: dict) -> None:
    import onnx.helper

    del model.metadata_props[:]
    onnx.helper.set_model_props(model, {key: json.dumps(value, default=str)
                                        for key, value in values.items()})
    model.producer_name = "transferkit"
    model.producer_version = __version__
    output = ("per-pixel class logits (N, C, H, W), to be resized to each image's size "
              "before a softmax" if values.get("task") == SEGMENTATION
              else "class probabilities (N, C)")
    model.doc_string = ("transferkit export: uint8 RGB images (N, H, W, 3), resized and "
                        f"cropped as the metadata's inputs say, to {output}.")


def _check_images(folder: Path) -> list[Path]:
    """A few smooth random images of several sizes and aspect ratios, as PNG files."""
    from PIL import Image

    rng = np.random.default_rng(0)
    paths = []
    for number, (width, height) in enumerate(CHECK_IMAGE_SIZES):
        coarse = rng.integers(0, 256, size=(6, 6, 3), dtype=np.uint8)
        picture = Image.fromarray(coarse).resize((width, height), Image.BICUBIC)
        noisy = np.clip(np.asarray(picture, dtype=np.int16)
                        + rng.integers(-12, 13, size=(height, width, 3)), 0, 255)
        path = folder / f"check-{number}.png"
        Image.fromarray(noisy.astype(np.uint8)).save(path)
        paths.append(path)
    return paths


def _reference_settings(estimator) -> None:
    """The bundle's own predictions, computed the plainest way: eager PyTorch on the CPU,
    no cache, no worker processes."""
    for name, value in (("runtime", "eager"), ("use_cache", False), ("num_workers", 0),
                        ("progress", False), ("device", "cpu")):
        if name in estimator.get_params():
            setattr(estimator, name, value)
    if hasattr(estimator, "extractor_"):
        estimator.extractor_ = None


def _compare(estimator, data: bytes, work: Path, task: str) -> dict:
    exported = work / "model.onnx"
    exported.write_bytes(data)
    paths = _check_images(work)
    if task == SEGMENTATION:
        return _compare_segmentation(estimator, exported, paths)
    # The model folder first: a fault of its own (weights that overflow) is named as such,
    # not as a file that disagrees with its metadata.
    expected, ok, skipped = estimator.predict_paths(paths)
    if skipped or not ok.all():
        raise TransferkitError(f"the bundle could not read its check images ({skipped[:1]}).")
    predictor = OnnxPredictor(exported)
    got = predictor.predict_proba(paths)
    deviation = float(np.abs(np.asarray(expected, dtype=np.float64) - got).max())
    same_top1 = bool((np.asarray(expected).argmax(axis=1) == got.argmax(axis=1)).all())
    return {"images": len(paths), "max_abs_difference": deviation, "same_top1": same_top1,
            "tolerance": TOLERANCE}


def _compare_segmentation(estimator, exported: Path, paths: list[Path]) -> dict:
    """Per-pixel probabilities of the folder and of the file, each image at its own size.
    ``same_top1``: every pixel gets the same class, except where the folder's two most
    probable classes are within the tolerance of each other (a tie there is decided by
    rounding, in the folder as in the file)."""
    from transferkit.runtime.onnx_segmenter import OnnxSegmenter

    expected, ok, skipped = estimator.predict_proba_paths(paths)
    if skipped or not ok.all():
        raise TransferkitError(f"the bundle could not read its check images ({skipped[:1]}).")
    got, _, _ = OnnxSegmenter(exported).predict_proba_paths(paths)
    deviation = max(float(np.abs(e.astype(np.float64) - g).max()) for e, g in zip(expected, got))
    agree, decided = [], True
    for e, g in zip(expected, got):
        same = e.argmax(0) == g.argmax(0)
        top_two = np.sort(e, axis=0)[-2:]
        decided &= bool(same[top_two[1] - top_two[0] > 2 * TOLERANCE].all())
        agree.append(float(same.mean()))
    return {"images": len(paths), "max_abs_difference": deviation, "same_top1": decided,
            "same_class_pixels": min(agree), "tolerance": TOLERANCE}


def export_model(model_dir: str | os.PathLike, out: str | os.PathLike | None = None,
                 overwrite: bool = False) -> dict:
    """Write the model saved in ``model_dir`` as one ONNX file (default: beside the folder,
    ``MODEL_DIR.onnx``); returns a summary (path, method, classes, inputs, the check)."""
    from transferkit.bundle import first_line, load_bundle, read_config
    from transferkit.outputs import OutputFolderError, check_output_file, write_bytes_atomic

    model_dir = Path(model_dir)
    config = read_config(model_dir)
    method = config["method"]
    if method not in GRAPH_BUILDERS:
        raise BundleError(f"{model_dir} holds a {method!r} model, which export does not "
                          f"cover; it covers {', '.join(EXPORTABLE_METHODS)} (and fne, saved as "
                          "linear_probe).")
    target = check_output_file(default_output(model_dir) if out is None else out,
                               written_by_transferkit=is_exported_model, inputs=(model_dir,),
                               overwrite=overwrite, what="model file")
    if not target.parent.is_dir():  # said now, not after the minutes the export takes
        raise OutputFolderError(f"{out}: the folder {target.parent} does not exist; create it "
                                "or give another path (nothing was written).")
    estimator = load_bundle(model_dir)
    try:
        model, inputs = GRAPH_BUILDERS[method](estimator)
    except TransferkitError:
        raise
    except Exception as exc:  # a converter failing on an architecture or step it lacks
        raise TransferkitError(f"{model_dir}: cannot export the {method} model "
                               f"({type(exc).__name__}: {first_line(exc)}).") from exc
    task = TASK_OF_METHOD.get(method, CLASSIFICATION)
    if task == SEGMENTATION:  # pixel classes: 0 (background), 1, …
        classes = list(range(int(estimator.n_classes)))
    else:
        classes = [c.item() if hasattr(c, "item") else c for c in estimator.classes_]
    metadata = {
        FORMAT_KEY: FORMAT, "transferkit_version": __version__, "method": method,
        "task": task, "classes": classes, "input_size": inputs[0][1]["crop"],
        "inputs": [{"name": name, "resize_rule": rule} for name, rule in inputs],
        "output": LOGITS_NAME if task == SEGMENTATION else OUTPUT_NAME,
        "normalisation": "inside the graph: (uint8 / 255 - mean) / std of the network",
        "metrics": _read_metrics(model_dir),
        "source": {"bundle_created": config.get("created"),
                   "bundle_versions": config.get("versions")},
    }
    _set_metadata(model, metadata)
    _reference_settings(estimator)
    with tempfile.TemporaryDirectory(prefix="transferkit-export-") as work:
        check = _compare(estimator, model.SerializeToString(), Path(work), task)
    if not (check["max_abs_difference"] <= TOLERANCE and check["same_top1"]):
        agreement = (f"same class wherever no two classes tie: {check['same_top1']}"
                     if task == SEGMENTATION else f"same top-1: {check['same_top1']}")
        raise TransferkitError(
            f"the exported {method} model differs from {model_dir} by "
            f"{check['max_abs_difference']:.1e} (tolerance {TOLERANCE:.0e}, {agreement}) on "
            "generated images; nothing was written.")
    _set_metadata(model, {**metadata, "export_check": check})
    data = model.SerializeToString()
    write_bytes_atomic(target, data)
    return {"model": str(model_dir), "out": str(target), "method": method, "task": task,
            "classes": classes,
            "inputs": metadata["inputs"], "export_check": check, "bytes": len(data)}
