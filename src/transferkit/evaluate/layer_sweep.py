"""Layer-transferability sweep: how well does each layer of a pretrained network transfer?

Yosinski et al. 2014, "How transferable are features in deep neural networks?": generic
features sit low in the network, task-specific ones high. We probe every tappable layer
(plus the fusion of all stages and the Full-Network Embedding in both its forms: the stage
outputs, and every convolutional layer as Garcia-Gasulla et al. 2018 define it) with the
same classifier under stratified k-fold cross-validation and report mean ± std balanced
accuracy. All layers come from one forward pass per image (and the cache), so the sweep
costs one extraction plus cheap shallow fits.

Every row is scored on the same folds, so two rows can be compared fold by fold
(:func:`paired_comparison`): the mean and sd of the per-fold differences, wins / losses /
ties, and the corrected resampled t-test of Nadeau & Bengio 2003 (the plain paired t-test
over CV folds is far too optimistic, because the training sets overlap).
"""

from __future__ import annotations

import csv
import io
import json
import os
import time
from dataclasses import asdict, dataclass, field
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
    fold_scores: list[float] = field(default_factory=list)  # one per fold, the same folds for all


# The fused rows of a sweep (depth -1), in table order.
FUSED_STAGES = "fused stages"
FNE_STAGES = "full-network embedding (stages)"
FNE_ALL_CONV = "full-network embedding (all-conv)"
CSV_FIELDS = ("layer", "depth", "dim", "balanced_accuracy_mean", "balanced_accuracy_std",
              "seconds")


def paired_comparison(scores_a, scores_b, test_fraction: float | None = None) -> dict:
    """Row A against row B over the same cross-validation folds.

    ``difference``: mean of the per-fold differences A - B; ``difference_sd``: their sd
    (ddof 1); ``wins`` / ``losses`` / ``ties``: folds where A scored higher / lower / the
    same. ``p_value``: two-sided corrected resampled t-test (Nadeau & Bengio 2003,
    "Inference for the Generalization Error"): t = mean / sqrt((1/k + n_test/n_train) ·
    var), k - 1 degrees of freedom; for k-fold CV ``test_fraction`` n_test/n_train is
    1/(k-1), the default.
    """
    from scipy import stats

    a, b = np.asarray(scores_a, dtype=float), np.asarray(scores_b, dtype=float)
    if a.shape != b.shape or a.ndim != 1 or len(a) < 2:
        raise ValueError("paired_comparison needs two equal-length lists of at least two "
                         "fold scores")
    k = len(a)
    ratio = 1.0 / (k - 1) if test_fraction is None else float(test_fraction)
    differences = a - b
    mean, sd = float(differences.mean()), float(differences.std(ddof=1))
    if sd == 0.0:  # the same difference on every fold: t is undefined (None, for JSON)
        t, p = (0.0, 1.0) if mean == 0.0 else (None, 0.0)
    else:
        t = float(mean / np.sqrt((1.0 / k + ratio) * sd * sd))
        p = float(2 * stats.t.sf(abs(t), df=k - 1))
    return {"difference": mean, "difference_sd": sd, "wins": int((differences > 0).sum()),
            "losses": int((differences < 0).sum()), "ties": int((differences == 0).sum()),
            "t": t, "p_value": p, "folds": k}


def compare_with_best(rows: list["SweepRow"]) -> list[dict]:
    """The best row (highest mean) against every other row, fold by fold, best first."""
    best = max(rows, key=lambda row: row.balanced_accuracy_mean)
    others = sorted((row for row in rows if row is not best),
                    key=lambda row: -row.balanced_accuracy_mean)
    return [{"best": best.layer, "other": row.layer,
             **paired_comparison(best.fold_scores, row.fold_scores)}
            for row in others if len(row.fold_scores) == len(best.fold_scores) > 1]


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
    # The best row against each other row over the same folds (paired_comparison).
    comparisons: list[dict] = field(default_factory=list)

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
    return scores, time.perf_counter() - start


