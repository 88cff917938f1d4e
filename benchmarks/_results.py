"""Write one named section of a benchmark results file, leaving the others untouched.

Every benchmark owns a block between ``<!-- NAME:start -->`` and ``<!-- NAME:end -->``
in ``benchmarks/RESULTS.md`` (or another file). Writes take an exclusive lock and
replace the file atomically, so two benchmarks finishing at once cannot lose a section.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def markers(name: str) -> tuple[str, str]:
    return f"<!-- {name}:start -->", f"<!-- {name}:end -->"


def write_section(name: str, body: str, path: Path = RESULTS) -> None:
    """Replace (or append) section ``name`` of ``path`` with ``body`` (markdown, no markers)."""
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
