"""`fit --features` (#19): the streamed logreg against the in-memory one, and its memory.

1. Accuracy: oxford17flowers and office31/amazon (the sets ``LOGREG_C`` was chosen on),
   extracted into a store by ``transferkit extract`` (local engine, the default backbone),
   then ``transferkit fit DATA --features STORE`` with the default in-memory ``logreg`` and
   with ``--classifier logreg-stream``, on the same seeded split: validation accuracy, the
   gap, passes over the shards, wall time. For comparison, the stochastic solver first
   considered: ``SGDClassifier(loss="log_loss")`` with ``partial_fit`` over the same
   standardised shards in a seeded shuffled order, at the same regularisation
   (``alpha = 1 / (C n)``), 10 and 30 epochs.
2. Memory: a synthetic store (``dim`` features, Gaussian classes; small PNGs as DATA) at
   two sizes; each fit runs in a fresh interpreter that reports its ``tracemalloc`` peak
   (numpy and Python allocations, in a second run) and its resident-memory high-water mark
   (``VmHWM``). The streamed fit's peak must stay flat; the in-memory one grows with
   the data.

    .venv/bin/python -m benchmarks.bench_fit_features [--sizes 2000 8000] [--no-write]

:func:`fit_features_peak_memory` is the measurement the scale-out benchmark can call on
its own stores. Writes the ``fit-features`` section of ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
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

SECTION = "fit-features"
REAL_SETS = ("oxford17flowers/all", "office31/amazon")
GAP_TARGET = 0.02  # the streamed logreg within 2 points of the in-memory one

# Runs `transferkit ARGS` in this interpreter and prints the exit code, the summary and the
# process's resident high-water mark (VmHWM) as one JSON line on stderr. With TRACE=1, tracemalloc
# runs too, started once the libraries fit imports are loaded, so that its peak is what
# the fit itself allocates; it is a separate run because tracing inflates resident memory.
_MEASURE = """
import contextlib, io, json, os, sys, tracemalloc
from transferkit.cli import main
import numpy, scipy.optimize, scipy.special, sklearn.linear_model, pyarrow.parquet
import transferkit.jobs.fit, transferkit.methods.linear_probe, transferkit.features.from_store
from transferkit.skops_io import skops_io
skops_io()
trace = os.environ.get("TRACE") == "1"
if trace:
    tracemalloc.start()
out = io.StringIO()
with contextlib.redirect_stdout(out):
    code = main(sys.argv[1:] + ["--json", "--quiet"])
peak = tracemalloc.get_traced_memory()[1] if trace else None
summary = json.loads(out.getvalue().strip().splitlines()[-1]) if code == 0 else None
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent across fork and exec.
with open("/proc/self/status") as status:
    hwm = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
print(json.dumps({"code": code, "traced_peak": peak, "max_rss_kb": hwm, "summary": summary}),
      file=sys.stderr)
