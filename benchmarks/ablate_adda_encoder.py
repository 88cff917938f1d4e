"""ADDA ablation: where the encoder M ends, and so which code the discriminator sees.

``methods/adda.py`` lets M end in the classifier's first hidden layer (a 100-d code, as the
paper's LeNet encoder ends in its 500-d fc layer). The alternative, M = the convolutional
feature extractor alone (a 1200-d post-ReLU code), is run here by setting
``adda.HIDDEN_LAYERS = 0``. Same pair, pools, seed and settings as the ``domain-deep`` table
(``bench_domain_deep``); reported: target accuracy and the discriminator's accuracy per
adversarial epoch (0.5 = fooled, 1.0 = the domains are told apart perfectly).

    .venv/bin/python -m benchmarks.ablate_adda_encoder --threads 1
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from benchmarks._common import (
    SHARED_DATASETS,
    add_output_arguments,
    publish,
    require_dataset,
)
from benchmarks.bench_domain_shallow import DIGIT_DATASETS, build_pairs
from transferkit.data.digits import resize_domain
from transferkit.methods import adda
from transferkit.methods.domain._deep_base import DeepSourceOnly

VARIANTS = {"conv features + first hidden layer (100-d, default)": adda.HIDDEN_LAYERS,
            "conv features only (1200-d)": 0}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pair", default="MNIST → USPS")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    add_output_arguments(parser)
    args = parser.parse_args(argv)
    require_dataset(*DIGIT_DATASETS)
    if args.threads:
        torch.set_num_threads(args.threads)
    source, target, test = (resize_domain(d, 32, rgb=True)
                            for d in build_pairs(SHARED_DATASETS, 5000, 2000, 2000)[args.pair])
    baseline = DeepSourceOnly(epochs=args.epochs, random_state=args.seed).fit(source.images, source.labels)
    rows = []
    for name, hidden_layers in VARIANTS.items():
        adda.HIDDEN_LAYERS = hidden_layers
        started = time.perf_counter()
        model = adda.ADDA(epochs=args.epochs, random_state=args.seed).fit(
            source.images, source.labels, target.images)
        seconds = time.perf_counter() - started
        accuracy = float(model.score(test.images, test.labels))
        discriminator = [row["train_accuracy"] for row in model.history_ if row["stage"] == "adapt"]
        rows.append((name, accuracy, discriminator, seconds))
        print(f"{name}: target accuracy {accuracy:.4f}, discriminator by epoch "
              f"{[round(d, 2) for d in discriminator]} ({seconds:.0f} s)", flush=True)
    adda.HIDDEN_LAYERS = VARIANTS[next(iter(VARIANTS))]

    marks = sorted({0, 1, 4, 9, args.epochs - 1} & set(range(args.epochs)))
    lines = [f"## ADDA ablation: the code the discriminator sees ({args.pair}, seed {args.seed})", "",
             f"`python -m benchmarks.ablate_adda_encoder --pair \"{args.pair}\" --seed {args.seed} "
             f"--epochs {args.epochs}`: settings of the domain-deep table; source only "
             f"{baseline.score(test.images, test.labels):.3f}. Discriminator accuracy is its "
             "training accuracy over each adversarial epoch (0.5: fooled; 1.0: domains apart).", "",
             "| encoder M ends in | target accuracy | discriminator accuracy, epochs "
             + ", ".join(str(m + 1) for m in marks) + " | fit s |", "|---|---|---|---|"]
    for name, accuracy, discriminator, seconds in rows:
        trace = ", ".join(f"{discriminator[m]:.2f}" for m in marks if m < len(discriminator))
        lines.append(f"| {name} | {accuracy:.3f} | {trace} | {seconds:.0f} |")
    publish("adda-encoder", "\n".join(lines), args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
