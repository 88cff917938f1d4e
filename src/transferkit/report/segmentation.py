"""The report of a segmentation run (``transferkit segment fit``): ``report.html`` in the
model folder.

Sections: the held-out scores (mean Dice and IoU), overlays of the predicted and true
masks on the best and the worst held-out images, the distribution of the per-image Dice,
and the learning curves (loss, pixel accuracy, validation Dice per epoch). Pictures are
embedded as ``data:`` URIs and there is no script (as :mod:`transferkit.report.html`).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from transferkit.report.html import GENERATOR_TAG, _STYLE, _esc, _number, _png_data_uri, _table

OVERLAY_COUNT = 4  # best and worst images shown each
OVERLAY_PX = 256


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def overlay(image: np.ndarray, truth: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """RGB uint8 picture: the image with agreement in yellow, missed pixels (true only) in
    green and false alarms (predicted only) in red, half transparent."""
    picture = image.astype(np.float64)
    t, p = truth > 0, predicted > 0
    for where, colour in ((t & p, (255, 220, 0)), (t & ~p, (0, 200, 60)), (~t & p, (230, 30, 30))):
        picture[where] = 0.5 * picture[where] + 0.5 * np.array(colour)
    return picture.astype(np.uint8)


def _overlay_row(title: str, items: list[dict]) -> str:
    if not items:
        return ""
    figure = _figure(3.2 * len(items), 3.6)
    axes = figure.subplots(1, len(items), squeeze=False)[0]
    for ax, item in zip(axes, items):
        ax.imshow(overlay(item["image"], item["truth"], item["predicted"]))
        ax.set_title(f"{Path(item['path']).name}\nDice {item['dice']:.3f}", fontsize=8)
        ax.axis("off")
    return f"<h3>{_esc(title)}</h3><img class=\"figure\" alt=\"{_esc(title)}\" src=\"{_png_data_uri(figure)}\">"


def _dice_histogram(dice: np.ndarray) -> str:
    figure = _figure(6, 3)
    ax = figure.subplots()
    ax.hist(dice, bins=np.linspace(0, 1, 21), color="tab:blue", edgecolor="white")
    ax.axvline(float(np.mean(dice)), color="tab:red", linestyle="--", label=f"mean {np.mean(dice):.3f}")
    ax.set_xlabel("Dice per held-out image")
    ax.set_ylabel("images")
    ax.legend()
    return f'<img class="figure" alt="Dice distribution" src="{_png_data_uri(figure)}">'


def _curves(history: list[dict]) -> str:
    if not history:
        return ""
    epochs = [row["epoch"] for row in history]
    figure = _figure(10, 3.4)
    axes = figure.subplots(1, 3)
    for ax, (key, label) in zip(axes, (("loss", "loss (CE + Dice)"), ("accuracy", "pixel accuracy"))):
        for split, style in (("train", "-o"), ("val", "-s")):
            values = [row.get(f"{split}_{key}") for row in history]
            points = [(e, v) for e, v in zip(epochs, values) if v is not None]
            if points:
                ax.plot(*zip(*points), style, markersize=3, label=split)
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    dice = [(e, row["val_dice"]) for e, row in zip(epochs, history) if row.get("val_dice") is not None]
    if dice:
        axes[2].plot(*zip(*dice), "-^", markersize=3, color="tab:green")
    axes[2].set_xlabel("epoch")
    axes[2].set_ylabel("validation Dice")
    axes[2].grid(alpha=0.3)
    stages = [row.get("stage") for row in history]
    for ax in axes:
        for previous, (epoch, stage) in zip(stages, list(zip(epochs, stages))[1:]):
            if stage != previous:
                ax.axvline(epoch - 0.5, color="grey", linestyle=":")
    return f'<img class="figure" alt="learning curves" src="{_png_data_uri(figure)}">'


def render_segmentation_report(title: str, facts: list[tuple[str, str]], scores: dict,
                               items: list[dict], history: list[dict]) -> str:
    """The HTML text. ``items``: one dict per held-out image with ``path``, ``dice``,
    ``iou``, and ``image`` (RGB uint8), ``truth`` and ``predicted`` (class-index masks)
    for the images that may be shown; ``scores``: ``dice``, ``iou``, ``n_images``."""
    ranked = sorted(items, key=lambda item: item["dice"])
    count = min(OVERLAY_COUNT, len(ranked) // 2 if len(ranked) > 1 else len(ranked))
    worst, best = ranked[:count], ranked[::-1][:count]
    dice = np.array([item["dice"] for item in items])
    sections = [
        "<h2>Model and data</h2>" + _table(None, [[_esc(k), _esc(v)] for k, v in facts], "kv"),
        "<h2>Held-out images</h2>" + _table(["measure", "mean over images"], [
            ["Dice", _number(scores["dice"], ".3f")], ["IoU", _number(scores["iou"], ".3f")],
            ["images", _number(scores["n_images"])]], "kv"),
    ]
    if items:
        sections.append("<h2>Predicted and true masks</h2><p class=\"muted\">Yellow: lesion in "
                        "both; green: missed (true only); red: false alarm (predicted only).</p>"
                        + _overlay_row("Best held-out images", best)
                        + _overlay_row("Worst held-out images", worst))
        sections.append("<h2>Per-image Dice</h2>" + _dice_histogram(dice))
    if history:
        sections.append("<h2>Learning curves</h2><p class=\"muted\">Dotted lines: a new "
                        "training stage (more encoder layers unfrozen).</p>" + _curves(history))
    return ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"{GENERATOR_TAG}<title>{_esc(title)}</title><style>{_STYLE}</style></head><body>"
            f"<h1>transferkit report</h1><p class=\"muted\">{_esc(title)}</p>"
            + "".join(sections) + "</body></html>")


def write_segmentation_report(path: str | os.PathLike, *args, **kwargs) -> Path:
    from transferkit.outputs import write_text_atomic

    path = Path(path)
    write_text_atomic(path, render_segmentation_report(*args, **kwargs))
    return path
