"""Keep freed memory in the process while a network trains on a CPU.

glibc's ``malloc`` hands out blocks above its mmap threshold (32 MB at most by default)
as fresh memory maps and unmaps them when freed. PyTorch's CPU allocator keeps no cache
of its own, so every training step maps, zero-fills page by page (in the kernel) and
unmaps each large activation and gradient again. Measured here (EfficientNet-Lite0, batch
32 at 224 px, forward + backward + SGD step, 2 threads; `python -m benchmarks.bench_cpu_memory`,
section cpu-memory of benchmarks/RESULTS.md): 4.67 s per step, 3.47 s of them in the
kernel; with the thresholds raised, 2.72 s per step (0.07 s in the kernel) and a peak
resident memory of 3.9 GB instead of 3.5 GB.

:func:`keep_freed_memory` raises the thresholds once per process (glibc's ``mallopt``;
elsewhere, or with ``TRANSFERKIT_MALLOC=system``, it does nothing);
:func:`release_freed_memory` hands what training freed back to the system afterwards.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

OPT_OUT_ENV = "TRANSFERKIT_MALLOC"  # "system": leave malloc as it is
# mallopt's parameter numbers (malloc.h) and the values set: blocks up to 1 GiB come from
# the heap and are reused; the heap's free top is not trimmed below 2 GiB while training.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD, TRIM_THRESHOLD = 1 << 30, (1 << 31) - 1

_state = {"libc": None, "set": False}


def _glibc():
    if _state["libc"] is None:
        _state["libc"] = False
        if sys.platform.startswith("linux"):
            try:
                libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
                libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
                libc.malloc_trim.argtypes = [ctypes.c_size_t]
                _state["libc"] = libc
            except (OSError, AttributeError):  # musl, no libc by that name: nothing to do
                pass
    return _state["libc"]


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds for this process; whether they were set."""
    if _state["set"]:
        return True
    if os.environ.get(OPT_OUT_ENV, "").strip().lower() == "system":
        return False
    libc = _glibc()
    if not libc:
        return False
    _state["set"] = bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and \
        bool(libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return _state["set"]


def release_freed_memory() -> None:
    """Return the heap's free memory to the system (after training)."""
    libc = _glibc()
    if libc and _state["set"]:
        libc.malloc_trim(0)
