"""``transferkit fit``: train a classifier on a folder of images and save it as a model
folder (weights, config, metrics, report). Its methods are the registry's ``classifier``
family."""

from __future__ import annotations

import argparse
import os
import time
import warnings
from pathlib import Path

from transferkit.backbones.registry import DEFAULT_BACKBONE
from transferkit.errors import DataError, TransferkitError
from transferkit.jobs import _options
from transferkit.jobs._common import class_names, score_images, skipped_fields, skipped_lines
from transferkit.outputs import removes_new_output_on_failure

NAME = "fit"
HELP = "train a classifier on a folder of images and save it"

# Command-line spellings of run() keywords whose flag is not simply --the-keyword.
_FLAGS = {"use_cache": "--no-cache", "fuse": "--backbone-fuse", "random_state": "--seed"}
# fit --features: the training features may take this much memory (MB) before the default
# logreg gives way to logreg-stream (see _choose_streaming).
DEFAULT_MAX_MEMORY_MB = 1024
# features.classifiers.STREAMING_CLASSIFIERS, spelt out: that module imports scikit-learn.
_STREAMING = ("logreg-stream",)


def _components_or_share(text: str) -> int | float:
    """``--pca``: a number of components when >= 1, else a share of the variance."""
    value = float(text)
    return int(value) if value >= 1 else value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from transferkit.methods import list_methods
    from transferkit.methods.registry import method_spec

    methods = list_methods(family="classifier")
    parser.add_argument("data", help="folder (class sub-folders, optionally train/ val/ test/) "
                        "or CSV with path,label columns")
    _options.add_out(parser, "model folder to write", default="transferkit-model")
    parser.add_argument("--method", choices=methods, help="; ".join(
        f"{name}: {method_spec(name).summary}" for name in methods) + f" (default {methods[0]})")
    _options.add_backbone(parser)
    parser.add_argument("--backbone-fuse", dest="fuse", metavar="BACKBONE",
                        action="append", help="another backbone whose features are "
                        "concatenated (repeatable)")
    probe = parser.add_argument_group("linear_probe / fne")
    probe.add_argument("--classifier", choices=(*_options.PROBE_CLASSIFIERS, *_STREAMING),
                       help="the shallow classifier (default logreg; svm for fne); "
                       "logreg-stream: logreg's model solved over the features one shard at "
                       "a time (bounded memory)")
    probe.add_argument("--features", metavar="FEATURES_DIR",
                       help="read the features from this folder written by `transferkit "
                       "extract` (matched to DATA's images by content) instead of running the "
                       "backbone; the backbone, layer and pooling are the store's")
    probe.add_argument("--max-memory", type=float, metavar="MB",
                       help="with --features: the memory the training features may take "
                       f"(default {DEFAULT_MAX_MEMORY_MB}); above it logreg streams "
                       "(logreg-stream)")
    probe.add_argument("--layer", help="layer(s) to use: a name, a comma-separated list, "
                       "'stages', 'all' or 'all-conv' (see `transferkit backbones --layers`); "
                       "default pre_logits; fne: all-conv (every convolutional layer, "
                       "default) or fne / stages (the stage outputs)")
    probe.add_argument("--pooling", choices=_options.POOLINGS, help="default avg")
    probe.add_argument("--normalise", choices=["l2"], help="L2-normalise each feature vector")
    probe.add_argument("--pca", type=_components_or_share,
                       help="PCA: components if >= 1, else share of variance")
    _options.add_val_fraction(parser, "share of each class held out when DATA has no val/ "
                              "folder (default 0.2)")
    _options.add_seed(parser)
    parser.add_argument("--no-report", dest="report", action="store_false",
                        help="do not write report.html into the model folder")
    parser.add_argument("--check-negative-transfer", action="store_true",
                        help="linear_probe / fne: cross-validate the model against raw pixels "
                        "on the training images and report whether transfer hurts")
    fine = parser.add_argument_group("finetune")
    fine.add_argument("--strategy", choices=["head", "last-k", "full", "gradual"])
    fine.add_argument("--k", type=int, help="groups unfrozen by last-k, and how deep gradual "
                      "unfreezes (default 1)")
    fine.add_argument("--epochs", type=int)
    fine.add_argument("--lr", type=float)
    fine.add_argument("--lr-factor", type=float, help="learning-rate ratio between groups")
    fine.add_argument("--batch-size", type=int)
    fine.add_argument("--patience", type=int)
    _options.add_device(fine)
    fine.add_argument("--head", choices=["linear", "mlp"], help="the new head (default linear)")
    fine.add_argument("--label-smoothing", type=float)
    fine.add_argument("--rand-augment", action="store_true",
                      help="add RandAugment to timm's training augmentation")
    fine.add_argument("--image-size", type=int, help="train and predict at this size in pixels")
    fine.add_argument("--precision", choices=["fp32", "bf16", "fp16"],
                      help="fp32 (default), bf16 autocast, or fp16 on a GPU")
    _options.add_cache(parser)


