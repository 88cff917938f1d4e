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
    fit.add_argument("--method", default="linear_probe", choices=["linear_probe", "finetune"])
    fit.add_argument("--backbone", default=None, help="bundled or timm model name "
                     "(default efficientnet_lite0; see `transferkit backbones`)")
    fit.add_argument("--weights", help="local checkpoint (.safetensors or state dict) for --arch")
    fit.add_argument("--arch", help="timm architecture of --weights")
    fit.add_argument("--classifier", default="logreg", choices=["logreg", "svm", "knn", "mlp"],
                     help="linear_probe: the shallow classifier")
    fit.add_argument("--val-fraction", type=float, default=0.2,
                     help="share of each class held out when DATA has no val/ folder")
    fit.add_argument("--seed", type=int, default=0, help="seeds every random choice")
    fine = fit.add_argument_group("finetune")
    fine.add_argument("--strategy", choices=["head", "last-k", "full", "gradual"])
    fine.add_argument("--k", type=int, help="groups unfrozen by last-k")
    fine.add_argument("--epochs", type=int)
    fine.add_argument("--lr", type=float)
    fine.add_argument("--lr-factor", type=float, help="learning-rate ratio between groups")
    fine.add_argument("--batch-size", type=int)
    fine.add_argument("--patience", type=int)
    fine.add_argument("--device", choices=["auto", "cpu", "cuda"])
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
    _common(backbones)

    demo = commands.add_parser("demo", help="run fit on image sets embedded in the installed "
                               "packages and compare with raw pixels")
    demo.add_argument("--out", default="transferkit-demo")
    demo.add_argument("--set", dest="sets", action="append", choices=["textures", "faces"],
                      help="embedded set (repeatable; default both)")
    _extraction(demo)
    _common(demo)
    return parser


def _cache_options(args) -> dict:
    return {"cache_dir": args.cache_dir, "use_cache": not args.no_cache}


def _fit_options(args) -> dict:
    options = {"backbone": args.backbone or "efficientnet_lite0", "weights": args.weights,
               "arch": args.arch, "progress": not (args.quiet or args.json)}
    if args.method == "linear_probe":
        options.update(_cache_options(args), classifier=args.classifier)
    else:
        for name in ("strategy", "k", "epochs", "lr", "lr_factor", "batch_size", "patience",
                     "device"):
            value = getattr(args, name)
            if value is not None:
                options[name] = value
    return options


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


def _report_demo(result: dict) -> None:
    rows = [["set", "train", "val", "pretrained features", "raw pixels", "model"]]
    for name, item in result.items():
        rows.append([name, item["n_train"], item["n_val"], f"{item['val_accuracy']:.3f}",
                     f"{item['raw_pixels_val_accuracy']:.3f}", item["model"]])
    _print_table(rows)
    print("validation accuracy of logistic regression on EfficientNet-Lite0 features vs raw pixels")


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
                             random_state=args.seed, **_fit_options(args))
            report = _report_fit
        elif args.command == "predict":
            result = run.predict(args.model, args.images, progress=not quiet,
                                 **_cache_options(args))
            report = _report_predict
        elif args.command == "evaluate":
            result = run.evaluate(args.model, args.data, progress=not quiet,
                                  **_cache_options(args))
            report = _report_evaluate
        elif args.command == "backbones":
            from transferkit.backbones import cached_hub_models, list_backbones

            result = {"bundled": list_backbones(), "cached_hub": cached_hub_models(),
                      "note": "any timm model name (e.g. timm/resnet50.a1_in1k) works with internet "
                              "access; offline, use --weights FILE --arch NAME."}
            report = _report_backbones
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
