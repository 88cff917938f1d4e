"""Open a report in a real headless Chromium and say what a person would see go wrong.

Used by the tests and the report benchmark: the page is loaded with a probe script
injected at the top of ``<head>`` that records console errors and uncaught exceptions
from the start, and after ``load`` counts the images that did not decode and reads the
navigation timing. Chromium's ``--dump-dom`` then hands the probe's result back.
"""

from __future__ import annotations

import html
import json
import shutil
import subprocess
import tempfile
from pathlib import Path

from transferkit.errors import TransferkitError

PROBE = """<script>
window.__errors = [];
const original = console.error;
console.error = (...args) => { window.__errors.push(args.join(' ')); original(...args); };
window.addEventListener('error', e => window.__errors.push(String(e.message || e.target.src)), true);
window.addEventListener('load', () => {
  const broken = [...document.images].filter(i => !i.complete || i.naturalWidth === 0).length;
  const t = performance.getEntriesByType('navigation')[0];
  const out = document.createElement('pre');
  out.id = 'probe';
  out.textContent = JSON.stringify({images: document.images.length, broken,
                                    errors: window.__errors, load_ms: t.loadEventStart,
                                    dom_ms: t.domContentLoadedEventEnd});
  document.body.appendChild(out);
});
</script>"""
MARKER = '<pre id="probe">'


def find_chromium() -> str | None:
    """The Chromium (or Chrome) executable on PATH, or None."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def probe_in_browser(html_path: str | Path, browser: str | None = None, timeout: float = 120) -> dict:
    """``{"images", "broken", "errors", "load_ms", "dom_ms"}`` of ``html_path`` in Chromium."""
    browser = browser or find_chromium()
    if browser is None:
        raise TransferkitError("no Chromium found (Debian: apt-get install chromium).")
    with tempfile.TemporaryDirectory(prefix="transferkit-probe-") as work:
        probed = Path(work) / "probed.html"
        text = Path(html_path).read_text(encoding="utf-8")
        probed.write_text(text.replace("<head>", "<head>" + PROBE, 1), encoding="utf-8")
        done = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu",
                               "--disable-dev-shm-usage", f"--user-data-dir={Path(work) / 'profile'}",
                               "--virtual-time-budget=5000", "--dump-dom", probed.as_uri()],
                              capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0 or MARKER not in done.stdout:
        raise TransferkitError(f"Chromium did not finish loading {html_path} "
                               f"(exit {done.returncode}): {done.stderr[-500:]}")
    raw = done.stdout.split(MARKER, 1)[1].split("</pre>", 1)[0]
    return json.loads(html.unescape(raw))
