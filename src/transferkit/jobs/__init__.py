"""The commands, one module each: ``NAME`` and ``HELP`` (the command and its one-line
help), ``add_arguments(parser)``, ``run(...) -> dict`` (the Python API; a JSON-able
summary) and ``render(summary) -> str`` (what the command prints without ``--json``).

:mod:`transferkit.cli` loops over :data:`JOBS`. A job module imports nothing heavy at
its top (numpy, torch and scikit-learn are imported inside ``run``), so building the
parser — ``transferkit --help`` — stays fast. What two jobs share lives in
:mod:`transferkit.jobs._common` and :mod:`transferkit.jobs._options`, never in another job.
"""

from __future__ import annotations

import importlib
from types import ModuleType

# Module names, in the order the commands are listed by `transferkit --help`.
JOBS = ("fit", "predict", "extract", "export", "serve", "evaluate", "backbones", "layers", "anomaly",
        "report", "demo", "cdfg", "adapt", "autoencoder", "multitask", "distill", "zeroshot",
        "fewshot", "fewshot_train", "segment")


def load_job(name: str) -> ModuleType:
    """The job module of a command (``"fewshot-train"``) or module name (``"fewshot_train"``)."""
    module = name.replace("-", "_")
    if module not in JOBS:
        raise ValueError(f"unknown job {name!r}; one of {', '.join(JOBS)}.")
    return importlib.import_module(f"{__name__}.{module}")
