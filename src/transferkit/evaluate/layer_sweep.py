"""Layer-transferability sweep: how well does each layer of a pretrained network transfer?

Yosinski et al. 2014, "How transferable are features in deep neural networks?": generic
features sit low in the network, task-specific ones high. We probe every tappable layer
(plus the fusion of all stages and the Full-Network Embedding) with the same classifier
under stratified k-fold cross-validation and report mean ± std balanced accuracy. All
layers come from one forward pass per image (and the cache), so the sweep costs one
extraction plus cheap shallow fits.
"""

from __future__ import annotations

import csv
import io
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from sklearn.model_selection import StratifiedKFold, cross_val_score

from transferkit.backbones.registry import DEFAULT_BACKBONE
from transferkit.errors import DataError
from transferkit.features.classifiers import make_probe_pipeline


@dataclass
class SweepRow:
    layer: str
    depth: int              # position in the forward pass; -1 for fused variants
    dim: int
    balanced_accuracy_mean: float
    balanced_accuracy_std: float
    seconds: float


@dataclass
class SweepResult:
    rows: list[SweepRow]
    best_layer: str          # best single layer
    best_overall: str        # best row, fused variants included
    folds: int
    classifier: str
    n_images: int
    n_skipped: int
    extract_seconds: float

    def to_dict(self) -> dict:
        data = asdict(self)
        data["rows"] = [asdict(row) for row in self.rows]
        return data


def _cv_score(features, labels, classifier, folds, random_state, embedding=None):
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=random_state)
    pipeline = make_probe_pipeline(classifier, labels, cv=3, random_state=random_state,
                                   embedding=embedding)
    start = time.perf_counter()
    scores = cross_val_score(pipeline, features, labels, cv=splitter, scoring="balanced_accuracy")
    return float(scores.mean()), float(scores.std()), time.perf_counter() - start


def sweep_features(features: np.ndarray, labels, columns: dict[str, slice], stages: list[str],
                   folds: int = 5, classifier: str = "ridge", random_state: int = 0,
                   progress: bool = False) -> list[SweepRow]:
    """Score each layer's columns of ``features`` and the fused / FNE variants."""
    from tqdm.auto import tqdm

    labels = np.asarray(labels)
    smallest = int(np.bincount(np.unique(labels, return_inverse=True)[1]).min())
    if smallest < folds:
        raise DataError(f"the smallest class has {smallest} images; {folds}-fold cross-validation "
                        f"needs at least {folds} per class (use --folds {max(2, smallest)}).")
    variants = [(name, depth, columns[name], None) for depth, name in enumerate(columns)]
    if len(stages) > 1:
        stage_columns = np.concatenate([np.arange(columns[n].start, columns[n].stop)
                                        for n in stages])
        variants += [("fused stages", -1, stage_columns, None),
                     ("full-network embedding", -1, stage_columns, "fne")]
    rows = []
    for name, depth, cols, embedding in tqdm(variants, desc="layer sweep", disable=not progress,
                                             leave=False):
        block = features[:, cols]
        mean, std, seconds = _cv_score(block, labels, classifier, folds, random_state, embedding)
        rows.append(SweepRow(name, depth, int(block.shape[1]), mean, std, seconds))
    return rows


def layer_sweep(paths, labels, backbone: str = DEFAULT_BACKBONE, weights=None, arch=None,
                layers: str = "all", pooling: str = "avg", folds: int = 5,
                classifier: str = "ridge", random_state: int = 0, cache_dir=None,
                progress: bool = False) -> SweepResult:
    """Extract every layer once, then cross-validate the same classifier on each."""
    from transferkit.features.extract import FrozenExtractor

    extractor = FrozenExtractor.from_name(backbone, weights, arch, layer=layers, pooling=pooling,
                                          cache_dir=cache_dir)
    result = extractor.extract(paths, progress=progress)
    labels = np.asarray(labels)[result.ok]
    stages = extractor.identity()["stages"]
    rows = sweep_features(result.features, labels, result.layers, stages, folds, classifier,
                          random_state, progress)
    singles = [row for row in rows if row.depth >= 0]
    best_single = max(singles, key=lambda row: row.balanced_accuracy_mean)
    best = max(rows, key=lambda row: row.balanced_accuracy_mean)
    return SweepResult(rows, best_single.layer, best.layer, folds, classifier, int(result.ok.sum()),
                       len(result.skipped), result.seconds)


def write_sweep(result: SweepResult, out: str | os.PathLike, title: str = "",
                overwrite: bool = False) -> dict[str, str]:
    """``layers.csv``, ``layers.json`` and ``layers.png`` (accuracy vs depth) in ``out``,
    which must be new, empty or written by transferkit; a finished sweep there is replaced
    only with ``overwrite`` (see :mod:`transferkit.outputs`). Each file is written whole
    and moved into place, so a link at its name is replaced, never written through."""
    import matplotlib

    from transferkit.outputs import prepare_output_folder, save_figure_atomic, write_text_atomic

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    prepare_output_folder(out, command="layers", overwrite=overwrite)
    out = Path(out)
    table = io.StringIO(newline="")
    writer = csv.DictWriter(table, fieldnames=list(asdict(result.rows[0])))
    writer.writeheader()
    writer.writerows(asdict(row) for row in result.rows)
    write_text_atomic(out / "layers.csv", table.getvalue())
    write_text_atomic(out / "layers.json", json.dumps(result.to_dict(), indent=2))

    singles = [row for row in result.rows if row.depth >= 0]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    x = np.arange(len(singles))
    ax.errorbar(x, [r.balanced_accuracy_mean for r in singles],
                yerr=[r.balanced_accuracy_std for r in singles], marker="o", capsize=3,
                label="single layer")
    for row, style in zip([r for r in result.rows if r.depth < 0], ("--", ":")):
        ax.axhline(row.balanced_accuracy_mean, linestyle=style, color="grey", label=row.layer)
    ax.set_xticks(x, [r.layer for r in singles], rotation=45, ha="right")
    ax.set_xlabel("layer (input → output)")
    ax.set_ylabel(f"balanced accuracy ({result.folds}-fold CV)")
    ax.set_title(title or "Layer transferability")
    ax.legend(loc="lower right")
    fig.tight_layout()
    save_figure_atomic(fig, out / "layers.png", dpi=110)
    plt.close(fig)
    return {"csv": str(out / "layers.csv"), "json": str(out / "layers.json"),
            "plot": str(out / "layers.png")}
