"""``transferkit multitask``: multi-task vs single-task from a CSV of labels.

The CSV has a ``path`` column and one label column per task (an empty cell: that row
has no label of that task). Frozen-backbone features of every image are extracted once
(and cached); a seeded split, stratified by the first task, holds out ``val_fraction``
of the images. On the training part it trains

* one :class:`~transferkit.methods.multitask.MultiTaskClassifier` on every task
  (``weighting`` fixed or uncertainty), and
* one single-task model per task — the same shared block and one head, the same
  epochs and seed, trained on that task's labels alone,

and reports each task's validation accuracy under both.
"""

from __future__ import annotations

import os
import time

from transferkit.backbones.registry import DEFAULT_BACKBONE
from transferkit.errors import DataError
from transferkit.jobs import _options
from transferkit.jobs._common import format_score, format_table, skipped_fields, skipped_lines

NAME = "multitask"
HELP = ("multi-task learning: one shared network, one head per task (CSV with path + one "
        "column per task); compares each task multi-task vs single-task")


def add_arguments(parser) -> None:
    parser.add_argument("csv_path", metavar="csv", help="CSV with a 'path' column and one label "
                        "column per task (an empty cell: no label of that task)")
    parser.add_argument("--tasks", help="comma-separated task columns (default: every column "
                        "but path); the first one stratifies the train/val split")
    parser.add_argument("--weighting", choices=["fixed", "uncertainty"],
                        help="task-loss weighting: fixed weights, or learned uncertainty "
                        "weights (Kendall et al. 2018); default fixed")
    parser.add_argument("--task-weights", help="comma-separated fixed weights, one per task "
                        "(default all 1)")
    _options.add_val_fraction(parser, "share of the images held out for validation, stratified "
                              "by the first task (default 0.2)")
    parser.add_argument("--epochs", type=int, help="training epochs (default 60)")
    _options.add_backbone(parser, help=f"frozen feature backbone (default {DEFAULT_BACKBONE})")
    _options.add_device(parser)
    _options.add_seed(parser)
    _options.add_cache(parser)


def _parse_weights(task_weights, tasks: list[str]):
    if task_weights is None or isinstance(task_weights, dict):
        return task_weights
    if isinstance(task_weights, str):
        try:
            task_weights = [float(w) for w in task_weights.split(",") if w.strip()]
        except ValueError as exc:
            raise DataError(f"task weights must be numbers separated by commas ({exc}).") from exc
    if len(task_weights) != len(tasks):
        raise DataError(f"{len(task_weights)} task weights for {len(tasks)} tasks {tasks}.")
    return dict(zip(tasks, task_weights))


