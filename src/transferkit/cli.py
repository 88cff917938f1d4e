"""The ``transferkit`` command line: parses arguments, calls :mod:`transferkit.run`, prints.

``--json`` prints exactly one JSON object on stdout (progress and warnings go to
stderr); ``--quiet`` silences progress bars and warnings. Errors a user can fix are
printed as one line, ``error: ...``, with exit status 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import warnings
from pathlib import Path

from transferkit import __version__
from transferkit.errors import TransferkitError


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    parser.add_argument("--quiet", action="store_true", help="no progress bars or warnings")


def _overwrite(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--overwrite", action="store_true", help="replace a previous result "
                        "of transferkit in --out (files you added there are kept); without "
                        "it only a new or empty folder, or an interrupted run, is written")


def _extraction(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cache-dir", help="feature cache folder (default: $TRANSFERKIT_CACHE_DIR "
                        "or ~/.cache/transferkit)")
    parser.add_argument("--no-cache", action="store_true", help="do not read or write the cache")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="transferkit", description="Transfer learning for "
                                     "image classification with pretrained networks.")
    parser.add_argument("--version", action="version", version=f"transferkit {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    fit = commands.add_parser("fit", help="train a classifier on a folder of images and save it")
    fit.add_argument("data", help="folder (class sub-folders, optionally train/ val/ test/) or CSV "
                     "with path,label columns")
    fit.add_argument("--out", default="transferkit-model", help="model folder to write")
    _overwrite(fit)
    fit.add_argument("--method", default="linear_probe", choices=["linear_probe", "fne", "finetune"],
                     help="linear_probe: frozen features + shallow classifier; fne: Full-Network "
                     "Embedding + linear SVM; finetune: train the network")
    fit.add_argument("--backbone", default=None, help="bundled or timm model name "
                     "(default efficientnet_lite0; see `transferkit backbones`)")
    fit.add_argument("--weights", help="local checkpoint (.safetensors or state dict) for --arch")
    fit.add_argument("--arch", help="timm architecture of --weights")
    fit.add_argument("--backbone-fuse", dest="fuse", action="append", default=[],
                     help="another backbone whose features are concatenated (repeatable)")
    probe = fit.add_argument_group("linear_probe / fne")
    probe.add_argument("--classifier", choices=["logreg", "svm", "knn", "mlp"],
                       help="the shallow classifier (default logreg; svm for fne)")
    probe.add_argument("--layer", help="layer(s) to use: a name, a comma-separated list, "
                       "'stages' or 'all' (see `transferkit backbones --layers`); default pre_logits")
    probe.add_argument("--pooling", choices=["avg", "max", "avgmax", "gem"], default="avg")
    probe.add_argument("--normalise", choices=["l2"], help="L2-normalise each feature vector")
    probe.add_argument("--pca", type=float, help="PCA: components if >= 1, else share of variance")
    fit.add_argument("--val-fraction", type=float, default=0.2,
                     help="share of each class held out when DATA has no val/ folder")
    fit.add_argument("--seed", type=int, default=0, help="seeds every random choice")
    fit.add_argument("--no-report", action="store_true",
                     help="do not write report.html into the model folder")
    fit.add_argument("--check-negative-transfer", action="store_true",
                     help="linear_probe / fne: cross-validate the model against raw pixels on "
                     "the training images and report whether transfer hurts")
    fine = fit.add_argument_group("finetune")
    fine.add_argument("--strategy", choices=["head", "last-k", "full", "gradual"])
    fine.add_argument("--k", type=int, help="groups unfrozen by last-k")
    fine.add_argument("--epochs", type=int)
    fine.add_argument("--lr", type=float)
    fine.add_argument("--lr-factor", type=float, help="learning-rate ratio between groups")
    fine.add_argument("--batch-size", type=int)
    fine.add_argument("--patience", type=int)
    fine.add_argument("--device", choices=["auto", "cpu", "cuda"])
    fine.add_argument("--head", choices=["linear", "mlp"], help="the new head (default linear)")
    fine.add_argument("--label-smoothing", type=float)
    fine.add_argument("--rand-augment", action="store_true", default=None,
                      help="add RandAugment to timm's training augmentation")
    fine.add_argument("--image-size", type=int, help="train and predict at this size in pixels")
    fine.add_argument("--precision", choices=["fp32", "bf16", "fp16"],
                      help="fp32 (default), bf16 autocast, or fp16 on a GPU")
    _extraction(fit)
    _common(fit)

    predict = commands.add_parser("predict", help="label images with a saved model")
    predict.add_argument("model", help="model folder written by `transferkit fit`")
    predict.add_argument("images", nargs="+", help="image files or folders")
    _extraction(predict)
    _common(predict)

    evaluate = commands.add_parser("evaluate", help="score a saved model on labelled images")
    evaluate.add_argument("model")
    evaluate.add_argument("data", help="class-folder tree or CSV (test/ or val/ part if present)")
    _extraction(evaluate)
    _common(evaluate)

    backbones = commands.add_parser("backbones", help="list the backbones usable here")
    backbones.add_argument("--layers", metavar="BACKBONE",
                           help="list this backbone's tappable layers instead")
    _common(backbones)

    layers = commands.add_parser("layers", help="layer-transferability sweep: cross-validate a "
                                 "classifier on every layer of a backbone")
    layers.add_argument("data", help="labelled images (train and val parts are pooled)")
    layers.add_argument("--backbone", default="efficientnet_lite0")
    layers.add_argument("--weights")
    layers.add_argument("--arch")
    layers.add_argument("--layer", default="all", help="layers to probe (default all)")
    layers.add_argument("--pooling", choices=["avg", "max", "avgmax", "gem"], default="avg")
    layers.add_argument("--folds", type=int, default=5)
    layers.add_argument("--classifier", choices=["ridge", "logreg", "svm", "knn", "mlp"],
                        default="ridge", help="the probe (default ridge: fast, closed-form CV)")
    layers.add_argument("--seed", type=int, default=0)
    layers.add_argument("--out", default="layer-sweep", help="folder for layers.csv/json/png")
    _overwrite(layers)
    _extraction(layers)
    _common(layers)

    anomaly = commands.add_parser("anomaly", help="anomaly detection: fit on normal images only, "
                                  "score a test set (AUC, EER)")
    anomaly.add_argument("--normal", required=True, help="folder of normal images (recursive)")
    anomaly.add_argument("--test", required=True, help="folder of sub-folders: normal/ (or good/, or one "
                         "named like the --normal folder) is normal, every other is anomalous")
    anomaly.add_argument("--scorer", choices=["mahalanobis", "ocsvm", "knn"],
                         default="mahalanobis", help="Mahalanobis distance (Ledoit-Wolf), "
                         "one-class SVM or k-NN distance on standardised features")
    anomaly.add_argument("--backbone", default=None, help="bundled or timm model name "
                         "(default efficientnet_lite0)")
    anomaly.add_argument("--weights", help="local checkpoint (.safetensors or state dict) for --arch")
    anomaly.add_argument("--arch", help="timm architecture of --weights")
    anomaly.add_argument("--layer", default="pre_logits", help="layer(s) whose features are used")
    anomaly.add_argument("--threshold-quantile", type=float, default=0.95,
                         help="flag images scoring above this quantile of the normal training "
                         "scores (default 0.95)")
    anomaly.add_argument("--holdout", type=float, default=0.3, help="share of normal images held "
                         "out for the test when --test contains the --normal folder")
    anomaly.add_argument("--seed", type=int, default=0)
    anomaly.add_argument("--out", help="write the scores: a .json file, or a folder "
                         "(anomaly.json + scores.csv)")
    _overwrite(anomaly)
    _extraction(anomaly)
    _common(anomaly)

    report = commands.add_parser("report", help="write one self-contained HTML report of a "
                                 "run folder (a model from fit, a layers sweep)")
    report.add_argument("run_dir", help="folder written by `transferkit fit`, `transferkit layers` "
                        "or `transferkit adapt`")
    report.add_argument("--out", help="HTML file to write (default RUN_DIR/report.html)")
    _common(report)

    demo = commands.add_parser("demo", help="run fit on image sets embedded in the installed "
                               "packages and compare with raw pixels")
    demo.add_argument("--out", default="transferkit-demo")
    _overwrite(demo)
    demo.add_argument("--set", dest="sets", action="append", choices=["textures", "faces"],
                      help="embedded set (repeatable; default both)")
    _extraction(demo)
    _common(demo)

    cdfg = commands.add_parser("cdfg", help="cross-domain feature-space generalisation (CDFG) "
                               "of feature spaces between two labelled domains")
    cdfg.add_argument("--domain-a", required=True, help="labelled images of domain A (class "
                      "folders; train and val parts are pooled)")
    cdfg.add_argument("--domain-b", required=True, help="labelled images of domain B, same classes")
    cdfg.add_argument("--backbone", default=None, help="bundled or timm model name "
                      "(default efficientnet_lite0)")
    cdfg.add_argument("--weights", help="local checkpoint (.safetensors or state dict) for --arch")
    cdfg.add_argument("--arch", help="timm architecture of --weights")
    cdfg.add_argument("--spaces", default="last,fne", help="comma-separated feature spaces: "
                      "last (pre-logits), fne (Full-Network Embedding), stages (all stages, "
                      "standardised), pca64 (pre-logits, 64 PCA components); default last,fne")
    cdfg.add_argument("--classifier", choices=["logreg", "svm", "knn", "mlp"], default="logreg")
    cdfg.add_argument("--seed", type=int, default=0)
    _extraction(cdfg)
    _common(cdfg)
    adapt = commands.add_parser("adapt", help="domain adaptation: labelled source images, "
                                "unlabelled target images; compares with source only and the "
                                "target oracle")
    adapt.add_argument("--source", help="labelled source images (one sub-folder per class)")
    adapt.add_argument("--target", help="unlabelled target images (any layout)")
    adapt.add_argument("--target-labelled", help="a few labelled target images: they train the "
                       "target oracle (and join the loss of the semi-supervised method)")
    adapt.add_argument("--target-test", help="labelled target images to score on")
    from transferkit.adapt import DEEP_METHODS, METHODS

    adapt.add_argument("--method", choices=METHODS, default="dann",
                       help=f"deep ({', '.join(DEEP_METHODS)}: a small CNN on 32×32 images) or "
                       "shallow (on frozen pretrained features); default dann")
    adapt.add_argument("--out", help="folder for summary.json, domain_map.png and checkpoints")
    _overwrite(adapt)
    adapt.add_argument("--epochs", type=int, help="training epochs of the deep methods")
    adapt.add_argument("--backbone", help="feature backbone of the shallow methods "
                       "(default efficientnet_lite0)")
    adapt.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    adapt.add_argument("--seed", type=int, default=0)
    adapt.add_argument("--demo", action="store_true", help="printed → handwritten digits, "
                       "generated and bundled: needs no data")
    _extraction(adapt)
    _common(adapt)
    autoencoder = commands.add_parser("autoencoder", help="autoencoder pretraining on unlabelled "
                                      "images, then few-label classifiers: encoder + logistic "
                                      "regression, autoencoder- vs random-initialised network")
    autoencoder.add_argument("--unlabelled", required=True,
                             help="unlabelled images (any layout), resized to 32×32")
    autoencoder.add_argument("--labelled", required=True,
                             help="the few labelled images (one sub-folder per class)")
    autoencoder.add_argument("--test", help="labelled images to score on (same classes)")
    autoencoder.add_argument("--out", required=True, help="folder for reconstructions.png, "
                             "summary.json and the training runs")
    _overwrite(autoencoder)
    autoencoder.add_argument("--epochs", type=int, default=15,
                             help="autoencoder training epochs (default 15)")
    autoencoder.add_argument("--finetune-epochs", type=int, help="supervised epochs (default: "
                             "enough for 300 steps of 32 images, at least 20)")
    autoencoder.add_argument("--noise", type=float, default=0.0, help="denoising: std of the "
                             "Gaussian noise added to inputs, on the [-1, 1] scale (default 0)")
    autoencoder.add_argument("--contrast-normalise", action="store_true", help="reconstruct "
                             "each image with its colour means removed and contrast scaled: "
                             "shapes, not colours (helps on colourful digits such as MNIST-M)")
    autoencoder.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    autoencoder.add_argument("--seed", type=int, default=0)
    _common(autoencoder)
    multitask = commands.add_parser("multitask", help="multi-task learning: one shared network, "
                                    "one head per task (CSV with path + one column per task); "
                                    "compares each task multi-task vs single-task")
    multitask.add_argument("csv", help="CSV with a 'path' column and one label column per task "
                           "(an empty cell: no label of that task)")
    multitask.add_argument("--tasks", help="comma-separated task columns (default: every column "
                           "but path); the first one stratifies the train/val split")
    multitask.add_argument("--weighting", choices=["fixed", "uncertainty"], default="fixed",
                           help="task-loss weighting: fixed weights, or learned uncertainty "
                           "weights (Kendall et al. 2018); default fixed")
    multitask.add_argument("--task-weights", help="comma-separated fixed weights, one per task "
                           "(default all 1)")
    multitask.add_argument("--val-fraction", type=float, default=0.2)
    multitask.add_argument("--epochs", type=int, help="training epochs (default 60)")
    multitask.add_argument("--backbone", help="frozen feature backbone (default efficientnet_lite0)")
    multitask.add_argument("--weights", help="local checkpoint (.safetensors or state dict) for --arch")
    multitask.add_argument("--arch", help="timm architecture of --weights")
    multitask.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    multitask.add_argument("--seed", type=int, default=0)
    _extraction(multitask)
    _common(multitask)
    distill = commands.add_parser("distill", help="knowledge distillation: a saved model (the "
                                  "teacher) teaches a small CNN; compares it with the same CNN "
                                  "trained alone and measures the speed-up")
    distill.add_argument("--teacher", required=True, help="a model folder from `transferkit fit`")
    distill.add_argument("--data", required=True, help="labelled images with the teacher's class "
                         "names (class folders, optionally train/ val/; else a seeded split)")
    distill.add_argument("--student", default="small-cnn", choices=["small-cnn", "tiny-cnn"],
                         help="student network (default small-cnn)")
    distill.add_argument("--out", help="folder for summary.json and student/ (the distilled "
                         "student: config.json + student.safetensors)")
    _overwrite(distill)
    distill.add_argument("--unlabelled", help="extra images without labels: the student learns "
                         "the teacher's outputs on them")
    distill.add_argument("--temperature", type=float, default=4.0, help="softmax temperature T "
                         "of the soft targets (default 4)")
    distill.add_argument("--alpha", type=float, default=0.9, help="weight α of the soft-target "
                         "term; 1-α weighs the labels' cross-entropy (default 0.9)")
    distill.add_argument("--epochs", type=int, default=40, help="student training epochs (default 40)")
    distill.add_argument("--image-size", type=int, default=32, help="student input size in "
                         "pixels (default 32)")
    distill.add_argument("--val-fraction", type=float, default=0.2)
    distill.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    distill.add_argument("--seed", type=int, default=0)
    _extraction(distill)
    _common(distill)
    zeroshot = commands.add_parser("zeroshot", help="zero-shot learning: hold classes out, learn "
                                   "a projection to a semantic space on the rest, name the "
                                   "held-out images by their nearest class vector")
    zeroshot.add_argument("data", help="labelled images (class sub-folders; train/ val/ test/ "
                          "parts or a path,label CSV are pooled)")
    zeroshot.add_argument("--unseen", help="comma-separated classes to hold out (folder names or "
                          "cleaned names: sunflower = 09_sunflower); default a seeded random "
                          "--unseen-fraction of the classes")
    zeroshot.add_argument("--unseen-fraction", type=float, default=0.3, help="share of the "
                          "classes held out when --unseen is not given (default 0.3)")
    semantic = zeroshot.add_mutually_exclusive_group()
    semantic.add_argument("--attributes", help="CSV class,attr1,attr2,... (numbers): the "
                          "semantic space (default: sentence embeddings of the class names)")
    semantic.add_argument("--descriptions", help="CSV class,description: sentence embeddings of "
                          "these texts are the semantic space")
    zeroshot.add_argument("--prompt", default="a photo of a {name}.", help="sentence around each "
                          "cleaned class name, with {name} (default 'a photo of a {name}.')")
    zeroshot.add_argument("--test-fraction", type=float, default=0.2, help="share of each seen "
                          "class's images held out to score generalised zero-shot (default 0.2)")
    zeroshot.add_argument("--backbone", help="feature backbone (default efficientnet_lite0)")
    zeroshot.add_argument("--weights", help="local checkpoint (.safetensors or state dict) for --arch")
    zeroshot.add_argument("--arch", help="timm architecture of --weights")
    zeroshot.add_argument("--seed", type=int, default=0)
    _extraction(zeroshot)
    _common(zeroshot)
    fewshot = commands.add_parser("fewshot", help="one-/few-shot classification: each query "
                                  "image goes to the nearest class prototype of a support set")
    fewshot.add_argument("--support", required=True, help="support images: one sub-folder per "
                         "class, K images each (K = 1 for one-shot)")
    fewshot.add_argument("--query", required=True, help="images to classify; sub-folders named "
                         "like support classes make them labelled (accuracy is reported)")
    fewshot.add_argument("--similarity", help="a learned similarity from `transferkit "
                         "fewshot-train` (default: plain pretrained features)")
    fewshot.add_argument("--metric", choices=["cosine", "euclidean"], default="cosine")
    fewshot.add_argument("--rule", choices=["prototype", "nearest"], default="prototype",
                         help="class mean (Snell et al. 2017) or nearest support image")
    fewshot.add_argument("--backbone", help="backbone without --similarity (default "
                         "efficientnet_lite0)")
    fewshot.add_argument("--layer", default="pre_logits", help="layer(s) without --similarity, "
                         "e.g. blocks.2,blocks.3,blocks.4,blocks.5 (see `transferkit backbones "
                         "--layers`)")
    _extraction(fewshot)
    _common(fewshot)
    fewshot_train = commands.add_parser("fewshot-train", help="learn a similarity (Siamese head, "
                                        "contrastive loss) on background classes for fewshot")
    fewshot_train.add_argument("background", nargs="+", help="folder(s) of class sub-folders "
                               "(nested ones too: alphabet/character/*.png)")
    fewshot_train.add_argument("--out", default="transferkit-similarity", help="bundle folder")
    _overwrite(fewshot_train)
    fewshot_train.add_argument("--backbone", help="default efficientnet_lite0")
    fewshot_train.add_argument("--layer", default="pre_logits", help="layer(s) whose frozen "
                               "features feed the head")
    fewshot_train.add_argument("--loss", choices=["contrastive", "triplet"], default="contrastive")
    fewshot_train.add_argument("--epochs", type=int, default=30)
    fewshot_train.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    fewshot_train.add_argument("--seed", type=int, default=0)
    _extraction(fewshot_train)
    _common(fewshot_train)
    return parser


def _cache_options(args) -> dict:
    return {"cache_dir": args.cache_dir, "use_cache": not args.no_cache}


def _fit_options(args) -> dict:
    backbone = "+".join([args.backbone or "efficientnet_lite0", *args.fuse])
    options = {"backbone": backbone, "weights": args.weights,
               "arch": args.arch, "progress": not (args.quiet or args.json)}
    if args.method in ("linear_probe", "fne"):
        options.update(_cache_options(args), pooling=args.pooling, normalise=args.normalise)
        if args.classifier:
            options["classifier"] = args.classifier
        if args.layer and args.method == "linear_probe":
            options["layer"] = args.layer
        if args.pca is not None:
            options["pca"] = int(args.pca) if args.pca >= 1 else float(args.pca)
    else:
        for name in ("strategy", "k", "epochs", "lr", "lr_factor", "batch_size", "patience",
                     "device", "head", "label_smoothing", "rand_augment", "image_size", "precision"):
            value = getattr(args, name)
            if value is not None:
                options[name] = value
    return options


def _run_layers(args, quiet: bool) -> dict:
    import numpy as np

    from transferkit.data import load_dataset
    from transferkit.evaluate.layer_sweep import layer_sweep, write_sweep
    from transferkit.outputs import prepare_output_folder

    splits = load_dataset(args.data, random_state=args.seed)
    prepare_output_folder(args.out, command="layers", inputs=(args.data,),
                          overwrite=args.overwrite)
    parts = [part for part in (splits.train, splits.val) if part is not None]
    paths = [path for part in parts for path in part.paths]
    labels = np.concatenate([part.labels for part in parts])
    sweep = layer_sweep(paths, labels, backbone=args.backbone, weights=args.weights,
                        arch=args.arch, layers=args.layer, pooling=args.pooling, folds=args.folds,
                        classifier=args.classifier, random_state=args.seed,
                        cache_dir=args.cache_dir, progress=not quiet)
    result = sweep.to_dict()
    result["files"] = write_sweep(sweep, args.out, title=f"{Path(args.data).name}: "
                                  f"{args.backbone} layers", overwrite=args.overwrite)
    return result


def _print_table(rows: list[list[str]]) -> None:
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip())


def _show_skipped(result: dict) -> None:
    if result.get("n_skipped"):
        print(f"skipped {result['n_skipped']} unreadable file(s):")
        for item in result["skipped"]:
            print(f"  {item['reason']}")


def _report_fit(result: dict) -> None:
    _show_skipped(result)
    for name in result.get("dropped_classes", []):
        print(f"warning: no training image of class {name!r} could be read, so the model has "
              "not learnt it (see the skipped files above)")
    print(f"validation: {result['validation']}")
    print(f"train {result['n_train']} images, validation {result['n_val']} images, "
          f"classes {', '.join(result['classes'])}")
    print(f"val accuracy {result['val_accuracy']:.3f}, balanced accuracy "
          f"{result['val_balanced_accuracy']:.3f}")
    if "test_accuracy" in result:
        print(f"test accuracy {result['test_accuracy']:.3f}, balanced accuracy "
              f"{result['test_balanced_accuracy']:.3f}")
    print(f"saved model to {result['out']} ({result['seconds']:.1f} s, features "
          f"{result['extract_seconds']:.1f} s)")
    if "negative_transfer" in result:
        check = result["negative_transfer"]
        print(f"negative-transfer check: {check['verdict']} (balanced accuracy "
              f"{check['transferred_balanced_accuracy']['mean']:.3f} vs raw pixels "
              f"{check['baseline_balanced_accuracy']['mean']:.3f}, p = {check['p_value']:.3g}, "
              f"{check['protocol']})")
    if "report" in result:
        print(f"report: {result['report']}")


def _report_evaluate(result: dict) -> None:
    _show_skipped(result)
    print(f"accuracy {result['accuracy']:.3f}, balanced accuracy "
          f"{result['balanced_accuracy']:.3f} on {result['n']} images")
    rows = [["class", "precision", "recall", "f1", "support"]]
    for name, row in result["per_class"].items():
        rows.append([name, f"{row['precision']:.3f}", f"{row['recall']:.3f}", f"{row['f1']:.3f}",
                     str(row["support"])])
    _print_table(rows)
    matrix = result["confusion_matrix"]
    print("confusion matrix (rows: true, columns: predicted)")
    _print_table([[""] + matrix["labels"]] + [[label] + [str(v) for v in row] for label, row
                                               in zip(matrix["labels"], matrix["matrix"])])


def _report_predict(result: dict) -> None:
    for item in result["predictions"]:
        print(f"{item['path']}\t{item['label']}\t{item['probabilities'][item['label']]:.3f}")
    _show_skipped(result)


def _report_backbones(result: dict) -> None:
    rows = [["name", "architecture", "available", "note"]]
    for item in result["bundled"]:
        rows.append([item["name"], item["arch"], "yes" if item["available"] else "no",
                     item["description"] if item["available"] else item["install"]])
    _print_table(rows)
    print("cached timm hub models: " + (", ".join(result["cached_hub"]) or "none"))
    print(result["note"])


def _report_layers(result: dict) -> None:
    if "rows" not in result:  # `backbones --layers`
        rows = [["layer", "channels", "spatial"]]
        rows += [[r["name"], str(r["channels"]), "x".join(map(str, r["spatial"])) or "-"]
                 for r in result["layers"]]
        _print_table(rows)
        print(f"input size {'x'.join(map(str, result['input_size']))}; tap several with "
              "--layer a,b or --layer stages|all")
        return
    rows = [["layer", "dim", "balanced accuracy", "seconds"]]
    for row in result["rows"]:
        rows.append([row["layer"], str(row["dim"]), f"{row['balanced_accuracy_mean']:.3f} ± "
                     f"{row['balanced_accuracy_std']:.3f}", f"{row['seconds']:.2f}"])
    _print_table(rows)
    print(f"best single layer: {result['best_layer']}; best overall: {result['best_overall']} "
          f"({result['folds']}-fold CV, {result['classifier']}, {result['n_images']} images)")
    print(f"wrote {result['files']['csv']}, {result['files']['plot']}")


def _report_demo(result: dict) -> None:
    rows = [["set", "train", "val", "pretrained features", "raw pixels", "model"]]
    for name, item in result.items():
        rows.append([name, item["n_train"], item["n_val"], f"{item['val_accuracy']:.3f}",
                     f"{item['raw_pixels_val_accuracy']:.3f}", item["model"]])
    _print_table(rows)
    print("validation accuracy of logistic regression on EfficientNet-Lite0 features vs raw pixels")


def _report_cdfg(result: dict) -> None:
    rows = [["space", "dim", "G_comp", "G_part(A)", "G_part(B)", "risk A→A", "A→B", "B→B",
             "B→A"]]
    for row in result["rows"]:
        a, b = row["a_to_b"], row["b_to_a"]
        rows.append([row["space"], str(row["dim"]), f"{row['g_comp']:.3f}",
                     f"{row['g_part_a']:.3f}", f"{row['g_part_b']:.3f}", f"{a['risk_own']:.3f}",
                     f"{a['risk_other']:.3f}", f"{b['risk_own']:.3f}", f"{b['risk_other']:.3f}"])
    _print_table(rows)
    print(f"CDFG (lower carries over better) of {result['backbone']} features, {result['classifier']} "
          f"trained on 70% of one domain, risks on the held-out 30% of both; A = "
          f"{result['domain_a']} ({result['n_a']} images), B = {result['domain_b']} "
          f"({result['n_b']} images)")


def _report_anomaly(result: dict) -> None:
    _show_skipped(result)
    print(f"{result['scorer']} on {result['backbone']} features: AUC {result['auc']:.3f}, "
          f"EER {result['eer']:.3f} (at score {result['eer_threshold']:.3g}, chosen on the test "
          "labels)")
    print(f"trained on {result['n_normal_train']} normal images; tested on {result['n_test']} "
          f"({result['n_test_normal']} normal, {result['n_anomalous']} anomalous"
          + (f", {result['n_held_out_normal']} held out of {result['normal']}"
             if result["n_held_out_normal"] else "") + ")")
    print(f"threshold {result['threshold']:.3g} = {result['threshold_quantile']:.0%} quantile of "
          f"the normal training scores: detection rate {result['detection_rate']:.3f}, false "
          f"alarm rate {result['false_alarm_rate']:.3f}")
    rows = [["sub-folder", "kind", "images", "flagged", "AUC vs normal"]]
    for name, item in result["per_group"].items():
        rows.append([name, "normal" if item["normal"] else "anomalous", str(item["n"]),
                     f"{item['flagged_rate']:.3f}", f"{item['auc']:.3f}" if "auc" in item else "-"])
    _print_table(rows)
    if "files" in result:
        print("wrote " + ", ".join(result["files"].values()))


def _report_adapt(result: dict) -> None:
    def fmt(value):
        return "—" if value is None else f"{value:.3f}"

    if result.get("demo"):
        print(result["demo"])
    print(f"method {result['method']} ({result['family']}): {result['n_source']} source, "
          f"{result['n_target']} target images")
    _print_table([["", "target accuracy"],
                  ["source only", fmt(result["source_only_accuracy"])],
                  [result["method"], fmt(result["adapted_accuracy"])],
                  ["target oracle", fmt(result["oracle_accuracy"])]])
    if result["gap_closed"] is not None:
        print(f"gap closed: {100 * result['gap_closed']:.0f}% of source only → oracle")
    print(f"proxy A-distance source↔target: {fmt(result['a_distance_before'])} before, "
          f"{fmt(result['a_distance_after'])} after")
    if result.get("mmd_before") is not None:
        print(f"MMD source↔target: {fmt(result['mmd_before'])} before, "
              f"{fmt(result['mmd_after'])} after")
    _show_skipped(result)
    if result.get("out"):
        print(f"wrote {result['out']}/summary.json and {result.get('domain_map')}")
    if result.get("report"):
        print(f"report: {result['report']}")


def _report_autoencoder(result: dict) -> None:
    def fmt(value):
        return "—" if value is None else f"{value:.3f}"

    print(f"autoencoder: {result['n_unlabelled']} unlabelled + {result['n_labelled']} labelled "
          f"images, {result['autoencoder_epochs']} epochs; reconstruction MSE "
          f"{result['reconstruction_error_train']:.4f} (train), "
          f"{fmt(result['reconstruction_error_test'])} (test)")
    accuracy = result["accuracy"]
    _print_table([["", f"test accuracy ({result['n_test']} images)"],
                  ["encoder + logistic regression", fmt(accuracy["encoder_logreg"])],
                  ["autoencoder-initialised, fine-tuned", fmt(accuracy["ae_init_finetuned"])],
                  ["random-initialised", fmt(accuracy["random_init"])]])
    if not result["n_test"]:
        print("no --test folder: give one to compare the three classifiers.")
    _show_skipped(result)
    print(f"wrote {result['out']}/summary.json and {result['reconstructions']}")


def _report_multitask(result: dict) -> None:
    def fmt(value):
        return "—" if value is None else f"{value:.3f}"

    print(f"{result['n_images']} images: {result['n_train']} train, {result['n_val']} validation "
          f"({result['validation']}); backbone {result['backbone']} (frozen), "
          f"{result['epochs']} epochs")
    rows = [["task", "classes", "train", "val", "single-task", f"multi-task ({result['weighting']})",
             "task weight"]]
    for task, info in result["per_task"].items():
        rows.append([task, str(len(info["classes"])), str(info["n_train"]), str(info["n_val"]),
                     fmt(info["single_task_accuracy"]), fmt(info["multitask_accuracy"]),
                     f"{info['task_weight']:.3f}"])
    _print_table(rows)
    if result["weighting"] == "uncertainty":
        print("task weight = exp(-s_t), s_t = log σ_t² learned")
    _show_skipped(result)
    print(f"{result['seconds']:.0f} s")


def _report_distill(result: dict) -> None:
    speed = result.get("speed") or {}

    def rate(key):
        value = speed.get(key)
        return "—" if value is None else f"{value:.0f}"

    print(f"teacher {result['teacher']} ({result['teacher_method']}) → student "
          f"{result['student']} at {result['image_size']}×{result['image_size']}, "
          f"T = {result['temperature']:g}, α = {result['alpha']:g}, {result['epochs']} epochs; "
          f"{result['n_train']} labelled + {result['n_unlabelled']} unlabelled training images, "
          f"{result['n_val']} validation images")
    _print_table([["", "val accuracy", "images/s (batch 32)"],
                  ["teacher", f"{result['teacher_accuracy']:.3f}", rate("teacher_images_per_s")],
                  ["student alone", f"{result['student_alone_accuracy']:.3f}",
                   rate("student_images_per_s")],
                  ["student distilled", f"{result['student_distilled_accuracy']:.3f}",
                   rate("student_images_per_s")]])
    if speed.get("speedup"):
        print(f"student {speed['speedup']:.0f}× faster than the teacher ({speed['note']})")
    if result.get("note"):
        print(f"note: {result['note']}")
    _show_skipped(result)
    if result.get("files"):
        print(f"wrote {result['files']['summary']} and {result['files']['student']}/")


def _report_zeroshot(result: dict) -> None:
    zsl, gzsl = result["zero_shot"], result["generalised"]
    raw = gzsl["uncalibrated"]
    print(f"semantic space: {result['semantic']}")
    print(f"seen {len(result['seen'])} classes ({result['n_train']} training, "
          f"{result['n_seen_test']} test images); unseen {len(result['unseen'])}: "
          + ", ".join(result["unseen"]) + f" ({result['n_unseen_test']} images)")
    _print_table([["", "seen", "unseen", "H", "chance"],
                  ["zero-shot (unseen candidates only)", "—", f"{zsl['accuracy']:.3f}", "—",
                   f"{zsl['chance']:.3f}"],
                  ["generalised (all candidates)", f"{gzsl['seen']:.3f}", f"{gzsl['unseen']:.3f}",
                   f"{gzsl['harmonic_mean']:.3f}", f"{gzsl['chance']:.3f}"],
                  ["generalised, uncalibrated", f"{raw['seen']:.3f}", f"{raw['unseen']:.3f}",
                   f"{raw['harmonic_mean']:.3f}", f"{gzsl['chance']:.3f}"]])
    hyper = result["hyperparameters"]
    print(f"alpha {hyper['alpha']:g}, beta {hyper['beta']:g}, seen-class calibration "
          f"{hyper['calibration']:g} ({hyper['chosen_by']}); per-class accuracy, chance = 1/k")
    _show_skipped(result)


def _report_fewshot(result: dict) -> None:
    if "out" in result:  # fewshot-train
        print(f"learned a similarity on {result['n_images']} images of {result['n_classes']} "
              f"classes ({result['backbone']} {','.join(result['layers'])}, {result['loss']} "
              f"loss, {result['epochs_run']} epochs, kept epoch {result['best_epoch']})")
        print(f"verification on {result['validation']}: EER {result['eer_validation']:.3f} at "
              f"threshold λ = {result['threshold']:.3f}")
        _show_skipped(result)
        print(f"wrote {result['out']}")
        return
    shots = result["k_shot"]
    print(f"{result['n_way']}-way {shots if isinstance(shots, int) else '-'.join(map(str, shots))}"
          f"-shot, {result['rule']} ({result['metric']}) on "
          + (f"similarity {result['similarity']}" if result["similarity"]
             else f"plain {result['backbone']} features ({','.join(result['layers'])})"))
    if "accuracy" in result:
        low, high = result["accuracy_ci95"]
        print(f"accuracy {result['accuracy']:.3f} on {result['n_query']} query images "
              f"(95% CI {low:.3f}–{high:.3f})")
    else:
        rows = [["image", "predicted", "distance"] + (["verified"] if result["similarity"] else [])]
        for row in result["predictions"]:
            rows.append([row["path"], row["predicted"], f"{row['distance']:.3f}"]
                        + ([("yes" if row["verified"] else "no")] if "verified" in row else []))
        _print_table(rows)
    if result["similarity"]:
        print(f"verification threshold λ = {result['threshold']:.3f} (equal-error point on "
              "validation pairs)")
    _show_skipped(result)


def _seconds_since_process_start() -> float:
    import time

    try:
        import psutil

        return time.time() - psutil.Process().create_time()
    except Exception:  # psutil missing or /proc unreadable: the job's own clock stands
        return 0.0


def main(argv=None) -> int:
    # A file name that is not valid UTF-8 (surrogates) or a character the terminal's
    # encoding lacks must not crash the output after the work is done.
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    args = build_parser().parse_args(argv)
    quiet = args.quiet or args.json
    logging.basicConfig(level=logging.ERROR if args.quiet else logging.WARNING,
                        format="%(levelname)s: %(message)s", stream=sys.stderr)
    if args.quiet:
        warnings.simplefilter("ignore")
    else:
        warnings.showwarning = lambda message, *rest, **kw: print(f"warning: {message}",
                                                                  file=sys.stderr)
    try:
        from transferkit import run

        if args.command == "fit":
            result = run.fit(args.data, args.out, method=args.method, val_fraction=args.val_fraction,
                             random_state=args.seed, report=not args.no_report,
                             check_negative_transfer=args.check_negative_transfer,
                             overwrite=args.overwrite, **_fit_options(args))
            report = _report_fit
        elif args.command == "predict":
            result = run.predict(args.model, args.images, progress=not quiet,
                                 **_cache_options(args))
            report = _report_predict
        elif args.command == "evaluate":
            result = run.evaluate(args.model, args.data, progress=not quiet,
                                  **_cache_options(args))
            report = _report_evaluate
        elif args.command == "backbones" and args.layers:
            from transferkit.backbones import create_backbone
            from transferkit.backbones.taps import list_layers

            backbone = create_backbone(args.layers)
            size = backbone.data_config["input_size"]
            result = {"backbone": args.layers, "input_size": list(size),
                      "layers": [vars(info) for info in list_layers(backbone.model, size)]}
            report = _report_layers
        elif args.command == "layers":
            result = _run_layers(args, quiet)
            report = _report_layers
        elif args.command == "report":
            from transferkit.report.html import write_report

            path = write_report(args.run_dir, args.out)
            result = {"report": str(path), "bytes": path.stat().st_size}
            report = lambda r: print(f"wrote {r['report']} ({r['bytes'] / 1e6:.2f} MB)")  # noqa: E731
        elif args.command == "backbones":
            from transferkit.backbones import cached_hub_models, list_backbones

            result = {"bundled": list_backbones(), "cached_hub": cached_hub_models(),
                      "note": "any timm model name (e.g. timm/resnet50.a1_in1k) works with internet "
                              "access; offline, use --weights FILE --arch NAME."}
            report = _report_backbones
        elif args.command == "anomaly":
            result = run.anomaly(args.normal, args.test, out=args.out, scorer=args.scorer,
                                 backbone=args.backbone, weights=args.weights, arch=args.arch,
                                 layer=args.layer, threshold_quantile=args.threshold_quantile,
                                 holdout=args.holdout, random_state=args.seed,
                                 overwrite=args.overwrite, progress=not quiet,
                                 **_cache_options(args))
            report = _report_anomaly
        elif args.command == "cdfg":
            result = run.cdfg(args.domain_a, args.domain_b, spaces=args.spaces,
                              backbone=args.backbone, weights=args.weights, arch=args.arch,
                              classifier=args.classifier, random_state=args.seed,
                              progress=not quiet, **_cache_options(args))
            report = _report_cdfg
        elif args.command == "adapt":
            from transferkit import adapt

            if args.demo:
                result = adapt.run_adapt_demo(args.out or "transferkit-adapt-demo",
                                              method=args.method, random_state=args.seed,
                                              progress=not quiet, overwrite=args.overwrite,
                                              **({"epochs": args.epochs} if args.epochs else {}))
            else:
                if not (args.source and args.target):
                    raise TransferkitError("adapt needs --source and --target (or --demo).")
                result = adapt.adapt(args.source, args.target, method=args.method, out=args.out,
                                     target_labelled=args.target_labelled,
                                     target_test=args.target_test, epochs=args.epochs,
                                     backbone=args.backbone, random_state=args.seed,
                                     device=args.device, progress=not quiet,
                                     overwrite=args.overwrite, **_cache_options(args))
            report = _report_adapt
        elif args.command == "autoencoder":
            from transferkit.autoencoder_job import run_autoencoder

            result = run_autoencoder(args.unlabelled, args.labelled, args.out, test=args.test,
                                     epochs=args.epochs, finetune_epochs=args.finetune_epochs,
                                     noise=args.noise,
                                     contrast_normalise=args.contrast_normalise,
                                     random_state=args.seed, device=args.device,
                                     progress=not quiet, overwrite=args.overwrite)
            report = _report_autoencoder
        elif args.command == "multitask":
            from transferkit.multitask_job import run_multitask

            result = run_multitask(args.csv, tasks=args.tasks, weighting=args.weighting,
                                   task_weights=args.task_weights,
                                   val_fraction=args.val_fraction, epochs=args.epochs,
                                   backbone=args.backbone, weights=args.weights, arch=args.arch,
                                   device=args.device, random_state=args.seed,
                                   progress=not quiet, **_cache_options(args))
            report = _report_multitask
        elif args.command == "distill":
            from transferkit.distill_job import distill

            result = distill(args.teacher, args.data, out=args.out, student=args.student,
                             temperature=args.temperature, alpha=args.alpha, epochs=args.epochs,
                             image_size=args.image_size, unlabelled=args.unlabelled,
                             val_fraction=args.val_fraction, random_state=args.seed,
                             device=args.device, progress=not quiet,
                             overwrite=args.overwrite, **_cache_options(args))
            report = _report_distill
        elif args.command == "zeroshot":
            from transferkit.zeroshot_job import zeroshot

            result = zeroshot(args.data, unseen=args.unseen, attributes=args.attributes,
                              descriptions=args.descriptions, prompt=args.prompt,
                              unseen_fraction=args.unseen_fraction,
                              test_fraction=args.test_fraction, backbone=args.backbone,
                              weights=args.weights, arch=args.arch, random_state=args.seed,
                              progress=not quiet, **_cache_options(args))
            report = _report_zeroshot
        elif args.command == "fewshot":
            from transferkit.fewshot_job import fewshot

            result = fewshot(args.support, args.query, similarity=args.similarity,
                             backbone=args.backbone, layer=args.layer, metric=args.metric,
                             rule=args.rule, progress=not quiet, **_cache_options(args))
            report = _report_fewshot
        elif args.command == "fewshot-train":
            from transferkit.fewshot_job import fewshot_train

            result = fewshot_train(args.background, args.out, backbone=args.backbone,
                                   layer=args.layer, loss=args.loss, epochs=args.epochs,
                                   device=args.device, random_state=args.seed,
                                   progress=not quiet, overwrite=args.overwrite,
                                   **_cache_options(args))
            report = _report_fewshot
        else:
            from transferkit.demo import run_demo

            result = run_demo(args.out, sets=args.sets or ("textures", "faces"),
                              overwrite=args.overwrite, progress=not quiet,
                              **_cache_options(args))
            report = _report_demo
    except TransferkitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; nothing half-written was kept.", file=sys.stderr)
        return 130
    if "seconds" in result:
        # The summary's clock starts inside the job; a user's starts at the command.
        result["seconds"] = max(result["seconds"], _seconds_since_process_start())
    if args.json:
        json.dump(result, sys.stdout, default=str)
        sys.stdout.write("\n")
    else:
        report(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
