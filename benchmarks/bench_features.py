"""Which frozen features of EfficientNet-Lite0 transfer best? (the `features` section of RESULTS.md)

What it measures, on the real image sets in ``../shared/datasets``:

1. The lectures' Full-Network Embedding table: test accuracy (mean ± std over seeds) of
   * the last layer (pre-logits) + logistic regression,
   * the best single layer, chosen by 5-fold CV on the *training* split only, + logistic regression,
   * the fused stages (concatenated avg-pooled stage outputs + StandardScaler + logistic regression),
   * the Full-Network Embedding (stages → standardise → discretise) + linear SVM,
   * the same + logistic regression (same classifier as the other rows),
   * the Full-Network Embedding as the paper defines it, over every convolutional layer
     (``layer="all-conv"``, 49 layers of Lite0), + linear SVM and + logistic regression,
   on hymenoptera (train → val as given), oxford17flowers (seeded 40/40 per class) and
   sign_language_digits (seeded 20 per class for training, the rest for testing).
   Every classifier is ``make_probe_pipeline``'s default (fixed C on standardised or
   FNE features, see ``features/classifiers.py``; ``bench_classifiers`` compares them
   with the cross-validated search they replaced).
2. Wall time of ``transferkit layers`` on all 1360 oxford17flowers images, cold (empty
   feature cache, ONNX export included) and warm, plus its per-layer table and plot.
3. The machine it ran on.

Every image goes through the network once: all layers are extracted in one forward pass
(``layer="all,all-conv"``) into one feature cache, and each row slices its columns.
``--no-sweep`` keeps the layer-sweep part of the published section as it was. By default the
cold sweep fills a temporary cache that the table then reuses.

    .venv/bin/python -m benchmarks.bench_features            # writes benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from benchmarks._common import (
    BENCHMARKS,
    add_datasets_argument,
    add_output_arguments,
    add_seeds_argument,
    announce_machine,
    publish,
    require_dataset,
    transferkit_command,
)

BACKBONE = "efficientnet_lite0"
SETS = ("hymenoptera", "oxford17flowers", "sign_language_digits")
GOAL_POINTS = 3.0  # the issue: FNE or fusion >= last layer + 3 points on at least two sets

ROWS = (  # (row name, feature block, classifier, embedding)
    ("last layer (pre-logits)", "last", "logreg", None),
    ("best single layer (CV on train)", "best", "logreg", None),
    ("fused stages", "stages", "logreg", None),
    ("Full-Network Embedding, stages + linear SVM", "stages", "svm", "fne"),
    ("Full-Network Embedding, stages + logreg", "stages", "logreg", "fne"),
    ("Full-Network Embedding, every conv layer + linear SVM (paper)", "all-conv", "svm", "fne"),
    ("Full-Network Embedding, every conv layer + logreg", "all-conv", "logreg", "fne"),
)


# --------------------------------------------------------------------------- data

@dataclass
class ImageSet:
    """Labelled images of one set; ``fixed_train`` marks a given (not seeded) split."""

    name: str
    paths: list[Path]
    labels: np.ndarray
    classes: list[str]
    protocol: str
    fixed_train: np.ndarray | None = None  # bool mask, only for a given split
    per_class_train: int | None = None
    per_class_test: int | None = None


def load_sets(root: Path, names) -> list[ImageSet]:
    from transferkit.data.dataset import read_image_folder

    sets = []
    for name in names:
        if name == "hymenoptera":
            train = read_image_folder(root / name / "train")
            val = read_image_folder(root / name / "val", train.classes)
            mask = np.r_[np.ones(len(train), bool), np.zeros(len(val), bool)]
            sets.append(ImageSet(name, train.paths + val.paths,
                                 np.r_[train.labels, val.labels], train.classes,
                                 f"train → val as given ({len(train)} / {len(val)})",
                                 fixed_train=mask))
        elif name == "oxford17flowers":
            images = read_image_folder(root / name / "all")
            sets.append(ImageSet(name, images.paths, images.labels, images.classes,
                                 "seeded stratified split, 40 train / 40 test per class",
                                 per_class_train=40, per_class_test=40))
        elif name == "sign_language_digits":
            images = read_image_folder(root / name / "all")
            sets.append(ImageSet(name, images.paths, images.labels, images.classes,
                                 "seeded split, 20 train per class, the rest (~186) test",
                                 per_class_train=20))
        else:
            raise ValueError(name)
    return sets


def split(image_set: ImageSet, labels: np.ndarray, fixed: np.ndarray | None, seed: int):
    """Train and test indices into ``labels`` (the decodable images)."""
    if fixed is not None:
        return np.flatnonzero(fixed), np.flatnonzero(~fixed)
    rng = np.random.default_rng(seed)
    train, test = [], []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        n_train = image_set.per_class_train
        n_test = image_set.per_class_test or len(members) - n_train
        train.extend(members[:n_train])
        test.extend(members[n_train:n_train + n_test])
    return np.sort(train), np.sort(test)


# --------------------------------------------------------------------------- features

@dataclass
class Features:
    matrix: np.ndarray
    ok: np.ndarray
    columns: dict[str, slice]
    stages: list[str]
    singles: list[str]       # the taps of layer="all": the candidates for "best single layer"
    conv_layers: list[str]   # layer="all-conv": every convolutional layer
    skipped: list[tuple[str, str]]
    n_cached: int
    n_computed: int
    seconds: float
    runtime: str
    notes: list[str] = field(default_factory=list)


def extract_all_layers(paths, cache_dir: Path) -> Features:
    """Every tappable layer of Lite0 and every convolutional layer, avg-pooled, from one
    forward pass (and the cache)."""
    from transferkit.features.extract import FrozenExtractor

    def extractor_of(layer):
        return FrozenExtractor.from_name(BACKBONE, layer=layer, pooling="avg", cache_dir=cache_dir)

    extractor = extractor_of("all,all-conv")
    result = extractor.extract(paths)
    return Features(result.features, result.ok, result.layers, extractor.identity()["stages"],
                    extractor_of("all").layers, extractor_of("all-conv").layers,
                    result.skipped, result.n_cached, result.n_computed, result.seconds,
                    result.runtime)


def check_large_images(image_set: ImageSet, ok: np.ndarray, features: np.ndarray,
                       min_side: int = 1000) -> str | None:
    """Say whether the unusually large images of a set decoded to finite features."""
    from PIL import Image

    large = []
    for i, path in enumerate(image_set.paths):
        with Image.open(path) as image:  # reads the header only
            if max(image.size) >= min_side:
                large.append((i, path, image.size))
    if not large:
        return None
    rows = np.cumsum(ok) - 1
    good = [ok[i] and np.isfinite(features[rows[i]]).all() and np.abs(features[rows[i]]).sum() > 0
            for i, _, _ in large]
    sizes = ", ".join(f"{p.parent.name}/{p.name} {s[0]}×{s[1]}" for _, p, s in large)
    verdict = "all decoded to finite, non-zero features" if all(good) else \
        f"{len(large) - sum(good)} did NOT decode"
    return f"{len(large)} image(s) of {min_side}+ px ({sizes}): {verdict}."


# --------------------------------------------------------------------------- table

def select_best_layer(X, y, columns: dict[str, slice], seed: int) -> str:
    """The single layer with the best 5-fold CV balanced accuracy on the training split."""
    from transferkit.evaluate.layer_sweep import sweep_features

    rows = sweep_features(X, y, columns, stages=[], folds=5, classifier="logreg",
                          random_state=seed)
    return max(rows, key=lambda row: row.balanced_accuracy_mean).layer


def score_seed(feats: Features, labels, train, test, seed: int) -> tuple[dict, str, dict]:
    """Test accuracy of every row for one split / seed; also the layer CV picked."""
    from sklearn.metrics import accuracy_score

    from transferkit.features.classifiers import make_probe_pipeline

    X, y = feats.matrix, labels
    singles = {name: feats.columns[name] for name in feats.singles}

    def joined(names):
        return np.concatenate([np.arange(feats.columns[n].start, feats.columns[n].stop)
                               for n in names])

    best = select_best_layer(X[train], y[train], singles, seed)
    blocks = {"last": joined(["pre_logits"]), "best": joined([best]),
              "stages": joined(feats.stages), "all-conv": joined(feats.conv_layers)}
    scores, seconds = {}, {}
    for row, block, classifier, embedding in ROWS:
        start = time.perf_counter()
        model = make_probe_pipeline(classifier, y[train], cv=5, random_state=seed,
                                    embedding=embedding)
        cols = blocks[block]
        model.fit(X[np.ix_(train, cols)], y[train])
        scores[row] = accuracy_score(y[test], model.predict(X[np.ix_(test, cols)]))
        seconds[row] = time.perf_counter() - start
    return scores, best, seconds


def run_table(sets: list[ImageSet], cache_dir: Path, seeds) -> dict:
    results = {}
    for image_set in sets:
        print(f"[{image_set.name}] extracting {len(image_set.paths)} images …", flush=True)
        feats = extract_all_layers(image_set.paths, cache_dir)
        rate = feats.n_computed / feats.seconds if feats.n_computed else float("nan")
        print(f"[{image_set.name}] {feats.n_computed} forwarded, {feats.n_cached} cached, "
              f"{feats.seconds:.1f} s ({feats.runtime}), skipped {len(feats.skipped)}", flush=True)
        large = check_large_images(image_set, feats.ok, feats.matrix)
        if large:
            print(f"[{image_set.name}] {large}", flush=True)
        labels = image_set.labels[feats.ok]
        fixed = None if image_set.fixed_train is None else image_set.fixed_train[feats.ok]
        per_seed, chosen, fit_seconds = [], [], {}
        for seed in seeds:
            train, test = split(image_set, labels, fixed, seed)
            start = time.perf_counter()
            scores, best, seconds = score_seed(feats, labels, train, test, seed)
            per_seed.append(scores)
            chosen.append(best)
            for row, value in seconds.items():
                fit_seconds[row] = fit_seconds.get(row, 0.0) + value
            print(f"[{image_set.name}] seed {seed}: best layer {best}; "
                  + ", ".join(f"{row.split(' (')[0]} {acc:.3f}" for row, acc in scores.items())
                  + f" ({time.perf_counter() - start:.0f} s)", flush=True)
        results[image_set.name] = {
            "protocol": image_set.protocol, "n_train": int(len(train)), "n_test": int(len(test)),
            "n_classes": len(image_set.classes), "scores": per_seed, "best_layers": chosen,
            "fit_seconds": fit_seconds, "skipped": feats.skipped, "large_images": large,
            "extract": {"n": len(image_set.paths), "forwarded": feats.n_computed,
                        "cached": feats.n_cached, "seconds": feats.seconds,
                        "images_per_second": rate, "runtime": feats.runtime},
            "dims": {name: feats.columns[name].stop - feats.columns[name].start
                     for name in feats.singles},
            "stages": feats.stages,
            "conv_dims": {name: feats.columns[name].stop - feats.columns[name].start
                          for name in feats.conv_layers},
        }
    return results


# --------------------------------------------------------------------------- sweep

def time_sweep(data: Path, cache_dir: Path, out: Path) -> tuple[float, dict]:
    """Run ``transferkit layers`` in a subprocess; its wall time and JSON output."""
    command = transferkit_command() + ["layers", str(data), "--cache-dir", str(cache_dir),
                                       "--json", "--quiet", "--out", str(out)]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr}")
    return seconds, json.loads(done.stdout)


def run_sweep(root: Path, cache_dir: Path, work: Path) -> dict:
    data = root / "oxford17flowers" / "all"
    print(f"[sweep] cold: transferkit layers {data} (empty cache {cache_dir}) …", flush=True)
    cold, result = time_sweep(data, cache_dir, work / "sweep-cold")
    print(f"[sweep] cold {cold:.1f} s (extraction {result['extract_seconds']:.1f} s)", flush=True)
    warm, warm_result = time_sweep(data, cache_dir, work / "sweep-warm")
    print(f"[sweep] warm {warm:.1f} s (extraction {warm_result['extract_seconds']:.1f} s)",
          flush=True)
    plot = BENCHMARKS / "layers_oxford17flowers.png"
    shutil.copyfile(result["files"]["plot"], plot)
    same = [r["balanced_accuracy_mean"] for r in result["rows"]] == \
        [r["balanced_accuracy_mean"] for r in warm_result["rows"]]
    return {"cold_seconds": cold, "warm_seconds": warm, "result": result,
            "warm_extract_seconds": warm_result["extract_seconds"], "warm_identical": same,
            "plot": plot.name}


# --------------------------------------------------------------------------- report

def mean_std(values) -> tuple[float, float]:
    values = np.asarray(values, dtype=float)
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0


def _describe(classifier: str, embedding) -> str:
    from transferkit.features.classifiers import describe_classifier, make_probe_pipeline

    return describe_classifier(make_probe_pipeline(classifier, np.repeat([0, 1], 5),
                                                   embedding=embedding))


def goal_verdict(table: dict) -> tuple[list[str], bool]:
    """Per set: gain of fusion / FNE rows over the last layer, in accuracy points."""
    last = "last layer (pre-logits)"
    contenders = [row for row, *_ in ROWS if row.startswith(("fused", "Full-Network"))]
    lines, met_sets = [], 0
    for name, item in table.items():
        base = mean_std([s[last] for s in item["scores"]])[0]
        gains = {row: 100 * (mean_std([s[row] for s in item["scores"]])[0] - base)
                 for row in contenders}
        winner = max(gains, key=gains.get)
        met = gains[winner] >= GOAL_POINTS
        met_sets += met
        lines.append(f"{name}: " + ", ".join(f"{row} {gain:+.1f}" for row, gain in gains.items())
                     + f" points → {'met' if met else 'not met'}")
    return lines, met_sets >= 2


def render(table: dict, sweep: dict | None, seeds, machine: str, total_seconds: float) -> str:
    names = list(table)
    out = ["## Frozen features: last layer vs best layer vs fusion vs Full-Network Embedding",
           "", f"Machine: {machine}.", "",
           f"Generated by `python -m benchmarks.bench_features` in {total_seconds / 60:.1f} min. Backbone "
           f"`{BACKBONE}` (bundled ImageNet weights), 224×224, avg-pooled taps; every layer comes "
           "from one forward pass per image (`layer=\"all\"`, one feature cache).", ""]
    if table:
        out += [f"### Test accuracy, mean ± std over {len(seeds)} seeds ({', '.join(map(str, seeds))})",
                "", "| features + classifier | " + " | ".join(names) + " |",
                "|---|" + "---|" * len(names)]
        for row, *_ in ROWS:
            cells = []
            for name in names:
                mean, std = mean_std([s[row] for s in table[name]["scores"]])
                cells.append(f"{mean:.3f} ± {std:.3f}")
            out.append(f"| {row} | " + " | ".join(cells) + " |")
        out += ["", "| set | protocol | classes | train | test | layer picked by CV (per seed) |",
                "|---|---|---|---|---|---|"]
        for name in names:
            item = table[name]
            out.append(f"| {name} | {item['protocol']} | {item['n_classes']} | {item['n_train']} | "
                       f"{item['n_test']} | {', '.join(item['best_layers'])} |")
        any_item = table[names[0]]
        stage_dims = sum(any_item["dims"][s] for s in any_item["stages"])
        out += ["", "Protocol:",
                "* Seeds change the train/test split of oxford17flowers and sign_language_digits. "
                "hymenoptera's split is fixed (train → val), so there the seed only changes the "
                "classifiers' randomness (the shuffled CV folds that pick C, SVM calibration folds); "
                "its ± is that variation, not split variation.",
                "* Logistic regression (rows 1, 2, 3, 5, 7): `make_probe_pipeline(\"logreg\")` = "
                f"{_describe('logreg', None)}. Linear SVM (rows 4, 6): "
                "`make_probe_pipeline(\"svm\", embedding=\"fne\")` = "
                f"{_describe('svm', 'fne')}. Until issue 16/21 both chose C by 5-fold CV "
                "(`LogisticRegressionCV`; a one-vs-one `SVC` in a calibration in a grid search).",
                "* Best single layer: each of the "
                f"{len(any_item['dims'])} taps ({', '.join(any_item['dims'])}) scored by 5-fold CV "
                "balanced accuracy of the same logistic regression on the training split only; the "
                "winner is refitted on the whole training split and scored once on the test split.",
                f"* Fused stages / FNE input: the {len(any_item['stages'])} stage outputs "
                f"({', '.join(any_item['stages'])}; {stage_dims} dims) concatenated. FNE = "
                "standardise with training statistics, discretise to {-1, 0, 1} at -0.25 / 0.15 "
                "(Garcia-Gasulla et al. 2018). Note `features` (the last stage, conv_head) "
                "avg-pooled equals `pre_logits` for this network.",
                f"* FNE over every convolutional layer (rows 6, 7; the paper's definition, "
                f"`layer=\"all-conv\"`, `fit --method fne --layer all-conv` since issue 20): the "
                f"output of each of the {len(any_item['conv_dims'])} convolutional layers "
                f"({sum(any_item['conv_dims'].values())} dims) — each conv → BN → ReLU6 unit, "
                "depthwise ones included, taken after the activation (after the BN for the "
                "linear 1×1 projections); see `transferkit.backbones.taps.conv_layers`. The "
                "paper's VGG-16 gives 12,416 features (13 conv layers + 2 FC layers).",
                "* hymenoptera's train/ants holds the `imageNotFound.gif` placeholder (label noise, "
                "kept as given)."]
        for name in names:
            if table[name]["large_images"]:
                out.append(f"* {name}: {table[name]['large_images']}")
            if table[name]["skipped"]:
                out.append(f"* {name}: skipped " + "; ".join(r for _, r in table[name]["skipped"]))
        lines, met = goal_verdict(table)
        out += ["", f"**Goal of the issue: \"FNE or fusion ≥ last layer + {GOAL_POINTS:.0f} points "
                f"on at least two of the three\" — {'MET' if met else 'NOT MET'}.** Gains over the "
                "last layer (mean test accuracy, points):", ""]
        out += [f"* {line}" for line in lines]
        out += ["", "Extraction (all layers, one pass): " + "; ".join(
            f"{name} {t['extract']['n']} images, {t['extract']['forwarded']} forwarded / "
            f"{t['extract']['cached']} from cache in {t['extract']['seconds']:.1f} s"
            + (f" ({t['extract']['images_per_second']:.0f} img/s)" if t['extract']['forwarded']
               else "") for name, t in table.items()) + ".",
            "Classifier fitting, summed over seeds: " + "; ".join(
            f"{name} " + ", ".join(f"{row.split(' (')[0].replace('Full-Network Embedding', 'FNE')}"
                                   f" {sec:.0f} s" for row, sec in t["fit_seconds"].items())
            for name, t in table.items()) + " (best-layer time includes its CV over all taps).",
            ""]
    if sweep:
        result = sweep["result"]
        target = "within" if sweep["cold_seconds"] <= 300 else "OVER"
        out += ["### Layer sweep: `transferkit layers` on oxford17flowers (all 1360 images)", "",
                f"`transferkit layers …/oxford17flowers/all --cache-dir FRESH --json --quiet --out "
                f"TMP` (defaults: ridge classifier, {result['folds']}-fold CV, seed 0), wall time "
                "of the whole subprocess:", "",
                "| run | wall time | of which feature extraction |", "|---|---|---|",
                f"| cold (empty cache: ONNX export + 1360 forward passes) | "
                f"{sweep['cold_seconds']:.1f} s | {result['extract_seconds']:.1f} s |",
                f"| warm (same cache) | {sweep['warm_seconds']:.1f} s | "
                f"{sweep['warm_extract_seconds']:.1f} s |", "",
                f"Target ≤ 5 min cold: {target} target. Warm run reproduces the cold table "
                f"exactly: {'yes' if sweep['warm_identical'] else 'NO'}.", "",
                f"| layer | dim | balanced accuracy ({result['folds']}-fold CV, "
                f"{result['classifier']}) |", "|---|---|---|"]
        for row in result["rows"]:
            out.append(f"| {row['layer']} | {row['dim']} | {row['balanced_accuracy_mean']:.3f} ± "
                       f"{row['balanced_accuracy_std']:.3f} |")
        out += ["", f"Best single layer: `{result['best_layer']}`; best overall: "
                f"`{result['best_overall']}` ({result['n_images']} images, "
                f"{result['n_skipped']} skipped). Note this CV pools all 1360 images (no held-out "
                "test split), so it ranks layers; the table above is the held-out estimate.", "",
                f"![layer sweep on oxford17flowers]({sweep['plot']})", ""]
    return "\n".join(out)


def previous_sweep(results: Path) -> str | None:
    """The layer-sweep part of the published section, for a ``--no-sweep`` rerun to keep."""
    from benchmarks._common import markers

    start, end = markers("features")
    try:
        text = results.read_text(encoding="utf-8")
    except OSError:
        return None
    if start not in text or end not in text:
        return None
    section = text.split(start, 1)[1].split(end, 1)[0]
    head = "### Layer sweep"
    return head + section.split(head, 1)[1].rstrip("\n") if head in section else None


# --------------------------------------------------------------------------- main

def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_datasets_argument(parser)
    parser.add_argument("--sets", nargs="+", choices=SETS, default=list(SETS))
    add_seeds_argument(parser)
    parser.add_argument("--cache-dir", type=Path, help="feature cache for the table (default: the "
                        "cold sweep's fresh temporary cache, so each image is forwarded once)")
    parser.add_argument("--no-sweep", action="store_true", help="skip the timed layer sweep")
    add_output_arguments(parser)
    args = parser.parse_args(argv)

    require_dataset(*args.sets, *([] if args.no_sweep else ["oxford17flowers"]),
                    root=args.datasets)
    warnings.filterwarnings("ignore", category=FutureWarning)
    start = time.perf_counter()
    machine = announce_machine()
    with tempfile.TemporaryDirectory(prefix="bench_features-") as tmp:
        work = Path(tmp)
        sweep = None
        if not args.no_sweep:
            sweep = run_sweep(args.datasets, work / "cache", work)
        cache = args.cache_dir or work / "cache"
        table = run_table(load_sets(args.datasets, args.sets), cache, args.seeds)
    body = render(table, sweep, args.seeds, machine, time.perf_counter() - start)
    kept = None if sweep is not None else previous_sweep(args.results)
    if kept:
        body += ("\nThe table above was rerun with `--no-sweep --cache-dir`; the layer sweep below "
                 "(ridge classifier) is kept from an earlier full run.\n\n" + kept + "\n")
    publish("features", body, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
