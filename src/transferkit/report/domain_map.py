"""Domain maps: source and target features side by side, before and after adaptation.

Each panel is a 2-D PCA of the two domains' features pooled (standardised), source in
one colour and target in another. Before adaptation the two clouds sit apart; a method
that aligns the domains brings them over each other. Drawn on an Agg canvas (no global
matplotlib state), like the learning curves.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np


def _project(source: np.ndarray, target: np.ndarray, max_points: int, random_state: int):
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(random_state)
    picks = [domain[rng.permutation(len(domain))[:max_points]] for domain in (source, target)]
    joint = StandardScaler().fit_transform(np.vstack(picks))
    points = PCA(n_components=2, random_state=random_state).fit_transform(joint)
    return points[:len(picks[0])], points[len(picks[0]):]


def plot_domain_maps(panels: dict[str, tuple[np.ndarray, np.ndarray]], path: str | os.PathLike,
                     max_points: int = 1000, random_state: int = 0) -> Path:
    """One PCA panel per ``title → (source features, target features)``; writes a PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from transferkit.outputs import save_figure_atomic

    figure = Figure(figsize=(4.2 * len(panels), 4.0), dpi=100)
    FigureCanvasAgg(figure)
    axes = np.atleast_1d(figure.subplots(1, len(panels)))
    for ax, (title, (source, target)) in zip(axes, panels.items()):
        source_points, target_points = _project(np.asarray(source, float), np.asarray(target, float),
                                                max_points, random_state)
        ax.scatter(*source_points.T, s=4, alpha=0.5, label="source", color="tab:blue")
        ax.scatter(*target_points.T, s=4, alpha=0.5, label="target", color="tab:orange")
        ax.set_title(title, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0].legend(loc="best", markerscale=3, fontsize=8)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_figure_atomic(figure, path)