"""


def _measured_run(argv: list[str], env: dict | None) -> tuple[dict, float, str]:
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", _MEASURE, *argv], capture_output=True,
                            text=True, env=env)
    seconds = time.perf_counter() - started
    try:
        report = json.loads(result.stderr.strip().splitlines()[-1])
    except (ValueError, IndexError):
        report = {"code": None}
    if report.get("code") != 0:
        raise RuntimeError(f"{' '.join(argv[:2])} failed: {result.stderr[-2000:]}")
    return report, seconds, result.stderr


def fit_features_peak_memory(data, features, out, *args: str, env: dict | None = None,
                             traced: bool = True) -> dict:
    """Run ``transferkit fit DATA --features FEATURES --out OUT ARGS`` in a fresh
    interpreter: ``{"seconds", "max_rss_mb" (the process's resident high-water mark,
    libraries included), "traced_peak_mb" (with ``traced``, from a second run under
    tracemalloc started after the imports: what the fit allocates through numpy and
    Python; pyarrow's own pool is not traced), "summary"}``. ``out`` is written (and
    ``out`` + "-traced" by the traced run). Raises ``RuntimeError`` if fit fails."""
    import os

    env = dict(os.environ if env is None else env)
    argv = ["fit", str(data), "--features", str(features), "--out", str(out), *args]
    report, seconds, _ = _measured_run(argv, {**env, "TRACE": "0"})
    result = {"seconds": seconds, "max_rss_mb": report["max_rss_kb"] / 1024,
              "summary": report["summary"], "traced_peak_mb": None}
    if traced:
        argv[argv.index("--out") + 1] = f"{out}-traced"
        traced_report, _, _ = _measured_run(argv, {**env, "TRACE": "1"})
        result["traced_peak_mb"] = traced_report["traced_peak"] / 2**20
    return result


def synthetic_store(root: Path, n_images: int, dim: int = 1280, n_classes: int = 10,
                    seed: int = 0) -> tuple[Path, Path]:
    """``(DATA, STORE)``: ``n_images`` 8x8 PNGs in class folders and a store holding a
    Gaussian-class feature for each (matched by content, as extract writes it)."""
    from PIL import Image

    from transferkit.features.cache import file_digest
    from transferkit.features.shards import SHARD_ROWS, FeatureStore

    rng = np.random.default_rng(seed)
    data, store_dir = root / "data", root / "features"
    means = rng.normal(scale=0.08, size=(n_classes, dim)).astype(np.float32)
    labels = np.arange(n_images) % n_classes
    listing, paths = [], []
    for i, label in enumerate(labels):
        path = data / f"class{label:02d}" / f"{i:06d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(path)
        paths.append(path)
        listing.append((path.relative_to(data).as_posix(), f"class{label:02d}", None))
    store = FeatureStore.create(
        store_dir, identity={"backbone": {"name": "synthetic-features"}, "layers": ["pre_logits"]},
        extractor={"backbone": "synthetic-features", "weights": None, "arch": None,
                   "layer": "pre_logits", "pooling": "avg", "normalise": None},
        dim=dim, layers={"pre_logits": (0, dim)}, listing=listing,
        classes=[f"class{c:02d}" for c in range(n_classes)], data=str(data))
    for index in range(store.n_shards):
        rows = range(index * SHARD_ROWS, min((index + 1) * SHARD_ROWS, n_images))
        features = means[labels[list(rows)]] + rng.normal(size=(len(rows), dim)).astype(np.float32)
        store.write_shard(index, [file_digest(paths[i]) for i in rows], features,
                          [None] * len(rows))
    return data, store_dir


def _sgd_accuracy(data: Path, store_dir: Path, epochs: int, seed: int = 0) -> float:
    """SGDClassifier(log_loss) by partial_fit over the standardised training shards in a
    seeded shuffled order, alpha = 1 / (C n): validation accuracy on fit's own split."""
    import warnings

    from sklearn.linear_model import SGDClassifier
    from sklearn.preprocessing import StandardScaler

    from transferkit.data import load_dataset
    from transferkit.features.classifiers import LOGREG_C
    from transferkit.features.from_store import StoreFeatures
    from transferkit.features.shards import FeatureStore

    splits = load_dataset(data, val_fraction=0.2, random_state=seed)
    source = StoreFeatures(FeatureStore.open(store_dir),
                           list(splits.train.paths) + list(splits.val.paths))
    plan = source.plan(splits.train.paths)
    labels = np.asarray(splits.train.labels)
    scaler = StandardScaler()
    for _, features in source.read(plan):
        scaler.partial_fit(features)
    n = sum(len(positions) for _, _, positions in plan)
    model = SGDClassifier(loss="log_loss", alpha=1.0 / (LOGREG_C * n), random_state=seed)
    classes = np.arange(len(splits.classes))
    rng = np.random.default_rng(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(epochs):
            for entry in rng.permutation(len(plan)):
                for positions, features in source.read([plan[entry]]):
                    model.partial_fit(scaler.transform(features), labels[positions],
                                      classes=classes)
    correct = total = 0
    val_labels = np.asarray(splits.val.labels)
    for positions, features in source.stream(splits.val.paths):
        correct += int((model.predict(scaler.transform(features)) == val_labels[positions]).sum())
        total += len(positions)
    return correct / total


def measure_accuracy(datasets: Path, scratch: Path) -> list[dict]:
    from transferkit.jobs import extract

    rows = []
    for name in REAL_SETS:
        data = require_dataset(name.split("/")[0], root=datasets) / name.split("/")[1]
        store = scratch / f"store-{name.replace('/', '-')}"
        log(f"extract {name}")
        extract.run(data, store)
        row = {"data": name}
        for label, args in (("logreg", []), ("logreg-stream", ["--classifier", "logreg-stream"])):
            log(f"fit --features {name} ({label})")
            run = fit_features_peak_memory(data, store, scratch / f"model-{label}-{len(rows)}",
                                           "--no-report", *args, traced=False)
            row[label] = {"val_accuracy": run["summary"]["val_accuracy"],
                          "classifier": run["summary"]["classifier"], "seconds": run["seconds"]}
        for epochs in (10, 30):
            log(f"SGDClassifier {epochs} epochs on {name}")
            row[f"sgd-{epochs}"] = {"val_accuracy": _sgd_accuracy(data, store, epochs)}
        rows.append(row)
    return rows


def measure_memory(sizes, scratch: Path, dim: int) -> list[dict]:
    rows = []
    for n in sizes:
        log(f"synthetic store of {n} images")
        data, store = synthetic_store(scratch / f"synthetic-{n}", n, dim)
        for label, args in (("logreg", []), ("logreg-stream", ["--classifier", "logreg-stream"])):
            log(f"fit --features {n} ({label})")
            run = fit_features_peak_memory(data, store, scratch / f"model-{label}-{n}",
                                           "--no-report", *args)
            rows.append({"images": n, "classifier": label, "seconds": run["seconds"],
                         "traced_peak_mb": run["traced_peak_mb"], "max_rss_mb": run["max_rss_mb"],
                         "n_train": run["summary"]["n_train"],
                         "val_accuracy": run["summary"]["val_accuracy"]})
    return rows


def render(machine: str, command: str, accuracy: list[dict], memory: list[dict], dim: int) -> str:
    from benchmarks._common import verdict

    lines = [f"Command: `{command}`", "", f"Machine: {machine}", ""]
    if accuracy:
        lines += ["Validation accuracy, `fit DATA --features STORE` (seeded 80/20 split, default "
                  "backbone, store by `transferkit extract`, local engine):", "",
                  "| data | logreg (in memory) | logreg-stream | gap | streamed solve | "
                  "SGDClassifier 10 epochs | 30 epochs |", "|---|---:|---:|---:|---|---:|---:|"]
        for row in accuracy:
            base, streamed = row["logreg"]["val_accuracy"], row["logreg-stream"]["val_accuracy"]
            gap = base - streamed
            lines.append(f"| {row['data']} | {base:.4f} ({row['logreg']['seconds']:.1f} s) | "
                         f"{streamed:.4f} ({row['logreg-stream']['seconds']:.1f} s) | "
                         f"{100 * gap:+.2f} pts {verdict(gap <= GAP_TARGET)} | "
                         f"{row['logreg-stream']['classifier']} | "
                         f"{row['sgd-10']['val_accuracy']:.4f} | {row['sgd-30']['val_accuracy']:.4f} |")
        lines += ["", "Seconds are whole `fit` commands (start-up, hashing DATA, reading the "
                  "store, scoring). SGD is at the same regularisation as logreg "
                  "(alpha = 1/(C n)), partial_fit over the same shards."]
    if memory:
        lines += ["", f"Peak memory of `fit --features` on a synthetic store ({dim} float32 "
                  "features per image, 10 classes, 1024-row shards; each fit in a fresh "
                  "interpreter):", "",
                  "| images | classifier | traced peak (numpy + Python) | resident high-water | "
                  "wall s | val accuracy |", "|---:|---|---:|---:|---:|---:|"]
        for row in memory:
            lines.append(f"| {row['images']} | {row['classifier']} | {row['traced_peak_mb']:.1f} MB"
                         f" | {row['max_rss_mb']:.0f} MB | {row['seconds']:.1f} | "
                         f"{row['val_accuracy']:.4f} |")
        by = {(row["classifier"], row["images"]): row for row in memory}
        small, large = min(sizes := sorted({row["images"] for row in memory})), max(sizes)
        if small != large:
            extra = by[("logreg-stream", large)]["n_train"] - by[("logreg-stream", small)]["n_train"]
            growth = {name: by[(name, large)]["traced_peak_mb"] - by[(name, small)]["traced_peak_mb"]
                      for name in ("logreg", "logreg-stream")}
            lines += ["", f"From {small} to {large} images ({extra} more training images, "
                      f"{extra * dim * 4 / 2**20:.0f} MB more training features): the traced peak "
                      f"of logreg grows by {growth['logreg']:.1f} MB, that of logreg-stream by "
                      f"{growth['logreg-stream']:.1f} MB "
                      f"({growth['logreg-stream'] * 2**10 / extra:.1f} KB per image against "
                      f"{dim * 4 / 2**10:.1f} KB per feature vector): no feature array grows; "
                      "what does is per-image bookkeeping (paths, content digests, the row "
                      "index, validation probabilities)."]
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_datasets_argument(parser)
    add_output_arguments(parser)
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 8000])
    parser.add_argument("--dim", type=int, default=1280)
    parser.add_argument("--no-accuracy", dest="accuracy", action="store_false")
    parser.add_argument("--no-memory", dest="memory", action="store_false")
    args = parser.parse_args(argv)
    machine = announce_machine()
    command = "python -m benchmarks.bench_fit_features " + " ".join(argv or sys.argv[1:])
    with tempfile.TemporaryDirectory(prefix="bench-fit-features-") as scratch:
        scratch = Path(scratch)
        accuracy = measure_accuracy(args.datasets, scratch) if args.accuracy else []
        memory = measure_memory(args.sizes, scratch, args.dim) if args.memory else []
    publish(SECTION, render(machine, command.strip(), accuracy, memory, args.dim), args)


if __name__ == "__main__":
    main()
