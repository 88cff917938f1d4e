"""Scale-out benchmark (#19): extraction on the local engine and on Ray Data, memory that
stays flat in the dataset size, resuming a killed run, and `fit --features` from shards.

The collection is every image of ``../shared/datasets`` (hymenoptera, MNIST-M, Office-31,
Omniglot, Oxford flowers, PH2, sign-language digits: about 24,000 files), listed in a CSV
with the data set's name as the label, and a seeded, stratified subset of 5,000 of them.
Each measurement runs the CLI in a subprocess with a fresh, empty feature cache
(``TRANSFERKIT_CACHE_DIR``) and polls the summed resident memory of the whole process
tree every few seconds (PSS: the Ray runs include the raylet, the object store and the
actor processes; a page shared by k processes counts 1/k in each):

* ``transferkit extract CSV --out DIR --engine local`` and ``--engine ray --actors 1|2``
  (a local Ray instance started by the command): images/s end to end, the Ray runs as a
  ratio against the local engine at the same CPU budget (this machine's cores);
* the same local extraction killed once half of its shards exist, then restarted: the
  restart's wall time and the row count (no duplicate, no missing row);
* ``transferkit fit CSV --features DIR`` on the shards (in-memory and streaming
  classifier): wall time and peak memory at 5k and 24k images.

    .venv/bin/python -m benchmarks.bench_scale_out [--sizes 5000 all] [--engines local ray1 ray2]

Writes the ``scale-out`` section of ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks._common import (
    add_datasets_argument,
    add_output_arguments,
    announce_machine,
    cpu_cores,
    log,
    publish,
    require_dataset,
    transferkit_command,
    verdict,
)

SECTION = "scale-out"
COLLECTION_SETS = ("hymenoptera", "mnist_m", "office31", "omniglot_small", "oxford17flowers",
                   "ph2", "sign_language_digits")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp"}
TARGET_RAY_RATIO = 0.85  # Ray at the same CPU budget within 15% of the local engine
PSS_EVERY = 5.0  # seconds between two readings of the process tree's memory
ENGINES = {"local": ["--engine", "local"],
           "ray1": ["--engine", "ray", "--actors", "1"],
           "ray2": ["--engine", "ray", "--actors", "2"]}


# --------------------------------------------------------------------------- the collection

def collection_rows(datasets: Path) -> list[tuple[str, str]]:
    """(absolute path, data set name) of every image of the shared sets, sorted."""
    rows = []
    for name in COLLECTION_SETS:
        folder = require_dataset(name, root=datasets)
        for path in sorted(folder.rglob("*")):
            if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file() \
                    and not path.name.startswith("."):
                # PH2's lesion masks are images of masks, not photographs: leave them out.
                if name == "ph2" and "masks" in path.parts:
                    continue
                rows.append((str(path.resolve()), name))
    return rows


def write_collection(rows, size: int | None, folder: Path, seed: int = 0) -> Path:
    """A CSV of ``size`` rows (all when None), stratified by data set, seeded."""
    if size is not None and size < len(rows):
        labels = np.array([label for _, label in rows])
        rng = np.random.default_rng(seed)
        keep = []
        for label in np.unique(labels):
            members = np.flatnonzero(labels == label)
            share = max(1, round(size * len(members) / len(rows)))
            keep += list(rng.choice(members, min(share, len(members)), replace=False))
        rows = [rows[i] for i in sorted(keep)]
    path = folder / f"collection-{len(rows)}.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label"])
        writer.writerows(rows)
    return path


# --------------------------------------------------------------------------- running

@dataclass
class Run:
    wall: float
    peak_rss_mb: float
    returncode: int
    summary: dict | None


def _tree_members(process) -> list:
    import psutil

    try:
        return [process] + process.children(recursive=True)
    except psutil.Error:
        return []


def _tree_memory(members, proportional: bool) -> int:
    """Summed memory of a process tree: resident (RSS, cheap to read) or proportional
    (PSS: a page shared by k processes counts 1/k in each, so Ray's shared object store
    and libraries are not counted once per worker; reading it costs a walk of every
    mapping, so it is sampled less often)."""
    import psutil

    total = 0
    for member in members:
        try:
            if proportional:
                info = member.memory_full_info()
                total += getattr(info, "pss", info.rss)
            else:
                total += member.memory_info().rss
        except psutil.Error:
            pass
    return total


def run_cli(argv: list[str], env: dict, stop_when=None, poll: float = 1.0) -> Run:
    """Run ``transferkit ARGV --json --quiet``; poll the process tree's memory; kill the
    whole group when ``stop_when()`` turns true."""
    import psutil

    started = time.perf_counter()
    process = subprocess.Popen([*transferkit_command(), *argv, "--json", "--quiet"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                               start_new_session=True)
    # Polling must not cost the run it measures: the tree is listed and its PSS read
    # every PSS_EVERY seconds only (Ray's tree has a dozen processes).
    watched, peak, last_pss = psutil.Process(process.pid), 0, -PSS_EVERY
    while process.poll() is None:
        now = time.perf_counter()
        if now - last_pss >= PSS_EVERY:
            peak = max(peak, _tree_memory(_tree_members(watched), proportional=True))
            last_pss = now
        if stop_when is not None and stop_when():
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            break
        time.sleep(poll)
    out, err = process.communicate()
    wall = time.perf_counter() - started
    summary = None
    if process.returncode == 0:
        summary = json.loads(out.decode().strip().splitlines()[-1])
    elif stop_when is None:
        log(f"failed ({process.returncode}): {' '.join(argv)}\n{err.decode()[-2000:]}")
    return Run(wall, peak / 2**20, process.returncode, summary)


def fresh_env(scratch: Path) -> dict:
    cache = Path(tempfile.mkdtemp(prefix="cache-", dir=scratch))
    return {**os.environ, "TRANSFERKIT_CACHE_DIR": str(cache)}


def shard_rows(store: Path) -> int:
    import pyarrow.parquet as pq

    return sum(pq.read_metadata(path).num_rows for path in (store / "shards").glob("part-*.parquet"))


# --------------------------------------------------------------------------- measurements

def measure_extraction(csv_path: Path, n: int, engines, scratch: Path) -> list[dict]:
    rows = []
    for engine in engines:
        store = scratch / f"features-{engine}-{n}"
        log(f"extract {n} images, engine {engine}")
        run = run_cli(["extract", str(csv_path), "--out", str(store), *ENGINES[engine]],
                      fresh_env(scratch))
        summary = run.summary or {}
        rows.append({"engine": engine, "images": n, "wall": run.wall,
                     "images_per_s": n / run.wall if run.returncode == 0 else float("nan"),
                     # The engine alone: after listing and hashing, without Ray's start
                     # (instance, actors, network loaded) before the first batch returned.
                     "engine_images_per_s": n / max(1e-9, summary.get("engine_seconds", 0)
                                                    - summary.get("startup_seconds", 0)),
                     "startup_s": summary.get("startup_seconds"), "peak_rss_mb": run.peak_rss_mb,
                     "ok": run.returncode == 0, "store": str(store),
                     "skipped": (run.summary or {}).get("n_skipped")})
        log(f"  {n / run.wall:.1f} images/s, peak {run.peak_rss_mb:.0f} MB")
    return rows


def measure_resume(csv_path: Path, n: int, scratch: Path) -> dict:
    """Kill a local extraction once half its shards exist; restart; time the restart."""
    store = scratch / f"features-resume-{n}"
    env = fresh_env(scratch)
    expected_shards = None

    def half_done() -> bool:
        nonlocal expected_shards
        manifest = store / "manifest.json"
        if expected_shards is None and manifest.is_file():
            try:
                expected_shards = json.loads(manifest.read_text())["n_shards"]
            except (ValueError, KeyError):
                return False
        written = len(list((store / "shards").glob("part-*.parquet"))) if store.is_dir() else 0
        return expected_shards is not None and written >= max(1, expected_shards // 2)

    log(f"resume: extract {n} images, kill at half")
    first = run_cli(["extract", str(csv_path), "--out", str(store)], env, stop_when=half_done)
    before = shard_rows(store)
    second = run_cli(["extract", str(csv_path), "--out", str(store)], env)
    # A second run on a complete store must write nothing.
    third = run_cli(["extract", str(csv_path), "--out", str(store)], env)
    return {"images": n, "killed_after": first.wall, "rows_before_restart": before,
            "restart_wall": second.wall, "rows_after": shard_rows(store),
            "complete_rerun_wall": third.wall, "ok": second.returncode == 0}


def measure_fit(csv_path: Path, n: int, store: Path, scratch: Path) -> list[dict]:
    rows = []
    for label, extra in (("default", []), ("streaming", ["--classifier", "logreg-stream"])):
        out = scratch / f"model-{label}-{n}"
        log(f"fit --features {n} images ({label})")
        run = run_cli(["fit", str(csv_path), "--features", str(store), "--out", str(out),
                       "--no-report", *extra], fresh_env(scratch))
        summary = run.summary or {}
        rows.append({"classifier": label, "images": n, "wall": run.wall,
                     "peak_rss_mb": run.peak_rss_mb, "ok": run.returncode == 0,
                     "val_accuracy": summary.get("val_accuracy"),
                     "classifier_line": summary.get("classifier")})
        log(f"  {run.wall:.1f} s, peak {run.peak_rss_mb:.0f} MB, "
            f"val {summary.get('val_accuracy')}")
    return rows


# --------------------------------------------------------------------------- table

def render(machine: str, extraction, resume, fits, command: str) -> str:
    lines = [f"Command: `{command}`", "", f"Machine: {machine}", ""]
    lines += ["| engine | images | wall s | images/s end to end | vs local | Ray start s | "
              "images/s after start | vs local | peak memory (PSS, process tree) |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    local = {row["images"]: row for row in extraction if row["engine"] == "local" and row["ok"]}
    for row in extraction:
        if not row["ok"]:
            lines.append(f"| {row['engine']} | {row['images']} | failed | | | |")
            continue
        base = local.get(row["images"])
        ratios = []
        for key in ("images_per_s", "engine_images_per_s"):
            if base is None:
                ratios.append("—")
                continue
            ratio = row[key] / base[key]
            same_budget = row["engine"] == f"ray{cpu_cores()}"
            ratios.append(f"{ratio:.2f}" + (" " + verdict(ratio >= TARGET_RAY_RATIO)
                                            if same_budget else ""))
        start = "—" if row["startup_s"] is None else f"{row['startup_s']:.0f}"
        lines.append(f"| {row['engine']} | {row['images']} | {row['wall']:.0f} | "
                     f"{row['images_per_s']:.1f} | {ratios[0]} | {start} | "
                     f"{row['engine_images_per_s']:.1f} | {ratios[1]} | "
                     f"{row['peak_rss_mb']:.0f} MB |")
    if resume:
        lines += ["", "| resume (local) | images | killed after s | rows kept | restart s | "
                  "rows after | rerun of a complete store s |", "|---|---:|---:|---:|---:|---:|---:|"]
        lines.append(f"| kill at half | {resume['images']} | {resume['killed_after']:.0f} | "
                     f"{resume['rows_before_restart']} | {resume['restart_wall']:.0f} | "
                     f"{resume['rows_after']} "
                     f"{verdict(resume['rows_after'] == resume['images'])} | "
                     f"{resume['complete_rerun_wall']:.1f} |")
    if fits:
        lines += ["", "| fit --features | images | wall s | peak memory | val accuracy |",
                  "|---|---:|---:|---:|---:|"]
        for row in fits:
            accuracy = "—" if row["val_accuracy"] is None else f"{row['val_accuracy']:.3f}"
            lines.append(f"| {row['classifier_line'] or row['classifier']} | {row['images']} | "
                         f"{row['wall']:.1f} | {row['peak_rss_mb']:.0f} MB | {accuracy} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_datasets_argument(parser)
    add_output_arguments(parser)
    parser.add_argument("--sizes", nargs="+", default=["5000", "all"],
                        help="collection sizes: numbers and/or 'all'")
    parser.add_argument("--engines", nargs="+", default=list(ENGINES), choices=list(ENGINES))
    parser.add_argument("--engines-at-all", nargs="+", choices=list(ENGINES),
                        help="engines for the full collection (default: --engines)")
    parser.add_argument("--no-resume", dest="resume", action="store_false")
    parser.add_argument("--no-fit", dest="fit", action="store_false")
    parser.add_argument("--scratch", type=Path, help="work folder (default: a temporary one)")
    args = parser.parse_args(argv)

    machine = announce_machine()
    rows = collection_rows(args.datasets)
    log(f"collection: {len(rows)} images from {len(COLLECTION_SETS)} data sets")
    scratch = args.scratch or Path(tempfile.mkdtemp(prefix="bench-scale-out-"))
    # The CSVs in a folder of their own: extract never writes inside its input's folder.
    (scratch / "data").mkdir(parents=True, exist_ok=True)
    extraction, fits, resume = [], [], None
    for size in args.sizes:
        csv_path = write_collection(rows, None if size == "all" else int(size), scratch / "data")
        n = sum(1 for _ in open(csv_path)) - 1
        engines = args.engines_at_all if size == "all" and args.engines_at_all else args.engines
        measured = measure_extraction(csv_path, n, engines, scratch)
        extraction += measured
        if args.resume and resume is None and size != "all":
            resume = measure_resume(csv_path, n, scratch)
        local = next((row for row in measured if row["engine"] == "local" and row["ok"]), None)
        if args.fit and local is not None:
            fits += measure_fit(csv_path, n, Path(local["store"]), scratch)
    command = "python -m benchmarks.bench_scale_out " + " ".join(argv or sys.argv[1:])
    (scratch / "results.json").write_text(json.dumps(
        {"extraction": extraction, "resume": resume, "fits": fits}, indent=1))
    publish(SECTION, render(machine, extraction, resume, fits, command.strip()), args)


if __name__ == "__main__":
    main()
