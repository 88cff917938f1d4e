"""Fine-tuning benchmark on real data: accuracy, wall time, and bf16 vs fp32 on this CPU.

Protocol (hymenoptera, ants vs bees): fit on ``train`` (early stopping on a seeded 20%
stratified split of ``train``, never on the test images), report accuracy on ``val``.
Writes the ``finetune`` section of ``benchmarks/RESULTS_finetune.md``. First the goal of
issue 16 item 4: the default ``transferkit fit hymenoptera --method finetune`` (train →
val, cold activation cache) in a subprocess, wall time and validation accuracy.

    .venv/bin/python -m benchmarks.bench_finetune --strategies gradual full --epochs 8
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks._common import (
    BENCHMARKS,
    add_output_arguments,
    announce_machine,
    load_average,
    publish,
    require_dataset,
    transferkit_command,
    verdict,
)

GOAL_ACCURACY, GOAL_SECONDS = 0.95, 120.0


def default_cli_fit(data: Path) -> dict:
    """``transferkit fit DATA --method finetune`` with every default, an empty cache."""
    with tempfile.TemporaryDirectory(prefix="bench-finetune-") as folder:
        command = transferkit_command() + ["fit", str(data), "--method", "finetune", "--out",
                                           str(Path(folder) / "model"), "--cache-dir",
                                           str(Path(folder) / "cache"), "--json", "--quiet"]
        load_before = load_average()
        started = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        wall = time.perf_counter() - started
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-2000:]}")
        summary = json.loads(done.stdout)
    row = {"wall_s": wall, "accuracy": summary["val_accuracy"], "epochs": summary.get("epochs_run"),
           "best": summary.get("best_epoch"), "load_before": load_before, "load_after": load_average()}
    print(f"[default CLI] val accuracy {row['accuracy']:.4f}, wall {wall:.0f} s, load "
          f"{load_before:.1f} → {row['load_after']:.1f}", flush=True)
    return row

RESULTS_FINETUNE = BENCHMARKS / "RESULTS_finetune.md"


def precision_check(image_size: int, steps: int = 3, batch: int = 16) -> dict:
    """Seconds per training step of Lite0 under fp32 and bf16 autocast (CPU)."""
    import torch
    import torch.nn.functional as F

    from transferkit.backbones import create_backbone

    out = {}
    for precision in ("fp32", "bf16"):
        torch.manual_seed(0)
        model = create_backbone().model
        model.reset_classifier(2)
        for p in model.parameters():
            p.requires_grad_(True)
        model.train().to(memory_format=torch.channels_last)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        x = torch.randn(batch, 3, image_size, image_size).contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, 2, (batch,))
        times = []
        for _ in range(steps + 1):  # the first step warms up allocators and kernels
            started = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                logits = model(x)
            F.cross_entropy(logits.float(), y).backward()
            optimizer.step()
            optimizer.zero_grad()
            times.append(time.perf_counter() - started)
        out[precision] = sum(times[1:]) / steps
        print(f"[precision] {precision}: {out[precision]:.2f} s per step of {batch}", flush=True)
    return out


def bf16_inference_agreement(model, paths, labels) -> dict:
    """Accuracy of one fine-tuned model evaluated in fp32 and under bf16 autocast."""
    import numpy as np
    import torch

    fp32 = model.predict_proba(paths)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = model.predict_proba(paths)
    truth = np.asarray(labels)
    return {"fp32_acc": float((model.classes_[fp32.argmax(1)] == truth).mean()),
            "bf16_acc": float((model.classes_[bf16.argmax(1)] == truth).mean()),
            "max_prob_diff": float(np.abs(fp32 - bf16).max())}


def render(args, described, splits, train, test, rows, speed, agreement, cli=None) -> str:
    lines = ["## Fine-tuning strategies on hymenoptera (ants vs bees)", "",
             f"`python -m benchmarks.bench_finetune --strategies {' '.join(args.strategies)} "
             f"--epochs {args.epochs} --seed {args.seed} --k {args.k} --views {args.views}`. "
             f"Machine: {described}.", ""]
    if cli:
        lines += ["### Default `transferkit fit hymenoptera --method finetune` (train → val)", "",
                  "Every default (gradual, k=1, views=8, 15 epochs, early stopping on `val`), "
                  "empty activation cache, one subprocess (start-up, report and bundle included).",
                  "", "| wall s | val accuracy | epochs run | best epoch | load average before → after |",
                  "|---|---|---|---|---|",
                  f"| {cli['wall_s']:.0f} | {cli['accuracy']:.4f} | {cli['epochs']} | {cli['best']} | "
                  f"{cli['load_before']:.1f} → {cli['load_after']:.1f} |", "",
                  f"Goal: ≥ {GOAL_ACCURACY} validation accuracy {verdict(cli['accuracy'] >= GOAL_ACCURACY)}"
                  f" ({cli['accuracy']:.4f}); ≤ {GOAL_SECONDS:.0f} s {verdict(cli['wall_s'] <= GOAL_SECONDS)}"
                  f" ({cli['wall_s']:.0f} s at load {cli['load_before']:.1f}).", "",
                  "### Strategies (internal validation split)", ""]
    lines += [
             f"Protocol: hymenoptera (ants/bees), {len(train[0])} training images "
             f"({splits.train.counts()}), early stopping on a seeded 20% stratified split of "
             f"train, accuracy on the {len(test[0])} `val` images. EfficientNet-Lite0 (bundled "
             f"ImageNet weights), {args.image_size} px, batch {args.batch_size}, AdamW lr 1e-3 "
             f"(head) with discriminative factor 1/3, cosine schedule, epoch budget {args.epochs}, "
             f"seed {args.seed}, fp32; gradual unfreezes up to k={args.k} groups; frozen-prefix "
             f"cache with {args.views} augmented views per image (0: fresh augmentations "
             "through the whole network every epoch; `full` always trains that way).", "",
             "| strategy | val accuracy | fit wall time (s) | fit+predict (s) | epochs run | best epoch | stages | best internal val loss |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['strategy']} | {r['accuracy']:.4f} | {r['fit_s']:.0f} | {r['total_s']:.0f} | "
                     f"{r['epochs']} | {r['best']} | {r['stages']} | {r['best_val_loss']:.4f} |")
    if speed:
        lines += ["", "### bf16 autocast vs fp32 on this CPU", "",
                  "| precision | seconds per training step (batch 16) |", "|---|---|",
                  f"| fp32 | {speed['fp32']:.2f} |", f"| bf16 autocast | {speed['bf16']:.2f} |"]
    if agreement:
        lines += ["", f"Same fine-tuned model evaluated on `val`: fp32 accuracy {agreement['fp32_acc']:.4f}, "
                      f"bf16-autocast accuracy {agreement['bf16_acc']:.4f}, largest probability "
                      f"difference {agreement['max_prob_diff']:.4f}."]
    lines += ["", "Note: the machine is shared; other jobs' load inflates wall times (see load average)."]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--strategies", nargs="*", default=["gradual", "full"])
    parser.add_argument("--k", type=int, default=1)
    parser.add_argument("--views", type=int, default=8)
    parser.add_argument("--skip-cli", action="store_true",
                        help="leave out the default `transferkit fit --method finetune` run")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-workers", type=int, default=1)
    parser.add_argument("--skip-precision", action="store_true")
    parser.add_argument("--run-dir", type=Path, default=None)
    add_output_arguments(parser, RESULTS_FINETUNE)
    args = parser.parse_args(argv)

    data = require_dataset("hymenoptera")

    from transferkit.data.dataset import load_dataset
    from transferkit.methods.finetune import FineTuner

    described = announce_machine()
    splits = load_dataset(data)
    train = [str(p) for p in splits.train.paths], [splits.classes[i] for i in splits.train.labels]
    test = [str(p) for p in splits.val.paths], [splits.classes[i] for i in splits.val.labels]
    rows, agreement = [], None
    cli = None if args.skip_cli else default_cli_fit(data)
    cache = tempfile.TemporaryDirectory(prefix="bench-finetune-cache-")
    for strategy in args.strategies:
        started = time.perf_counter()
        model = FineTuner(strategy=strategy, epochs=args.epochs, image_size=args.image_size,
                          batch_size=args.batch_size, random_state=args.seed, progress=False,
                          num_workers=args.num_workers, k=args.k, views=args.views,
                          cache_dir=cache.name,
                          run_dir=str(args.run_dir / strategy) if args.run_dir else None)
        model.fit(*train)
        fit_seconds = time.perf_counter() - started
        accuracy = model.score(*test)
        total = time.perf_counter() - started
        stages = list(dict.fromkeys(r.get("stage") for r in model.history_))
        rows.append({"strategy": strategy, "accuracy": accuracy, "fit_s": fit_seconds, "total_s": total,
                     "epochs": model.epochs_run_, "best": model.best_epoch_, "stages": len(stages),
                     "best_val_loss": min(r["val_loss"] for r in model.history_)})
        print(f"[{strategy}] val accuracy {accuracy:.4f}, fit {fit_seconds:.0f} s, "
              f"{model.epochs_run_} epochs, best epoch {model.best_epoch_}, stages {stages}", flush=True)
        if agreement is None and not args.skip_precision:
            agreement = bf16_inference_agreement(model, *test)
            print(f"[bf16 inference] {agreement}", flush=True)
        publish("finetune", render(args, described, splits, train, test, rows, None, agreement,
                                   cli), args, echo=False)
    speed = None if args.skip_precision else precision_check(args.image_size)
    publish("finetune", render(args, described, splits, train, test, rows, speed, agreement, cli),
            args)
    cache.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
