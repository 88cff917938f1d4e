"""``transferkit segment``: label every pixel with a pretrained encoder and a small decoder.

Three actions:

* ``segment fit IMAGES MASKS --out MODEL``: pair images and masks by file name (see
  :mod:`transferkit.data.masks`), hold out a seeded share of the pairs, train
  :class:`transferkit.methods.segmentation.SegmentationTransfer` and save it as a model
  folder (``config.json``, ``segmenter.safetensors``, ``metrics.json``, learning curves,
  ``report.html`` with overlays of the best and worst held-out images);
* ``segment predict MODEL IMAGES... --out MASKS``: write one PNG mask per image, of the
  image's size (0/255 for two classes, class indices otherwise), into a new folder;
  MODEL may also be the model's ``.onnx`` file (``transferkit export``), run by ONNX
  Runtime without PyTorch;
* ``segment evaluate MODEL IMAGES MASKS``: mean Dice and IoU over the pairs
  (``--json``: the keys ``dice`` and ``iou``; see :mod:`transferkit.evaluate.segmentation`).

Files without a partner (an image without a mask, a mask without an image) are listed
and skipped; an unreadable image is skipped; a mask with values outside the declared
classes, or of another size than its image, stops the command with one line.
"""

from __future__ import annotations

import argparse
import os
import time
import warnings
from pathlib import Path

from transferkit.errors import DataError, TransferkitError
from transferkit.jobs import _options
from transferkit.jobs._common import format_table, skipped_fields, skipped_lines
from transferkit.outputs import removes_new_output_on_failure

NAME = "segment"
HELP = "segmentation: train a pretrained encoder + decoder on image/mask pairs, predict, score"
ACTIONS = ("fit", "predict", "evaluate")
STRATEGIES = ("gradual", "head", "last-k", "full")  # methods.segmentation.STRATEGIES (torch-free here)


def _output_format(parser) -> None:
    # Also after the action's own arguments (`segment evaluate M I M --json`); SUPPRESS so
    # that a --json given before the action is not reset by the action's default.
    parser.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="print one JSON object on stdout")
    parser.add_argument("--quiet", action="store_true", default=argparse.SUPPRESS,
                        help="no progress bars or warnings")


def add_arguments(parser) -> None:
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    fit = actions.add_parser("fit", help="train on IMAGES with their MASKS and save the model",
                             argument_default=argparse.SUPPRESS)
    fit.add_argument("images", help="folder of images")
    fit.add_argument("masks", help="folder of masks, named as their images (PNG/BMP; 0/255 or "
                     "class indices)")
    _options.add_out(fit, "model folder to write", default="transferkit-segmenter")
    _options.add_backbone(fit)
    fit.add_argument("--classes", dest="n_classes", type=int, metavar="N",
                     help="number of classes, background included (default 2: masks 0/255)")
    fit.add_argument("--strategy", choices=STRATEGIES, help="head: frozen encoder, decoder "
                     "only; last-k: + the encoder's last k layer groups; full: all, deeper "
                     "groups at higher rates; gradual (default): decoder first, then one "
                     "more group per stage down to k")
    fit.add_argument("--k", type=int, help="encoder layer groups trained by last-k / reached by "
                     "gradual (default 2)")
    fit.add_argument("--epochs", type=int, help="training epochs in all (default 20)")
    fit.add_argument("--lr", type=float, help="learning rate of the decoder (default 1e-3)")
    fit.add_argument("--lr-factor", type=float, help="each earlier group's rate is this "
                     "fraction of the next one's (default 1/3)")
    fit.add_argument("--batch-size", type=int, help="images per step (default 8)")
    fit.add_argument("--image-size", type=int, help="side in pixels the network sees "
                     "(default 256; masks are predicted at each image's own size)")
    weights = fit.add_mutually_exclusive_group()
    weights.add_argument("--pretrained", dest="pretrained", action="store_true",
                         help="start from the backbone's pretrained weights (default)")
    weights.add_argument("--random-init", dest="pretrained", action="store_false",
                         help="the same network from random initialisation (the baseline "
                         "of the transfer question)")
    fit.add_argument("--no-augment", dest="augment", action="store_false",
                     help="no flips, rotations, crops or colour jitter")
    _options.add_val_fraction(fit, "share of the pairs held out for early stopping and the "
                              "report (default 0.2)")
    _options.add_device(fit)
    _options.add_seed(fit)
    _output_format(fit)

    predict = actions.add_parser("predict", help="write a mask for each image",
                                 argument_default=argparse.SUPPRESS)
    predict.add_argument("bundle", metavar="model", help="model folder from `segment fit`, or "
                         "its .onnx file from `transferkit export` (no PyTorch needed)")
    predict.add_argument("inputs", metavar="images", nargs="+", help="image files or folders")
    predict.add_argument("--out", required=True, help="new (or empty) folder for the masks")
    _output_format(predict)

    evaluate = actions.add_parser("evaluate", help="mean Dice and IoU on images with masks",
                                  argument_default=argparse.SUPPRESS)
    evaluate.add_argument("bundle", metavar="model", help="model folder from `segment fit`, or "
                          "its .onnx file from `transferkit export`")
    evaluate.add_argument("images", help="folder of images")
    evaluate.add_argument("masks", help="folder of their masks")
    _output_format(evaluate)