def _flag(name: str) -> str:
    return _FLAGS.get(name, "--" + name.replace("_", "-"))


def _create_estimator(method: str, options: dict, random_state: int):
    """The estimator of ``method`` with ``options``; an option it has no use for (it lacks
    the parameter, or the method fixes its value, as fne fixes the layer) is refused rather
    than silently dropped."""
    from transferkit.methods import method_class

    build = method_class(method)
    unused = set(options) - set(build().get_params())
    if not unused:
        estimator = build(random_state=random_state, **options)
        params = estimator.get_params()
        unused = {name for name, value in options.items() if params[name] != value}
    if unused:
        one = len(unused) == 1
        raise TransferkitError(f"{', '.join(sorted(map(_flag, unused)))} "
                               f"{'does' if one else 'do'} not apply to --method {method}; "
                               f"drop {'it' if one else 'them'}.")
    return estimator


def _classes_lost_to_unreadable_files(images, skipped) -> dict[str, str]:
    """Classes none of whose ``images`` could be read, each with its first file's reason."""
    reasons = {str(path): reason for path, reason in skipped}
    lost = {}
    for label, name in enumerate(images.classes):
        members = [str(path) for path, own in zip(images.paths, images.labels) if own == label]
        if members and all(path in reasons for path in members):
            lost[name] = reasons[members[0]]
    return lost


def _refuse_too_few_readable_classes(splits, skipped) -> dict[str, str]:
    """The classes whose training images were all unreadable (the model cannot have learnt
    them); a :class:`DataError` naming them when fewer than two classes are left."""
    lost = _classes_lost_to_unreadable_files(splits.train, skipped)
    kept = [name for name in splits.classes if name not in lost]
    if lost and len(kept) < 2:
        # One line, even when a file name holds a line break.
        detail = "; ".join(f"{name!r}, e.g. {reason}" for name, reason in lost.items())
        detail = detail.replace("\n", " ")
        raise DataError(f"every training image of {len(lost)} class(es) was unreadable ({detail}), "
                        f"which leaves {kept or 'no class'}; a classifier needs at least two "
                        "classes. Fix or replace those files.")
    return lost


def _store_settings(method: str, features, options: dict, check_negative_transfer: bool):
    """The opened store of ``fit --features`` and ``options`` completed with its extractor
    settings (backbone, weights, arch, layer, pooling, normalise); refuses a method or an
    option the store cannot serve."""
    from transferkit.features.from_store import settings_from_store
    from transferkit.features.shards import FeatureStore
    from transferkit.methods import method_class

    build = method_class(method)
    if not hasattr(build(), "use_feature_store"):
        raise TransferkitError(f"--features gives frozen features, which --method {method} does "
                               "not train on; use linear_probe or fne.")
    if check_negative_transfer:
        raise TransferkitError("the negative-transfer check decodes every image for its raw-pixel "
                               "baseline; drop --check-negative-transfer with --features.")
    store = FeatureStore.open(features)
    names = ("backbone", "weights", "arch", "layer", "pooling")
    given = {name: options[name] for name in names if options.get(name) is not None}
    settings = settings_from_store(store.manifest, given)
    # What the method fixes (fne: its layer) must be what the store holds.
    fixed = {name: build(**{name: value}).get_params()[name] for name, value in settings.items()}
    fixed = {name: value for name, value in fixed.items() if value != settings[name]}
    settings_from_store(store.manifest, fixed)
    return store, {**options, **{k: v for k, v in settings.items() if k not in fixed}}


