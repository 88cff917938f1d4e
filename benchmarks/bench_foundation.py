"""Foundation benchmark: `transferkit fit` wall time and accuracy, feature-extraction speed.

What it measures on hymenoptera (``../shared/datasets/hymenoptera``, train → val, 398
files including the ``imageNotFound.gif`` palette placeholder), writing the
``foundation`` section of ``benchmarks/RESULTS.md``:

1. ``transferkit fit DATA --out TMP --cache-dir DIR --json --quiet`` run as a subprocess:
   cold (a fresh, empty cache folder: ONNX export and every forward pass included) and
   warm (the same cache folder again: every feature a cache hit), and warm with
   ``--classifier svm`` (a classifier swap on cached features). Wall time around the
   subprocess, the JSON's ``seconds`` / ``extract_seconds``, validation accuracy and
   balanced accuracy, skipped files, and the peak RSS of the largest process of the
   run (``os.wait4``; the decode workers count as separate processes).
2. Feature-extraction throughput (images/s) on the same files, in this one process:
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
3. Diagnostics for the ONNX path: decode + preprocessing alone, ONNX Runtime alone on
   decoded tensors (1 and all threads), and the extractor with 0, 1 and 2 decode workers:
   is decoding the bottleneck?

Throughput is the median over ``--repeats`` runs (range in brackets). The OS file cache
is not dropped, so "cold" means an empty *feature* cache; images are read once beforehand.

    .venv/bin/python benchmarks/bench_foundation.py [--repeats 3] [--no-compile]
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "datasets" / "hymenoptera"
RESULTS = REPO / "benchmarks" / "RESULTS.md"
START, END = "<!-- foundation:start -->", "<!-- foundation:end -->"
BACKBONE = "efficientnet_lite0"
ARCH = "tf_efficientnet_lite0"
BATCH = 32

# Targets of the foundation issue.
TARGET_ACCURACY = 0.94
TARGET_COLD_S = 30.0
TARGET_WARM_S = 5.0
TARGET_SPEEDUP = 4.0
TARGET_MAX_DIFF = 1e-4

BASELINE = "(a) baseline: plain timm eager loop, main-process decode"
EAGER = "(b) FrozenExtractor eager (channels-last, decode workers)"
ONNX_FIRST = "(c) FrozenExtractor onnx, first run (export + check included)"
ONNX_REUSED = "(c) FrozenExtractor onnx, exported file reused"
COMPILED = "(d) FrozenExtractor eager + torch.compile (inductor)"


# --------------------------------------------------------------------------- helpers

def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def median_range(values: list[float]) -> tuple[float, float, float]:
    return float(statistics.median(values)), float(min(values)), float(max(values))


def cpu_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def load_average() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def machine_line() -> str:
    import onnxruntime
    import timm
    import torch

    model = platform.processor() or "unknown CPU"
    flags = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model == (platform.processor() or "unknown CPU"):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                have = set(line.split(":", 1)[1].split())
                flags = "/".join(f for f in ("avx2", "avx512f", "avx512_vnni", "amx_tile")
                                 if f in have)
    except OSError:
        pass
    return (f"{model}, {cpu_cores()} cores{f' ({flags})' if flags else ''}, "
            f"{platform.system()} {platform.release()}, Python {platform.python_version()}, "
            f"torch {torch.__version__} ({torch.get_num_threads()} threads), onnxruntime "
            f"{onnxruntime.__version__}, timm {timm.__version__}; {dt.date.today().isoformat()}")


def image_paths(root: Path) -> list[Path]:
    """Every file of the class folders under train/ and val/, in a fixed order."""
    return sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))


def warm_file_cache(paths: list[Path]) -> None:
    for path in paths:
        path.read_bytes()


# --------------------------------------------------------------------------- 1. CLI fit

@dataclass
class FitRun:
    label: str
    wall: float = float("nan")
    seconds: float = float("nan")
    extract_seconds: float = float("nan")
    val_accuracy: float = float("nan")
    val_balanced_accuracy: float = float("nan")
    n_train: int = 0
    n_val: int = 0
    n_skipped: int = 0
    skipped: list = field(default_factory=list)
    maxrss_mib: float = float("nan")
    error: str = ""


def run_fit(data: Path, out: Path, cache_dir: Path, extra: list[str], label: str,
            timeout: float = 600.0) -> FitRun:
    """One `transferkit fit` subprocess: wall time, its JSON summary, its peak RSS."""
    exe = REPO / ".venv" / "bin" / "transferkit"
    command = ([str(exe)] if exe.exists() else [sys.executable, "-m", "transferkit"])
    command += ["fit", str(data), "--out", str(out), "--cache-dir", str(cache_dir),
                "--json", "--quiet", *extra]
    run = FitRun(label)
    with tempfile.TemporaryFile() as stdout, tempfile.TemporaryFile() as stderr:
        start = time.perf_counter()
        process = subprocess.Popen(command, stdout=stdout, stderr=stderr, cwd=REPO)
        timer = threading.Timer(timeout, process.kill)
        timer.start()
        try:
            # wait4: this child's own resource usage (its waited-for workers included).
            _, status, usage = os.wait4(process.pid, 0)
        finally:
            timer.cancel()
        run.wall = time.perf_counter() - start
        process.returncode = os.waitstatus_to_exitcode(status)
        run.maxrss_mib = usage.ru_maxrss / 1024  # KiB on Linux
        stdout.seek(0)
        stderr.seek(0)
        text, errors = stdout.read().decode(errors="replace"), stderr.read().decode(errors="replace")
    if process.returncode != 0:
        run.error = f"exit {process.returncode}: {errors.strip()[-500:]}"
        return run
    try:
        summary = json.loads(text.strip().splitlines()[-1])
    except (ValueError, IndexError) as exc:
        run.error = f"no JSON on stdout ({exc}): {text[-300:]!r}"
        return run
    for name in ("seconds", "extract_seconds", "val_accuracy", "val_balanced_accuracy"):
        setattr(run, name, float(summary.get(name, float("nan"))))
    for name in ("n_train", "n_val", "n_skipped"):
        setattr(run, name, int(summary.get(name, 0)))
    run.skipped = [item.get("reason", "") for item in summary.get("skipped", [])]
    return run


def bench_cli(data: Path, work: Path, repeats: int) -> dict[str, list[FitRun]]:
    runs: dict[str, list[FitRun]] = {"cold": [], "warm": [], "warm svm": []}
    for repeat in range(repeats):
        cache = work / f"cli-cache-{repeat}"  # fresh and empty: a cold start
        out = work / f"cli-model-{repeat}"
        for label, extra in (("cold", []), ("warm", []), ("warm svm", ["--classifier", "svm"])):
            run = run_fit(data, out, cache, extra, label)
            runs[label].append(run)
            log(f"fit {label:8s} #{repeat + 1}: wall {run.wall:6.2f} s, json {run.seconds:6.2f} s, "
                f"extract {run.extract_seconds:6.2f} s, val acc {run.val_accuracy:.3f}, "
                f"bal {run.val_balanced_accuracy:.3f}, skipped {run.n_skipped}, "
                f"rss {run.maxrss_mib:.0f} MiB{'  ERROR ' + run.error if run.error else ''}")
        shutil.rmtree(out, ignore_errors=True)
    return runs


# --------------------------------------------------------------------------- 2. throughput

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
    command = [sys.executable, str(Path(__file__).resolve()), "--_compile-child", str(out),
               "--repeats", str(repeats), "--_paths", str(paths_file)]
    env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=str(out / "inductor"))  # a cold compile
    compiled = out / "compiled.json"
    deadline = time.perf_counter() + limit
    with open(out / "log.txt", "wb") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, env=env)
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


# ---- 3. diagnostics: where does the ONNX path spend its time?

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

def fmt_runs(runs: list[FitRun], attr: str, digits: int = 2) -> str:
    values = [getattr(r, attr) for r in runs if not r.error]
    if not values:
        return "error"
    med, lo, hi = median_range(values)
    text = f"{med:.{digits}f}"
    if len(values) > 1 and attr not in ("val_accuracy", "val_balanced_accuracy"):
        text += f" ({lo:.{digits}f}–{hi:.{digits}f})"
    return text


def verdict(ok: bool) -> str:
    return "✅" if ok else "❌"


def render(machine: str, load: tuple[float, float], n_files: int, repeats: int,
           cli: dict[str, list[FitRun]], paths: list[PathResult], diagnostics: dict | None,
           total: float) -> str:
    out = [START, "## Foundation: `transferkit fit` and feature-extraction speed (hymenoptera)", "",
           f"Machine: {machine}. Load average {load[0]:.2f} at start, {load[1]:.2f} at end; "
           f"`benchmarks/bench_foundation.py --repeats {repeats}`, {total:.0f} s in all.", ""]

    # ---- CLI
    if any(cli.values()):
        out += render_cli(cli, repeats)

    # ---- throughput
    out += render_paths(paths)
    if diagnostics:
        out += render_diagnostics(diagnostics)
    out.append(END)
    return "\n".join(out)


def render_cli(cli: dict[str, list[FitRun]], repeats: int) -> list[str]:
    out = ["### `transferkit fit` (subprocess, train → val)", "",
           "`transferkit fit ../shared/datasets/hymenoptera --out TMP --cache-dir DIR --json "
           "--quiet`; cold = fresh empty `DIR` (ONNX export, every forward pass), warm = the same "
           f"`DIR` again (all features cached). Median (range) over {repeats} run(s).", "",
           "| run | wall s | JSON seconds | extract_seconds | val accuracy | balanced acc. | "
           "n_train / n_val | skipped | peak RSS MiB |",
           "|---|---|---|---|---|---|---|---|---|"]
    for label, runs in cli.items():
        good = [r for r in runs if not r.error]
        if not good:
            error = runs[0].error.replace("|", "/").replace("\n", " ")[:160] if runs else "not run"
            out.append(f"| {label} | error: {error} |  |  |  |  |  |  |  |")
            continue
        out.append(f"| {label} | {fmt_runs(runs, 'wall')} | {fmt_runs(runs, 'seconds')} | "
                   f"{fmt_runs(runs, 'extract_seconds')} | {fmt_runs(runs, 'val_accuracy', 3)} | "
                   f"{fmt_runs(runs, 'val_balanced_accuracy', 3)} | {good[0].n_train} / "
                   f"{good[0].n_val} | {good[0].n_skipped} | {fmt_runs(runs, 'maxrss_mib', 0)} |")
    cold, warm, swap = ([r for r in cli[k] if not r.error] for k in ("cold", "warm", "warm svm"))
    out.append("")
    if cold and warm:
        acc = min(r.val_accuracy for r in cold + warm)
        cold_s = statistics.median(r.wall for r in cold)
        warm_s = statistics.median(r.wall for r in warm)
        line = (f"* Targets: val accuracy ≥ {TARGET_ACCURACY} {verdict(acc >= TARGET_ACCURACY)} "
                f"({acc:.3f}); cold ≤ {TARGET_COLD_S:.0f} s {verdict(cold_s <= TARGET_COLD_S)} "
                f"({cold_s:.1f} s); warm ≤ {TARGET_WARM_S:.0f} s "
                f"{verdict(warm_s <= TARGET_WARM_S)} ({warm_s:.1f} s)")
        if swap:
            line += (f"; swapping the classifier to SVM on cached features: "
                     f"{statistics.median(r.wall for r in swap):.1f} s")
        out.append(line + ".")
    skipped = sorted({reason for r in cold for reason in r.skipped})
    out += ["* Wall = around the subprocess (interpreter start-up and imports included); JSON "
            "`seconds` counts from process start, `extract_seconds` covers the training images "
            "only. Peak RSS: `ru_maxrss` of the largest single process of the run "
            "(`os.wait4`; decode workers are separate processes).",
            "* Skipped files: " + ("; ".join(skipped) if skipped else
                                   "none (the palette GIF `train/ants/imageNotFound.gif` decodes "
                                   "and is converted to RGB, so it is kept as an `ants` image).")]
    return out


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


def write_section(results: Path, section: str) -> None:
    """Replace the text between the markers (or append it), keeping everything else."""
    text = results.read_text() if results.exists() else "# Benchmark results\n"
    if START in text and END in text and text.index(START) < text.index(END):
        head, rest = text.split(START, 1)
        text = head + section + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    tmp = results.with_name(results.name + f".{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, results)


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
    parser.add_argument("--repeats", type=int, default=3, help="runs per measurement (default 3)")
    parser.add_argument("--data", type=Path, default=DATA,
                        help="the hymenoptera folder (default ../shared/datasets/hymenoptera)")
    parser.add_argument("--results", type=Path, default=RESULTS,
                        help="markdown file whose foundation section is replaced")
    parser.add_argument("--no-cli", action="store_true", help="skip the `transferkit fit` runs")
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

    args.data = args.data.resolve()  # the fit subprocesses run in the repository root
    if not args.data.is_dir():
        print(f"{args.data} is absent: no hymenoptera images here, nothing to benchmark.")
        return 0
    warnings.filterwarnings("ignore")
    started = time.perf_counter()
    load_start = load_average()
    machine = machine_line()
    log(f"machine: {machine}; load average {load_start:.2f}")
    if load_start > 0.5 * cpu_cores():
        log("warning: the machine is busy; timings will be pessimistic.")

    files = image_paths(args.data)
    if len(files) < 256:
        print(f"only {len(files)} files under {args.data}; need at least 256.", file=sys.stderr)
        return 1
    warm_file_cache(files)
    paths = files[:args.max_images] if args.max_images else files

    with tempfile.TemporaryDirectory(prefix="bench-foundation-") as tmp:
        work = Path(tmp)
        cli = ({"cold": [], "warm": [], "warm svm": []} if args.no_cli
               else bench_cli(args.data, work, args.repeats))

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
            diagnostics = guarded("diagnostics", lambda note: None, bench_diagnostics, paths, onnx_file, work,
                                  args.repeats, reference)

    section = render(machine, (load_start, load_average()), len(files), args.repeats,
                     cli, results, diagnostics, time.perf_counter() - started)
    write_section(args.results, section)
    print(section)
    log(f"wrote the foundation section of {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
