"""Deep domain adaptation on digit domains: the lectures' (Ganin & Lempitsky's) table.

Same pairs and pools as ``bench_domain_shallow.py`` (``build_pairs``: MNIST 0–4999 →
MNIST-M ≥ 5000, MNIST → USPS, USPS → MNIST, printed → MNIST; the adaptation pool's labels
only train the oracle, scoring is on a disjoint held-out target part), 32×32 RGB, and
the network of Ganin & Lempitsky's MNIST experiments trained by the project's one loop.
Rows: source only, DANN, DAN (multi-kernel MMD), Deep CORAL, ADDA, DRCN (reconstruction),
domain confusion + soft labels (semi-supervised: it alone also sees ``--labels-per-class``
labelled images of the adaptation pool), target oracle (same network trained on the
whole labelled adaptation pool). Cells: target accuracy mean ± sd over seeds and
the share of the source-only → oracle gap closed. Writes the ``domain-deep`` section of
benchmarks/RESULTS.md after every run, so a run cut short keeps what it measured.

    .venv/bin/python benchmarks/bench_domain_deep.py --pairs "MNIST → MNIST-M" --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_domain_shallow import DATASETS, build_pairs  # noqa: E402
from _results import write_section  # noqa: E402

from transferkit.data.digits import resize_domain  # noqa: E402
from transferkit.evaluate.domain import gap_closed  # noqa: E402
from transferkit.methods.adda import ADDA  # noqa: E402
from transferkit.methods.dann import DANN  # noqa: E402
from transferkit.methods.deep_adaptation import DeepSourceOnly  # noqa: E402
from transferkit.methods.deep_coral import DeepCORAL  # noqa: E402
from transferkit.methods.domain_confusion import DomainConfusionSoftLabels  # noqa: E402
from transferkit.methods.mmd import DAN  # noqa: E402
from transferkit.methods.reconstruction import ReconstructionDA  # noqa: E402

METHODS = {"source only": DeepSourceOnly, "DANN": DANN, "DAN (MK-MMD)": DAN,
           "Deep CORAL": DeepCORAL, "ADDA": ADDA, "DRCN": ReconstructionDA,
           "domain confusion + soft labels": DomainConfusionSoftLabels}
SEMI_SUPERVISED = ("domain confusion + soft labels",)


def few_labels(labels: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """``labels`` with all but ``per_class`` rows of each class set to -1 (unlabelled)."""
    rng = np.random.default_rng(seed)
    partial = np.full(len(labels), -1)
    for label in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == label))[:per_class]
        partial[rows] = labels[rows]
    return partial


def render(args, scores: dict, seconds: dict, elapsed: float) -> str:
    load = os.getloadavg()[0]
    lines = ["## Deep domain adaptation on digits (Ganin & Lempitsky's MNIST network)", "",
             f"`benchmarks/bench_domain_deep.py --epochs {args.epochs} --seeds "
             f"{' '.join(map(str, args.seeds))} --n-source {args.n_source} --n-target "
             f"{args.n_target} --n-test {args.n_test} --labels-per-class {args.labels_per_class}`; pools as in the shallow table above "
             "(disjoint MNIST indices; MNIST-M from index ≥ 5000). Each seed seeds the "
             "network, the batches and the target pairing; AdamW lr 1e-3, warm-up + cosine, no "
             "gradient clipping, batches of 64 source + 64 target images (one BatchNorm pass per "
             f"domain), fp32 on the CPU, {torch.get_num_threads()} torch threads. {elapsed:.0f} s in all, "
             f"load average {load:.1f} at the last write (the machine was shared).", "",
             "| pair | method | target accuracy | gap closed | fit s (mean) |", "|---|---|---|---|---|"]
    for pair, by_method in scores.items():
        base = np.mean(by_method.get("source only", [np.nan]))
        oracle = np.mean(by_method.get("target oracle", [np.nan]))
        for method, values in by_method.items():
            closed = ""
            if method not in ("source only", "target oracle") and values:
                closed = f"{100 * gap_closed(base, float(np.mean(values)), oracle):+.0f}%"
            sd = np.std(values, ddof=1) if len(values) > 1 else 0.0
            lines.append(f"| {pair} | {method} | {np.mean(values):.3f} ± {sd:.3f} (n={len(values)}) | "
                         f"{closed} | {np.mean(seconds[pair][method]):.0f} |")
    lines += ["", "Gap closed = (method − source only) / (oracle − source only). For reference, "
              "Ganin & Lempitsky report 0.5749 → 0.8149 on MNIST → MNIST-M (oracle 0.9891)."]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", nargs="+", default=["MNIST → MNIST-M"])
    parser.add_argument("--methods", nargs="+", default=list(METHODS) + ["target oracle"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--n-source", type=int, default=5000)
    parser.add_argument("--n-target", type=int, default=2000)
    parser.add_argument("--n-test", type=int, default=2000)
    parser.add_argument("--labels-per-class", type=int, default=10,
                        help="labelled target images per class for the semi-supervised method")
    args = parser.parse_args(argv)
    if not DATASETS.is_dir():
        print(f"skipped: {DATASETS} is absent")
        return 0
    started = time.perf_counter()
    pairs = build_pairs(DATASETS, args.n_source, args.n_target, args.n_test)
    scores, seconds = {}, {}
    for pair in args.pairs:
        source, adapt, test = (resize_domain(d, 32, rgb=True) for d in pairs[pair])
        scores[pair], seconds[pair] = {}, {}
        for seed in args.seeds:
            for method in args.methods:
                t0 = time.perf_counter()
                if method == "target oracle":
                    model = DeepSourceOnly(epochs=args.epochs, random_state=seed)
                    model.fit(adapt.images, adapt.labels)
                elif method in SEMI_SUPERVISED:
                    model = METHODS[method](epochs=args.epochs, random_state=seed)
                    model.fit(source.images, source.labels, adapt.images,
                              few_labels(adapt.labels, args.labels_per_class, seed))
                else:
                    model = METHODS[method](epochs=args.epochs, random_state=seed)
                    model.fit(source.images, source.labels, adapt.images)
                accuracy = float(model.score(test.images, test.labels))
                scores[pair].setdefault(method, []).append(accuracy)
                seconds[pair].setdefault(method, []).append(time.perf_counter() - t0)
                print(f"[{pair}] seed {seed} {method}: {accuracy:.4f} "
                      f"({time.perf_counter() - t0:.0f} s)", flush=True)
                write_section("domain-deep", render(args, scores, seconds,
                                                    time.perf_counter() - started))
    return 0


if __name__ == "__main__":
    sys.exit(main())