def run(csv_path: str | os.PathLike, tasks: list[str] | str | None = None,
        weighting: str = "fixed", task_weights=None, val_fraction: float = 0.2,
        epochs: int | None = None, backbone: str | None = None, weights: str | None = None,
        arch: str | None = None, device: str = "auto", random_state: int = 0,
        cache_dir: str | None = None, use_cache: bool = True, progress: bool = False) -> dict:
    """Train multi-task and single-task models on a CSV; return a JSON-able summary."""
    import numpy as np

    from transferkit.data.dataset import LabelledImages, read_multitask_csv, stratified_split
    from transferkit.features.extract import FrozenExtractor
    from transferkit.methods import create_method

    start = time.perf_counter()
    if isinstance(tasks, str):
        tasks = [t.strip() for t in tasks.split(",") if t.strip()]
    data = read_multitask_csv(csv_path, tasks)
    tasks = data.tasks
    task_weights = _parse_weights(task_weights, tasks)

    extractor = FrozenExtractor.from_name(backbone or DEFAULT_BACKBONE, weights, arch,
                                          cache_dir=cache_dir, use_cache=use_cache)
    extracted = extractor.extract(data.paths, progress=progress)
    features = extracted.features
    labels = {t: np.asarray(column, dtype=object)[extracted.ok] for t, column in data.labels.items()}
    paths = [p for p, ok in zip(data.paths, extracted.ok) if ok]
    if len(paths) < 4:
        raise DataError(f"{csv_path}: only {len(paths)} readable image(s); need a few per class.")

    # Split stratified by the first task; rows without its label form their own stratum.
    first = labels[tasks[0]]
    strata = sorted({str(v) for v in first if v is not None})
    codes = np.array([len(strata) if v is None else strata.index(str(v)) for v in first])
    train, val = stratified_split(LabelledImages(list(range(len(paths))), codes,
                                                strata + ["(no label)"]),
                                  val_fraction, random_state)
    train_rows, val_rows = np.asarray(train.paths, dtype=int), np.asarray(val.paths, dtype=int)
    options = {"device": device, "random_state": random_state, "progress": progress}
    if epochs is not None:
        options["epochs"] = int(epochs)

    def accuracy(model, task) -> tuple[float | None, int]:
        truth = labels[task][val_rows]
        known = np.array([v is not None for v in truth])
        if not known.any():
            return None, 0
        predicted = model.predict(features[val_rows][known])[task]
        return float(np.mean(predicted == truth[known].astype(str))), int(known.sum())

    tick = time.perf_counter()
    multi = create_method("multitask", tasks=tasks, task_weighting=weighting,
                          task_weights=task_weights, **options)
    multi.fit(features[train_rows], {t: labels[t][train_rows] for t in tasks})
    multi_seconds = time.perf_counter() - tick
    per_task = {}
    for task in tasks:
        column = labels[task][train_rows]
        rows = train_rows[np.array([v is not None for v in column])]
        tick = time.perf_counter()
        single = create_method("multitask", tasks=[task], **options).fit(
            features[rows], {task: labels[task][rows]})
        multi_acc, n_val = accuracy(multi, task)
        single_acc, _ = accuracy(single, task)
        per_task[task] = {"classes": [str(c) for c in multi.classes_[task]],
                          "n_train": int(len(rows)), "n_val": n_val,
                          "multitask_accuracy": multi_acc, "single_task_accuracy": single_acc,
                          "task_weight": multi.task_weights_[task],
                          "single_task_seconds": round(time.perf_counter() - tick, 2)}
    return {"csv": str(csv_path), "tasks": tasks, "weighting": weighting,
            "backbone": backbone or DEFAULT_BACKBONE, "n_images": len(paths),
            "n_train": int(len(train_rows)), "n_val": int(len(val_rows)),
            "validation": f"stratified split by task {tasks[0]!r}: {val_fraction:.0%} held out, "
                          f"seed {random_state}",
            "epochs": multi.epochs, "per_task": per_task,
            "log_vars": getattr(multi, "log_vars_", None),
            "multitask_seconds": round(multi_seconds, 2),
            **skipped_fields(extracted.skipped),
            "seconds": round(time.perf_counter() - start, 2)}


def render(summary: dict) -> str:
    lines = [f"{summary['n_images']} images: {summary['n_train']} train, {summary['n_val']} "
             f"validation ({summary['validation']}); backbone {summary['backbone']} (frozen), "
             f"{summary['epochs']} epochs"]
    rows = [["task", "classes", "train", "val", "single-task",
             f"multi-task ({summary['weighting']})", "task weight"]]
    for task, info in summary["per_task"].items():
        rows.append([task, str(len(info["classes"])), str(info["n_train"]), str(info["n_val"]),
                     format_score(info["single_task_accuracy"]),
                     format_score(info["multitask_accuracy"]), f"{info['task_weight']:.3f}"])
    lines.append(format_table(rows))
    if summary["weighting"] == "uncertainty":
        lines.append("task weight = exp(-s_t), s_t = log σ_t² learned")
    lines += skipped_lines(summary)
    lines.append(f"{summary['seconds']:.0f} s")
    return "\n".join(lines)
