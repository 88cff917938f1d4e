"""``transferkit report``: one self-contained HTML report of a run folder."""

from __future__ import annotations

import os

from transferkit.jobs import _options

NAME = "report"
HELP = "write one self-contained HTML report of a run folder (a model from fit, a layers sweep)"


def add_arguments(parser) -> None:
    parser.add_argument("run_dir", help="folder written by `transferkit fit`, `transferkit "
                        "layers` or `transferkit adapt`")
    _options.add_out(parser, "HTML file to write (default RUN_DIR/report.html)", overwrite=False)


def run(run_dir: str | os.PathLike, out: str | os.PathLike | None = None) -> dict:
    """Write the report of ``run_dir`` to ``out`` (default ``run_dir/report.html``)."""
    from transferkit.report.html import write_report

    path = write_report(run_dir, out)
    return {"report": str(path), "bytes": path.stat().st_size}


def render(summary: dict) -> str:
    return f"wrote {summary['report']} ({summary['bytes'] / 1e6:.2f} MB)"
