"""``transferkit report``: one self-contained HTML report of a run folder."""

from __future__ import annotations

import os

from transferkit.jobs import _options

NAME = "report"
# Model folders whose report only their own command can write (see run()).
SEGMENTATION_METHODS = ("segment",)
HELP = "write one self-contained HTML report of a run folder (a model from fit, a layers sweep)"


def add_arguments(parser) -> None:
    parser.add_argument("run_dir", help="folder written by `transferkit fit`, `transferkit "
                        "layers` or `transferkit adapt`")
    _options.add_out(parser, "HTML file to write (default RUN_DIR/report.html)", overwrite=False)


def run(run_dir: str | os.PathLike, out: str | os.PathLike | None = None) -> dict:
    """Write the report of ``run_dir`` to ``out`` (default ``run_dir/report.html``)."""
    import json
    from pathlib import Path

    from transferkit.errors import TransferkitError
    from transferkit.report.html import write_report

    config = Path(run_dir) / "config.json"
    try:
        method = json.loads(config.read_text(encoding="utf-8")).get("method") \
            if config.is_file() else None
    except (OSError, ValueError, AttributeError):
        method = None  # the generic report says what is wrong with the folder
    if method in SEGMENTATION_METHODS:
        # Its report shows predictions on the held-out images, which the folder does not
        # keep: the generic report would replace it with less.
        raise TransferkitError(f"{run_dir} is a segmentation model: its report.html is written "
                               "by `transferkit segment fit` (it shows the held-out images); "
                               "nothing was changed.")
    path = write_report(run_dir, out)
    return {"report": str(path), "bytes": path.stat().st_size}


def render(summary: dict) -> str:
    return f"wrote {summary['report']} ({summary['bytes'] / 1e6:.2f} MB)"
