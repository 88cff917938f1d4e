"""Freeze or fine-tune? Linear probe vs fine-tuning strategies on oxford17flowers.

Two tables for the ``flowers`` section of ``benchmarks/RESULTS_finetune.md``, from the real images in ``../shared/datasets/oxford17flowers``:

1. 40 training / 40 test images per class (seeded stratified split, one split per seed):
   the linear probe (Lite0 pre-logits + logistic regression, C by CV) against
   ``FineTuner`` with ``head``, ``last-k`` (k=2) and ``full``; test accuracy mean ± std
   over the seeds, with fit wall times. Early stopping uses a seeded 20% of the
   training images, never the test images.
2. The lectures' "freeze or fine-tune?" advice, measured: 5, 10, 20 and 40 training
   images per class (the first n of each class's shuffled training list, seed 0, same
   40-per-class test set); which method wins at each size.

Also the seconds per training step of Lite0 under fp32 and bf16 autocast on this CPU
(the reason ``FineTuner`` defaults to fp32 on CPUs when bf16 is not faster).

    .venv/bin/python -m benchmarks.bench_finetune_flowers --seeds 0 1 2 --epochs 6
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks._common import (
    add_output_arguments,
    add_seeds_argument,
    announce_machine,
    publish,
    require_dataset,
)
from benchmarks.bench_finetune import RESULTS_FINETUNE, precision_check

METHODS = ("linear probe", "head", "last-k", "full")


def split(labels: np.ndarray, seed: int, n_train: int = 40, n_test: int = 40):
    """Per class: shuffled with ``seed``; the first ``n_train`` train, the next ``n_test`` test."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        train.append(members[:n_train])
        test.append(members[n_train:n_train + n_test])
    return train, np.concatenate(test)


def fit_and_score(method: str, paths, labels, train, test, seed: int, args) -> dict:
    from transferkit.methods import FineTuner, LinearProbe

    X, y = [paths[i] for i in train], labels[train]
    started = time.perf_counter()
    if method == "linear probe":
        model = LinearProbe(random_state=seed, cache_dir=str(args.cache_dir))
    else:
        model = FineTuner(strategy=method, k=2, epochs=args.epochs, image_size=args.image_size,
                          batch_size=args.batch_size, random_state=seed, progress=False,
                          num_workers=args.num_workers, views=args.views,
                          cache_dir=str(args.cache_dir))
    model.fit(X, y)
    fit_seconds = time.perf_counter() - started
    accuracy = float(model.score([paths[i] for i in test], labels[test]))
    row = {"method": method, "seed": seed, "n_per_class": len(train) // len(np.unique(y)),
           "accuracy": accuracy, "fit_s": fit_seconds,
           "epochs": getattr(model, "epochs_run_", None), "best": getattr(model, "best_epoch_", None)}
    print(f"[{method} n={row['n_per_class']} seed {seed}] accuracy {accuracy:.4f}, "
          f"fit {fit_seconds:.0f} s, epochs {row['epochs']}, best {row['best']}", flush=True)
    return row


def mean_std(values) -> str:
    values = np.asarray(values, dtype=float)
    return f"{values.mean():.3f} ± {values.std(ddof=1) if len(values) > 1 else 0.0:.3f}"


