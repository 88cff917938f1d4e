"""Autoencoder pretraining with few labels on MNIST-M (the lectures' E/D + reconstruction loss).

Data: MNIST-M images with index ≥ 5000 (the shared datasets README's target side; 4,001
images), split once (seeded, stratified) into an unlabelled pool (3,001) and a held-out
labelled test part (1,000). For each seed, 10 labels per class (100 images) are drawn
from the pool; the autoencoder trains on the whole pool without labels (seeded by the
same seed). Rows, all on the same 100 labelled images:

* random-initialised: Ganin & Lempitsky's digit network trained from scratch;
* autoencoder-initialised: the same network, ``features`` = the autoencoder's encoder,
  fine-tuned end to end with the same settings;
* autoencoder encoder + logistic regression (frozen 1200-d features, standardised);
* ImageNet features + logistic regression: EfficientNet-Lite0 pre-logits (1280-d) of
  the same image files, standardised (the pretrained-features reference).

Accuracy on the 1,000 held-out images, mean ± sd over seeds, and the paired difference
AE-initialised − random-initialised. One thread (``torch.set_num_threads(1)``). Writes
the ``autoencoder`` section of benchmarks/RESULTS.md after every seed.

    .venv/bin/python -m benchmarks.bench_autoencoder --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from benchmarks._common import (
    BENCHMARKS,
    SHARED_DATASETS,
    add_output_arguments,
    add_seeds_argument,
    announce_machine,
    load_average,
    publish,
    require_dataset,
)
from transferkit.data.digits import read_mnist_m, split_labelled
from transferkit.methods.autoencoder import AutoencoderInitialisedClassifier, ConvAutoencoder
from transferkit.methods.domain._deep_base import DeepSourceOnly

ROWS = ("random-initialised (from scratch)", "autoencoder-initialised, fine-tuned",
        "autoencoder encoder + logistic regression",
        "ImageNet features (EfficientNet-Lite0) + logistic regression")


def logistic_regression():
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))


def labelled_rows(labels: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.sort(np.concatenate([rng.choice(np.flatnonzero(labels == c), per_class,
                                              replace=False) for c in np.unique(labels)]))


def mnist_m_paths(domain) -> list[Path]:
    """MNIST-M's own files of a domain's rows (``test/<digit>/<index>.png``)."""
    root = SHARED_DATASETS / "mnist_m" / "test"
    return [root / str(int(label)) / f"{int(index):08d}.png"
            for label, index in zip(domain.labels, domain.index)]


def imagenet_features(extractor, domain) -> np.ndarray:
    result = extractor.extract(mnist_m_paths(domain), progress=False)
    if result.skipped:
        raise RuntimeError(f"unreadable MNIST-M files: {result.skipped[:3]}")
    return result.features.astype(np.float64)


def render(args, machine: str, scores: dict, seconds: dict, recon: list, elapsed: float,
           n_pool: int, n_test: int) -> str:
    command = (f"`.venv/bin/python -m benchmarks.bench_autoencoder --seeds "
               f"{' '.join(map(str, args.seeds))} --ae-epochs {args.ae_epochs} --ft-epochs "
               f"{args.ft_epochs} --per-class {args.per_class} --noise {args.noise}"
               f"{' --plain' if args.plain else ''}`")
    lines = [
        "## Autoencoder pretraining with few labels (MNIST-M, 10 labels per class)", "",
        f"{command}. MNIST-M index ≥ 5000, split once (stratified, seed 0) into an "
        f"unlabelled pool of {n_pool} and a held-out test part of {n_test}; per seed, "
        f"{args.per_class} labels per class drawn from the pool. The convolutional "
        f"autoencoder (encoder = Ganin & Lempitsky's digit feature extractor, decoder = the "
        f"DRCN decoder, MSE"
        f"{'' if args.plain else ' to the contrast-normalised image (contrast_normalise=True)'}"
        f") trains {args.ae_epochs} epochs on the whole pool (labels unused"
        f"{f', Gaussian input noise σ={args.noise}' if args.noise else ''}), batches of 64, "
        f"AdamW lr 1e-3. Both networks then train {args.ft_epochs} epochs on the same "
        f"{10 * args.per_class} labelled images (batches of 32, 3 steps an epoch, AdamW lr "
        f"{args.lr:g}, warm-up + cosine, no validation split), the head seeded alike. "
        f"Logistic regression on standardised features. Accuracy on the {n_test} held-out "
        f"images, mean ± sd over seeds; fp32, one thread, CPU. {elapsed:.0f} s wall, "
        f"{time.process_time():.0f} s CPU in all "
        f"(load average {load_average():.1f} at the last write: the machine was shared with "
        f"other jobs, so times are inflated). Machine: {machine}.", "",
        "| model (same 100 labels) | test accuracy | fit s (mean) |", "|---|---|---|"]
    for row in ROWS:
        values = scores.get(row, [])
        if not values:
            continue
        sd = np.std(values, ddof=1) if len(values) > 1 else 0.0
        lines.append(f"| {row} | {np.mean(values):.3f} ± {sd:.3f} (n={len(values)}) | "
                     f"{np.mean(seconds[row]):.0f} |")
    pretrained, scratch = scores.get(ROWS[1], []), scores.get(ROWS[0], [])
    n = min(len(pretrained), len(scratch))
    if n:
        diff = np.asarray(pretrained[:n]) - np.asarray(scratch[:n])
        sd = np.std(diff, ddof=1) if n > 1 else 0.0
        per_seed = ", ".join(f"{d:+.3f}" for d in diff)
        lines += ["", f"Paired difference AE-initialised − random-initialised: "
                  f"{diff.mean():+.3f} ± {sd:.3f} (per seed {per_seed}); autoencoder "
                  f"pretraining {np.mean([s for s in seconds[ROWS[1] + ' pretrain']]):.0f} s "
                  f"a seed (counted in neither fit time above); test reconstruction MSE "
                  f"{np.mean(recon):.4f} on the [−1, 1] scale.",
                  "", f"Target (AE-initialised > random-initialised): "
                  f"{'met' if diff.mean() > 0 else 'not met'}; AE-initialised wins on "
                  f"{int((diff > 0).sum())} of {n} seed(s)."]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_seeds_argument(parser)
    parser.add_argument("--ae-epochs", type=int, default=15)
    parser.add_argument("--ft-epochs", type=int, default=100)
    parser.add_argument("--per-class", type=int, default=10)
    parser.add_argument("--noise", type=float, default=0.0)
    parser.add_argument("--plain", action="store_true", help="reconstruct the raw images, not "
                        "their contrast-normalised version")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--work-dir", default=str(Path(tempfile.gettempdir()) /
                                                  "transferkit-bench-autoencoder"))
    parser.add_argument("--figure", default=str(BENCHMARKS /
                                                "autoencoder_reconstructions_mnist_m.png"))
    add_output_arguments(parser)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    require_dataset("mnist_m")
    from transferkit.features.extract import FrozenExtractor

    started = time.perf_counter()
    machine = announce_machine()
    target = read_mnist_m(SHARED_DATASETS, min_index=5000)
    pool, test = split_labelled(target, test_fraction=0.25, random_state=0)
    extractor = FrozenExtractor.from_name("efficientnet_lite0", runtime="eager", num_workers=0,
                                          cache_dir=Path(args.work_dir) / "cache")
    imagenet_test = None
    scores: dict[str, list] = {}
    seconds: dict[str, list] = {}
    recon: list[float] = []

    def record(row, accuracy, t0):
        scores.setdefault(row, []).append(float(accuracy))
        seconds.setdefault(row, []).append(time.perf_counter() - t0)
        print(f"seed {seed} {row}: {accuracy:.4f} ({time.perf_counter() - t0:.0f} s)", flush=True)

    for seed in args.seeds:
        rows = labelled_rows(pool.labels, args.per_class, seed)
        X, y = pool.images[rows], pool.labels[rows]
        options = {"epochs": args.ft_epochs, "batch_size": 32, "lr": args.lr,
                   "val_fraction": 0.0, "device": "cpu", "random_state": seed}

        t0 = time.perf_counter()
        scratch = DeepSourceOnly(**options).fit(X, y)
        record(ROWS[0], scratch.score(test.images, test.labels), t0)

        t0 = time.perf_counter()
        autoencoder = ConvAutoencoder(epochs=args.ae_epochs, noise=args.noise, device="cpu",
                                      contrast_normalise=not args.plain,
                                      random_state=seed).fit(pool.images)
        seconds.setdefault(ROWS[1] + " pretrain", []).append(time.perf_counter() - t0)
        recon.append(autoencoder.reconstruction_error(test.images))
        if seed == args.seeds[0] and args.figure:
            autoencoder.save_reconstructions(test.images, args.figure, n=16, title=(
                f"MNIST-M held-out: input (top) vs reconstruction (bottom"
                f"{'' if args.plain else ', of the contrast-normalised image'}), seed {seed}, "
                f"{args.ae_epochs} epochs, MSE {recon[-1]:.4f}"))

        t0 = time.perf_counter()
        pretrained = AutoencoderInitialisedClassifier(autoencoder, **options).fit(X, y)
        record(ROWS[1], pretrained.score(test.images, test.labels), t0)

        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            shallow = logistic_regression().fit(autoencoder.transform(X), y)
        record(ROWS[2], shallow.score(autoencoder.transform(test.images), test.labels), t0)

        t0 = time.perf_counter()
        if imagenet_test is None:
            imagenet_test = imagenet_features(extractor, test)  # once; cached on disk too
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            linear = logistic_regression().fit(imagenet_features(extractor, pool.subset(rows)), y)
        record(ROWS[3], linear.score(imagenet_test, test.labels), t0)

        publish("autoencoder", render(args, machine, scores, seconds, recon,
                                      time.perf_counter() - started, len(pool), len(test)),
                args, echo=args.no_write)
    print(f"done in {time.perf_counter() - started:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
