"""The HTML report: self-contained, every picture decodes, renders in a real Chromium."""

from __future__ import annotations

import base64
import io
import json
from html.parser import HTMLParser
from xml.etree import ElementTree

import pytest
from PIL import Image

from builders import write_class_folder
from transferkit.cli import main
from transferkit.errors import TransferkitError
from transferkit.report.browser import find_chromium, probe_in_browser
from transferkit.report.html import REPORT_DATA, render_report, write_report

SVG = "{http://www.w3.org/2000/svg}"


class _Images(HTMLParser):
    def __init__(self):
        super().__init__()
        self.sources, self.headings, self._in_h2 = [], [], False

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.sources.append(dict(attrs).get("src", ""))
        self._in_h2 = tag == "h2"

    def handle_data(self, data):
        if self._in_h2:
            self.headings.append(data.strip())

    def handle_endtag(self, tag):
        self._in_h2 = False


def parse(text: str) -> _Images:
    parser = _Images()
    parser.feed(text)
    parser.close()
    return parser


def assert_images_decode(sources):
    assert sources, "the report has no picture at all"
    for src in sources:
        assert src.startswith("data:image/"), f"not embedded: {src[:60]}"
        payload = base64.b64decode(src.split(",", 1)[1], validate=True)
        if src.startswith("data:image/svg+xml;"):
            svg = ElementTree.fromstring(payload)  # well-formed XML, or this raises
            assert svg.tag == f"{SVG}svg" and int(svg.get("width")) > 10
            assert not list(svg.iter(f"{SVG}script")) and b"href" not in payload
            continue
        with Image.open(io.BytesIO(payload)) as image:
            image.load()
            assert image.width > 10 and image.height > 10


def feature_map_svg(sources) -> ElementTree.Element:
    (svg,) = [base64.b64decode(src.split(",", 1)[1]) for src in sources
              if src.startswith("data:image/svg+xml;")]
    return ElementTree.fromstring(svg)


@pytest.fixture
def tiny(tiny_checkpoint):
    path, arch = tiny_checkpoint
    return ["--weights", str(path), "--arch", arch]


@pytest.fixture
def fitted(tmp_path, tiny, capsys):
    data = write_class_folder(tmp_path / "data", per_class=10, classes=("red", "blue", "green"))
    (data / "red" / "broken.jpg").write_bytes(b"\xff\xd8 not really")
    out = tmp_path / "model"
    assert main(["fit", str(data), "--out", str(out), *tiny, "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    return out, summary


def test_fit_writes_a_self_contained_report(fitted):
    out, summary = fitted
    path = out / "report.html"
    assert summary["report"] == str(path) and path.is_file()
    text = path.read_text(encoding="utf-8")
    assert path.stat().st_size < 5_000_000
    assert "<script" not in text and "http://" not in text and "https://" not in text
    parsed = parse(text)
    for heading in ("Model", "Data", "Validation", "Feature map",
                    "Most confidently wrong validation images"):
        assert heading in parsed.headings
    assert "broken.jpg" in text  # the skipped file is named
    assert "Wilson" in text and "true \\ predicted" in text
    assert_images_decode(parsed.sources)
    data = json.loads((out / REPORT_DATA).read_text())
    assert len(data["val_predictions"]) == summary["n_val"]
    assert len(data["feature_map"]["points"]) == summary["n_train"] + summary["n_val"]
    # One marker per image: circles for training images, triangles for validation ones
    # (the legend adds one of each per class).
    svg = feature_map_svg(parsed.sources)
    n_classes = len(summary["classes"])
    assert len(list(svg.iter(f"{SVG}circle"))) == summary["n_train"] + n_classes
    assert len(list(svg.iter(f"{SVG}path"))) == summary["n_val"] + n_classes


def test_gallery_shows_the_surest_mistakes_first(fitted):
    out, _ = fitted
    data = json.loads((out / REPORT_DATA).read_text())
    # Plant three mistakes with known confidences on real image files.
    planted = data["val_predictions"][:3]
    for item, confidence in zip(planted, (0.61, 0.97, 0.80)):
        item["predicted"] = "green" if item["true"] != "green" else "red"
        item["confidence"] = confidence
    (out / REPORT_DATA).write_text(json.dumps(data))
    text = render_report(out)
    gallery = text.split("Most confidently wrong validation images", 1)[1]
    assert "3 of" in gallery
    shown = [gallery.index(f"({pct}%)") for pct in (97, 80, 61)]
    assert shown == sorted(shown)
    assert_images_decode(parse(gallery).sources)


def test_report_command_and_learning_curves_of_fine_tuning(tmp_path, tiny, capsys):
    data = write_class_folder(tmp_path / "data", per_class=8)
    out = tmp_path / "tuned"
    assert main(["fit", str(data), "--out", str(out), "--method", "finetune", *tiny, "--epochs", "2",
                 "--image-size", "48", "--batch-size", "8", "--no-report", "--quiet"]) == 0
    capsys.readouterr()
    assert not (out / "report.html").exists()
    assert main(["report", str(out), "--out", str(tmp_path / "r.html"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    parsed = parse((tmp_path / "r.html").read_text())
    assert "Learning curves" in parsed.headings and result["bytes"] > 0
    assert_images_decode(parsed.sources)


def test_report_of_a_layer_sweep_and_of_a_folder_that_is_not_a_run(tmp_path, tiny, capsys):
    data = write_class_folder(tmp_path / "data", per_class=6)
    sweep = tmp_path / "sweep"
    assert main(["layers", str(data), *tiny, "--folds", "2", "--out", str(sweep), "--quiet"]) == 0
    capsys.readouterr()
    parsed = parse(write_report(sweep).read_text())
    assert "Layer transferability" in parsed.headings
    assert_images_decode(parsed.sources)
    with pytest.raises(TransferkitError, match="not a run folder"):
        render_report(tmp_path)
    assert main(["report", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith("error:")


def test_report_renders_in_headless_chromium_without_errors(fitted, tmp_path):
    out, _ = fitted
    if find_chromium() is None:
        pytest.skip("no Chromium here (Debian: apt-get install chromium)")
    result = probe_in_browser(out / "report.html")
    assert result["images"] >= 1  # the feature map (no mistakes, no learning curves here)
    assert result["broken"] == 0
    assert result["errors"] == []
