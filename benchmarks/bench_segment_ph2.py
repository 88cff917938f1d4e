"""The transfer question for segmentation, on PH2 (200 dermoscopy images, expert masks).

Protocol (``--folds 0``, the default): a seeded split of the 200 image/mask pairs into 100
for training and 100 held out. The same network, EfficientNet-Lite0 encoder + the
U-Net decoder of :mod:`transferkit.nets.segmentation`, is trained by
``transferkit.jobs.segment.fit`` (what ``transferkit segment fit`` runs) three ways:

* (a) **pretrained, frozen**: ImageNet encoder frozen (``--strategy head``), decoder trained;
* (b) **pretrained, fine-tuned**: everything trained (``--strategy full``);
* (c) **random init**: the same network and recipe as (b) from timm's random
  initialisation (``--random-init``);

each for the same number of epochs on all 100 training pairs (no validation split, the
last epoch kept), and scored by ``transferkit.jobs.segment.evaluate`` on the 100
held-out pairs at their full size: mean Dice and IoU over images (± the sd over images).
(b) and (c) use the same learning rate for every layer (``lr_factor=1``), so the only
difference between them is the initialisation. Time per epoch is the training loop's
own clock (augmentation and the forward/backward passes; decoding is done once before).

``--folds 5``: 5-fold cross-validation over the 200 pairs instead (seeded folds),
mean ± sd of the folds' Dice and IoU. ``--seeds 0 1``: one split (or set of folds) and
one training per seed.

    .venv/bin/python -m benchmarks.bench_segment_ph2 --epochs 12 --image-size 128 --seeds 0 1
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks._common import (
    add_datasets_argument,
    add_output_arguments,
    announce_machine,
    log,
    publish,
    require_dataset,
)

SECTION = "segment-ph2"
CONFIGS = (
    ("(a) pretrained encoder, frozen", dict(strategy="head", pretrained=True)),
    ("(b) pretrained encoder, fine-tuned", dict(strategy="full", pretrained=True, lr_factor=1.0)),
    ("(c) same network, random init", dict(strategy="full", pretrained=False, lr_factor=1.0)),
)


def link_pairs(ph2: Path, stems: list[str], dest: Path) -> tuple[Path, Path]:
    """``dest/images`` and ``dest/masks`` of symbolic links to the chosen pairs."""
    for part in ("images", "masks"):
        (dest / part).mkdir(parents=True)
    for stem in stems:
        (dest / "images" / f"{stem}.jpg").symlink_to(ph2 / "images" / f"{stem}.jpg")
        (dest / "masks" / f"{stem}.png").symlink_to(ph2 / "masks" / f"{stem}.png")
    return dest / "images", dest / "masks"


def splits(stems: list[str], folds: int, seed: int) -> list[tuple[list[str], list[str]]]:
    order = [stems[i] for i in np.random.default_rng(seed).permutation(len(stems))]
    if folds <= 1:
        half = len(order) // 2
        return [(sorted(order[:half]), sorted(order[half:]))]
    parts = np.array_split(np.arange(len(order)), folds)
    return [(sorted(order[j] for p in parts[:k] + parts[k + 1:] for j in p),
             sorted(order[j] for j in parts[k])) for k in range(folds)]


def run_config(train, test, options: dict, work: Path, args, seed: int) -> dict:
    from transferkit.jobs import segment

    started = time.perf_counter()
    fitted = segment.fit(*train, out=work / "model", epochs=args.epochs, lr=args.lr,
                         image_size=args.image_size, batch_size=args.batch_size,
                         val_fraction=0.0, random_state=seed, device="cpu",
                         progress=False, report=False, **options)
    fit_seconds = time.perf_counter() - started
    scored = segment.evaluate(work / "model", *test)
    dice = np.array([row["dice"] for row in scored["per_image"]])
    iou = np.array([row["iou"] for row in scored["per_image"]])
    return {"dice": float(dice.mean()), "dice_sd": float(dice.std(ddof=1)),
            "iou": float(iou.mean()), "iou_sd": float(iou.std(ddof=1)),
            "n_test": int(scored["n_images"]), "n_train": int(fitted["n_train"]),
            "seconds_per_epoch": fitted["seconds_per_epoch"], "epochs": fitted["epochs_run"],
            "fit_seconds": fit_seconds}


def render(args, results: dict, machine: str, elapsed: float) -> str:
    command = (f"`.venv/bin/python -m benchmarks.bench_segment_ph2 --epochs {args.epochs} "
               f"--lr {args.lr:g} --image-size {args.image_size} --batch-size "
               f"{args.batch_size} --seeds {' '.join(map(str, args.seeds))} --folds {args.folds} --threads {args.threads}`")
    protocol = ("seeded 100 / 100 split of the 200 pairs" if args.folds <= 1 else
                f"{args.folds}-fold cross-validation over the 200 pairs (seeded folds)")
    lines = [f"### Segmentation transfer on PH2: pretrained vs random encoder ({protocol})", "",
             f"EfficientNet-Lite0 encoder + U-Net decoder, {args.image_size}×{args.image_size} "
             f"network input, {args.epochs} epochs, batch {args.batch_size}, AdamW lr "
             f"{args.lr:g} (cosine), Dice + cross-entropy loss, paired flips / 90° rotations / "
             "crops; scored at full image size. Dice and IoU: mean over held-out images"
             + (" (± sd over images)" if args.folds <= 1 and len(args.seeds) == 1 else
                " (mean of the seeded splits, then each split's value)" if args.folds <= 1
                else " (mean ± sd over folds)")
             + ". Time per epoch: training loop clock on this CPU (2 cores shared with other jobs, "
             f"{args.threads} torch thread(s); see the machine line's load average).", "",
             "| encoder | Dice | IoU | s / epoch | training images |",
             "|---|---|---|---|---|"]
    for name, runs in results.items():
        if args.folds <= 1 and len(runs) == 1:
            r = runs[0]
            dice, iou = f"{r['dice']:.3f} ± {r['dice_sd']:.3f}", f"{r['iou']:.3f} ± {r['iou_sd']:.3f}"
        elif args.folds <= 1:  # several seeded splits: the mean, then each split's value
            d, i = [r["dice"] for r in runs], [r["iou"] for r in runs]
            dice = f"{np.mean(d):.3f} ({', '.join(f'{v:.3f}' for v in d)})"
            iou = f"{np.mean(i):.3f} ({', '.join(f'{v:.3f}' for v in i)})"
        else:
            d, i = np.array([r["dice"] for r in runs]), np.array([r["iou"] for r in runs])
            dice, iou = f"{d.mean():.3f} ± {d.std(ddof=1):.3f}", f"{i.mean():.3f} ± {i.std(ddof=1):.3f}"
        spe = np.mean([r["seconds_per_epoch"] for r in runs])
        lines.append(f"| {name} | {dice} | {iou} | {spe:.1f} | {runs[0]['n_train']} |")
    lines += ["", f"Command: {command} ({elapsed / 60:.0f} min in all).", "",
              f"Machine: {machine}"]
    return "\n".join(lines)


def render_timing(args, results: dict, machine: str, elapsed: float) -> str:
    lines = [f"### Segmentation on PH2: time per training epoch (100 images, "
             f"{args.image_size}×{args.image_size}, batch {args.batch_size})", "",
             "| encoder | s / epoch | epochs timed |", "|---|---|---|"]
    for name, runs in results.items():
        lines.append(f"| {name} | {runs[0]['seconds_per_epoch']:.1f} | {runs[0]['epochs']} |")
    lines += ["", f"Command: `.venv/bin/python -m benchmarks.bench_segment_ph2 --timing --epochs "
              f"{args.epochs} --image-size {args.image_size} --batch-size {args.batch_size} "
              f"--threads {args.threads}` "
              f"({elapsed / 60:.0f} min in all, Dice not reported: too few epochs).", "",
              f"Machine: {machine}"]
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--image-size", type=int, default=128,
                        help="network input side (default 128: a 2-core CPU budget)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0],
                        help="each seed draws its own split (or folds) and trains afresh")
    parser.add_argument("--folds", type=int, default=0, help="0: the 100/100 split; 5: 5-fold CV")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: on a "
                        "shared 2-core machine two threads spin-wait on each other, measured 4-8x "
                        "slower per batch)")
    parser.add_argument("--timing", action="store_true", help="time per epoch only, into the "
                        "section segment-ph2-timing (run it on an otherwise idle machine)")
    parser.add_argument("--configs", nargs="+", type=int, default=[0, 1, 2],
                        help="which of (a) (b) (c) to run, as 0 1 2")
    add_datasets_argument(parser)
    add_output_arguments(parser)
    args = parser.parse_args(argv)
    ph2 = require_dataset("ph2", root=args.datasets)
    import torch

    torch.set_num_threads(args.threads)
    machine = announce_machine()
    stems = sorted(p.stem for p in (ph2 / "masks").glob("*.png"))
    started = time.perf_counter()
    results: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="segment-ph2-") as tmp:
        for seed in args.seeds:
            for fold, (train_stems, test_stems) in enumerate(splits(stems, args.folds, seed)):
                where = Path(tmp) / f"seed{seed}-fold{fold}"
                train = link_pairs(ph2, train_stems, where / "train")
                test = link_pairs(ph2, test_stems, where / "test")
                for index in args.configs:
                    name, options = CONFIGS[index]
                    row = run_config(train, test, options, where / f"config{index}", args, seed)
                    results.setdefault(name, []).append({**row, "seed": seed})
                    log(f"seed {seed} fold {fold} {name}: Dice {row['dice']:.3f} IoU "
                        f"{row['iou']:.3f}, {row['seconds_per_epoch']:.1f} s/epoch, fit "
                        f"{row['fit_seconds']:.0f} s")
    elapsed = time.perf_counter() - started
    if args.timing:
        publish(f"{SECTION}-timing", render_timing(args, results, machine, elapsed), args)
    else:  # the 100/100 split and the k-fold CV each keep their own table
        publish(SECTION if args.folds <= 1 else f"{SECTION}-cv{args.folds}",
                render(args, results, machine, elapsed), args)


if __name__ == "__main__":
    main()
