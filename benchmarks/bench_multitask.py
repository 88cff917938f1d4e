"""Multi-task vs single-task learning on sign-language digits: tasks 'digit' and 'digit ≥ 5'.

Data: ``../shared/datasets/sign_language_digits/all/0..9`` (100×100 hand photos, ~205
per digit). Frozen EfficientNet-Lite0 pre-logits features (1280-d, bundled, offline;
cached) feed :class:`transferkit.methods.multitask.MultiTaskClassifier`: a shared block
(1280 → 128, ReLU, dropout 0.3) and per task a head (128 → 64 → classes); AdamW, 60
epochs, batch 32, cosine schedule — its defaults, identical for every row.

Per seed, each digit's images are shuffled; the first ``n`` of each (``--n-train``,
several sizes) are the labelled training set, images 10..49 of each digit are the
"coarse pool" (part B only), and images 50.. of each digit (~1560) are the test set,
the same for every row and size of that seed. Rows:

* single-task digit / single-task ≥5: the same network with one head, one task's labels;
* multi-task, fixed weights 1:1, and multi-task, uncertainty weighting (Kendall et al.
  2018), both heads trained together on the same images;
* "≥5 read off the digit prediction": the single-task digit model's prediction ≥ 5.

Part B (cheap coarse labels): 10 digit labels per class plus the ≥5 label on 40 more
images per class (missing digit label = -1). Control: the single-task digit model on
the same 500 rows, the extra rows unlabelled (same feature scaling and step count).

    .venv/bin/python -m benchmarks.bench_multitask [--seeds 0 1 2] [--n-train 10,20]
        [--cache-dir /tmp/tk-multitask-cache]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks._common import (
    add_datasets_argument,
    add_output_arguments,
    add_seeds_argument,
    announce_machine,
    publish,
    require_dataset,
)

POOL_END = 50  # per digit: images [0, POOL_END) may train, the rest test


def split(digits: np.ndarray, seed: int) -> list[np.ndarray]:
    """Per digit, that digit's row indices in a seeded random order."""
    rng = np.random.default_rng(seed)
    return [rng.permutation(np.flatnonzero(digits == d)) for d in range(10)]


def mean_sd(values) -> str:
    values = [v for v in values if v is not None]
    return f"{np.mean(values):.3f} ± {np.std(values):.3f}" if values else "—"


