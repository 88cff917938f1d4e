"""The jobs behind ``transferkit fewshot`` and ``transferkit fewshot-train``.

``fewshot``: N-way K-shot classification of query images given a support folder (one
sub-folder per class, K images each), by nearest class prototype on plain pretrained
features or on the embedding of a learned similarity (a ``fewshot-train`` bundle).
``fewshot_train``: learn that similarity (:class:`~transferkit.methods.siamese.SiameseSimilarity`)
on background classes and save it as a bundle.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from transferkit.data.dataset import collect_images, list_image_files, read_image_folder
from transferkit.errors import BundleError, DataError


def _labelled_query(query: Path, classes: list[str]):
    """``(paths, labels or None)``: class sub-folders named like support classes → labelled."""
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


def read_leaf_classes(roots) -> tuple[list[Path], np.ndarray]:
    """Images under each root, labelled by their folder relative to the root
    (``root/class/img`` or ``root/alphabet/character/img``, as Omniglot's background sets).
    With several roots the class names start with the root's name, so they stay apart."""
    paths, labels = [], []
    roots = [Path(r) for r in ([roots] if isinstance(roots, (str, os.PathLike)) else roots)]
    for root in roots:
        if not root.is_dir():
            raise DataError(f"{root}: not a folder. Give folders of class sub-folders.")
        for path in list_image_files(root):
            if path.parent == root:
                raise DataError(f"{path}: images must lie in class sub-folders of {root}.")
            label = path.parent.relative_to(root).as_posix()
            paths.append(path)
            labels.append(f"{root.name}/{label}" if len(roots) > 1 else label)
    if not paths:
        raise DataError("no images found in " + ", ".join(map(str, roots)))
    return paths, np.asarray(labels)


def fewshot(support, query, similarity=None, backbone: str | None = None,
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
    from transferkit.evaluate.metrics import wilson_interval
    from transferkit.features.extract import FrozenExtractor
    from transferkit.methods.prototypes import PrototypeClassifier

    start = time.perf_counter()
    support, query = Path(support), Path(query)
    if not query.exists():
        raise DataError(f"{query}: no such file or folder.")
    support_images = read_image_folder(support)
    classes = support_images.classes
    if len(classes) < 2:
        raise DataError(f"{support}: few-shot classification needs at least two class "
                        f"sub-folders, found {classes}.")
    query_paths, query_labels = (_labelled_query(query, classes) if query.is_dir()
                                 else (collect_images([query]), None))

    learned = None
    if similarity is not None:
        from transferkit.bundle import load_bundle
        from transferkit.methods.siamese import SiameseSimilarity

        learned = load_bundle(similarity)
        if not isinstance(learned, SiameseSimilarity):
            raise BundleError(f"{similarity}: a {type(learned).__name__} bundle, not a "
                              "similarity from `transferkit fewshot-train`.")
        learned.set_params(cache_dir=cache_dir, use_cache=use_cache, progress=progress)
        learned.extractor_ = None  # rebuilt with this call's cache options
        extractor = learned._extractor()
    else:
        extractor = FrozenExtractor.from_name(backbone or "efficientnet_lite0", layer=layer,
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

    model = PrototypeClassifier(metric=metric, rule=rule).fit(support_x, support_labels)
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
        "n_skipped": len(skipped),
        "skipped": [{"path": p, "reason": r} for p, r in skipped],
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


def fewshot_train(background, out, backbone: str | None = None, layer: str = "pre_logits",
                  pooling: str = "avg", loss: str = "contrastive", epochs: int = 30,
                  random_state: int = 0, device: str = "auto", cache_dir=None,
                  use_cache: bool = True, progress: bool = False, overwrite: bool = False,
                  **options) -> dict:
    """Learn a similarity on the classes of ``background`` (one or more folders of class
    sub-folders, e.g. Omniglot's ``images_background``) and save it to ``out``, which must
    be new, empty or written by transferkit; a saved model there is replaced only with
    ``overwrite`` (see :mod:`transferkit.outputs`)."""
    from transferkit.bundle import save_bundle
    from transferkit.methods.siamese import SiameseSimilarity
    from transferkit.outputs import prepare_output_folder

    start = time.perf_counter()
    paths, labels = read_leaf_classes(background)
    folders = [background] if isinstance(background, (str, os.PathLike)) else list(background)
    prepare_output_folder(out, command="fewshot-train", inputs=folders, overwrite=overwrite)
    model = SiameseSimilarity(backbone=backbone or "efficientnet_lite0", layer=layer,
                              pooling=pooling, loss=loss, epochs=epochs,
                              random_state=random_state, device=device, cache_dir=cache_dir,
                              use_cache=use_cache, progress=progress, **options)
    model.fit(paths, labels)
    metrics = {"eer_validation": model.eer_, "threshold": model.threshold_,
               "validation": model.validation_}
    save_bundle(model, out, metrics=metrics, overwrite=overwrite)
    return {"out": str(out), "n_images": len(paths), "n_classes": int(len(np.unique(labels))),
            "backbone": model.backbone, "layers": model._extractor().layers, "loss": loss,
            "epochs_run": model.epochs_run_, "best_epoch": model.best_epoch_,
            "validation": model.validation_, "eer_validation": model.eer_,
            "threshold": model.threshold_, "n_skipped": len(model.skipped_),
            "skipped": [{"path": p, "reason": r} for p, r in model.skipped_],
            "seconds": round(time.perf_counter() - start, 3)}