def sweep_features(features: np.ndarray, labels, columns: dict[str, slice], stages: list[str],
                   folds: int = 5, classifier: str = "ridge", random_state: int = 0,
                   progress: bool = False, singles: list[str] | None = None,
                   conv_layers: list[str] | None = None) -> list[SweepRow]:
    """Score each layer's columns of ``features`` and the fused / FNE variants.

    ``singles``: the layers that get a row of their own (default every layer of
    ``columns``); ``stages`` feed the fused-stages row and FNE over the stage outputs;
    ``conv_layers`` (every convolutional layer, :func:`~transferkit.backbones.taps.
    conv_layers`) the FNE as its paper defines it. Every row is scored on the same folds."""
    from tqdm.auto import tqdm

    labels = np.asarray(labels)
    smallest = int(np.bincount(np.unique(labels, return_inverse=True)[1]).min())
    if smallest < folds:
        raise DataError(f"the smallest class has {smallest} images; {folds}-fold cross-validation "
                        f"needs at least {folds} per class (use --folds {max(2, smallest)}).")
    def joined(names):
        return np.concatenate([np.arange(columns[n].start, columns[n].stop) for n in names])

    singles = list(columns) if singles is None else list(singles)
    variants = [(name, depth, columns[name], None) for depth, name in enumerate(singles)]
    if len(stages) > 1:
        variants += [(FUSED_STAGES, -1, joined(stages), None),
                     (FNE_STAGES, -1, joined(stages), "fne")]
    if conv_layers and len(conv_layers) > 1:
        variants.append((FNE_ALL_CONV, -1, joined(conv_layers), "fne"))
    rows = []
    for name, depth, cols, embedding in tqdm(variants, desc="layer sweep", disable=not progress,
                                             leave=False):
        block = features[:, cols]
        scores, seconds = _cv_score(block, labels, classifier, folds, random_state, embedding)
        rows.append(SweepRow(name, depth, int(block.shape[1]), float(scores.mean()),
                             float(scores.std()), seconds, [float(v) for v in scores]))
    return rows


def layer_sweep(paths, labels, backbone: str = DEFAULT_BACKBONE, weights=None, arch=None,
                layers: str = "all", pooling: str = "avg", folds: int = 5,
                classifier: str = "ridge", random_state: int = 0, cache_dir=None,
                progress: bool = False) -> SweepResult:
    """Extract every layer once, then cross-validate the same classifier on each.

    ``layers="all"`` (the default) also taps every convolutional layer, in the same
    forward pass, for the Full-Network Embedding as its paper defines it (a row of its
    own, not one row per convolutional layer; ask for ``all-conv`` among ``layers`` for
    those)."""
    from transferkit.errors import TransferkitError
    from transferkit.features.extract import FrozenExtractor, _layer_list

    def extractor_of(layer):
        return FrozenExtractor.from_name(backbone, weights, arch, layer=layer, pooling=pooling,
                                         cache_dir=cache_dir)

    requested = _layer_list(layers)
    singles = extractor_of(layers).layers  # resolved; from the identity memo when warm
    conv_names = None
    if "all" in requested or "all-conv" in requested:
        try:
            conv_names = extractor_of("all-conv").layers
        except TransferkitError:  # not a convolutional network: no every-layer FNE row
            conv_names = None
    wanted = requested + (["all-conv"] if conv_names and "all-conv" not in requested else [])
    extractor = extractor_of(",".join(wanted))
    result = extractor.extract(paths, progress=progress)
    labels = np.asarray(labels)[result.ok]
    stages = extractor.identity()["stages"]
    rows = sweep_features(result.features, labels, result.layers, stages, folds, classifier,
                          random_state, progress, singles=singles, conv_layers=conv_names)
    single_rows = [row for row in rows if row.depth >= 0]
    best_single = max(single_rows, key=lambda row: row.balanced_accuracy_mean)
    best = max(rows, key=lambda row: row.balanced_accuracy_mean)
    return SweepResult(rows, best_single.layer, best.layer, folds, classifier, int(result.ok.sum()),
                       len(result.skipped), result.seconds, compare_with_best(rows))


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
    writer = csv.DictWriter(table, fieldnames=list(CSV_FIELDS), extrasaction="ignore")
    writer.writeheader()
    writer.writerows(asdict(row) for row in result.rows)  # fold scores: in layers.json
    write_text_atomic(out / "layers.csv", table.getvalue())
    write_text_atomic(out / "layers.json", json.dumps(result.to_dict(), indent=2))

    singles = [row for row in result.rows if row.depth >= 0]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    x = np.arange(len(singles))
    ax.errorbar(x, [r.balanced_accuracy_mean for r in singles],
                yerr=[r.balanced_accuracy_std for r in singles], marker="o", capsize=3,
                label="single layer")
    for row, style in zip([r for r in result.rows if r.depth < 0], ("--", ":", "-.")):
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
