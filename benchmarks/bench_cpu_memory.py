"""CPU training with glibc's thresholds raised (transferkit/train/cpu_memory.py) vs as is.

Two measures, each run as subprocesses alternating ``TRANSFERKIT_MALLOC=system`` (malloc
left alone) and the default (thresholds raised), ``--repeats`` times:

* ``step``: forward + backward + SGD step of the whole EfficientNet-Lite0 on a batch of 32
  random 224-px images, 2 threads: seconds per step (mean of 5 after one warm-up), the
  user and kernel CPU seconds per step, peak resident memory;
* ``finetune``: ``transferkit fit hymenoptera --method finetune --strategy full --epochs 1``
  (decoding workers, validation, bundle and report included): wall seconds.

    python -m benchmarks.bench_cpu_memory [--repeats 2] [--no-finetune]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

from benchmarks._common import (
    SHARED_DATASETS,
    add_output_arguments,
    announce_machine,
    publish,
    transferkit_command,
)

STEP = """
import json, resource, time, torch
from transferkit.train import cpu_memory
torch.set_num_threads(2)
raised = cpu_memory.keep_freed_memory()
from transferkit.backbones import create_backbone
model = create_backbone("efficientnet_lite0").model.train().requires_grad_(True)
optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
x, y = torch.randn(32, 3, 224, 224), torch.randint(0, 1000, (32,))
def step():
    optimizer.zero_grad()
    torch.nn.functional.cross_entropy(model(x), y).backward()
    optimizer.step()
step()
before, started = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
for _ in range(5):
    step()
after = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"raised": raised, "step": (time.perf_counter() - started) / 5,
                  "user": (after.ru_utime - before.ru_utime) / 5,
                  "kernel": (after.ru_stime - before.ru_stime) / 5,
                  "peak_mb": after.ru_maxrss / 1024}))
"""


def environment(malloc: str) -> dict:
    env = dict(os.environ)
    env.pop("TRANSFERKIT_MALLOC", None)
    if malloc == "system":
        env["TRANSFERKIT_MALLOC"] = "system"
    return env


def run_step(malloc: str) -> dict:
    out = subprocess.run([sys.executable, "-c", STEP], capture_output=True, text=True,
                         env=environment(malloc), check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_finetune(malloc: str) -> float:
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        subprocess.run(transferkit_command() + [
            "fit", str(SHARED_DATASETS / "hymenoptera"), "--method", "finetune", "--strategy",
            "full", "--epochs", "1", "--out", os.path.join(folder, "model"), "--quiet"],
            env=environment(malloc), check=True, capture_output=True)
        return time.perf_counter() - started


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--no-finetune", action="store_true")
    add_output_arguments(parser)
    args = parser.parse_args(argv)
    machine = announce_machine()
    steps = {"system": [], "raised": []}
    finetunes = {"system": [], "raised": []}
    for _ in range(args.repeats):
        for malloc in ("system", "raised"):
            steps[malloc].append(run_step(malloc))
            if not args.no_finetune and (SHARED_DATASETS / "hymenoptera").is_dir():
                finetunes[malloc].append(run_finetune(malloc))

    def mean(rows, key):
        return float(np.mean([r[key] for r in rows]))

    lines = [f"`python -m benchmarks.bench_cpu_memory --repeats {args.repeats}`. {machine}", "",
             "| malloc | s per training step | user CPU s | kernel CPU s | peak memory MB | "
             "`fit --method finetune --strategy full --epochs 1`, wall s |", "|---|---|---|---|---|---|"]
    for malloc, label in (("system", "as is (`TRANSFERKIT_MALLOC=system`)"),
                          ("raised", "thresholds raised (the default)")):
        rows = steps[malloc]
        wall = ", ".join(f"{t:.1f}" for t in finetunes[malloc]) or "—"
        lines.append(f"| {label} | {mean(rows, 'step'):.2f} | {mean(rows, 'user'):.2f} | "
                     f"{mean(rows, 'kernel'):.2f} | {mean(rows, 'peak_mb'):.0f} | {wall} |")
    ratio = mean(steps["system"], "step") / mean(steps["raised"], "step")
    lines += ["", f"Training step {ratio:.2f}× faster with the thresholds raised (whole "
              "EfficientNet-Lite0, batch 32 at 224 px, 2 threads; runs alternate, "
              f"{args.repeats} of each). Training on cached activations of small maps (the "
              "default `fit --method finetune`, segmentation at 128 px) allocates blocks "
              "below glibc's default threshold and gains little (by hand: `segment fit` on PH2, 2 "
              "epochs at 128 px, 31.0 and 35.7 s raised vs 34.4 and 39.5 s as is)."]
    publish("cpu-memory", "## CPU training: freed memory kept in the process\n\n"
            + "\n".join(lines), args)


if __name__ == "__main__":
    main()
