"""A run folder may come from anyone: ``transferkit report`` must not turn it into a page
that runs script, nor into a page that carries away pictures from elsewhere on disk.

Regression tests for (hostile audit): numbers of ``config.json`` (``train_counts``,
``training.epochs_run``), ``layers.json`` (``dim``, ``folds``, ``n_images``) and the other
run files went into the HTML unescaped, so ``"<script>…"`` in any of them ran when the
report was opened; and a validation prediction whose path named any image on the machine
(``../victim/private_photo.png``) was embedded in the report as a thumbnail.
"""

from __future__ import annotations

import json
import os
from html.parser import HTMLParser
from pathlib import Path

import pytest

from builders import colour_image
from transferkit.cli import main
from transferkit.report.html import REPORT_DATA, render_report

SCRIPT = "<script>alert(document.cookie)</script>"
IMG = "<img src=x onerror=alert(1)>"
PAYLOADS = (SCRIPT, IMG)


class _Tags(HTMLParser):
    """Every start tag with its attributes, as a browser would see them."""

    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def assert_inert(text: str) -> list[tuple[str, dict]]:
    """No payload reached the page as markup: no script element, no event handler, no
    picture that is not embedded; returns the tags for further checks."""
    for payload in PAYLOADS:
        assert payload not in text
    parser = _Tags()
    parser.feed(text)
    parser.close()
    for tag, attrs in parser.tags:
        assert tag != "script"
        assert not any(name.startswith("on") for name in attrs), (tag, attrs)
        if tag == "img":
            assert attrs["src"].startswith("data:image/"), attrs
    return parser.tags


def _write(path: Path, value) -> None:
    path.write_text(json.dumps(value), encoding="utf-8")


def _model_folder(root: Path, data_folder: Path, predictions: list[dict], text=SCRIPT,
                  number=IMG, count=SCRIPT) -> Path:
    """A fit run folder with ``text`` in every field shown as text, ``number`` in every
    field shown with a number format, ``count`` in every field shown as it is."""
    run = root / "run"
    run.mkdir()
    _write(run / "config.json", {
        "format_version": 1, "method": text, "classes": [text, IMG],
        "backbone": {"name": text}, "versions": {text: text},
        "params": {"classifier": text, "layer": text, "strategy": text, "epochs": count,
                   "lr": count, "lr_factor": count, "embedding": text, "pca": count},
        "training": {"epochs_run": count, "best_epoch": count},
        "data": {"source": str(data_folder), "validation": text,
                 "train_counts": {"blue": count, text: 5}, "val_counts": {"blue": count}},
        "skipped": [{"path": text, "reason": text}],
    })
    metrics_of_a_split = {
        "accuracy": number, "accuracy_ci95": [number, number], "balanced_accuracy": number,
        "macro_f1": number, "n": count,
        "per_class": {text: {"precision": number, "recall": number, "f1": number,
                             "support": count}},
        "confusion_matrix": {"labels": [text, "red"], "matrix": [[number, 1], [2, number]]},
    }
    _write(run / "metrics.json", {
        "seconds": number, "backbone": text, "dropped_classes": [text],
        "val_metrics": metrics_of_a_split, "test_metrics": metrics_of_a_split,
        "negative_transfer": {"verdict": text, "negative_transfer": True,
                              "transferred_balanced_accuracy": {"mean": number, "std": number},
                              "baseline_balanced_accuracy": {"mean": number, "std": number},
                              "baseline": text, "protocol": text, "p_value": number},
    })
    _write(run / REPORT_DATA, {
        "classes": [text], "val_predictions": predictions,
        "feature_map": {"method": text, "points": [[0, 0], [1, 1], [2, 0]],
                        "labels": [text, "red", text], "split": ["train", "val", "train"],
                        "explained_variance": [number, 0.1]},
    })
    return run


def test_a_hostile_model_folder_renders_as_inert_text(tmp_path, capsys):
    data = tmp_path / "data"
    (data / "blue").mkdir(parents=True)
    colour_image((30, 30, 220)).save(data / "blue" / "0.png")
    predictions = [{"path": str(data / "blue" / "0.png"), "true": SCRIPT, "predicted": IMG,
                    "confidence": SCRIPT},
                   {"path": str(data / "blue" / f"{IMG}.png"), "true": IMG,
                    "predicted": SCRIPT, "confidence": 0.5}]
    run = _model_folder(tmp_path, data, predictions)
    text = render_report(run)
    assert_inert(text)
    # The payloads are shown, as text, where the numbers would be.
    assert "&lt;script&gt;alert(document.cookie)&lt;/script&gt;" in text
    assert "&lt;img src=x onerror=alert(1)&gt;" in text

    assert main(["report", str(run)]) == 0  # the command writes the same inert page
    capsys.readouterr()
    assert_inert((run / "report.html").read_text(encoding="utf-8"))


