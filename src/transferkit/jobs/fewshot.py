"""``transferkit fewshot``: N-way K-shot classification of query images given a support
folder (one sub-folder per class, K images each), by nearest class prototype on plain
pretrained features or on the embedding of a learned similarity (a ``fewshot-train``
bundle)."""

from __future__ import annotations

import time
from pathlib import Path

from transferkit.backbones.registry import DEFAULT_BACKBONE
from transferkit.errors import BundleError, DataError
from transferkit.jobs import _options
from transferkit.jobs._common import (
    format_table,
    load_model,
    read_labelled_folder,
    skipped_fields,
    skipped_lines,
)

NAME = "fewshot"
HELP = ("one-/few-shot classification: each query image goes to the nearest class prototype "
        "of a support set")


def add_arguments(parser) -> None:
    parser.add_argument("--support", required=True, help="support images: one sub-folder per "
                        "class, K images each (K = 1 for one-shot)")
    parser.add_argument("--query", required=True, help="images to classify; sub-folders named "
                        "like support classes make them labelled (accuracy is reported)")
    parser.add_argument("--similarity", help="a learned similarity from `transferkit "
                        "fewshot-train` (default: plain pretrained features)")
    parser.add_argument("--metric", choices=["cosine", "euclidean"], help="default cosine")
    parser.add_argument("--rule", choices=["prototype", "nearest"],
                        help="class mean (Snell et al. 2017, the default) or nearest support image")
    _options.add_backbone(parser, help=f"backbone without --similarity (default "
                          f"{DEFAULT_BACKBONE})", checkpoint=False)
    parser.add_argument("--layer", help="layer(s) without --similarity (default pre_logits), "
                        "e.g. blocks.2,blocks.3,blocks.4,blocks.5 (see `transferkit backbones "
                        "--layers`)")
    _options.add_cache(parser)


def _labelled_query(query: Path, classes: list[str]):
    """``(paths, labels or None)``: class sub-folders named like support classes → labelled."""
    from transferkit.data.dataset import collect_images, read_image_folder

    subfolders = sorted(p for p in query.iterdir() if p.is_dir() and not p.name.startswith("."))
    matching = [p for p in subfolders if p.name in classes]
    if matching:
        unknown = [p.name for p in subfolders if p.name not in classes]
        if unknown:
            raise DataError(f"{query}: sub-folders {unknown} are not classes of the support set "
                            f"({len(classes)} classes); name query sub-folders like support "
                            "classes, or give unlabelled images.")
        images = read_image_folder(query, classes)
        return images.paths, [classes[i] for i in images.labels]
    return collect_images([query]), None


def _load_similarity(similarity, cache_dir, use_cache: bool, progress: bool):
    """A ``fewshot-train`` bundle, its feature cache pointed where the caller asks."""
    from transferkit.methods import method_class

    learned = load_model(similarity, cache_dir, use_cache, progress)
    if not isinstance(learned, method_class("siamese")):
        raise BundleError(f"{similarity}: a {type(learned).__name__} bundle, not a "
                          "similarity from `transferkit fewshot-train`.")
    return learned


