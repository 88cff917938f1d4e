"""train/cpu_memory.py: glibc's thresholds raised for CPU training, opt-out respected."""

from __future__ import annotations

import subprocess
import sys

import pytest

from transferkit.train import cpu_memory

PROBE = """
import ctypes, resource
from transferkit.train import cpu_memory
print(cpu_memory.keep_freed_memory())
# A freed 64 MB block is reused, not unmapped and mapped again: writing it once more after
# the first round costs no page faults (a fresh map is zero-filled page by page, 16,384
# faults each round).
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
def round_trip():
    block = libc.malloc(64 << 20)
    ctypes.memset(block, 1, 64 << 20)
    libc.free(block)
round_trip()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(4):
    round_trip()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before < 4 * 1000)
cpu_memory.release_freed_memory()
"""

glibc_only = pytest.mark.skipif(not sys.platform.startswith("linux") or not cpu_memory._glibc(),
                                reason="glibc's mallopt only")


def _probe(env_value: str | None) -> list[str]:
    import os

    env = dict(os.environ)
    env.pop(cpu_memory.OPT_OUT_ENV, None)
    if env_value is not None:
        env[cpu_memory.OPT_OUT_ENV] = env_value
    result = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                            env=env, timeout=120, check=True)
    return result.stdout.split()


@glibc_only
def test_training_on_a_cpu_keeps_large_freed_blocks_in_the_heap():
    assert _probe(None) == ["True", "True"]


@glibc_only
def test_the_opt_out_leaves_malloc_alone():
    assert _probe("system") == ["False", "False"]  # every round faults its pages in again