def render(args, described, main_rows, size_rows, speed, seconds) -> str:
    lines = ["## Freeze or fine-tune? oxford17flowers (17 classes)", "",
             f"`python -m benchmarks.bench_finetune_flowers --seeds {' '.join(map(str, args.seeds))} "
             f"--epochs {args.epochs} --views {args.views} --sizes {' '.join(map(str, args.sizes))} "
             f"--methods {' '.join(repr(m) if ' ' in m else m for m in args.methods)}`. "
             f"Machine: {described}. {seconds:.0f} s in all.", "",
             f"EfficientNet-Lite0 (bundled ImageNet weights), {args.image_size} px, batch "
             f"{args.batch_size}, AdamW lr 1e-3 for the head, each earlier layer group 3× slower, "
             f"warm-up + cosine, epoch budget {args.epochs}, early stopping (patience 3) on a "
             "seeded 20% of the training images; `last-k` trains the head and the last 2 groups. "
             f"`head` and `last-k` train on cached frozen-prefix activations ({args.views} "
             "augmented views per image + the centre crop; 0: none), `full` on fresh "
             "augmentations through the whole network. "
             "Linear probe: pre-logits features + logistic regression with C chosen by 5-fold CV.",
             "", "### 40 training / 40 test images per class (seeded split per seed)", "",
             "| method | test accuracy (mean ± sd) | per seed | fit wall s (mean) | epochs run |",
             "|---|---|---|---|---|"]
    for method in METHODS:
        rows = [r for r in main_rows if r["method"] == method]
        if not rows:
            continue
        epochs = ", ".join(str(r["epochs"]) for r in rows) if rows[0]["epochs"] is not None else "—"
        lines.append(f"| {method} | {mean_std([r['accuracy'] for r in rows])} | "
                     f"{', '.join(format(r['accuracy'], '.3f') for r in rows)} | "
                     f"{np.mean([r['fit_s'] for r in rows]):.0f} | {epochs} |")
    if size_rows:
        sizes = sorted({r["n_per_class"] for r in size_rows})
        lines += ["", "### Training images per class (seed 0, same 40-per-class test set)", "",
                  "| images per class | " + " | ".join(METHODS) + " | winner |",
                  "|---|" + "---|" * (len(METHODS) + 1)]
        for n in sizes:
            cells, best = [], None
            for method in METHODS:
                row = next((r for r in size_rows if r["n_per_class"] == n and r["method"] == method), None)
                if row is None:
                    cells.append("")
                    continue
                cells.append(f"{row['accuracy']:.3f} ({row['fit_s']:.0f} s)")
                if best is None or row["accuracy"] > best["accuracy"]:
                    best = row
            lines.append(f"| {n} | " + " | ".join(cells) + f" | {best['method'] if best else ''} |")
        lines += ["", "Cells: test accuracy (fit wall seconds)."]
    if speed:
        lines += ["", "### bf16 autocast vs fp32 on this CPU (Lite0 training step, batch 16)", "",
                  "| precision | seconds per step |", "|---|---|",
                  f"| fp32 | {speed['fp32']:.2f} |", f"| bf16 autocast | {speed['bf16']:.2f} |",
                  "", "fp32 stays the default on CPUs unless bf16 is faster here."]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_seeds_argument(parser)
    parser.add_argument("--sizes", type=int, nargs="*", default=[5, 10, 20])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--views", type=int, default=8,
                        help="frozen-prefix cache: augmented views per training image (0: none)")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--num-workers", type=int, default=1)
    parser.add_argument("--cache-dir", type=Path, default=Path("/tmp/transferkit-bench-cache"))
    parser.add_argument("--skip-precision", action="store_true")
    add_output_arguments(parser, RESULTS_FINETUNE)
    args = parser.parse_args(argv)

    root = require_dataset("oxford17flowers/all")
    from transferkit.data.dataset import read_image_folder

    started = time.perf_counter()
    described = announce_machine()
    images = read_image_folder(root)
    paths = [str(p) for p in images.paths]
    labels = np.asarray([images.classes[i] for i in images.labels])
    speed = None if args.skip_precision else precision_check(args.image_size)
    main_rows, size_rows = [], []

    def save(echo: bool = False):
        publish("flowers", render(args, described, main_rows, size_rows, speed,
                                  time.perf_counter() - started), args, echo=echo)

    # Seed 0 first, then the training-size table on its split, then the other seeds: a
    # run cut short still leaves both tables with what it measured.
    def run_seed(seed):
        per_class, test = split(labels, seed)
        train = np.concatenate(per_class)
        for method in args.methods:
            main_rows.append(fit_and_score(method, paths, labels, train, test, seed, args))
            if seed == args.seeds[0]:
                size_rows.append(main_rows[-1])
            save()

    run_seed(args.seeds[0])
    per_class, test = split(labels, args.seeds[0])
    for n in args.sizes:
        train = np.concatenate([members[:n] for members in per_class])
        for method in args.methods:
            size_rows.append(fit_and_score(method, paths, labels, train, test, args.seeds[0], args))
            save()
    for seed in args.seeds[1:]:
        run_seed(seed)
    save(echo=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
