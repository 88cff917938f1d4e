"""Do the shallow classifiers cost less than the network? (the `classifiers` section of RESULTS.md)

Issues 16 (item 3) and 21: a 100-class, 3,000-image training set made the old defaults
(``LogisticRegressionCV`` over 13 C × 5 folds; one-vs-one ``SVC`` inside a calibration
inside a grid search) take minutes to hours. What it measures:

1. Fit time of every classifier ``fit`` offers (and the layer sweep's ridge) against the
   number of classes (2, 17, 50, 100) × images per class (30, 100), on synthetic features
   of the two shapes transferkit fits: 1280-d pre-logits (standardised) and 2096-d stage
   features through the Full-Network Embedding (ternary). Each fit runs in a child
   process with a time limit; a fit over it is shown as "> LIMIT".
2. The issue's case, 100 classes × 30 images, old default vs new, timed interleaved
   (old, new, old, new), the ratio beside the absolute figures and the load average.
3. Accuracy on real features (EfficientNet-Lite0, every shared set usable for
   classification, seeded splits): each old default beside the new one, and the
   accuracy of logreg and svm against C (how the fixed C was chosen: on oxford17flowers
   and office31/amazon; the other sets confirm it).
4. ``transferkit fit`` end to end (``--method linear_probe`` and ``--method fne``) on a
   100-class folder built from the shared sets, 30 training images per class, cold
   (empty feature cache) and warm.

    .venv/bin/python -m benchmarks.bench_classifiers              # all, writes RESULTS.md
    .venv/bin/python -m benchmarks.bench_classifiers --parts grid issue
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from benchmarks._common import (
    add_datasets_argument,
    add_output_arguments,
    add_seeds_argument,
    announce_machine,
    image_files,
    load_average,
    log,
    publish,
    transferkit_command,
    verdict,
)

BACKBONE = "efficientnet_lite0"
PARTS = ("grid", "issue", "accuracy", "end-to-end")
GRID_CLASSES = (2, 17, 50, 100)
GRID_PER_CLASS = (30, 100)
SHAPES = {"1280-d standardised": (1280, None), "2096-d FNE": (2096, "fne")}
NEW = ("logreg", "svm", "knn", "mlp", "ridge", "logreg-cv")
GOAL_CLASSIFIER_SECONDS = 30.0   # issue 21: every classifier, 100 classes × 30 images
GOAL_LOGREG_SECONDS = 10.0       # issue 16: the default linear probe, same case
GOAL_PROBE_END_TO_END = 90.0     # issue 16: whole linear-probe fit, cold
GOAL_FNE_END_TO_END = 180.0      # issue 21: whole fne fit
SELECTION_SETS = ("oxford17flowers", "office31_amazon")
LOGREG_CS = (0.01, 0.03, 0.1, 0.3, 1.0)
SVM_CS = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2)


# --------------------------------------------------------------------------- classifiers

def old_classifier(name: str, y, random_state: int):
    """The defaults before issues 16 / 21, as they were, for the "before" columns."""
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.model_selection import GridSearchCV
    from sklearn.neural_network import MLPClassifier
    from sklearn.svm import SVC

    from transferkit.features.classifiers import C_GRID, _folds, bare_classifier

    if name == "logreg":
        return bare_classifier("logreg-cv", y, 5, random_state)  # unchanged, now opt-in
    folds = _folds(y, 5, random_state)
    if name == "svm":
        svc = CalibratedClassifierCV(SVC(kernel="linear", random_state=random_state),
                                     cv=folds, ensemble=False)
        return GridSearchCV(svc, {"estimator__C": C_GRID}, cv=folds, scoring="balanced_accuracy")
    if name == "mlp":
        return MLPClassifier(hidden_layer_sizes=(256,), alpha=1e-3, max_iter=1000,
                             early_stopping=len(y) >= 100, random_state=random_state)
    raise ValueError(name)


def build(name: str, y, embedding, random_state: int = 0, old: bool = False, C=None):
    """make_probe_pipeline's pipeline for ``name`` (old default, or new with C set)."""
    from sklearn.pipeline import make_pipeline

    from transferkit.features.classifiers import make_probe_pipeline

    pipeline = make_probe_pipeline("knn" if old else name, y, 5, random_state, embedding=embedding)
    if old:
        pipeline = make_pipeline(*[step for _, step in pipeline.steps[:-1]],
                                 old_classifier(name, y, random_state))
    elif C is not None:
        final = pipeline.steps[-1][1]
        (final.estimator if hasattr(final, "estimator") else final).set_params(C=C)
    return pipeline