def run(action: str, **options) -> dict:
    """``segment ACTION``: :func:`fit`, :func:`predict` or :func:`evaluate` with ``options``."""
    if action not in ACTIONS:
        raise TransferkitError(f"unknown action {action!r}; one of {', '.join(ACTIONS)}.")
    return {"fit": fit, "predict": predict, "evaluate": evaluate}[action](**options)


def _pairs(images, masks):
    from transferkit.data.masks import pair_images_and_masks

    pairs = pair_images_and_masks(images, masks)
    if pairs.unpaired:
        warnings.warn(f"skipped {len(pairs.unpaired)} file(s) without a partner: "
                      + "; ".join(reason for _, reason in pairs.unpaired[:5])
                      + (" …" if len(pairs.unpaired) > 5 else ""), stacklevel=3)
    return pairs


def _load(bundle):
    """A model folder (PyTorch), or a file from `transferkit export` (ONNX Runtime only:
    no torch import); a missing or special .onnx path is named as the file it is meant to be."""
    if os.path.isfile(bundle) or (str(bundle).lower().endswith(".onnx")
                                   and not os.path.isdir(bundle)):
        from transferkit.runtime.onnx_segmenter import OnnxSegmenter

        return OnnxSegmenter(bundle)
    from transferkit.bundle import load_bundle

    return load_bundle(bundle, method="segment")


def _score(estimator, pairs):
    """Per-pair rows (path, mask, dice, iou, and the masks as ``_truth``/``_predicted``)
    of the readable images, and the skipped ones."""
    from transferkit.data.masks import check_same_size, load_mask
    from transferkit.evaluate.segmentation import dice_iou

    n_classes = int(estimator.n_classes)
    # Every mask is checked before the network runs: a bad one stops the command at once.
    truths = [load_mask(mask_path, n_classes) for mask_path in pairs.masks]
    predicted, ok, skipped = estimator.predict_paths_masks([str(p) for p in pairs.images])
    rows, readable = [], [i for i, good in enumerate(ok) if good]
    for i, mask in zip(readable, predicted):
        check_same_size((mask.shape[1], mask.shape[0]), truths[i], pairs.images[i], pairs.masks[i])
        dice, iou = dice_iou(truths[i], mask, n_classes)
        rows.append({"path": str(pairs.images[i]), "mask": str(pairs.masks[i]), "dice": dice,
                     "iou": iou, "_truth": truths[i], "_predicted": mask})
    if not rows:
        raise DataError(f"none of the {len(pairs)} images could be read.")
    return rows, skipped


def _overlay_items(rows: list[dict]) -> list[dict]:
    """The best and worst rows with their pictures, downsized for the report."""
    import numpy as np
    from PIL import Image

    from transferkit.data.images import load_image
    from transferkit.report.segmentation import OVERLAY_COUNT, OVERLAY_PX

    ranked = sorted(range(len(rows)), key=lambda i: rows[i]["dice"])
    shown = set(ranked[:OVERLAY_COUNT]) | set(ranked[-OVERLAY_COUNT:])
    items = []
    for i, row in enumerate(rows):
        item = {"path": row["path"], "dice": row["dice"], "iou": row["iou"]}
        if i in shown:
            picture = load_image(row["path"])
            scale = OVERLAY_PX / max(picture.size)
            size = (max(1, round(picture.width * scale)), max(1, round(picture.height * scale)))
            item["image"] = np.asarray(picture.resize(size, Image.BILINEAR))
            item["truth"] = np.asarray(Image.fromarray(row["_truth"]).resize(size, Image.NEAREST))
            item["predicted"] = np.asarray(Image.fromarray(row["_predicted"]).resize(size, Image.NEAREST))
        items.append(item)
    # The report shows pictures only for the best and worst; the others count in the histogram.
    return items