def _choose_streaming(estimator, n_train: int, dim: int, max_memory: float,
                      classifier_given: bool) -> None:
    """Above ``max_memory`` MB of training features (as the in-memory solvers hold them),
    the default logreg becomes logreg-stream; a classifier asked for by name that needs
    every feature in memory is refused instead."""
    from transferkit.features.classifiers import IN_MEMORY_BYTES_PER_VALUE, STREAMING_CLASSIFIERS

    need = n_train * dim * IN_MEMORY_BYTES_PER_VALUE / 2**20
    params = estimator.get_params()
    classifier = params.get("classifier")
    if need <= max_memory or classifier in STREAMING_CLASSIFIERS:
        return
    blocked = [flag for flag, name in (("--pca", "pca"), ("fne", "embedding"))
               if params.get(name) is not None]
    if classifier_given or classifier != "logreg" or blocked:
        what = (f"--classifier {classifier}" if classifier_given or classifier != "logreg"
                else " and ".join(blocked))
        raise TransferkitError(f"the in-memory fit of {n_train} images of {dim} features needs "
                               f"about {need:.0f} MB, above --max-memory {max_memory:g}, and "
                               f"{what} needs them all in memory; use the default logreg "
                               "(it then streams), or raise --max-memory.")
    estimator.set_params(classifier=STREAMING_CLASSIFIERS[0])


