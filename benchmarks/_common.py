"""What every benchmark shares: paths, the machine line, skipping absent data, seeds, output.

Benchmarks run as modules from the repository root, so this module is imported as
``benchmarks._common`` without touching ``sys.path``::

    .venv/bin/python -m benchmarks.bench_fit --repeats 3

Every benchmark owns a block between ``<!-- NAME:start -->`` and ``<!-- NAME:end -->``
in ``benchmarks/RESULTS.md`` (or another file) and replaces only that block.
"""

from __future__ import annotations

import argparse
import datetime as dt
import fcntl
import os
import platform
import statistics
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = REPO / "benchmarks"
SHARED_DATASETS = REPO.parent / "shared" / "datasets"
RESULTS = BENCHMARKS / "RESULTS.md"
DEFAULT_SEEDS = (0, 1, 2)
# Instruction sets that change what the CPU numbers mean (bf16 and int8 speed-ups).
_ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16")


# --------------------------------------------------------------------------- machine

def cpu_cores() -> int:
    """Cores this process may run on (a container's limit, not the host's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def load_average() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def _cpu_model_and_flags() -> tuple[str, list[str]]:
    model, flags = platform.processor() or platform.machine() or "unknown CPU", []
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return model, flags
    for line in cpuinfo:
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    for line in cpuinfo:
        if line.startswith("flags"):
            have = set(line.split(":", 1)[1].split())
            flags = [flag for flag in _ISA_FLAGS if flag in have]
            break
    return model, flags


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def machine_line() -> str:
    """CPU model, cores and instruction sets, OS, Python, library versions, torch threads,
    the load average and the date. Call it when the run starts, after setting torch's
    thread count: the shared machine's load is what makes its wall times comparable."""
    import torch

    model, flags = _cpu_model_and_flags()
    threads = torch.get_num_threads()
    libraries = [f"torch {torch.__version__} ({threads} thread{'' if threads == 1 else 's'})"]
    for name, distribution in (("onnxruntime", "onnxruntime"), ("timm", "timm"),
                               ("scikit-learn", "scikit-learn")):
        version = _version(distribution)
        if version:
            libraries.append(f"{name} {version}")
    isa = f" ({', '.join(flags)})" if flags else ""
    return (f"{model}, {cpu_cores()} cores{isa}, "
            f"{platform.system()} {platform.release()}, Python {platform.python_version()}, "
            + ", ".join(libraries)
            + f"; load average {load_average():.2f} at start; {dt.date.today().isoformat()}")


def announce_machine() -> str:
    """Log the machine line (and a warning when other jobs load the machine); return it."""
    machine = machine_line()
    log(f"machine: {machine}")
    if load_average() > 0.5 * cpu_cores():
        log("warning: the machine is busy; timings will be pessimistic.")
    return machine


# --------------------------------------------------------------------------- data

def require_dataset(*names: str, root: Path | str = SHARED_DATASETS) -> Path:
    """``root / names[0]``, once every ``root / name`` is a folder. Otherwise print one line
    and exit with status 0: a machine without the shared data sets has nothing to measure,
    which is not a failure of ``make bench``. A name may also be an absolute path."""
    folders = [Path(root) / name for name in names]
    for folder in folders:
        if not folder.is_dir():
            print(f"skipped: {folder} is absent (the shared data sets are not on this machine).")
            raise SystemExit(0)
    return folders[0]


def image_files(root: Path) -> list[Path]:
    """Every file below ``root`` except hidden ones, in a fixed order."""
    return sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))


def warm_file_cache(paths: list[Path]) -> None:
    """Read each file once, so that "cold" timings mean an empty feature cache, not disk."""
    for path in paths:
        path.read_bytes()


def transferkit_command() -> list[str]:
    """The `transferkit` console script beside this interpreter, else `python -m transferkit`."""
    script = Path(sys.executable).parent / "transferkit"
    return [str(script)] if script.exists() else [sys.executable, "-m", "transferkit"]


# --------------------------------------------------------------------------- arguments

def add_datasets_argument(parser: argparse.ArgumentParser) -> None:
    """``--datasets DIR``: the folder that holds the shared data sets."""
    parser.add_argument("--datasets", type=Path, default=SHARED_DATASETS,
                        help="folder holding the shared data sets (default: ../shared/datasets)")


def add_seeds_argument(parser: argparse.ArgumentParser, default=DEFAULT_SEEDS) -> None:
    """``--seeds 0 1 2``: the seeds to run, each one a full repetition of the protocol."""
    parser.add_argument("--seeds", type=int, nargs="+", default=list(default), metavar="SEED",
                        help="seeds to run (default: " + " ".join(map(str, default)) + ")")


def add_output_arguments(parser: argparse.ArgumentParser, results: Path = RESULTS) -> None:
    """``--results FILE`` (whose section is replaced) and ``--no-write`` (print only)."""
    parser.add_argument("--results", type=Path, default=results,
                        help=f"markdown file whose section is replaced (default: "
                             f"{results.relative_to(REPO)})")
    parser.add_argument("--no-write", action="store_true",
                        help="print the section only, leave the results file as it is")


def publish(name: str, body: str, args: argparse.Namespace, echo: bool = True) -> None:
    """Print section ``name`` (unless ``echo`` is off) and write it to ``args.results``
    unless ``args.no_write``; the arguments come from :func:`add_output_arguments`."""
    if echo:
        print(body)
    if not args.no_write:
        write_section(name, body, args.results)


# --------------------------------------------------------------------------- output

def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def verdict(met: bool) -> str:
    """The mark a results table gives a target: met or missed."""
    return "✅" if met else "❌"


def median_range(values: list[float]) -> tuple[float, float, float]:
    return float(statistics.median(values)), float(min(values)), float(max(values))


def markers(name: str) -> tuple[str, str]:
    return f"<!-- {name}:start -->", f"<!-- {name}:end -->"


def write_section(name: str, body: str, path: Path = RESULTS) -> None:
    """Replace (or append) section ``name`` of ``path`` with ``body`` (markdown, no markers).

    Writes take an exclusive lock and replace the file atomically, so two benchmarks
    finishing at once cannot lose a section.
    """
    start, end = markers(name)
    body = body.strip("\n")
    if body.startswith(start):  # callers that already wrap their text
        body = body[len(start):].rsplit(end, 1)[0].strip("\n")
    block = f"{start}\n{body}\n{end}"
    path = Path(path)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        text = path.read_text(encoding="utf-8") if path.is_file() else "# Benchmark results\n"
        if start in text and end in text:
            head, rest = text.split(start, 1)
            text = head + block + rest.split(end, 1)[1]
        else:
            text = text.rstrip("\n") + "\n\n" + block + "\n"
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
