"""Shallow domain adaptation on frozen EfficientNet-Lite0 features: digit domains.

Pairs: MNIST(0–4999) → MNIST-M(≥5000), MNIST → USPS, USPS → MNIST, printed → MNIST.
For each pair a fixed pool of images is written as image folders (RGB PNG, 32×32) and
its Lite0 features extracted once (cached): ``--n-source`` labelled source rows,
``--n-target`` target rows for adaptation (their labels only train the oracle) and
``--n-test`` held-out labelled target rows for scoring, from disjoint MNIST indices.
Each seed draws 80% of the source and adaptation pools and seeds every method.
Reports target accuracy (mean ± sd over seeds) of SourceOnly, each shallow method,
TargetOracle, and the share of the source-only → oracle gap closed, in the section
``domain-shallow`` of benchmarks/RESULTS.md. Needs ../shared/datasets and h5py.

    .venv/bin/python -m benchmarks.bench_domain_shallow [--n-source 2000 ...]
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
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
from transferkit.data.digits import (
    MNIST_SOURCE_END,
    mnist_to_mnist_m,
    read_mnist_t10k,
    read_usps,
    render_printed_digits,
    write_image_folder,
)
from transferkit.evaluate.domain import domain_separability, gap_closed
from transferkit.features.extract import FrozenExtractor
from transferkit.methods.domain._base import SourceOnly, TargetOracle
from transferkit.methods.domain.coral import CORAL
from transferkit.methods.domain.kmm import KMM
from transferkit.methods.domain.reweight import ImportanceReweighting
from transferkit.methods.domain.subspace import SubspaceAlignment
from transferkit.methods.domain.tca import TCA

DIGIT_DATASETS = ("mnist_t10k", "mnist_m", "usps")  # the folders build_pairs reads

METHODS = {
    "source only": lambda s: SourceOnly(random_state=s),
    "reweight": lambda s: ImportanceReweighting(random_state=s),
    "KMM": lambda s: KMM(random_state=s),
    "CORAL": lambda s: CORAL(random_state=s),
    "SA (d=64)": lambda s: SubspaceAlignment(n_components=64, random_state=s),
    "TCA (m=64)": lambda s: TCA(n_components=64, random_state=s),
}


def draw(domain, n, rng):
    """``n`` rows of ``domain`` (all of them if it has fewer), drawn by ``rng``, in order."""
    return domain.subset(np.sort(rng.choice(len(domain), min(n, len(domain)), replace=False)))


def build_pairs(root: Path, n_source: int, n_target: int, n_test: int):
    rng = np.random.default_rng(0)
    mnist = read_mnist_t10k(root)
    mnist_src = draw(mnist.subset(np.flatnonzero(mnist.index < MNIST_SOURCE_END)), n_source, rng)
    mnist_adapt = mnist_src  # a target-side pool from 0–4999 ...
    mnist_test = draw(mnist.subset(np.flatnonzero(mnist.index >= MNIST_SOURCE_END)), n_test, rng)
    split = mnist_to_mnist_m(root, test_fraction=0.5, random_state=0)
    usps_train, usps_test = read_usps(root, "train"), read_usps(root, "test")
    usps_pool = draw(usps_train, max(n_source, n_target), rng)
    printed = render_printed_digits(n_source, random_state=0, size=32)
    return {
        "MNIST → MNIST-M": (mnist_src, draw(split.target_adapt, n_target, rng),
                            draw(split.target_test, n_test, rng)),
        "MNIST → USPS": (mnist_src, usps_pool, draw(usps_test, n_test, rng)),
        "USPS → MNIST": (usps_pool, mnist_adapt, mnist_test),  # ... scored on 5000–9999
        "printed → MNIST": (printed, mnist_adapt, mnist_test),
    }


def features(domain, work: Path, extractor) -> np.ndarray:
    images = write_image_folder(domain, work / domain.name, size=32)
    result = extractor.extract(images.paths, progress=False)
    if result.skipped:
        raise RuntimeError(f"unreadable images written for {domain.name}: {result.skipped[:3]}")
    return result.features.astype(np.float64)


def run(args) -> str:
    work = Path(args.work_dir)
    extractor = FrozenExtractor.from_name("efficientnet_lite0", cache_dir=work / "cache")
    pairs = build_pairs(Path(args.datasets), args.n_source, args.n_target, args.n_test)
    rows = []
    started = time.perf_counter()
    machine = announce_machine()
    for pair, (source, adapt, test) in pairs.items():
        Xs, Xa, Xte = (features(d, work / pair.replace(" → ", "_to_").replace(" ", ""), extractor)
                       for d in (source, adapt, test))
        ys, ya, yte = source.labels, adapt.labels, test.labels
        pad = domain_separability(Xs, Xa, random_state=0)
        pads = {"source only": pad}
        scores = {name: [] for name in [*METHODS, "target oracle"]}
        for seed in args.seeds:
            rng = np.random.default_rng(seed)
            s = rng.choice(len(Xs), int(0.8 * len(Xs)), replace=False)
            a = rng.choice(len(Xa), int(0.8 * len(Xa)), replace=False)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                for name, make in METHODS.items():
                    model = make(seed).fit(Xs[s], ys[s], Xa[a])
                    scores[name].append(model.score(Xte, yte))
                    if seed == args.seeds[0] and name != "source only":
                        # After: the source as the classifier saw it (rows, weights) and
                        # the adaptation pool in the same space.
                        pads[name] = domain_separability(
                            model.adapted_source_, model.transform_target(Xa[a]),
                            random_state=0, source_weight=model.adapted_source_weight_)
                oracle = TargetOracle(random_state=seed).fit(None, None, Xa[a], ya[a])
                scores["target oracle"].append(oracle.score(Xte, yte))
        base, top = np.mean(scores["source only"]), np.mean(scores["target oracle"])
        for name, values in scores.items():
            closed = gap_closed(base, float(np.mean(values)), top)
            measured = pads.get(name)
            rows.append((pair, name, np.mean(values), np.std(values),
                         "" if name in ("source only", "target oracle") else f"{closed:+.0%}",
                         "" if measured is None else
                         f"{measured.distance:.2f} [{measured.interval[0]:.2f}, {measured.interval[1]:.2f}]"))
        print(f"{pair}: done at {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    lines = [
        "## Shallow domain adaptation on Lite0 features (digits)",
        "",
        f"`python -m benchmarks.bench_domain_shallow --n-source {args.n_source} --n-target "
        f"{args.n_target} --n-test {args.n_test} --seeds {' '.join(map(str, args.seeds))}`: "
        "EfficientNet-Lite0 "
        "pre-logits features (1280-d) of 32×32 RGB digits; logistic regression "
        "(standardised, max_iter 2000) in every method. Each seed trains on a random 80% of "
        "the source and adaptation pools; accuracy on the held-out labelled target part "
        "(mean ± sd over seeds). MNIST-side pools: source/adaptation from t10k 0–4999, test "
        "from 5000–9999; MNIST-M from index ≥ 5000 (adapt/test disjoint); USPS adapt from "
        "train, test from test. Gap closed = (method − source only)/(oracle − source only). "
        "PAD: proxy A-distance between the source and the adaptation pool with its 95% "
        "interval (`transferkit.evaluate.domain.domain_separability`: dimension-free "
        "logistic domain classifier, 5-fold balanced error, Wilson interval), on the "
        "source-only row before adaptation, on each method's row after it (seed "
        f"{args.seeds[0]}'s model: the source as its classifier saw it, re-weighted for "
        "reweight/KMM, and the pool in the same space; near 0 = the domains look alike; SA "
        "and TCA centre each domain on its own mean, which a linear domain classifier "
        "cannot see past, so theirs reads 0 by construction). "
        f"Total {time.perf_counter() - started:.0f} s on a shared machine: {machine}.",
        "",
        "| pair | method | target accuracy | gap closed | PAD |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {p} | {m} | {mean:.3f} ± {sd:.3f} | {closed} | {pad} |"
              for p, m, mean, sd, closed, pad in rows]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_datasets_argument(parser)
    parser.add_argument("--work-dir", default=str(Path.home() / ".cache" / "transferkit" /
                                                  "bench-domain-shallow"))
    parser.add_argument("--n-source", type=int, default=2000)
    parser.add_argument("--n-target", type=int, default=2000)
    parser.add_argument("--n-test", type=int, default=1000)
    add_seeds_argument(parser)
    add_output_arguments(parser)
    args = parser.parse_args(argv)
    require_dataset(*DIGIT_DATASETS, root=args.datasets)
    publish("domain-shallow", run(args), args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