@removes_new_output_on_failure
def run(data: str | os.PathLike, out: str | os.PathLike, method: str = "linear_probe",
        val_fraction: float = 0.2, random_state: int = 0, report: bool = True,
        check_negative_transfer: bool = False, overwrite: bool = False, fuse=(),
        features: str | os.PathLike | None = None, max_memory: float | None = None,
        **options) -> dict:
    """Train ``method`` on the images in ``data`` and save the model in ``out``.

    ``options`` go to the method's estimator (e.g. ``backbone``, ``classifier``,
    ``cache_dir``, ``progress``); one the method does not take is refused. ``fuse``:
    further backbones whose features are concatenated to ``backbone``'s. ``report``: also
    write ``out/report.html``. ``check_negative_transfer`` (linear_probe, fne):
    cross-validate a fresh copy of the estimator against raw pixels on the training
    images and put the verdict in the summary under ``"negative_transfer"`` (see
    :func:`negative_transfer_summary`). ``out`` must be new, empty or written by
    transferkit, and apart from ``data``; a saved model there is replaced only with
    ``overwrite`` (see :mod:`transferkit.outputs`). Returns the summary printed by
    ``transferkit fit --json``.

    ``features``: a folder written by ``transferkit extract`` to read the features from
    (linear_probe, fne): no network runs; DATA is split as always and each image matched
    to its row by content (:mod:`transferkit.features.from_store`); the backbone, layer
    and pooling are the store's (others given are refused). When the training features
    would need more than ``max_memory`` MB (default :data:`DEFAULT_MAX_MEMORY_MB`) in the
    in-memory solvers, the default ``logreg`` becomes ``logreg-stream``, which holds one
    shard at a time.
    """
    from transferkit.bundle import save_bundle
    from transferkit.data import load_dataset
    from transferkit.methods import list_methods
    from transferkit.outputs import input_folders, prepare_output_folder

    start = time.perf_counter()
    if method not in list_methods(family="classifier"):
        raise TransferkitError(f"unknown method {method!r}; choose one of "
                               f"{', '.join(list_methods(family='classifier'))}.")
    cheap = list_methods(family="classifier", refits_cheaply=True)
    if check_negative_transfer and method not in cheap:
        raise TransferkitError(f"the negative-transfer check refits the model on every fold, "
                               f"which only the feature-based methods "
                               f"({', '.join(cheap)}) do cheaply; drop "
                               f"--check-negative-transfer for {method} or use one of those.")
    if fuse:
        options["backbone"] = "+".join([options.get("backbone") or DEFAULT_BACKBONE, *fuse])
    store = None
    if features is not None:
        classifier_given = options.get("classifier") is not None
        store, options = _store_settings(method, features, options, check_negative_transfer)
    elif max_memory is not None:
        raise TransferkitError("--max-memory applies to --features; drop it.")
    # Before reading data: a refused option (or device, precision...) costs nothing.
    estimator = _create_estimator(method, options, random_state)
    if hasattr(estimator, "_check_params"):
        estimator._check_params()
    splits = load_dataset(data, val_fraction=val_fraction, random_state=random_state)
    if store is not None:
        _choose_streaming(estimator, len(splits.train), store.dim,
                          DEFAULT_MAX_MEMORY_MB if max_memory is None else max_memory,
                          classifier_given)
    # Before any training: a refused --out costs nothing and changes nothing. A CSV may list
    # images anywhere, so the folders holding them are inputs too.
    image_folders = input_folders(*(part.paths for part in (splits.train, splits.val,
                                                            splits.test) if part is not None))
    folder = prepare_output_folder(out, command="fit", inputs=(data, *image_folders,
                                                               *([features] if store else [])),
                                   overwrite=overwrite)
    if store is not None:
        from transferkit.features.from_store import StoreFeatures

        every_image = [path for part in (splits.train, splits.val, splits.test)
                       if part is not None for path in part.paths]
        estimator.use_feature_store(StoreFeatures(store, every_image, data=str(data),
                                                  progress=estimator.get_params().get("progress")))
    work, stale_work_error = None, ()  # () catches nothing: no work folder, no stale one
    if method == "finetune" and estimator.get_params().get("run_dir") is None:
        from transferkit.outputs import WORK_FOLDER
        from transferkit.train.loop import RunMismatchError as stale_work_error

        # Checkpoints in the model folder: rerunning an interrupted fit resumes it.
        work = Path(out) / WORK_FOLDER
        estimator.set_params(run_dir=str(work))
    with warnings.catch_warnings(record=True):
        # Skipped images are reported once, in the summary, not as a warning per call.
        warnings.simplefilter("ignore")
        try:
            estimator.fit(splits.train.paths, class_names(splits.train),
                          X_val=splits.val.paths, y_val=class_names(splits.val))
        except stale_work_error as exc:
            raise stale_work_error(f"{work} holds an interrupted fit with other settings or data; "
                                   "add --overwrite (overwrite=True) to start over, or give "
                                   "another --out.") from exc
        except DataError:
            # "need at least two classes" hides why: say which classes were unreadable.
            _refuse_too_few_readable_classes(splits, getattr(estimator, "skipped_", []))
            raise
    from transferkit.train.distributed import is_main_process
    if not is_main_process():  # trained in step with the main process, which writes and reports
        return {}
    lost_classes = _refuse_too_few_readable_classes(splits, estimator.skipped_)
    val_outputs: dict = {}
    # Scored before anything is saved: an unreadable split stops fit with one line.
    val_metrics, val_skipped = score_images(estimator, splits.val, val_outputs,
                                            what="validation images")
    # Only training images count against n_train; the validation ones are in val_skipped.
    train_files = {str(path) for path in splits.train.paths}
    train_skipped = [(path, reason) for path, reason in estimator.skipped_
                     if str(path) in train_files]
    skipped = train_skipped + list(val_skipped)
    if splits.test is not None:
        test_metrics, test_skipped = score_images(estimator, splits.test, what="test images")
        skipped += test_skipped
    else:
        test_metrics = None
    seconds = time.perf_counter() - start
    summary = {
        "method": method,
        "out": str(Path(out)),
        **({"features": str(Path(features))} if store is not None else {}),
        "backbone": getattr(estimator, "backbone", None),
        "classes": [str(c) for c in estimator.classes_],
        "dropped_classes": list(lost_classes),
        "validation": splits.validation_source,
        "n_train": int(len(splits.train) - len(train_skipped)),
        "n_val": int(val_metrics["n"]),
        **skipped_fields(skipped),
        "val_accuracy": val_metrics["accuracy"],
        "val_balanced_accuracy": val_metrics["balanced_accuracy"],
        "val_metrics": val_metrics,
        "extract_seconds": float(getattr(estimator, "extract_seconds_", 0.0)),
        "seconds": seconds,
    }
    if hasattr(estimator, "describe_classifier"):
        summary["classifier"] = estimator.describe_classifier()
    for key in ("epochs_run_", "best_epoch_"):
        if hasattr(estimator, key):
            summary[key.rstrip("_")] = int(getattr(estimator, key))
    if test_metrics is not None:
        summary["test_accuracy"] = test_metrics["accuracy"]
        summary["test_balanced_accuracy"] = test_metrics["balanced_accuracy"]
        summary["test_metrics"] = test_metrics
    if check_negative_transfer:
        summary["negative_transfer"] = negative_transfer_summary(estimator, splits.train,
                                                                 random_state)
    data_summary = {"source": str(Path(data).resolve()), "validation": splits.validation_source,
                    "train_counts": splits.train.counts(), "val_counts": splits.val.counts()}
    save_bundle(estimator, folder, metrics={k: v for k, v in summary.items() if k != "skipped"},
                extra={"data": data_summary, "skipped": summary["skipped"]}, overwrite=overwrite)
    if report:
        summary["report"] = str(_write_report(estimator, splits, val_outputs, out))
    summary["seconds"] = time.perf_counter() - start
    return summary


