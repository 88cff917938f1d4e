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
    _extraction(anomaly)
    _common(anomaly)

    report = commands.add_parser("report", help="write one self-contained HTML report of a "
                                 "run folder (a model from fit, a layers sweep)")
    report.add_argument("run_dir", help="folder written by `transferkit fit` or `transferkit layers`")
    report.add_argument("--out", help="HTML file to write (default RUN_DIR/report.html)")
    _common(report)

    demo = commands.add_parser("demo", help="run fit on image sets embedded in the installed "
                               "packages and compare with raw pixels")
    demo.add_argument("--out", default="transferkit-demo")
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
    adapt.add_argument("--epochs", type=int, help="training epochs of the deep methods")
    adapt.add_argument("--backbone", help="feature backbone of the shallow methods "
                       "(default efficientnet_lite0)")
    adapt.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    adapt.add_argument("--seed", type=int, default=0)
    adapt.add_argument("--demo", action="store_true", help="printed → handwritten digits, "
                       "generated and bundled: needs no data")
    _extraction(adapt)
    _common(adapt)
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

    splits = load_dataset(args.data, random_state=args.seed)
    parts = [part for part in (splits.train, splits.val) if part is not None]
    paths = [path for part in parts for path in part.paths]
    labels = np.concatenate([part.labels for part in parts])
    sweep = layer_sweep(paths, labels, backbone=args.backbone, weights=args.weights,
                        arch=args.arch, layers=args.layer, pooling=args.pooling, folds=args.folds,
                        classifier=args.classifier, random_state=args.seed,
                        cache_dir=args.cache_dir, progress=not quiet)
    result = sweep.to_dict()
    result["files"] = write_sweep(sweep, args.out, title=f"{Path(args.data).name}: "
                                  f"{args.backbone} layers")
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
    _show_skipped(result)
    if result.get("out"):
        print(f"wrote {result['out']}/summary.json and {result.get('domain_map')}")


def _seconds_since_process_start() -> float:
    import time

    try:
        import psutil

        return time.time() - psutil.Process().create_time()
    except Exception:  # psutil missing or /proc unreadable: the job's own clock stands
        return 0.0


def main(argv=None) -> int:
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
                             **_fit_options(args))
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
                                 progress=not quiet, **_cache_options(args))
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
                                              progress=not quiet,
                                              **({"epochs": args.epochs} if args.epochs else {}))
            else:
                if not (args.source and args.target):
                    raise TransferkitError("adapt needs --source and --target (or --demo).")
                result = adapt.adapt(args.source, args.target, method=args.method, out=args.out,
                                     target_labelled=args.target_labelled,
                                     target_test=args.target_test, epochs=args.epochs,
                                     backbone=args.backbone, random_state=args.seed,
                                     device=args.device, progress=not quiet,
                                     **_cache_options(args))
            report = _report_adapt
        else:
            from transferkit.demo import run_demo

            result = run_demo(args.out, sets=args.sets or ("textures", "faces"),
                              progress=not quiet, **_cache_options(args))
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
