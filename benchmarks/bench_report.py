"""The HTML report of a real `fit`: size, time to write it, and time to open it in Chromium.

    .venv/bin/python -m benchmarks.bench_report     # writes the `report` section of RESULTS.md

Fits the default linear probe on hymenoptera (train → val) with the report, then opens
``report.html`` in headless Chromium through :func:`transferkit.report.browser.probe_in_browser`
(images that failed to decode, console errors, navigation timing). The issue's target: it
opens in under a second and weighs under 5 MB.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks._common import (
    add_output_arguments,
    announce_machine,
    publish,
    require_dataset,
    transferkit_command,
    verdict,
)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cache-dir", type=Path, default=Path(tempfile.gettempdir()) / "tk-report-cache")
    add_output_arguments(parser)
    args = parser.parse_args(argv)
    data = require_dataset("hymenoptera")
    machine = announce_machine()
    from transferkit.report.browser import find_chromium, probe_in_browser
    from transferkit.report.html import write_report

    with tempfile.TemporaryDirectory() as work:
        out = Path(work) / "model"
        started = time.perf_counter()
        command = transferkit_command() + ["fit", str(data), "--out", str(out), "--cache-dir",
                                           str(args.cache_dir), "--json", "--quiet"]
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        fit_seconds = time.perf_counter() - started
        summary = json.loads(done.stdout)
        write_times = []
        for _ in range(args.repeats):
            started = time.perf_counter()
            path = write_report(out)
            write_times.append(time.perf_counter() - started)
        size = path.stat().st_size
        probes = [probe_in_browser(path) for _ in range(args.repeats)] if find_chromium() else []
    lines = ["## HTML report of a hymenoptera `fit`", "",
             f"`python -m benchmarks.bench_report --repeats {args.repeats}`: `transferkit fit "
             f"…/hymenoptera` (linear probe, Lite0) writes `report.html`; then the report is "
             "rewritten from the run folder and opened in headless Chromium "
             "(`transferkit.report.browser.probe_in_browser`). Median over repeats. "
             f"Machine: {machine}.", "",
             "| measure | value | target |", "|---|---|---|",
             f"| val accuracy of the fit | {summary['val_accuracy']:.3f} | |",
             f"| `fit` wall time, report included (s) | {fit_seconds:.1f} | |",
             f"| report size (MB) | {size / 1e6:.2f} | < 5 {verdict(size < 5e6)} |",
             f"| writing the report from the run folder (s) | {statistics.median(write_times):.2f} | |"]
    if probes:
        load = statistics.median(p["load_ms"] for p in probes)
        lines += [f"| Chromium: load event (ms) | {load:.0f} | < 1000 {verdict(load < 1000)} |",
                  f"| Chromium: images / broken / console errors | {probes[0]['images']} / "
                  f"{max(p['broken'] for p in probes)} / {max(len(p['errors']) for p in probes)} | "
                  "0 broken, 0 errors |"]
    else:
        lines.append("| Chromium | not installed: not measured | |")
    publish("report", "\n".join(lines), args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