@removes_new_output_on_failure
def fit(images, masks, out="transferkit-segmenter", backbone: str | None = None,
        weights=None, arch=None, n_classes: int = 2, strategy: str = "gradual", k: int = 2,
        epochs: int = 20, lr: float = 1e-3, lr_factor: float = 1 / 3, batch_size: int = 8,
        image_size: int = 256, pretrained: bool = True, augment: bool = True,
        val_fraction: float = 0.2, device: str = "auto", random_state: int = 0,
        progress: bool = False, overwrite: bool = False, report: bool = True) -> dict:
    """Train a segmenter on the pairs of ``images``/``masks`` and save it in ``out``.

    A seeded ``val_fraction`` of the pairs is held out: early stopping follows its Dice,
    and the summary (and report) score the saved model on it at the images' own sizes.
    """
    import numpy as np

    from transferkit.backbones import DEFAULT_BACKBONE
    from transferkit.bundle import save_bundle
    from transferkit.methods import create_method
    from transferkit.outputs import WORK_FOLDER, prepare_output_folder

    start = time.perf_counter()
    estimator = create_method("segment", backbone=backbone or DEFAULT_BACKBONE, weights=weights,
                              arch=arch, pretrained=pretrained, n_classes=n_classes,
                              strategy=strategy, k=k, epochs=epochs, lr=lr, lr_factor=lr_factor,
                              batch_size=batch_size, image_size=image_size, augment=augment,
                              device=device, val_fraction=val_fraction,
                              random_state=random_state, progress=progress)
    estimator._check_params()  # a refused option costs nothing
    pairs = _pairs(images, masks)
    order = np.random.default_rng(int(random_state)).permutation(len(pairs))
    n_val = int(round(val_fraction * len(pairs))) if len(pairs) >= 2 else 0
    if val_fraction > 0 and len(pairs) >= 2:
        n_val = max(1, n_val)
    val, train = pairs.subset(np.sort(order[:n_val])), pairs.subset(np.sort(order[n_val:]))
    folder = prepare_output_folder(out, command="fit", inputs=(images, masks),
                                   overwrite=overwrite)
    # Checkpoints in the model folder: rerunning an interrupted fit resumes it.
    estimator.set_params(run_dir=str(Path(folder) / WORK_FOLDER))
    from transferkit.train.loop import RunMismatchError

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            estimator.fit(train.images, train.masks,
                          X_val=val.images if n_val else None, masks_val=val.masks if n_val else None)
        except RunMismatchError as exc:
            raise RunMismatchError(f"{Path(folder) / WORK_FOLDER} holds an interrupted fit with "
                                   "other settings or data; add --overwrite (overwrite=True) to "
                                   "start over, or give another --out.") from exc
    del caught  # unreadable images are in estimator.skipped_, reported once below
    summary = {"action": "fit", "out": str(folder), "images": str(images), "masks": str(masks),
               "backbone": estimator.backbone if weights is None else f"{arch}@{Path(weights).name}",
               "pretrained": bool(pretrained), "strategy": strategy, "n_classes": int(n_classes),
               "image_size": int(image_size), "n_train": len(train), "n_val": len(val),
               "epochs_run": estimator.epochs_run_, "best_epoch": estimator.best_epoch_,
               "seconds_per_epoch": (float(np.mean([r["seconds"] for r in estimator.history_]))
                                     if estimator.history_ else None),
               "dice": None, "iou": None}
    rows, skipped = ([], [])
    if n_val:
        rows, val_skipped = _score(estimator, val)
        skipped = list(estimator.skipped_) + [s for s in val_skipped if s not in estimator.skipped_]
        summary["dice"] = float(np.mean([r["dice"] for r in rows]))
        summary["iou"] = float(np.mean([r["iou"] for r in rows]))
        summary["n_val"] = len(rows)
    else:
        skipped = list(estimator.skipped_)
    skipped += pairs.unpaired
    summary.update(skipped_fields(skipped))
    summary["per_image"] = [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows]
    metrics = {k: summary[k] for k in ("dice", "iou", "n_train", "n_val", "epochs_run",
                                       "best_epoch", "seconds_per_epoch")}
    save_bundle(estimator, folder, metrics=metrics, overwrite=True,
                extra={"data": {"images": str(Path(images).resolve()),
                                "masks": str(Path(masks).resolve()),
                                "validation": estimator.validation_,
                                "val_images": [str(p) for p in val.images]},
                       "skipped": summary["skipped"]})
    if report:
        from transferkit.report.segmentation import write_segmentation_report

        facts = [("backbone", summary["backbone"]),
                 ("encoder", "pretrained" if pretrained else "random initialisation"),
                 ("strategy", strategy), ("classes", str(n_classes)),
                 ("network input", f"{image_size}×{image_size}"),
                 ("training / held-out pairs", f"{len(train)} / {len(val)}"),
                 ("epochs run (best)", f"{estimator.epochs_run_} ({estimator.best_epoch_})"),
                 ("images", str(images)), ("masks", str(masks))]
        scores = {"dice": summary["dice"], "iou": summary["iou"], "n_images": len(rows)}
        summary["report"] = str(write_segmentation_report(
            Path(folder) / "report.html", f"{Path(folder).name}: segment", facts, scores,
            _overlay_items(rows) if rows else [], estimator.history_))
    summary["seconds"] = time.perf_counter() - start
    return summary


