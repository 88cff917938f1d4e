"""Anomaly detection benchmark: one sign-language digit is normal, the other nine anomalous.

Data: ``../shared/datasets/sign_language_digits/all/0..9`` (100×100 hand photos, ~205
per digit). For each seed, ``--n-train`` images of the normal digit (default ``0``)
train the detector (normal images only); the test set is the remaining images of that
digit plus ``--n-per-anomaly`` random images of each other digit. Each scorer of
:class:`transferkit.methods.anomaly.AnomalyDetector` (Mahalanobis with Ledoit-Wolf
shrinkage, one-class SVM, k-NN distance) runs on

* EfficientNet-Lite0 pre-logits features (1280-d; the bundled default backbone, offline),
* raw pixels (32×32 grey, flattened: 1024-d) — the no-transfer baseline,

and reports ROC AUC, EER, and the detection / false-alarm rates at the detector's own
threshold (95% quantile of out-of-fold normal training scores; no test label used),
mean ± sd over the ``--seeds``. Writes the ``anomaly`` section of
``benchmarks/RESULTS.md`` (read-modify-write of that section only, at the end).

    .venv/bin/python -m benchmarks.bench_anomaly [--seeds 0 1 2] [--cache-dir /tmp/tk-anomaly]
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

SCORERS = ("mahalanobis", "ocsvm", "knn")


def plan(root: Path, normal_class: str, n_train: int, n_per_anomaly: int, seed: int):
    """(train paths, test paths, test truth, test digit) of one seed."""
    rng = np.random.default_rng(seed)
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    normal = sorted((root / normal_class).iterdir())
    order = rng.permutation(len(normal))
    train = [normal[i] for i in order[:n_train]]
    test = [normal[i] for i in order[n_train:]]
    digits = [normal_class] * len(test)
    for name in classes:
        if name == normal_class:
            continue
        files = sorted((root / name).iterdir())
        picked = rng.choice(len(files), size=min(n_per_anomaly, len(files)), replace=False)
        test += [files[i] for i in sorted(picked)]
        digits += [name] * len(picked)
    truth = np.array([d != normal_class for d in digits], dtype=int)
    return train, test, truth, digits


def features_of(paths: list[Path], args) -> tuple[dict[str, dict[Path, np.ndarray]], str]:
    """Every representation of every path, computed once (Lite0 through the cache)."""
    from transferkit.features.extract import FrozenExtractor
    from transferkit.features.raw_pixels import raw_pixels

    extractor = FrozenExtractor.from_name("efficientnet_lite0", cache_dir=args.cache_dir)
    result = extractor.extract(paths, progress=True)
    if result.skipped:
        print(f"skipped {len(result.skipped)} unreadable image(s)", file=sys.stderr)
    kept = [p for p, ok in zip(paths, result.ok) if ok]
    lite0 = dict(zip(kept, result.features))
    pixels = dict(zip(kept, raw_pixels(kept, size=32)))
    print(f"features: {len(kept)} images, {result.n_cached} cached, {result.n_computed} computed, "
          f"{result.seconds:.1f} s ({result.runtime})", file=sys.stderr)
    note = (f"{len(kept)} images, Lite0 features {result.n_computed} computed / "
            f"{result.n_cached} from the cache in {result.seconds:.0f} s")
    return ({"EfficientNet-Lite0 pre-logits (1280-d)": lite0,
             "raw pixels 32×32 grey (1024-d)": pixels}, note)


def run(args) -> str:
    from transferkit.evaluate.metrics import binary_scores
    from transferkit.methods.anomaly import AnomalyDetector

    start = time.perf_counter()
    machine = announce_machine()
    root = Path(args.datasets) / "sign_language_digits" / "all"
    plans = [plan(root, args.normal_class, args.n_train, args.n_per_anomaly, seed)
             for seed in args.seeds]
    paths = sorted({p for train, test, _, _ in plans for p in train + test})
    representations, feature_note = features_of(paths, args)
    extract_seconds = time.perf_counter() - start
    rows = []
    for name, table in representations.items():
        for scorer in SCORERS:
            measured = {"auc": [], "eer": [], "detection": [], "false_alarm": [], "seconds": []}
            per_digit: dict[str, list[float]] = {}
            for seed, (train, test, truth, digits) in zip(args.seeds, plans):
                keep = [i for i, p in enumerate(test) if p in table]
                x_train = np.stack([table[p] for p in train if p in table])
                x_test = np.stack([table[test[i]] for i in keep])
                y = truth[keep]
                tick = time.perf_counter()
                detector = AnomalyDetector(scorer=scorer, random_state=seed).fit_features(x_train)
                scores = detector.score_features(x_test)
                measured["seconds"].append(time.perf_counter() - tick)
                metrics = binary_scores(y, scores)
                flagged = scores >= detector.threshold_
                measured["auc"].append(metrics["auc"])
                measured["eer"].append(metrics["eer"])
                measured["detection"].append(flagged[y == 1].mean())
                measured["false_alarm"].append(flagged[y == 0].mean())
                kept_digits = np.array([digits[i] for i in keep])
                for digit in sorted(set(kept_digits) - {args.normal_class}):
                    both = (kept_digits == digit) | (y == 0)
                    per_digit.setdefault(digit, []).append(
                        binary_scores(y[both], scores[both])["auc"])
            rows.append((name, scorer, measured, per_digit))
            print(f"{name} {scorer}: AUC {np.mean(measured['auc']):.3f}", file=sys.stderr)
    n_train, n_test_normal = len(plans[0][0]), int((plans[0][2] == 0).sum())
    n_anomalous = int(plans[0][2].sum())
    lines = [
        f"## Anomaly detection with transferred features (sign-language digits, '{args.normal_class}' "
        "normal)",
        "",
        f"`python -m benchmarks.bench_anomaly --seeds {' '.join(map(str, args.seeds))} "
        f"--n-train {args.n_train} "
        f"--n-per-anomaly {args.n_per_anomaly}`: per seed, {n_train} random images of digit "
        f"'{args.normal_class}' train the detector (normal images only); the test set is the other "
        f"{n_test_normal} '{args.normal_class}' images and {args.n_per_anomaly} random images of each "
        f"other digit ({n_anomalous} anomalies). Features standardised on the normal training "
        "images; Mahalanobis = Ledoit-Wolf shrinkage covariance; one-class SVM: RBF, nu 0.1, "
        "gamma 'scale'; k-NN: mean distance to the 5 nearest normal images. Detection / false "
        "alarm: at the detector's own threshold, the 95% quantile of 5-fold out-of-fold scores of "
        "the normal training images (no test label used; the EER threshold is chosen on the test "
        f"labels). Mean ± sd over {len(args.seeds)} seeds. Machine: {machine} (shared with "
        f"other jobs); {feature_note}; features + pixels "
        f"{extract_seconds:.0f} s, total "
        f"{time.perf_counter() - start:.0f} s.",
        "",
        "| features | scorer | AUC | EER | detection @ q95 | false alarm @ q95 | fit+score s |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, scorer, m, _ in rows:
        lines.append(f"| {name} | {scorer} | " + " | ".join(
            f"{np.mean(m[k]):.3f} ± {np.std(m[k]):.3f}"
            for k in ("auc", "eer", "detection", "false_alarm")) + f" | {np.mean(m['seconds']):.2f} |")
    digits = sorted(rows[0][3])
    lines += ["", "AUC per anomalous digit (vs the held-out normals), mean over seeds:", "",
              "| features | scorer | " + " | ".join(digits) + " |",
              "|---|---|" + "---|" * len(digits)]
    for name, scorer, _, per_digit in rows:
        lines.append(f"| {name.split(' (')[0]} | {scorer} | "
                     + " | ".join(f"{np.mean(per_digit[d]):.2f}" for d in digits) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_datasets_argument(parser)
    parser.add_argument("--cache-dir", default=None, help="feature cache (default: transferkit's)")
    parser.add_argument("--normal-class", default="0")
    parser.add_argument("--n-train", type=int, default=100)
    parser.add_argument("--n-per-anomaly", type=int, default=20)
    add_seeds_argument(parser)
    add_output_arguments(parser)
    args = parser.parse_args(argv)
    require_dataset("sign_language_digits/all", root=args.datasets)
    publish("anomaly", run(args), args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