def run(support, query, similarity=None, backbone: str | None = None,
        layer: str = "pre_logits", pooling: str = "avg", metric: str = "cosine",
        rule: str = "prototype", cache_dir=None, use_cache: bool = True,
        progress: bool = False) -> dict:
    """Classify the images of ``query`` into the classes of ``support``.

    ``support``: folder of class sub-folders (K images each, K >= 1). ``query``: images
    (any layout), or class sub-folders named like the support classes; then accuracy is
    reported. ``similarity``: a bundle folder from ``fewshot-train`` (its backbone and
    layer are used and ``backbone``/``layer``/``pooling`` are ignored), or None for
    plain pretrained features. With a similarity, each prediction also says whether
    the query and the nearest support image of its class pass verification
    (similarity >= the bundle's threshold λ).
    """
    import numpy as np

    from transferkit.data.dataset import collect_images
    from transferkit.evaluate.metrics import wilson_interval
    from transferkit.features.extract import FrozenExtractor
    from transferkit.methods import create_method

    start = time.perf_counter()
    support, query = Path(support), Path(query)
    if not query.exists():
        raise DataError(f"{query}: no such file or folder.")
    support_images = read_labelled_folder(support, what="support images")
    classes = support_images.classes
    query_paths, query_labels = (_labelled_query(query, classes) if query.is_dir()
                                 else (collect_images([query]), None))

    learned = None
    if similarity is not None:
        learned = _load_similarity(similarity, cache_dir, use_cache, progress)
        extractor = learned._extractor()
    else:
        extractor = FrozenExtractor.from_name(backbone or DEFAULT_BACKBONE, layer=layer,
                                              pooling=pooling, cache_dir=cache_dir,
                                              use_cache=use_cache)
    support_result = extractor.extract(support_images.paths, progress=progress)
    query_result = extractor.extract(query_paths, progress=progress)
    skipped = support_result.skipped + query_result.skipped
    support_labels = np.asarray([classes[i] for i in support_images.labels])[support_result.ok]
    missing = sorted(set(classes) - set(support_labels.tolist()))
    if missing:
        raise DataError(f"{support}: no readable support image of class(es) {missing}.")
    if not query_result.ok.any():
        raise DataError(f"{query}: none of the {len(query_paths)} query images could be read.")
    support_x, query_x = support_result.features, query_result.features
    if learned is not None:
        support_x, query_x = learned.transform_features(support_x), learned.transform_features(query_x)

    model = create_method("prototypes", metric=metric, rule=rule).fit(support_x, support_labels)
    predicted = model.predict(query_x)
    distances = model.class_distances(query_x)
    kept = [p for p, ok in zip(query_paths, query_result.ok) if ok]
    predictions = []
    for i, path in enumerate(kept):
        row = {"path": str(path), "predicted": str(predicted[i]),
               "distance": float(distances[i].min())}
        if learned is not None:
            of_class = support_x[support_labels == predicted[i]]
            best = float((of_class @ query_x[i]).max())
            row.update(similarity=best, verified=bool(best >= learned.threshold_))
        predictions.append(row)
    shots = np.unique(support_labels, return_counts=True)[1]
    result = {
        "support": str(support), "query": str(query), "n_way": len(classes),
        "k_shot": int(shots.min()) if shots.min() == shots.max() else [int(shots.min()), int(shots.max())],
        "n_query": len(kept), "metric": metric, "rule": rule,
        "similarity": str(similarity) if similarity is not None else None,
        "backbone": extractor.identity()["backbone"]["name"], "layers": extractor.layers,
        "predictions": predictions,
        **skipped_fields(skipped),
    }
    if learned is not None:
        result.update(threshold=learned.threshold_, eer_validation=learned.eer_)
    if query_labels is not None:
        truth = np.asarray(query_labels)[query_result.ok]
        n_correct = int((truth == predicted).sum())
        for row, label in zip(predictions, truth):
            row["true"] = str(label)
        result.update(accuracy=n_correct / len(truth),
                      accuracy_ci95=list(wilson_interval(n_correct, len(truth))))
    result["seconds"] = round(time.perf_counter() - start, 3)
    return result


def render(summary: dict) -> str:
    shots = summary["k_shot"]
    lines = [f"{summary['n_way']}-way "
             f"{shots if isinstance(shots, int) else '-'.join(map(str, shots))}-shot, "
             f"{summary['rule']} ({summary['metric']}) on "
             + (f"similarity {summary['similarity']}" if summary["similarity"]
                else f"plain {summary['backbone']} features ({','.join(summary['layers'])})")]
    if "accuracy" in summary:
        low, high = summary["accuracy_ci95"]
        lines.append(f"accuracy {summary['accuracy']:.3f} on {summary['n_query']} query images "
                     f"(95% CI {low:.3f}–{high:.3f})")
    else:
        verified = bool(summary["similarity"])
        rows = [["image", "predicted", "distance"] + (["verified"] if verified else [])]
        for row in summary["predictions"]:
            rows.append([row["path"], row["predicted"], f"{row['distance']:.3f}"]
                        + ([("yes" if row["verified"] else "no")] if "verified" in row else []))
        lines.append(format_table(rows))
    if summary["similarity"]:
        lines.append(f"verification threshold λ = {summary['threshold']:.3f} (equal-error point "
                     "on validation pairs)")
    return "\n".join(lines + skipped_lines(summary))
