"""CDFG of frozen EfficientNet-Lite0 feature spaces between digit domains.

Cross-Domain Feature-space Generalisation (dos Santos, Ribeiro & Ponti 2019):
G_part(f^A) = |R(f^A) on held-out A − R(f^A) on held-out B|, G_comp = ½(G_part(f^A) +
G_part(f^B)), R the error of a logistic regression trained on 70% of one domain (lower
G_comp: the feature space carries over better). Pairs: MNIST ↔ USPS and MNIST ↔ MNIST-M.
Each domain is a fixed pool of ``--n`` images (seeded, balanced as drawn): MNIST from t10k
indices 0–4999, MNIST-M from indices ≥ 5000 (no underlying handwritten digit in both),
USPS from its train split; all written as 32×32 RGB PNG folders (as in
bench_domain_shallow.py) and forwarded once through Lite0 for every layer (cached). Each
seed redraws the 70/30 split of both domains and the classifier's CV folds; the table
gives mean ± sd over seeds of G_comp and the four held-out risks, in the section ``cdfg``
of benchmarks/RESULTS.md. Needs ../shared/datasets and h5py.

    .venv/bin/python -m benchmarks.bench_cdfg [--n 1000] [--seeds 0 1 2] [--cache-dir DIR]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from benchmarks._common import (
    add_datasets_argument,
    add_output_arguments,
    add_seeds_argument,
    announce_machine,
    publish,
    require_dataset,
)
from benchmarks.bench_domain_shallow import DIGIT_DATASETS, draw
from transferkit.data.digits import (
    MNIST_SOURCE_END,
    read_mnist_m,
    read_mnist_t10k,
    read_usps,
    write_image_folder,
)
from transferkit.evaluate.cdfg import FEATURE_SPACES, cdfg
from transferkit.features.extract import FrozenExtractor

SPACE_NAMES = {"last": "last layer (pre-logits)", "fne": "FNE (all stages)",
               "stages": "all stages, standardised", "pca64": "last layer, PCA-64"}


def build_domains(root: Path, n: int) -> dict:
    rng = np.random.default_rng(0)
    mnist = read_mnist_t10k(root)
    mnist_m = read_mnist_m(root, min_index=MNIST_SOURCE_END)
    return {
        "MNIST": draw(mnist.subset(np.flatnonzero(mnist.index < MNIST_SOURCE_END)), n, rng),
        "USPS": draw(read_usps(root, "train"), n, rng),
        "MNIST-M": draw(mnist_m, n, rng),
    }


def domain_features(domain, name: str, work: Path, extractor: FrozenExtractor) -> dict:
    """Every space's matrix for one domain (one forward pass per image, all layers)."""
    images = write_image_folder(domain, work / "images" / name, size=32)
    result = extractor.extract(images.paths, progress=False)
    if result.skipped:
        raise RuntimeError(f"unreadable images written for {name}: {result.skipped[:3]}")
    stages = extractor.identity()["stages"]
    spaces = {}
    for space, spec in FEATURE_SPACES.items():
        names = stages if spec["layer"] in ("stages", "fne") else [spec["layer"]]
        spaces[space] = np.hstack([result.layer(layer) for layer in names]).astype(np.float64)
    return {"X": spaces, "y": domain.labels.copy(), "n": len(domain)}


def _cell(values) -> str:
    return f"{np.mean(values):.3f} ± {np.std(values):.3f}"


