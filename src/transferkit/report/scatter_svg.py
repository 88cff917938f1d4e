"""The report's feature map as an SVG scatter plot, drawn without matplotlib.

Every ``fit`` writes a report with this one plot. Importing matplotlib and rendering a
PNG cost more than a second, which on cached features was a third of the whole fit (a
warm fit is meant to take about two seconds, issue 16); a scatter of a few thousand
points is a few lines of SVG, which the browser draws sharply at any zoom.
"""

from __future__ import annotations

import base64
from xml.sax.saxutils import escape

import numpy as np

# matplotlib's tab10 and tab20 palettes: the colours the report used before.
TAB10 = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
         "#7f7f7f", "#bcbd22", "#17becf")
TAB20 = ("#1f77b4", "#aec7e8", "#ff7f0e", "#ffbb78", "#2ca02c", "#98df8a", "#d62728",
         "#ff9896", "#9467bd", "#c5b0d5", "#8c564b", "#c49c94", "#e377c2", "#f7b6d2",
         "#7f7f7f", "#c7c7c7", "#bcbd22", "#dbdb8d", "#17becf", "#9edae5")
WIDTH, HEIGHT = 650, 500
LEFT, RIGHT, TOP, BOTTOM = 60, 20, 40, 50  # margins for the tick labels and titles
MAX_LEGEND = 10  # more classes than this: colours only, a legend would hide the points


def _ticks(low: float, high: float, count: int = 5) -> np.ndarray:
    """About ``count`` round tick values between ``low`` and ``high``."""
    span = high - low
    step = 10 ** np.floor(np.log10(span / count))
    for factor in (1, 2, 5, 10):
        if span / (step * factor) <= count:
            step *= factor
            break
    return np.arange(np.ceil(low / step) * step, high + step * 1e-9, step)


def _marker(x: float, y: float, shape: str, colour: str) -> str:
    if shape == "o":
        return f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3.5" fill="{colour}" fill-opacity="0.75"/>'
    return (f'<path d="M{x:.1f},{y - 4.5:.1f}L{x + 4:.1f},{y + 3:.1f}L{x - 4:.1f},{y + 3:.1f}Z" '
            f'fill="{colour}" fill-opacity="0.75"/>')


def scatter_svg(points, labels, split, x_label: str, y_label: str, title: str) -> str:
    """SVG text of ``points`` (n, 2), coloured by ``labels``, circles for ``split ==
    "train"`` and triangles for ``"val"``; a legend when there are at most 10 classes."""
    points = np.asarray(points, dtype=float).reshape(-1, 2)
    labels, split = np.asarray(labels), np.asarray(split)
    classes = sorted(set(labels.tolist()))
    palette = TAB10 if len(classes) <= 10 else TAB20
    low, high = points.min(axis=0), points.max(axis=0)
    pad = np.where(high > low, (high - low) * 0.05, 1.0)
    low, high = low - pad, high + pad
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def to_x(value):
        return LEFT + (value - low[0]) / (high[0] - low[0]) * plot_w

    def to_y(value):
        return TOP + plot_h - (value - low[1]) / (high[1] - low[1]) * plot_h

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
             f'viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="11">',
             f'<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>',
             f'<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="none" '
             'stroke="#444"/>']
    for value in _ticks(low[0], high[0]):
        x = to_x(value)
        parts.append(f'<line x1="{x:.1f}" y1="{TOP + plot_h}" x2="{x:.1f}" '
                     f'y2="{TOP + plot_h + 4}" stroke="#444"/><text x="{x:.1f}" '
                     f'y="{TOP + plot_h + 16}" text-anchor="middle">{value:g}</text>')
    for value in _ticks(low[1], high[1]):
        y = to_y(value)
        parts.append(f'<line x1="{LEFT - 4}" y1="{y:.1f}" x2="{LEFT}" y2="{y:.1f}" '
                     f'stroke="#444"/><text x="{LEFT - 7}" y="{y + 4:.1f}" '
                     f'text-anchor="end">{value:g}</text>')
    for index, label in enumerate(classes):
        colour = palette[index % len(palette)]
        for part, shape in (("train", "o"), ("val", "^")):
            for x, y in points[(labels == label) & (split == part)]:
                parts.append(_marker(to_x(x), to_y(y), shape, colour))
    if len(classes) <= MAX_LEGEND:
        entries = [(label, part, shape, palette[i % len(palette)])
                   for i, label in enumerate(classes)
                   for part, shape in (("train", "o"), ("val", "^"))
                   if ((labels == label) & (split == part)).any()]
        for row, (label, part, shape, colour) in enumerate(entries):
            y = TOP + 14 + 15 * row
            parts.append(_marker(WIDTH - RIGHT - 150, y - 4, shape, colour))
            parts.append(f'<text x="{WIDTH - RIGHT - 140}" y="{y}">'
                         f'{escape(str(label))} ({part})</text>')
    parts += [f'<text x="{LEFT + plot_w / 2}" y="{HEIGHT - 12}" text-anchor="middle">'
              f'{escape(x_label)}</text>',
              f'<text transform="translate(16,{TOP + plot_h / 2}) rotate(-90)" '
              f'text-anchor="middle">{escape(y_label)}</text>',
              f'<text x="{LEFT + plot_w / 2}" y="{TOP - 14}" text-anchor="middle" '
              f'font-size="13">{escape(title)}</text>', "</svg>"]
    return "\n".join(parts)


def svg_data_uri(svg: str) -> str:
    """An SVG as an ``<img>`` source: a picture cannot run scripts, unlike inline SVG."""
    return "data:image/svg+xml;base64," + base64.b64encode(svg.encode("utf-8")).decode("ascii")
