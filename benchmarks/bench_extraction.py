"""Extraction benchmark: feature-extraction speed and agreement on hymenoptera.

On the hymenoptera files (``../shared/datasets/hymenoptera``, train and val, 398 files),
in this one process, writing the ``foundation-extraction`` section of
``benchmarks/RESULTS.md``:

1. Throughput (images/s) of each path:
   (a) the baseline: a plain timm eager loop written here (``timm.create_model`` with the
   bundled weights, timm's eval transform, PIL decode in the main process, batch 32,
   ``torch.inference_mode()``, ``forward_head(forward_features(x), pre_logits=True)``);
   (b) ``FrozenExtractor(runtime="eager")`` (channels-last, decode workers), no cache;
   (c) ``FrozenExtractor(runtime="onnx")``, no cache: a first extractor on a fresh folder
   (includes the one-time export and its check against eager) and a second extractor that
   reuses the exported file; (d) optionally ``torch.compile`` of the eager module (in a
   child process, abandoned if compiling takes more than ``--compile-limit`` seconds).
   Each path's speed-up over the baseline and the largest absolute difference of its
   features from the baseline's.
2. Diagnostics for the ONNX path: decode + preprocessing alone, ONNX Runtime alone on
   decoded tensors (1 and all threads), and the extractor with 0, 1 and 2 decode workers:
   is decoding the bottleneck?

Throughput is the median over ``--repeats`` runs (range in brackets). The OS file cache
is not dropped; images are read once beforehand.

    .venv/bin/python -m benchmarks.bench_extraction [--repeats 3] [--no-compile]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks._common import (
    REPO,
    announce_machine,
    cpu_cores,
    image_files,
    load_average,
    log,
    median_range,
    publish,
    require_dataset,
    verdict,
    warm_file_cache,
)
from benchmarks.bench_fit import add_hymenoptera_arguments

MODULE = "benchmarks.bench_extraction"  # the compile child runs this module again
BACKBONE = "efficientnet_lite0"
ARCH = "tf_efficientnet_lite0"
BATCH = 32
MIN_FILES = 256  # fewer files give too few batches for a stable rate

# Targets of the foundation issue.
TARGET_SPEEDUP = 4.0
TARGET_MAX_DIFF = 1e-4

BASELINE = "(a) baseline: plain timm eager loop, main-process decode"
EAGER = "(b) FrozenExtractor eager (channels-last, decode workers)"
ONNX_FIRST = "(c) FrozenExtractor onnx, first run (export + check included)"
ONNX_REUSED = "(c) FrozenExtractor onnx, exported file reused"
COMPILED = "(d) FrozenExtractor eager + torch.compile (inductor)"


# --------------------------------------------------------------------------- 1. throughput

@dataclass
class PathResult:
    name: str
    seconds: list[float]
    n_images: int
    max_diff: float = float("nan")
    note: str = ""

    @property
    def rate(self) -> tuple[float, float, float]:
        med, lo, hi = median_range(self.seconds)
        return self.n_images / med, self.n_images / hi, self.n_images / lo


def baseline_model():
    """timm's own Lite0 with the bundled weights, timm's own eval preprocessing."""
    import timm
    import timm.data

    from transferkit.backbones import create_backbone

    model = timm.create_model(ARCH, pretrained=False)
    model.load_state_dict(create_backbone(BACKBONE).model.state_dict(), strict=True)
    model.eval()
    config = timm.data.resolve_data_config({}, model=model)
    transform = timm.data.create_transform(**config, is_training=False)
    return model, transform


def baseline_extract(model, transform, paths: list[Path], batch_size: int = BATCH) -> np.ndarray:
    """The plain loop a user would write: decode in the main process, eager PyTorch."""
    import torch
    from PIL import Image

    rows = []
    with torch.inference_mode():
        for first in range(0, len(paths), batch_size):
            tensors = []
            for path in paths[first:first + batch_size]:
                with Image.open(path) as image:
                    tensors.append(transform(image.convert("RGB")))
            batch = torch.stack(tensors)
            rows.append(model.forward_head(model.forward_features(batch), pre_logits=True).numpy())
    return np.concatenate(rows).astype(np.float32)


def max_abs_diff(features: np.ndarray, ok: np.ndarray, reference: np.ndarray) -> float:
    if not ok.all():
        reference = reference[ok]
    return float(np.abs(features - reference).max())


def make_extractor(runtime: str, cache_dir: Path, num_workers: int | None = None):
    from transferkit.features.extract import FrozenExtractor

    return FrozenExtractor.from_name(BACKBONE, runtime=runtime, use_cache=False,
                                     cache_dir=cache_dir, batch_size=BATCH,
                                     num_workers=num_workers)


def time_extract(extractor, paths: list[Path]):
    start = time.perf_counter()
    result = extractor.extract(paths)
    return time.perf_counter() - start, result


def bench_baseline(paths: list[Path], repeats: int) -> tuple[PathResult, np.ndarray]:
    model, transform = baseline_model()
    seconds, features = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        features = baseline_extract(model, transform, paths)
        seconds.append(time.perf_counter() - start)
        log(f"baseline: {len(paths) / seconds[-1]:.1f} img/s")
    return PathResult(BASELINE, seconds,
                      len(paths), 0.0), features


def bench_eager(paths: list[Path], work: Path, repeats: int, reference: np.ndarray) -> PathResult:
    seconds, diffs = [], []
    for repeat in range(repeats):
        extractor = make_extractor("eager", work / f"eager-{repeat}")
        elapsed, result = time_extract(extractor, paths)
        seconds.append(elapsed)
        diffs.append(max_abs_diff(result.features, result.ok, reference))
        log(f"eager: {len(paths) / elapsed:.1f} img/s ({result.runtime}), diff {diffs[-1]:.1e}")
        del extractor
        gc.collect()
    return PathResult(EAGER, seconds,
                      len(paths), max(diffs))


def bench_onnx(paths: list[Path], work: Path, repeats: int,
               reference: np.ndarray) -> tuple[PathResult, PathResult, Path]:
    with_export, without_export, diffs = [], [], []
    folder = None
    for repeat in range(repeats):
        folder = work / f"onnx-{repeat}"  # fresh: the first extractor exports
        first = make_extractor("onnx", folder)
        elapsed, result = time_extract(first, paths)
        with_export.append(elapsed)
        assert result.runtime == "onnx", result.runtime
        diffs.append(max_abs_diff(result.features, result.ok, reference))
        exported = sorted((folder / "onnx").glob("*.onnx"))
        assert exported, "the ONNX runtime left no exported file"
        del first
        gc.collect()
        second = make_extractor("onnx", folder)  # reuses folder/onnx/<identity>.onnx
        mtime = exported[0].stat().st_mtime_ns
        elapsed, result = time_extract(second, paths)
        assert exported[0].stat().st_mtime_ns == mtime, "the second extractor re-exported"
        without_export.append(elapsed)
        diffs.append(max_abs_diff(result.features, result.ok, reference))
        log(f"onnx: {len(paths) / with_export[-1]:.1f} img/s incl. export, "
            f"{len(paths) / elapsed:.1f} img/s reusing it, diff {diffs[-1]:.1e}")
        del second
        gc.collect()
    export_extra = statistics.median(with_export) - statistics.median(without_export)
    return (PathResult(ONNX_FIRST, with_export, len(paths), max(diffs),
                       note=f"one-time export ≈ {export_extra:.1f} s"),
            PathResult(ONNX_REUSED, without_export,
                       len(paths), max(diffs)),
            exported[0])


# ---- (d) torch.compile, in a child process so a slow compile can be abandoned

def compile_child(paths_file: Path, out_dir: Path, repeats: int) -> int:
    """Hidden mode: FrozenExtractor eager with its module replaced by torch.compile."""
    import torch

    warnings.simplefilter("ignore")
    paths = [Path(line) for line in paths_file.read_text().splitlines() if line]
    extractor = make_extractor("eager", out_dir / "cache")
    runtime = extractor.runtime  # EagerRuntime: channels-last module
    runtime.module = torch.compile(runtime.module)
    start = time.perf_counter()
    shape = extractor.input_shape
    sizes = {BATCH, len(paths) % BATCH or BATCH}
    for size in sorted(sizes):  # compile every batch shape the run will see
        runtime(torch.zeros((size, *shape)))
    compile_seconds = time.perf_counter() - start
    (out_dir / "compiled.json").write_text(json.dumps({"compile_seconds": compile_seconds}))
    seconds = []
    for _ in range(repeats):
        elapsed, result = time_extract(extractor, paths)
        seconds.append(elapsed)
    np.save(out_dir / "features.npy", result.features)
    np.save(out_dir / "ok.npy", result.ok)
    (out_dir / "result.json").write_text(json.dumps({"compile_seconds": compile_seconds,
                                                     "seconds": seconds}))
    return 0


def bench_compile(paths: list[Path], work: Path, repeats: int, limit: float,
                  reference: np.ndarray) -> PathResult | None:
    name = COMPILED
    out = work / "compile"
    out.mkdir(parents=True, exist_ok=True)
    paths_file = out / "paths.txt"
    paths_file.write_text("\n".join(str(p) for p in paths))
    command = [sys.executable, "-m", MODULE, "--_compile-child", str(out),
               "--repeats", str(repeats), "--_paths", str(paths_file)]
    env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=str(out / "inductor"))  # a cold compile
    compiled = out / "compiled.json"
    deadline = time.perf_counter() + limit
    with open(out / "log.txt", "wb") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, env=env,
                                   cwd=REPO)
        while process.poll() is None:
            late = time.perf_counter() > deadline
            if late and not compiled.exists():
                note = f"skipped: compiling took more than {limit:.0f} s"
            elif time.perf_counter() > deadline + 60 * repeats + 120:
                note = "skipped: compiled, but the timed runs did not finish"
            else:
                time.sleep(0.5)
                continue
            process.kill()
            process.wait()
            log(f"compile: {note}")
            return PathResult(name, [float("nan")], len(paths), note=note)
    output = (out / "log.txt").read_text(errors="replace")
    if process.returncode != 0 or not (out / "result.json").exists():
        tail = " ".join(output.strip().splitlines()[-3:])[-300:]
        log(f"compile failed: {tail}")
        return PathResult(name, [float("nan")], len(paths),
                          note=f"failed (exit {process.returncode}): {tail}")
    result = json.loads((out / "result.json").read_text())
    diff = max_abs_diff(np.load(out / "features.npy"), np.load(out / "ok.npy"), reference)
    log(f"compile: {result['compile_seconds']:.0f} s to compile, "
        f"{len(paths) / statistics.median(result['seconds']):.1f} img/s, diff {diff:.1e}")
    return PathResult(name, result["seconds"], len(paths), diff,
                      note=f"compile {result['compile_seconds']:.0f} s excluded (cold inductor "
                      "cache); separate process")


# ---- 2. diagnostics: where does the ONNX path spend its time?

class _ShardedBatches:
    """What-if, not transferkit code: each worker decodes *and* runs a 1-thread ONNX session."""

    def __init__(self, paths: list[Path], transform, onnx_file: Path, batch_size: int):
        self.paths, self.transform, self.onnx_file = paths, transform, str(onnx_file)
        self.batch_size = batch_size
        self.session = None

    def __len__(self) -> int:
        return -(-len(self.paths) // self.batch_size)

    def __getitem__(self, index: int):
        import onnxruntime
        import torch

        from transferkit.data.images import load_image

        if self.session is None:  # one session per worker process, created there
            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = 1
            options.log_severity_level = 3
            self.session = onnxruntime.InferenceSession(self.onnx_file, options,
                                                        providers=["CPUExecutionProvider"])
        chunk = self.paths[index * self.batch_size:(index + 1) * self.batch_size]
        images = torch.stack([self.transform(load_image(path)) for path in chunk]).numpy()
        return index, self.session.run(None, {self.session.get_inputs()[0].name: images})[0]


def sharded_extract(paths: list[Path], transform, onnx_file: Path, workers: int,
                    batch_size: int = 16) -> np.ndarray:
    from torch.utils.data import DataLoader

    loader = DataLoader(_ShardedBatches(paths, transform, onnx_file, batch_size),
                        batch_size=None, num_workers=workers, prefetch_factor=2)
    parts = dict(loader)
    return np.concatenate([parts[i] for i in sorted(parts)])


def bench_diagnostics(paths: list[Path], onnx_file: Path, work: Path, repeats: int,
                      reference: np.ndarray) -> dict:
    import torch
    from torch import nn

    from transferkit.data.images import load_image
    from transferkit.features.extract import shared_backbone
    from transferkit.features.runtime import OnnxRuntime, cpu_threads

    transform = shared_backbone(BACKBONE, None, None).eval_transform()
    start = time.perf_counter()
    tensors = [transform(load_image(path)) for path in paths]
    decode = time.perf_counter() - start
    batches = [torch.stack(tensors[i:i + BATCH]) for i in range(0, len(tensors), BATCH)]
    del tensors
    log(f"decode + preprocess, 1 process: {len(paths) / decode:.1f} img/s")
    ort = {}
    shape = tuple(batches[0].shape[1:])
    for threads in sorted({1, cpu_threads()}):
        runtime = OnnxRuntime(nn.Identity(), shape, onnx_file, threads=threads)  # no export
        runtime(batches[0])  # first run allocates
        start = time.perf_counter()
        for batch in batches:
            runtime(batch)
        ort[threads] = len(paths) / (time.perf_counter() - start)
        log(f"onnx runtime alone, {threads} thread(s): {ort[threads]:.1f} img/s")
        del runtime
    workers = {}
    for n in (0, 1, 2):
        seconds = []
        for _ in range(repeats):
            extractor = make_extractor("onnx", onnx_file.parent.parent, num_workers=n)
            seconds.append(time_extract(extractor, paths)[0])
            del extractor
            gc.collect()
        workers[n] = len(paths) / statistics.median(seconds)
        log(f"onnx extractor, {n} decode worker(s): {workers[n]:.1f} img/s")
    seconds, diff = [], float("nan")
    for _ in range(repeats):
        start = time.perf_counter()
        features = sharded_extract(paths, transform, onnx_file, workers=cpu_threads())
        seconds.append(time.perf_counter() - start)
        diff = float(np.abs(features - reference).max())
    sharded = len(paths) / statistics.median(seconds)
    log(f"what-if: {cpu_threads()} workers each decoding + ONNX Runtime 1 thread: "
        f"{sharded:.1f} img/s, diff {diff:.1e}")
    return {"decode": len(paths) / decode, "ort": ort, "workers": workers,
            "sharded": (cpu_threads(), sharded, diff)}


# --------------------------------------------------------------------------- report

def render(machine: str, load_end: float, repeats: int, paths: list[PathResult],
           diagnostics: dict | None, total: float) -> str:
    out = ["## Foundation: feature-extraction speed (hymenoptera)", "",
           f"Machine: {machine}. Load average {load_end:.2f} at end; "
           f"`python -m benchmarks.bench_extraction --repeats {repeats}`, {total:.0f} s in all."]
    out += render_paths(paths)
    if diagnostics:
        out += render_diagnostics(diagnostics)
    return "\n".join(out)


def render_paths(paths: list[PathResult]) -> list[str]:
    base = paths[0]
    base_rate = base.rate[0]
    out = ["", f"### Feature-extraction throughput ({base.n_images} files, batch {BATCH}, "
           "pre-logits 1280-d, no feature cache)", "",
           "| path | images/s (range) | × baseline | max abs diff vs baseline | note |",
           "|---|---|---|---|---|"]
    for item in paths:
        if not np.isfinite(item.seconds).all():
            out.append(f"| {item.name} | — | — | — | {item.note} |")
            continue
        rate, lo, hi = item.rate
        span = f" ({lo:.1f}–{hi:.1f})" if len(item.seconds) > 1 else ""
        diff = "0 (reference)" if item is base else f"{item.max_diff:.1e}"
        out.append(f"| {item.name} | {rate:.1f}{span} | {rate / base_rate:.2f}× | {diff} | "
                   f"{item.note} |")
    out.append("")
    reused = next((p for p in paths if p.name == ONNX_REUSED), None)
    diffs = [p.max_diff for p in paths[1:] if np.isfinite(p.max_diff)]
    if reused is not None and np.isfinite(reused.seconds).all() and diffs:
        speedup = reused.rate[0] / base_rate
        worst = max(diffs)
        out.append(f"* Targets: ONNX (exported file reused) ≥ {TARGET_SPEEDUP:.0f}× baseline "
                   f"{verdict(speedup >= TARGET_SPEEDUP)} ({speedup:.2f}×); every path within "
                   f"{TARGET_MAX_DIFF:.0e} of the baseline's features "
                   f"{verdict(worst <= TARGET_MAX_DIFF)} (worst {worst:.1e}).")
    out.append("* Each path is timed from the `extract()` call to the features in hand, with a "
               "fresh extractor per repeat; building the network is excluded everywhere. The "
               "baseline decodes with `Image.open(p).convert(\"RGB\")`; none of these files has "
               "an EXIF rotation, so it sees the same pixels as transferkit's `load_image`.")
    return out


def render_diagnostics(diagnostics: dict) -> list[str]:
    ort, workers = diagnostics["ort"], diagnostics["workers"]
    default = min(2, cpu_cores())
    out = ["", "### Where the ONNX path spends its time", "",
           "| stage | images/s |", "|---|---|",
           "| decode + preprocess only (`load_image` + timm transform, main process) | "
           f"{diagnostics['decode']:.1f} |"]
    out += [f"| ONNX Runtime only, pre-decoded batches, {n} intra-op thread(s) | {rate:.1f} |"
            for n, rate in sorted(ort.items())]
    out += [f"| onnx extractor end to end, `num_workers={n}`"
            f"{' (the default)' if n == default else ''} | {rate:.1f} |"
            for n, rate in sorted(workers.items())]
    n, sharded, diff = diagnostics["sharded"]
    out.append(f"| what-if (not in transferkit): {n} workers, each decoding *and* running a "
               f"1-thread ONNX session, batch 16 (max abs diff {diff:.1e}) | {sharded:.1f} |")
    best = max(workers, key=workers.get)
    decode, ort_all = diagnostics["decode"], max(ort.values())
    serial = 1 / (1 / decode + 1 / ort_all)
    out += ["", f"* Per image: decode + preprocess {1000 / decode:.1f} ms of one core, the network "
            f"{1000 / ort[min(ort)]:.1f} ms of one core (ONNX Runtime, 1 thread). Serial bound "
            f"(decode, then ONNX Runtime on all threads): {serial:.0f} img/s. Decode workers change "
            f"the end-to-end rate by {workers[best] - workers[0]:+.1f} img/s over decoding in the "
            f"main process (best: {best} workers): on {cpu_cores()} cores they compete with ONNX "
            "Runtime's intra-op threads, so network compute, not decoding, bounds this path. "
            f"Decoding and inferring in each worker with 1-thread sessions reaches {sharded:.0f} "
            "img/s."]
    return out


# --------------------------------------------------------------------------- main

def guarded(what: str, fallback, function, *args):
    """Run one measurement; a failure becomes a note in the table instead of a lost report.

    ``fallback(note)`` builds what the measurement returns, marked as failed.
    """
    try:
        return function(*args)
    except Exception as exc:  # the report says what failed; the other paths still count
        note = f"failed: {type(exc).__name__}: {exc}".replace("|", "/").replace("\n", " ")[:200]
        log(f"{what} {note}")
        return fallback(note)


def failed_path(name: str, n_images: int):
    return lambda note: PathResult(name, [float("nan")], n_images, note=note)




def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_hymenoptera_arguments(parser)
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    parser.add_argument("--no-diagnostics", action="store_true", help="skip the ONNX breakdown")
    parser.add_argument("--compile-limit", type=float, default=180.0,
                        help="abandon torch.compile after this many seconds (default 180)")
    parser.add_argument("--max-images", type=int, help="throughput on the first N files only")
    parser.add_argument("--_compile-child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--_paths", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    if args._compile_child is not None:
        return compile_child(args._paths, args._compile_child, args.repeats)

    data = require_dataset(args.data.resolve())
    warnings.filterwarnings("ignore")
    started = time.perf_counter()
    machine = announce_machine()
    files = image_files(data)
    if len(files) < MIN_FILES:
        print(f"only {len(files)} files under {data}; need at least {MIN_FILES}.", file=sys.stderr)
        return 1
    warm_file_cache(files)
    paths = files[:args.max_images] if args.max_images else files

    with tempfile.TemporaryDirectory(prefix="bench-extraction-") as tmp:
        work = Path(tmp)
        from transferkit.features.extract import shared_backbone

        shared_backbone(BACKBONE, None, None)  # build the network once, outside every timing
        baseline, reference = bench_baseline(paths, args.repeats)
        n = len(paths)
        results = [baseline, guarded("eager", failed_path(EAGER, n), bench_eager, paths, work,
                                     args.repeats, reference)]
        onnx_first, onnx_reused, onnx_file = guarded(
            "onnx", lambda note: (failed_path(ONNX_FIRST, n)(note),
                                  failed_path(ONNX_REUSED, n)(note), None),
            bench_onnx, paths, work, args.repeats, reference)
        results += [onnx_first, onnx_reused]
        if not args.no_compile:
            compiled = bench_compile(paths, work, args.repeats, args.compile_limit, reference)
            if compiled is not None:
                results.append(compiled)
        diagnostics = None
        if not args.no_diagnostics and onnx_file is not None:
            diagnostics = guarded("diagnostics", lambda note: None, bench_diagnostics, paths,
                                  onnx_file, work, args.repeats, reference)

    publish("foundation-extraction", render(machine, load_average(), args.repeats, results,
                                            diagnostics, time.perf_counter() - started), args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