def run(args) -> str:
    import torch

    torch.set_num_threads(1)
    from transferkit.features.extract import FrozenExtractor
    from transferkit.methods.multitask import MultiTaskClassifier

    started = time.perf_counter()
    machine = announce_machine()
    root = Path(args.datasets) / "sign_language_digits" / "all"
    paths = sorted(p for p in root.glob("*/*") if p.is_file())
    extracted = FrozenExtractor.from_name("efficientnet_lite0", cache_dir=args.cache_dir).extract(
        paths, progress=True)
    features = extracted.features
    digits = np.array([int(p.parent.name) for p in paths])[extracted.ok]
    high = (digits >= 5).astype(int)
    extract_note = (f"{len(features)} images, features {extracted.n_computed} computed / "
                    f"{extracted.n_cached} cached in {extracted.seconds:.0f} s"
                    + (f", {len(extracted.skipped)} unreadable skipped" if extracted.skipped else ""))
    print(extract_note, file=sys.stderr)
    sizes = [int(n) for n in args.n_train.split(",")]
    seeds = args.seeds
    options = {"device": "cpu"}
    if args.epochs:
        options["epochs"] = args.epochs

    def fit(rows, labels, seed, **extra):
        tick = time.perf_counter()
        model = MultiTaskClassifier(random_state=seed, **options, **extra).fit(features[rows], labels)
        return model, time.perf_counter() - tick

    # results[size][row] = {"digit": [...], "high": [...], "seconds": [...], "weights": [...]}
    results: dict = {}
    test_sizes = []
    for seed in seeds:
        order = split(digits, seed)
        test = np.concatenate([o[POOL_END:] for o in order])
        test_sizes.append(len(test))
        truth = {"digit": digits[test], "high": high[test]}
        for n in sizes + ["B"]:
            table = results.setdefault(n, {})
            if n == "B":
                rows = np.concatenate([o[:10] for o in order] + [o[10:POOL_END] for o in order])
                digit_labels = np.where(np.arange(len(rows)) < 100, digits[rows], -1)
                labelled = np.concatenate([o[:10] for o in order])
                runs = {
                    "single-task digit (its 100 labelled images)":
                        ([labelled], {"digit": digits[labelled]}, {}),
                    "single-task digit, same 500 rows (400 unlabelled)":
                        ([rows], {"digit": digit_labels}, {}),
                    "single-task ≥5 (500 labelled images)": ([rows], {"high": high[rows]}, {}),
                    "multi-task, fixed weights 1:1":
                        ([rows], {"digit": digit_labels, "high": high[rows]}, {}),
                    "multi-task, uncertainty weighting":
                        ([rows], {"digit": digit_labels, "high": high[rows]},
                         {"task_weighting": "uncertainty"}),
                }
            else:
                rows = np.concatenate([o[:n] for o in order])
                runs = {
                    "single-task digit": ([rows], {"digit": digits[rows]}, {}),
                    "single-task ≥5": ([rows], {"high": high[rows]}, {}),
                    "multi-task, fixed weights 1:1":
                        ([rows], {"digit": digits[rows], "high": high[rows]}, {}),
                    "multi-task, uncertainty weighting":
                        ([rows], {"digit": digits[rows], "high": high[rows]},
                         {"task_weighting": "uncertainty"}),
                }
            for name, ((fit_rows,), labels, extra) in runs.items():
                model, seconds = fit(fit_rows, labels, seed, **extra)
                scores = model.score_tasks(features[test], {t: truth[t] for t in labels})
                row = table.setdefault(name, {"digit": [], "high": [], "seconds": [], "weights": []})
                for task in ("digit", "high"):
                    row[task].append(scores.get(task))
                row["seconds"].append(seconds)
                if extra:
                    row["weights"].append(model.task_weights_)
                if name.startswith("single-task digit") and "same" not in name:
                    derived = table.setdefault("≥5 read off the single-task digit prediction",
                                               {"digit": [], "high": [], "seconds": [], "weights": []})
                    predicted = model.predict(features[test])["digit"]
                    derived["high"].append(float(np.mean((predicted >= 5) == (truth["digit"] >= 5))))
                print(f"seed {seed} n {n} {name}: {scores} ({seconds:.1f} s)", file=sys.stderr)

    total = time.perf_counter() - started
    command = ("`.venv/bin/python -m benchmarks.bench_multitask --seeds "
               f"{' '.join(map(str, seeds))} --n-train {args.n_train}"
               + (f" --epochs {args.epochs}" if args.epochs else "")
               + (f" --cache-dir {args.cache_dir}" if args.cache_dir else "") + "`")
    lines = [
        "## Multi-task learning: sign-language digits, tasks 'digit' (10 classes) and 'digit ≥ 5' (2)",
        "",
        f"{command}. Frozen EfficientNet-Lite0 pre-logits features (hard parameter sharing on "
        "top of a frozen backbone) → shared block 1280→128 (ReLU, dropout 0.3) → one head per "
        "task 128→64→classes; AdamW lr 1e-3, weight decay 1e-2, batch 32, cosine schedule, "
        f"{options.get('epochs', 60)} epochs, no early stopping — the `MultiTaskClassifier` "
        "defaults, the same for every row (single-task = the same network with one head). Per "
        "seed, each digit's images are shuffled: the first *n* per digit are labelled for "
        f"training, images {POOL_END}.. per digit are the test set (~{int(np.mean(test_sizes))} "
        f"images, the same for every row of a seed). Accuracy on the test set, mean ± sd over "
        f"seeds {seeds}. Machine (shared with other jobs): {machine}; {extract_note}; total "
        f"{total:.0f} s.",
        "",
    ]
    for n in sizes:
        lines += [f"**{n} labelled images per digit ({10 * n} in all), both tasks labelled on "
                  "the same images:**", "",
                  "| model | digit accuracy | ≥5 accuracy | fit s (mean) |", "|---|---|---|---|"]
        for name, row in results[n].items():
            seconds = f"{np.mean(row['seconds']):.1f}" if row["seconds"] else "—"
            lines.append(f"| {name} | {mean_sd(row['digit'])} | {mean_sd(row['high'])} | {seconds} |")
        table = results[n]
        gains = {task: np.mean(table["multi-task, fixed weights 1:1"][task])
                 - np.mean(table[f"single-task {label}"][task])
                 for task, label in (("digit", "digit"), ("high", "≥5"))}
        weights = table["multi-task, uncertainty weighting"]["weights"]
        lines += ["", f"Multi-task (fixed) − single-task: digit {gains['digit']:+.3f}, ≥5 "
                  f"{gains['high']:+.3f}. Learned uncertainty weights exp(−s_t), per seed: "
                  + "; ".join(f"digit {w['digit']:.2f}, ≥5 {w['high']:.2f}" for w in weights)
                  + ".", ""]
    lines += ["**Cheap coarse labels (part B):** digit labels on 10 images per digit (100), the "
              "≥5 label on those and 40 more per digit (500); multi-task rows mark the missing "
              "digit labels -1. The control row trains the digit-only model on the same 500 rows "
              "with 400 of them unlabelled: same feature scaling, same number of steps, no ≥5 "
              "labels.", "",
              "| model | digit accuracy | ≥5 accuracy | fit s (mean) |", "|---|---|---|---|"]
    for name, row in results["B"].items():
        seconds = f"{np.mean(row['seconds']):.1f}" if row["seconds"] else "—"
        lines.append(f"| {name} | {mean_sd(row['digit'])} | {mean_sd(row['high'])} | {seconds} |")
    lines += [
        "",
        "Notes:",
        "* 'digit ≥ 5' is a function of the digit, so the strongest ≥5 predictor here is the "
        "digit model's prediction read off (row '≥5 read off …'); the multi-task comparison is "
        "between the heads, the auxiliary-task benefit the lectures describe, not a claim that a "
        "≥5 head is the best way to answer ≥5.",
        "* The uncertainty weights hardly move from 1 and are the same in every seed: s_t is fitted "
        "on the training loss (optimum s_t = log L_t, which goes to −∞ as the few training images "
        "are fitted), and at the network's learning rate Adam moves s_t by about lr per step, so "
        "a few hundred steps leave it near 0. With log_var_lr = 0.1 (tuning split) the weights "
        "reached 137 and 19,620 with unchanged accuracy, so here uncertainty weighting ≈ 1:1.",
        "* Tuning (shared width, dropout, batch size, feature scaling) was done on seeds 100 and "
        "101, not on the reported seeds. Per-feature standardisation on 100 images gave digit "
        "accuracy 0.70; one global scale (the default) 0.79.",
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_datasets_argument(parser)
    parser.add_argument("--cache-dir", default=None, help="feature cache (default: transferkit's)")
    parser.add_argument("--n-train", default="10,20", help="labelled images per digit, "
                        "comma-separated sizes (each ≤ 50)")
    parser.add_argument("--epochs", type=int, default=None, help="default: the estimator's (60)")
    add_seeds_argument(parser)
    add_output_arguments(parser)
    args = parser.parse_args(argv)
    if any(int(n) > POOL_END or int(n) < 1 for n in args.n_train.split(",")):
        parser.error(f"--n-train sizes must lie in 1..{POOL_END}")
    require_dataset("sign_language_digits/all", root=args.datasets)
    publish("multitask", run(args), args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
