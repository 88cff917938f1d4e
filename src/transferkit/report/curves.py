"""Learning curves of a training run as a PNG (loss and accuracy per epoch).

Drawn with matplotlib's object API on an Agg canvas, so it never touches the global
backend of a program (or notebook) that imports transferkit.
"""

from __future__ import annotations

import os
from pathlib import Path


def _series(history: list[dict], key: str) -> tuple[list[int], list[float]]:
    points = [(row["epoch"], row[key]) for row in history if row.get(key) not in (None, "")]
    return [p[0] for p in points], [float(p[1]) for p in points]


def plot_learning_curves(history: list[dict], path: str | os.PathLike, title: str | None = None) -> Path:
    """Write train/validation loss and accuracy against epoch to ``path``.

    ``history``: rows with ``epoch``, ``train_loss``, ``val_loss``, ``train_accuracy``,
    ``val_accuracy`` (as in ``metrics.csv``); a ``stage`` column, when present, is drawn
    as dotted lines where the stage changes (e.g. gradual unfreezing).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from transferkit.outputs import save_figure_atomic

    figure = Figure(figsize=(9, 3.6), dpi=100)
    FigureCanvasAgg(figure)
    draw_learning_curves(figure, history, title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_figure_atomic(figure, path)


def draw_learning_curves(figure, history: list[dict], title: str | None = None) -> None:
    """Draw loss and accuracy per epoch on ``figure`` (shared by the PNG and the HTML report),
    and a domain-adaptation run's label-free criterion (``snd``) when it has one."""
    criteria = [(key, _series(history, key)) for key in ("dev", "snd")]
    criteria = [(key, series) for key, series in criteria if series[0]]
    axes = figure.subplots(1, 2 + len(criteria))
    for ax, (key, (x, y)) in zip(axes[2:], criteria):
        ax.plot(x, y, "-^", markersize=3, color="tab:green", label=key.upper())
        best = (min if key == "dev" else max)(range(len(y)), key=y.__getitem__)
        ax.plot([x[best]], [y[best]], "*", markersize=10, color="tab:red",
                label="best (lower)" if key == "dev" else "best (higher)")
        ax.set_xlabel("epoch")
        ax.set_ylabel({"dev": "deep embedded validation risk",
                       "snd": "soft neighbourhood density"}[key], fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend()
    for ax, metric, label in ((axes[0], "loss", "loss"), (axes[1], "accuracy", "accuracy")):
        for split, style in (("train", "-o"), ("val", "-s")):
            x, y = _series(history, f"{split}_{metric}")
            if x:
                ax.plot(x, y, style, markersize=3, label=split)
        stages = [row.get("stage") for row in history]
        for previous, row in zip(history, history[1:]):
            if row.get("stage") != previous.get("stage"):
                ax.axvline(row["epoch"] - 0.5, color="grey", linestyle=":", linewidth=1)
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        if any(stages):
            ax.set_title(f"{label} ({len(dict.fromkeys(stages))} stages)", fontsize=9)
        ax.legend()
    if title:
        figure.suptitle(title)
    figure.tight_layout()