def _write_report(estimator, splits, val_outputs: dict, out) -> Path:
    """``report_data.json`` (validation predictions, feature map) and ``report.html``."""
    from transferkit.outputs import write_json_atomic
    from transferkit.report.html import REPORT_DATA, collect_report_data, write_report

    data = collect_report_data(estimator, splits.train.paths, class_names(splits.train),
                               splits.val.paths, class_names(splits.val), val_outputs["proba"],
                               val_outputs["ok"])
    write_json_atomic(Path(out) / REPORT_DATA, data)
    return write_report(out)


def negative_transfer_summary(estimator, images, random_state: int = 0) -> dict:
    """:func:`~transferkit.evaluate.negative_transfer.negative_transfer_check` of a fitted
    feature-based ``estimator`` on ``images`` (its training images): a fresh clone of it
    vs :class:`~transferkit.features.raw_pixels.RawPixelClassifier` with the same
    classifier, on the same folds. Images the estimator could not read are left out."""
    from sklearn.base import clone

    from transferkit.evaluate.negative_transfer import negative_transfer_check
    from transferkit.features.classifiers import CLASSIFIERS
    from transferkit.features.raw_pixels import RawPixelClassifier

    unreadable = {str(path) for path, _ in getattr(estimator, "skipped_", [])}
    keep = [i for i, path in enumerate(images.paths) if str(path) not in unreadable]
    images = images.subset(keep)
    transferred = clone(estimator)
    if "progress" in transferred.get_params():
        transferred.set_params(progress=False)  # one bar per fold would be noise
    classifier = getattr(estimator, "classifier", "logreg")
    baseline = RawPixelClassifier(classifier=classifier if classifier in CLASSIFIERS else "logreg",
                                  random_state=random_state)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return negative_transfer_check(transferred, images.paths, class_names(images),
                                       baseline=baseline, random_state=random_state)


def render(summary: dict) -> str:
    lines = skipped_lines(summary)
    for name in summary.get("dropped_classes", []):
        lines.append(f"warning: no training image of class {name!r} could be read, so the model "
                     "has not learnt it (see the skipped files above)")
    lines += [f"validation: {summary['validation']}",
              f"train {summary['n_train']} images, validation {summary['n_val']} images, "
              f"classes {', '.join(summary['classes'])}",
              *([f"classifier: {summary['classifier']}"] if "classifier" in summary else []),
              f"val accuracy {summary['val_accuracy']:.3f}, balanced accuracy "
              f"{summary['val_balanced_accuracy']:.3f}"]
    if "test_accuracy" in summary:
        lines.append(f"test accuracy {summary['test_accuracy']:.3f}, balanced accuracy "
                     f"{summary['test_balanced_accuracy']:.3f}")
    lines.append(f"saved model to {summary['out']} ({summary['seconds']:.1f} s, features "
                 f"{summary['extract_seconds']:.1f} s)")
    if "negative_transfer" in summary:
        check = summary["negative_transfer"]
        lines.append(f"negative-transfer check: {check['verdict']} (balanced accuracy "
                     f"{check['transferred_balanced_accuracy']['mean']:.3f} vs raw pixels "
                     f"{check['baseline_balanced_accuracy']['mean']:.3f}, p = "
                     f"{check['p_value']:.3g}, {check['protocol']})")
    if "report" in summary:
        lines.append(f"report: {summary['report']}")
    return "\n".join(lines)
