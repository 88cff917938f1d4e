"""The HTML report of a real `fit`: size, time to write it, and time to open it in Chromium.

    .venv/bin/python benchmarks/bench_report.py     # writes the `report` section of RESULTS.md

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

REPO = Path(__file__).resolve().parents[1]
DATASETS = REPO.parent / "shared" / "datasets"
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import write_section  # noqa: E402

START, END = "<!-- report:start -->", "<!-- report:end -->"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cache-dir", type=Path, default=Path(tempfile.gettempdir()) / "tk-report-cache")
    parser.add_argument("--results", type=Path, default=REPO / "benchmarks" / "RESULTS.md")
    args = parser.parse_args(argv)
    data = DATASETS / "hymenoptera"
    if not data.is_dir():
        print(f"skipped: {data} is absent")
        return 0
    from transferkit.report.browser import find_chromium, probe_in_browser
    from transferkit.report.html import write_report

    cli = str(Path(sys.executable).parent / "transferkit")
    with tempfile.TemporaryDirectory() as work:
        out = Path(work) / "model"
        started = time.perf_counter()
        done = subprocess.run([cli, "fit", str(data), "--out", str(out), "--cache-dir",
                               str(args.cache_dir), "--json", "--quiet"],
                              capture_output=True, text=True, check=True)
        fit_seconds = time.perf_counter() - started
        summary = json.loads(done.stdout)
        write_times = []
        for _ in range(args.repeats):
            started = time.perf_counter()
            path = write_report(out)
            write_times.append(time.perf_counter() - started)
        size = path.stat().st_size
        probes = [probe_in_browser(path) for _ in range(args.repeats)] if find_chromium() else []
    lines = [START, "## HTML report of a hymenoptera `fit`", "",
             f"`benchmarks/bench_report.py --repeats {args.repeats}`: `transferkit fit "
             f"…/hymenoptera` (linear probe, Lite0) writes `report.html`; then the report is "
             "rewritten from the run folder and opened in headless Chromium "
             "(`transferkit.report.browser.probe_in_browser`). Median over repeats.", "",
             "| measure | value | target |", "|---|---|---|",
             f"| val accuracy of the fit | {summary['val_accuracy']:.3f} | |",
             f"| `fit` wall time, report included (s) | {fit_seconds:.1f} | |",
             f"| report size (MB) | {size / 1e6:.2f} | < 5 ✅ |" if size < 5e6 else
             f"| report size (MB) | {size / 1e6:.2f} | < 5 ❌ |",
             f"| writing the report from the run folder (s) | {statistics.median(write_times):.2f} | |"]
    if probes:
        load = statistics.median(p["load_ms"] for p in probes)
        lines += [f"| Chromium: load event (ms) | {load:.0f} | < 1000 {'✅' if load < 1000 else '❌'} |",
                  f"| Chromium: images / broken / console errors | {probes[0]['images']} / "
                  f"{max(p['broken'] for p in probes)} / {max(len(p['errors']) for p in probes)} | "
                  "0 broken, 0 errors |"]
    else:
        lines.append("| Chromium | not installed: not measured | |")
    lines.append(END)
    write_section("report", "\n".join(lines), args.results)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
