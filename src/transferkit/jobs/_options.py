"""Command-line options that several jobs share, each defined once.

Every option's ``dest`` is the keyword of the job's ``run()`` that it feeds. The CLI
builds each sub-parser with ``argument_default=argparse.SUPPRESS``: an option left out is
not passed at all, so ``run()``'s own default applies and lives in one place. A
``default=`` given here is one the command line adds on top of ``run()`` (``fit --out``).
This module imports no numpy, torch or scikit-learn: building the parser stays cheap.
"""

from __future__ import annotations

import argparse

from transferkit.backbones.registry import DEFAULT_BACKBONE

DEVICES = ("auto", "cpu", "cuda")
POOLINGS = ("avg", "max", "avgmax", "gem")
# features.classifiers.CLASSIFIERS, spelt out because that module imports scikit-learn.
PROBE_CLASSIFIERS = ("logreg", "logreg-cv", "svm", "knn", "mlp")


def add_output_format(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", default=False,
                        help="print one JSON object on stdout")
    parser.add_argument("--quiet", action="store_true", default=False,
                        help="no progress bars or warnings")


def add_out(parser: argparse.ArgumentParser, help: str, default: str | None = None,
            required: bool = False, overwrite: bool = True) -> None:
    """``--out`` and, for a command that may replace its own earlier result, ``--overwrite``."""
    extra = {"default": default} if default is not None else {}
    parser.add_argument("--out", required=required, help=help, **extra)
    if overwrite:
        parser.add_argument("--overwrite", action="store_true", help="replace a previous "
                            "result of transferkit in --out (files you added there are kept); "
                            "without it only a new or empty folder, or an interrupted run, "
                            "is written")


def add_backbone(parser, help: str | None = None, checkpoint: bool = True) -> None:
    """``--backbone`` and, with ``checkpoint``, a local checkpoint instead (``--weights``
    with its ``--arch``)."""
    parser.add_argument("--backbone", help=help or f"bundled or timm model name (default "
                        f"{DEFAULT_BACKBONE}; see `transferkit backbones`)")
    if checkpoint:
        parser.add_argument("--weights", help="local checkpoint (.safetensors or state dict) "
                            "for --arch")
        parser.add_argument("--arch", help="timm architecture of --weights")


def add_device(parser, help: str | None = None) -> None:
    parser.add_argument("--device", choices=DEVICES, help=help or "where to train (default "
                        "auto: a GPU when there is one)")


def add_seed(parser) -> None:
    parser.add_argument("--seed", dest="random_state", metavar="SEED", type=int,
                        help="seeds every random choice (default 0)")


def add_val_fraction(parser, help: str = "share held out for validation when DATA has no "
                     "val/ folder (default 0.2)") -> None:
    parser.add_argument("--val-fraction", type=float, help=help)


def add_cache(parser) -> None:
    parser.add_argument("--cache-dir", help="feature cache folder (default: "
                        "$TRANSFERKIT_CACHE_DIR or ~/.cache/transferkit)")
    parser.add_argument("--no-cache", dest="use_cache", action="store_false",
                        help="do not read or write the cache")