def _fit_in_child(queue, name, X, y, embedding, old, C):
    warnings.filterwarnings("ignore")
    pipeline = build(name, y, embedding, old=old, C=C)
    start = time.perf_counter()
    pipeline.fit(X, y)
    queue.put(time.perf_counter() - start)


def timed_fit(name, X, y, embedding=None, old=False, C=None, limit=60.0) -> float:
    """Seconds to fit in a child process; ``inf`` when it ran over ``limit``."""
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_fit_in_child, args=(queue, name, X, y, embedding, old, C))
    child.start()
    child.join(limit)
    if child.is_alive():
        child.kill()
        child.join()
        return float("inf")
    return queue.get() if child.exitcode == 0 else float("nan")


def synthetic(n_classes: int, per_class: int, dim: int, seed: int = 0):
    """Gaussian classes whose means overlap (real features are not separable by a mile)."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(n_classes), per_class)
    means = rng.normal(scale=0.35, size=(n_classes, dim))
    X = (means[y] + rng.normal(size=(len(y), dim))).astype(np.float32)
    return X, y


def seconds_cell(value: float, limit: float) -> str:
    if np.isinf(value):
        return f"> {limit:.0f} s"
    if np.isnan(value):
        return "failed"
    return f"{value:.1f} s" if value >= 0.95 else f"{value:.2f} s"


# --------------------------------------------------------------------------- 1. grid

def run_grid(limit: float) -> dict:
    table = {}
    for shape, (dim, embedding) in SHAPES.items():
        for n_classes in GRID_CLASSES:
            for per_class in GRID_PER_CLASS:
                X, y = synthetic(n_classes, per_class, dim)
                row = {"load": load_average()}
                for name in NEW:
                    row[name] = timed_fit(name, X, y, embedding, limit=limit)
                table[f"{shape}|{n_classes}|{per_class}"] = row
                log(f"grid {shape} {n_classes}×{per_class}: " + ", ".join(
                    f"{k} {seconds_cell(v, limit)}" for k, v in row.items() if k != "load"))
    return table


# --------------------------------------------------------------------------- 2. issue case

def run_issue_case(limit: float, repeats: int = 2) -> dict:
    """100 classes × 30 images: each old default vs its replacement, interleaved."""
    X, y = synthetic(100, 30, 1280)
    Xf, _ = synthetic(100, 30, 2096)
    cases = [("logreg", X, None), ("svm", X, None), ("mlp", X, None), ("svm", Xf, "fne")]
    result = {}
    for name, features, embedding in cases:
        key = f"{name}{' (FNE)' if embedding else ''}"
        old, new, loads = [], [], []
        for _ in range(repeats):
            loads.append(load_average())
            old.append(timed_fit(name, features, y, embedding, old=True, limit=limit))
            new.append(timed_fit(name, features, y, embedding, limit=limit))
            if np.isinf(old[-1]):
                break  # one run over the limit says it; another would cost the limit again
        result[key] = {"old": old, "new": new, "load": float(np.mean(loads))}
        log(f"issue case {key}: old {[seconds_cell(v, limit) for v in old]}, new "
            f"{[seconds_cell(v, limit) for v in new]}")
    return result


# --------------------------------------------------------------------------- 3. accuracy

def real_sets(root: Path) -> dict[str, tuple[list[Path], np.ndarray, str, tuple]]:
    """name → (paths, labels, protocol, (train per class, test per class or None))."""
    sets = {}
    if (root / "hymenoptera").is_dir():
        paths = image_files(root / "hymenoptera" / "train") + image_files(root / "hymenoptera" / "val")
        sets["hymenoptera"] = (paths, np.array([p.parent.name for p in paths]),
                               "train → val as given", None)
    for name, folder, train, test in (("oxford17flowers", "oxford17flowers/all", 40, 40),
                                      ("sign_language_digits", "sign_language_digits/all", 20, None),
                                      ("office31_amazon", "office31/amazon", 20, None),
                                      ("office31_webcam", "office31/webcam", 10, None),
                                      ("office31_dslr", "office31/dslr", 6, None)):
        if (root / folder).is_dir():
            paths = image_files(root / folder)
            rest = "the rest" if test is None else f"{test}"
            sets[name] = (paths, np.array([p.parent.name for p in paths]),
                          f"{train} train / {rest} test per class", (train, test))
    omniglot = root / "omniglot_small"
    if omniglot.is_dir():
        paths = [p for part in ("images_background_small1", "images_background_small2")
                 for p in image_files(omniglot / part)]
        labels = np.array([f"{p.parents[2].name}/{p.parent.parent.name}/{p.parent.name}"
                           for p in paths])
        sets["omniglot"] = (paths, labels, "characters as classes, 10 train / 10 test", (10, 10))
    return sets


def split(labels: np.ndarray, paths: list[Path], sizes, seed: int):
    if sizes is None:  # hymenoptera's own split
        train = np.array(["train" in p.parts[-3:] for p in paths])
        return np.flatnonzero(train), np.flatnonzero(~train)
    rng = np.random.default_rng(seed)
    n_train, n_test = sizes
    train, test = [], []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        train.extend(members[:n_train])
        test.extend(members[n_train:None if n_test is None else n_train + n_test])
    return np.sort(train), np.sort(test)


def extract(paths, cache_dir: Path):
    from transferkit.features.extract import FrozenExtractor

    extractor = FrozenExtractor.from_name(BACKBONE, layer="all", pooling="avg", cache_dir=cache_dir)
    result = extractor.extract(paths)
    stages = extractor.identity()["stages"]
    last = np.arange(result.layers["pre_logits"].start, result.layers["pre_logits"].stop)
    fused = np.concatenate([np.arange(result.layers[s].start, result.layers[s].stop)
                            for s in stages])
    return result, last, fused


ACCURACY_ROWS = (  # (row, features, classifier, embedding)
    ("logreg", "last", "logreg", None),
    ("svm", "last", "svm", None),
    ("mlp", "last", "mlp", None),
    ("FNE + svm (fit --method fne)", "fused", "svm", "fne"),
    ("FNE + logreg", "fused", "logreg", "fne"),
)


def run_accuracy(root: Path, cache_dir: Path, seeds, limit: float) -> dict:
    from sklearn.metrics import accuracy_score

    results = {}
    for name, (paths, labels, protocol, sizes) in real_sets(root).items():
        log(f"[{name}] features of {len(paths)} images …")
        features, last, fused = extract(paths, cache_dir)
        kept = [p for p, ok in zip(paths, features.ok) if ok]
        classes, y = np.unique(labels[features.ok], return_inverse=True)
        blocks = {"last": last, "fused": fused}
        item = {"protocol": protocol, "classes": len(classes), "rows": {}, "c_sweep": {}}
        for seed in seeds if sizes is not None else seeds[:1]:
            train, test = split(y, kept, sizes, seed)
            item["n_train"], item["n_test"] = int(len(train)), int(len(test))

            def score(model, cols):
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    model.fit(features.features[np.ix_(train, cols)], y[train])
                    predicted = model.predict(features.features[np.ix_(test, cols)])
                return float(accuracy_score(y[test], predicted))

            for row, block, classifier, embedding in ACCURACY_ROWS:
                cols = blocks[block]
                for when in ("old", "new"):
                    cell = item["rows"].setdefault(row, {}).setdefault(when, [])
                    if when == "old" and cell and cell[-1] is None:
                        continue  # ran over the limit on an earlier seed
                    start = time.perf_counter()
                    value = _score_with_limit(
                        lambda: score(build(classifier, y[train], embedding, seed,
                                            old=when == "old"), cols), limit)
                    cell.append(value)
                    item["rows"][row].setdefault(f"{when}_seconds", []).append(
                        time.perf_counter() - start)
            for classifier, grid in (("logreg", LOGREG_CS), ("svm", SVM_CS)):
                for feature, embedding in (("last", None), ("fused", "fne")):
                    for C in grid:
                        key = f"{classifier}|{feature}|{C:g}"
                        model = build(classifier, y[train], embedding, seed, C=C)
                        item["c_sweep"].setdefault(key, []).append(score(model, blocks[feature]))
            log(f"[{name}] seed {seed}: " + ", ".join(
                f"{row} {_fmt(item['rows'][row]['old'][-1])} → {item['rows'][row]['new'][-1]:.3f}"
                for row, *_ in ACCURACY_ROWS))
        results[name] = item
    return results


def _score_with_limit(score, limit: float):
    """``score()`` in a child process; None when it ran over ``limit`` seconds."""
    context = multiprocessing.get_context("fork")
    queue = context.Queue()

    def target():
        queue.put(score())

    child = context.Process(target=target)
    child.start()
    child.join(limit)
    if child.is_alive():
        child.kill()
        child.join()
        return None
    return queue.get() if child.exitcode == 0 else None


def _fmt(value) -> str:
    return "—" if value is None else f"{value:.3f}"


# --------------------------------------------------------------------------- 4. end to end

def build_hundred_classes(root: Path, dest: Path, per_class: int = 30, val: int = 10) -> dict:
    """A 100-class folder (train/ and val/) of real images copied from the shared sets:
    Office-31 amazon (31 classes), the 25 largest Office-31 webcam+dslr classes (as
    other classes: real photos, not product shots), oxford17flowers (17), sign language
    digits (10), MNIST-M digits (10), hymenoptera (2), the 5 omniglot alphabets of
    small1 (5). ``per_class`` training images and up to ``val`` validation images each."""
    groups: dict[str, list[Path]] = {}
    for folder in sorted((root / "office31" / "amazon").iterdir()):
        groups[f"amazon_{folder.name}"] = image_files(folder)
    photo = {c.name: image_files(root / "office31" / "webcam" / c.name)
             + image_files(root / "office31" / "dslr" / c.name)
             for c in (root / "office31" / "webcam").iterdir()}
    for name in sorted(photo, key=lambda c: -len(photo[c]))[:25]:
        groups[f"photo_{name}"] = photo[name]
    for folder in sorted((root / "oxford17flowers" / "all").iterdir()):
        groups[f"flower_{folder.name}"] = image_files(folder)
    for folder in sorted((root / "sign_language_digits" / "all").iterdir()):
        groups[f"sign_{folder.name}"] = image_files(folder)
    for folder in sorted((root / "mnist_m" / "test").iterdir()):
        groups[f"mnistm_{folder.name}"] = image_files(folder)
    for name in ("ants", "bees"):
        groups[f"hymenoptera_{name}"] = (image_files(root / "hymenoptera" / "train" / name)
                                         + image_files(root / "hymenoptera" / "val" / name))
    for folder in sorted((root / "omniglot_small" / "images_background_small1").iterdir()):
        groups[f"omniglot_{folder.name}"] = image_files(folder)
    rng = np.random.default_rng(0)
    counts = {"train": 0, "val": 0}
    for name, files in groups.items():
        files = [files[i] for i in rng.permutation(len(files))]
        for part, chosen in (("train", files[:per_class]),
                             ("val", files[per_class:per_class + val])):
            (dest / part / name).mkdir(parents=True, exist_ok=True)
            for i, path in enumerate(chosen):
                shutil.copyfile(path, dest / part / name / f"{i:03d}{path.suffix.lower()}")
            counts[part] += len(chosen)
    return {"classes": len(groups), **counts}


def time_fit(data: Path, method: str, cache: Path, out: Path) -> tuple[float, dict]:
    command = transferkit_command() + ["fit", str(data), "--method", method, "--cache-dir",
                                       str(cache), "--no-report", "--json", "--out", str(out)]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr}")
    return seconds, json.loads(done.stdout)


def run_end_to_end(root: Path, work: Path) -> dict:
    data = work / "hundred"
    sizes = build_hundred_classes(root, data)
    log(f"end to end: {sizes['classes']} classes, {sizes['train']} train, {sizes['val']} val")
    runs = {}
    for method in ("linear_probe", "fne"):
        cache = work / f"cache-{method}"
        for state in ("cold", "warm"):
            load = load_average()
            seconds, summary = time_fit(data, method, cache, work / f"model-{method}-{state}")
            runs[f"{method}|{state}"] = {"seconds": seconds, "load": load,
                                         "extract": summary["extract_seconds"],
                                         "classifier": summary.get("classifier", "?"),
                                         "val_accuracy": summary["val_accuracy"]}
            log(f"end to end {method} {state}: {seconds:.1f} s (features "
                f"{summary['extract_seconds']:.1f} s), val accuracy {summary['val_accuracy']:.3f}")
    return {"sizes": sizes, "runs": runs}


# --------------------------------------------------------------------------- report

def _mean(values) -> str:
    values = [v for v in values if v is not None]
    return "—" if not values else f"{np.mean(values):.3f}"


def render(parts: dict, machine: str, limit: float, seeds, minutes: float) -> str:
    from transferkit.features.classifiers import (
        LOGREG_C,
        SVM_C,
        SVM_C_FNE,
        describe_classifier,
        make_probe_pipeline,
    )

    y = np.repeat(np.arange(3), 30)
    described = {name: describe_classifier(make_probe_pipeline(name, y)) for name in NEW}
    out = ["## Classifiers: fit time against classes × images, accuracy before / after",
           "", f"Machine: {machine}.", "",
           f"Generated by `python -m benchmarks.bench_classifiers` in {minutes:.1f} min. "
           "Defaults now (`describe_classifier`): " + "; ".join(
               f"`{name}` = {text}" for name, text in described.items()) + ". Before: logreg = "
           "`LogisticRegressionCV` (13 C × 5 folds, now `logreg-cv`); svm = one-vs-one linear "
           "`SVC` in `CalibratedClassifierCV` (5 folds) in `GridSearchCV` (13 C × 5 folds); mlp "
           "= 1000 epochs, early stopping only from 100 images.", ""]
    grid = parts.get("grid")
    if grid:
        out += ["### Fit time (synthetic features; one fit per cell, in a child process, limit "
                f"{limit:.0f} s)", "",
                "| features | classes × images/class | " + " | ".join(NEW) + " | load avg |",
                "|---|---|" + "---|" * (len(NEW) + 1)]
        for key, row in grid.items():
            shape, n_classes, per_class = key.split("|")
            out.append(f"| {shape} | {n_classes} × {per_class} | " + " | ".join(
                seconds_cell(row[name], limit) for name in NEW) + f" | {row['load']:.1f} |")
        worst = max(row[name] for key, row in grid.items() if key.endswith("|100|30")
                    for name in NEW if name != "logreg-cv")
        out += ["", f"Goal (issue 21): every classifier fit offers by default ≤ "
                f"{GOAL_CLASSIFIER_SECONDS:.0f} s on 100 classes × 30 images: slowest "
                f"{seconds_cell(worst, limit)} "
                f"{verdict(worst <= GOAL_CLASSIFIER_SECONDS)} (`logreg-cv`, the opt-in search, "
                "is not a default).", ""]
    issue = parts.get("issue")
    if issue:
        out += ["### The issue's case: 100 classes × 30 images, old default vs new "
                "(interleaved old, new, old, new)", "",
                "| classifier | old | new | old / new | load avg |", "|---|---|---|---|---|"]
        for key, item in issue.items():
            old, new = np.median(item["old"]), np.median(item["new"])
            ratio = f"> {limit / new:.0f}×" if np.isinf(old) else f"{old / new:.0f}×"
            out.append(f"| {key} | {seconds_cell(old, limit)} | {seconds_cell(new, limit)} | "
                       f"{ratio} | {item['load']:.1f} |")
        logreg = np.median(issue["logreg"]["new"])
        out += ["", f"Goal (issue 16): the default linear probe's classifier ≤ "
                f"{GOAL_LOGREG_SECONDS:.0f} s here: {seconds_cell(logreg, limit)} "
                f"{verdict(logreg <= GOAL_LOGREG_SECONDS)}.", ""]
    accuracy = parts.get("accuracy")
    if accuracy:
        names = list(accuracy)
        out += [f"### Test accuracy on real features (Lite0), old default → new, mean over seeds "
                f"{', '.join(map(str, seeds))}", "",
                "| classifier | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
        for row, *_ in ACCURACY_ROWS:
            cells = []
            for name in names:
                cell = accuracy[name]["rows"][row]
                old = _mean(cell["old"]) if all(v is not None for v in cell["old"]) else \
                    f"> {parts['accuracy_limit']:.0f} s"
                cells.append(f"{old} → {_mean(cell['new'])}")
            out.append(f"| {row} | " + " | ".join(cells) + " |")
        out += ["", "| set | protocol | classes | train | test | fit seconds old → new "
                "(logreg, svm, FNE + svm; summed over seeds) |", "|---|---|---|---|---|---|"]
        for name in names:
            item = accuracy[name]
            secs = ", ".join(
                f"{sum(item['rows'][r]['old_seconds']):.0f} → {sum(item['rows'][r]['new_seconds']):.0f}"
                for r in ("logreg", "svm", "FNE + svm (fit --method fne)"))
            out.append(f"| {name} | {item['protocol']} | {item['classes']} | {item['n_train']} | "
                       f"{item['n_test']} | {secs} |")
        out += ["", f"How C was chosen: the value with the best mean accuracy over the "
                f"selection sets ({', '.join(SELECTION_SETS)}), pre-logits and FNE alike; the "
                "other sets confirm it. Mean test accuracy by C (selection sets marked *):", ""]
        chosen_c = {("logreg", "last"): LOGREG_C, ("logreg", "fused"): LOGREG_C,
                    ("svm", "last"): SVM_C, ("svm", "fused"): SVM_C_FNE}
        for classifier, grid_c in (("logreg", LOGREG_CS), ("svm", SVM_CS)):
            for feature in ("last", "fused"):
                out += [f"{classifier} on {'pre-logits' if feature == 'last' else 'FNE'} "
                        f"(chosen C = {chosen_c[classifier, feature]:g}):", "",
                        "| C | " + " | ".join(f"{n}{'*' if n in SELECTION_SETS else ''}"
                                              for n in names) + " | mean of selection sets |",
                        "|---|" + "---|" * (len(names) + 1)]
                for C in grid_c:
                    key = f"{classifier}|{feature}|{C:g}"
                    means = [np.mean(accuracy[n]["c_sweep"][key]) for n in names]
                    selection = [m for n, m in zip(names, means) if n in SELECTION_SETS]
                    tail = f"{np.mean(selection):.3f}" if selection else "—"
                    out.append(f"| {C:g} | " + " | ".join(f"{m:.3f}" for m in means)
                               + f" | {tail} |")
                out.append("")
    e2e = parts.get("end-to-end")
    if e2e:
        sizes = e2e["sizes"]
        out += [f"### `transferkit fit` end to end, {sizes['classes']} classes, {sizes['train']} "
                f"training + {sizes['val']} validation images", "",
                "Built by `build_hundred_classes` from the shared sets (Office-31 amazon, "
                "the 25 largest Office-31 webcam+dslr classes, oxford17flowers, sign language "
                "digits, MNIST-M digits, hymenoptera, 5 omniglot alphabets), 30 training and up "
                "to 10 validation images per class. `fit DATA --method M --cache-dir C "
                "--no-report --json`, wall time of the subprocess; cold = empty feature cache "
                "(ONNX export included), warm = same cache.", "",
                "| method | cache | wall | of which features | classifier | val accuracy | "
                "load avg | goal |", "|---|---|---|---|---|---|---|---|"]
        for key, run in e2e["runs"].items():
            method, state = key.split("|")
            goal = GOAL_PROBE_END_TO_END if method == "linear_probe" else GOAL_FNE_END_TO_END
            met = verdict(run["seconds"] <= goal) if state == "cold" else ""
            out.append(f"| {method} | {state} | {run['seconds']:.0f} s | {run['extract']:.0f} s | "
                       f"{run['classifier']} | {run['val_accuracy']:.3f} | {run['load']:.1f} | "
                       f"{'≤ ' + str(int(goal)) + ' s ' + met if met else ''} |")
        out.append("")
    return "\n".join(out)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_datasets_argument(parser)
    add_seeds_argument(parser)
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--limit", type=float, default=60.0,
                        help="seconds one timed classifier fit may take before it is stopped")
    parser.add_argument("--accuracy-limit", type=float, default=600.0,
                        help="the same for one fit of the accuracy part (the old svm on many "
                             "classes runs over any sensible limit)")
    parser.add_argument("--cache-dir", type=Path,
                        help="feature cache for the accuracy part (default: a temporary one)")
    add_output_arguments(parser)
    args = parser.parse_args(argv)

    warnings.filterwarnings("ignore")
    start = time.perf_counter()
    machine = announce_machine()
    # Imported once here, not in every forked child, whose timings would include it.
    build("svm", np.repeat([0, 1], 5), "fne", old=True)
    import sklearn.neural_network  # noqa: F401
    parts = {"accuracy_limit": args.accuracy_limit}
    with tempfile.TemporaryDirectory(prefix="bench_classifiers-") as tmp:
        if "grid" in args.parts:
            parts["grid"] = run_grid(args.limit)
        if "issue" in args.parts:
            parts["issue"] = run_issue_case(args.limit)
        if "accuracy" in args.parts:
            parts["accuracy"] = run_accuracy(args.datasets, args.cache_dir or Path(tmp) / "cache",
                                             args.seeds, args.accuracy_limit)
        if "end-to-end" in args.parts:
            parts["end-to-end"] = run_end_to_end(args.datasets, Path(tmp))
    publish("classifiers", render(parts, machine, args.limit, args.seeds,
                                  (time.perf_counter() - start) / 60), args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