def test_counts_shown_as_they_are_are_escaped(tmp_path):
    # The audit's repro: the numbers the report printed with str() (class counts, epochs,
    # support, images) carried a script into the page.
    run = _model_folder(tmp_path, tmp_path, [], text="blue", number=0.5, count=SCRIPT)
    assert_inert(render_report(run))


def test_a_hostile_layer_sweep_renders_as_inert_text(tmp_path, capsys):
    sweep = tmp_path / "L1"
    sweep.mkdir()
    # dim, folds and n_images were shown as they were; the others with number formats.
    row = {"layer": SCRIPT, "depth": 0, "dim": IMG, "balanced_accuracy_mean": 0.9,
           "balanced_accuracy_std": 0.1, "seconds": 0.2}
    hostile = {**row, "balanced_accuracy_mean": SCRIPT, "balanced_accuracy_std": IMG,
               "seconds": SCRIPT}
    _write(sweep / "layers.json", {"rows": [row], "folds": SCRIPT, "classifier": IMG,
                                   "n_images": IMG, "best_layer": IMG, "best_overall": SCRIPT})
    assert main(["report", str(sweep), "--out", str(tmp_path / "L1x.html")]) == 0
    capsys.readouterr()
    assert_inert((tmp_path / "L1x.html").read_text(encoding="utf-8"))
    _write(sweep / "layers.json", {"rows": [hostile], "folds": 2, "classifier": "ridge",
                                   "n_images": 8, "best_layer": "x", "best_overall": "y"})
    assert main(["report", str(sweep), "--out", str(tmp_path / "L1x.html")]) == 0
    capsys.readouterr()
    assert_inert((tmp_path / "L1x.html").read_text(encoding="utf-8"))


def test_a_hostile_adaptation_summary_renders_as_inert_text(tmp_path):
    run = tmp_path / "adapt"
    run.mkdir()
    _write(run / "summary.json", {
        "adapted_accuracy": SCRIPT, "source_only_accuracy": IMG, "oracle_accuracy": SCRIPT,
        "method": IMG, "family": SCRIPT, "source": IMG, "target": SCRIPT, "n_source": IMG,
        "n_target": SCRIPT, "n_target_labelled": IMG, "n_target_test": SCRIPT,
        "gap_closed": IMG, "a_distance_before": SCRIPT, "a_distance_after": IMG,
        "mmd_before": IMG, "mmd_after": SCRIPT, "backbone": IMG, "seconds": SCRIPT,
        "demo": IMG, "skipped": [{"path": IMG, "reason": SCRIPT}]})
    assert_inert(render_report(run))


def test_the_gallery_embeds_only_images_of_the_runs_data_folder(tmp_path):
    data, victim = tmp_path / "data", tmp_path / "victim"
    (data / "blue").mkdir(parents=True)
    victim.mkdir()
    colour_image((30, 30, 220)).save(data / "blue" / "own.png")
    colour_image((220, 30, 30)).save(victim / "private_photo.png")
    # A link inside the data folder does not let a picture from outside in.
    os.symlink(victim / "private_photo.png", data / "blue" / "link.png")

    def wrong(path: str) -> dict:
        return {"path": path, "true": "blue", "predicted": "red", "confidence": 0.9}

    predictions = [wrong(str(data / "blue" / "own.png")),
                   wrong(str(data / "blue" / ".." / ".." / "victim" / "private_photo.png")),
                   wrong(str(victim / "private_photo.png")),
                   wrong(str(data / "blue" / "link.png"))]
    run = _model_folder(tmp_path, data, predictions, text="blue", number=0.5, count=3)
    text = render_report(run)
    gallery = text.split("Most confidently wrong validation images", 1)[1]
    pictures = [attrs for tag, attrs in assert_inert(gallery) if tag == "img"]
    assert [attrs["alt"] for attrs in pictures] == ["own.png"]
    # The others are named, without their picture.
    assert gallery.count("private_photo.png") == 2 and "link.png" in gallery
    assert "3 image(s) are shown by name only" in gallery


@pytest.mark.parametrize("source", [None, "relative/elsewhere"])
def test_no_picture_is_embedded_when_the_data_folder_is_unknown(tmp_path, source, monkeypatch):
    monkeypatch.chdir(tmp_path)
    image = tmp_path / "own.png"
    colour_image((30, 30, 220)).save(image)
    run = _model_folder(tmp_path, tmp_path, [
        {"path": str(image), "true": "blue", "predicted": "red", "confidence": 0.9}],
        text="blue", number=0.5, count=3)
    config = json.loads((run / "config.json").read_text())
    if source is None:
        del config["data"]["source"]
    else:
        config["data"]["source"] = source
    _write(run / "config.json", config)
    gallery = render_report(run).split("Most confidently wrong validation images", 1)[1]
    assert not [tag for tag, _ in assert_inert(gallery) if tag == "img"]
    assert "own.png" in gallery
