"""``transferkit layers``: the layer-transferability sweep — a classifier cross-validated on
every layer of a backbone, written as layers.csv/json/png."""

from __future__ import annotations

import os
from pathlib import Path

from transferkit.backbones.registry import DEFAULT_BACKBONE
from transferkit.jobs import _options
from transferkit.jobs._common import format_table, pooled_images
from transferkit.outputs import removes_new_output_on_failure

NAME = "layers"
HELP = ("layer-transferability sweep: cross-validate a classifier on every layer of a "
        "backbone")


def add_arguments(parser) -> None:
    parser.add_argument("data", help="labelled images (train and val parts are pooled)")
    _options.add_backbone(parser)
    parser.add_argument("--layer", dest="layers", metavar="LAYER",
                        help="layers to probe (default all: every stage, features and "
                        "pre_logits, plus the fused stages and the Full-Network Embedding of "
                        "the stages and of every convolutional layer; add all-conv for a row "
                        "per convolutional layer)")
    parser.add_argument("--pooling", choices=_options.POOLINGS, help="default avg")
    parser.add_argument("--folds", type=int, help="cross-validation folds (default 5)")
    parser.add_argument("--classifier", choices=("ridge", *_options.PROBE_CLASSIFIERS),
                        help="the probe (default ridge: fast, closed-form CV)")
    _options.add_seed(parser)
    _options.add_out(parser, "folder for layers.csv/json/png", default="layer-sweep")
    _options.add_cache(parser)


@removes_new_output_on_failure
def run(data: str | os.PathLike, out: str | os.PathLike = "layer-sweep",
        backbone: str | None = None, weights: str | None = None, arch: str | None = None,
        layers: str = "all", pooling: str = "avg", folds: int = 5, classifier: str = "ridge",
        random_state: int = 0, cache_dir=None, use_cache: bool = True, progress: bool = False,
        overwrite: bool = False) -> dict:
    """Sweep ``layers`` of ``backbone`` on the images of ``data`` (train and val parts
    pooled) and write ``layers.csv``, ``layers.json`` and the plot to ``out``, which must be
    new, empty or written by transferkit (see :mod:`transferkit.outputs`). The sweep always
    reads and fills the feature cache: ``use_cache`` is accepted for the command line's
    ``--no-cache`` but the sweep has no uncached mode. Returns the summary of
    ``transferkit layers --json``."""
    from transferkit.evaluate.layer_sweep import layer_sweep, write_sweep
    from transferkit.outputs import input_folders, prepare_output_folder

    backbone = backbone or DEFAULT_BACKBONE
    images = pooled_images(data, random_state=random_state)
    prepare_output_folder(out, command="layers", inputs=(data, *input_folders(images.paths)),
                          overwrite=overwrite)
    sweep = layer_sweep(images.paths, images.labels, backbone=backbone, weights=weights,
                        arch=arch, layers=layers, pooling=pooling, folds=folds,
                        classifier=classifier, random_state=random_state, cache_dir=cache_dir,
                        progress=progress)
    summary = sweep.to_dict()
    summary["files"] = write_sweep(sweep, out, title=f"{Path(data).name}: {backbone} layers",
                                   overwrite=overwrite)
    return summary


def render(summary: dict) -> str:
    rows = [["layer", "dim", "balanced accuracy", "seconds"]]
    for row in summary["rows"]:
        rows.append([row["layer"], str(row["dim"]), f"{row['balanced_accuracy_mean']:.3f} ± "
                     f"{row['balanced_accuracy_std']:.3f}", f"{row['seconds']:.2f}"])
    lines = [format_table(rows),
             f"best single layer: {summary['best_layer']}; best overall: {summary['best_overall']} "
             f"({summary['folds']}-fold CV, {summary['classifier']}, {summary['n_images']} images)"]
    comparisons = summary.get("comparisons") or []
    if comparisons:
        runner_up = comparisons[0]
        lines.append(
            f"{runner_up['best']} vs runner-up {runner_up['other']}: "
            f"{100 * runner_up['difference']:+.1f} ± {100 * runner_up['difference_sd']:.1f} points "
            f"per fold (better in {runner_up['wins']}, worse in {runner_up['losses']}, tied in "
            f"{runner_up['ties']} of {runner_up['folds']} folds; corrected paired t-test "
            f"p = {runner_up['p_value']:.2g})")
    lines.append(f"wrote {summary['files']['csv']}, {summary['files']['plot']}")
    return "\n".join(lines)