def _mask_names(paths) -> list[str]:
    """``<stem>.png`` for each image; two images of one stem (in different folders) would
    overwrite each other's mask, so that is refused before anything is written."""
    names = [f"{Path(p).stem}.png" for p in paths]
    seen: dict[str, str] = {}
    for path, name in zip(paths, names):
        if name in seen:
            raise DataError(f"{seen[name]} and {path} would both be written as {name}; segment "
                            "them in separate runs.")
        seen[name] = str(path)
    return names


def predict(bundle, inputs, out, progress: bool = False) -> dict:
    """Write the predicted mask of every image in ``inputs`` (files or folders) into the
    new or empty folder ``out``: ``<image stem>.png``, of the image's size."""
    import io

    import numpy as np
    from PIL import Image

    from transferkit.data import collect_images
    from transferkit.outputs import (
        OutputFolderError,
        check_not_an_input,
        resolve_output,
        write_bytes_atomic,
    )

    start = time.perf_counter()
    inputs = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    target = resolve_output(out)
    check_not_an_input(target, [bundle, *inputs], str(out))
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise OutputFolderError(f"{out}: exists and is not an empty folder; give a new folder "
                                "for the masks (nothing was changed).")
    estimator = _load(bundle)
    paths = collect_images(inputs)
    names = _mask_names(paths)
    masks, ok, skipped = estimator.predict_paths_masks([str(p) for p in paths])
    target.mkdir(parents=True, exist_ok=True)
    binary = int(estimator.n_classes) == 2
    written = []
    for (path, name), mask in zip([pn for pn, good in zip(zip(paths, names), ok) if good], masks):
        buffer = io.BytesIO()
        Image.fromarray((mask * 255).astype(np.uint8) if binary else mask).save(buffer, "PNG")
        write_bytes_atomic(target / name, buffer.getvalue(), durable=False)
        written.append({"path": str(path), "mask": str(target / name),
                        "foreground_share": float((mask > 0).mean())})
    return {"action": "predict", "bundle": str(bundle), "out": str(target),
            "masks": written, **skipped_fields(skipped), "seconds": time.perf_counter() - start}


def evaluate(bundle, images, masks, progress: bool = False) -> dict:
    """Mean Dice and IoU of the model in ``bundle`` over the pairs of ``images``/``masks``."""
    import numpy as np

    start = time.perf_counter()
    estimator = _load(bundle)
    pairs = _pairs(images, masks)
    rows, skipped = _score(estimator, pairs)
    return {"action": "evaluate", "bundle": str(bundle), "images": str(images),
            "masks": str(masks), "n_images": len(rows),
            "dice": float(np.mean([r["dice"] for r in rows])),
            "iou": float(np.mean([r["iou"] for r in rows])),
            "per_image": [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows],
            **skipped_fields(list(skipped) + pairs.unpaired),
            "seconds": time.perf_counter() - start}


def render(summary: dict) -> str:
    action = summary.get("action")
    if action == "predict":
        lines = [f"{item['path']}\t{item['mask']}\t{item['foreground_share']:.3f}"
                 for item in summary["masks"]]
        return "\n".join(lines + skipped_lines(summary))
    if action == "evaluate":
        return "\n".join([f"{summary['n_images']} images: Dice {summary['dice']:.3f}, IoU "
                          f"{summary['iou']:.3f} (means over images)", *skipped_lines(summary)])
    lines = [f"saved {summary['out']}: {summary['backbone']} "
             f"({'pretrained' if summary['pretrained'] else 'random init'}), strategy "
             f"{summary['strategy']}, {summary['n_train']} training pairs, "
             f"{summary['epochs_run']} epochs (best {summary['best_epoch']})"]
    if summary.get("dice") is not None:
        lines.append(format_table([["held-out pairs", "Dice", "IoU"],
                                   [str(summary["n_val"]), f"{summary['dice']:.3f}",
                                    f"{summary['iou']:.3f}"]]))
    if summary.get("report"):
        lines.append(f"report: {summary['report']}")
    return "\n".join(lines + skipped_lines(summary))