def run(args) -> str:
    started = time.perf_counter()
    machine = announce_machine()
    work = Path(args.work_dir)
    cache = Path(args.cache_dir) if args.cache_dir else work / "cache"
    extractor = FrozenExtractor.from_name("efficientnet_lite0", layer="all", cache_dir=cache)
    domains = build_domains(Path(args.datasets), args.n)
    feats = {name: domain_features(d, name, work, extractor) for name, d in domains.items()}
    extract_seconds = time.perf_counter() - started
    print(f"features: {extract_seconds:.0f} s", file=sys.stderr, flush=True)
    spaces = [s.strip() for s in args.spaces.split(",") if s.strip()]
    rows = []
    for a, b in (("MNIST", "USPS"), ("MNIST", "MNIST-M")):
        for space in spaces:
            spec = FEATURE_SPACES[space]
            measures = {k: [] for k in ("g_comp", "aa", "ab", "bb", "ba")}
            space_start = time.perf_counter()
            for seed in args.seeds:
                r = cdfg(feats[a]["X"][space], feats[a]["y"], feats[b]["X"][space], feats[b]["y"],
                         classifier="logreg", embedding=spec.get("embedding"),
                         pca=spec.get("pca"), random_state=seed)
                measures["g_comp"].append(r["g_comp"])
                measures["aa"].append(r["a_to_b"]["risk_own"])
                measures["ab"].append(r["a_to_b"]["risk_other"])
                measures["bb"].append(r["b_to_a"]["risk_own"])
                measures["ba"].append(r["b_to_a"]["risk_other"])
            dim = str(feats[a]["X"][space].shape[1])
            if spec.get("pca"):
                dim += f" → {spec['pca']}"
            rows.append((f"{a} ↔ {b}", SPACE_NAMES[space], dim, measures))
            print(f"{a} ↔ {b} {space}: G_comp {_cell(measures['g_comp'])} "
                  f"({time.perf_counter() - space_start:.0f} s)", file=sys.stderr, flush=True)
    total = time.perf_counter() - started
    lines = [
        "## Cross-domain feature-space generalisation (CDFG), digits",
        "",
        f"`python -m benchmarks.bench_cdfg --n {args.n} --seeds {' '.join(map(str, args.seeds))} "
        f"--spaces {args.spaces}`: "
        "CDFG (dos Santos, Ribeiro & Ponti 2019) of EfficientNet-Lite0 (bundled ImageNet "
        "weights) feature spaces. G_part(f^A) = |R(f^A) on held-out A − R(f^A) on held-out B|, "
        "G_comp = ½(G_part(f^A) + G_part(f^B)); R = error of a logistic regression "
        "(`transferkit.evaluate.cdfg`: C by 3-fold CV, standardised features, or FNE's "
        "discretisation) trained on a stratified 70% of one domain, both risks on the other "
        "30% of each domain. Lower G_comp: the classifier's own-domain error predicts its "
        "other-domain error better. "
        f"{args.n} images per domain, 32×32 RGB: MNIST t10k indices 0–4999, MNIST-M indices "
        "≥ 5000 (no handwritten digit in both), USPS train. "
        f"Mean ± sd over {len(args.seeds)} seeds (split and CV folds). Features "
        f"{extract_seconds:.0f} s, total {total:.0f} s on a shared machine: {machine}.",
        "",
        "| pair (A ↔ B) | feature space | dim | G_comp | risk A→A | risk A→B | risk B→B | risk B→A |",
        "|---|---|---|---|---|---|---|---|",
    ]
    lines += [f"| {pair} | {space} | {dim} | {_cell(m['g_comp'])} | {_cell(m['aa'])} | "
              f"{_cell(m['ab'])} | {_cell(m['bb'])} | {_cell(m['ba'])} |"
              for pair, space, dim, m in rows]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_datasets_argument(parser)
    parser.add_argument("--work-dir", default=str(Path.home() / ".cache" / "transferkit" /
                                                  "bench-cdfg"))
    parser.add_argument("--cache-dir", help="feature cache (default WORK_DIR/cache)")
    parser.add_argument("--n", type=int, default=1000, help="images per domain")
    add_seeds_argument(parser)
    parser.add_argument("--spaces", default="last,fne,stages,pca64")
    parser.add_argument("--blas-threads", type=int, default=1,
                        help="BLAS threads for the classifiers (1: no thrashing on a busy machine)")
    add_output_arguments(parser)
    args = parser.parse_args(argv)
    unknown = [s for s in args.spaces.split(",") if s.strip() and s.strip() not in FEATURE_SPACES]
    if unknown:
        parser.error(f"unknown space(s) {unknown}; choose from {sorted(FEATURE_SPACES)}")
    require_dataset(*DIGIT_DATASETS, root=args.datasets)
    with threadpool_limits(limits=args.blas_threads, user_api="blas"):
        publish("cdfg", run(args), args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
