"""``transferkit adapt``: domain adaptation from folders of images.

A labelled *source* folder (one sub-folder per class), an unlabelled *target* folder
(any layout; sub-folder names are ignored), optionally a few labelled target images
(``target_labelled``: they train the target oracle, and join the method's loss only for
a semi-supervised method) and labelled target images to score on (``target_test``).
Every run trains three models on the same data — source only, the method, and the
target oracle when target labels are given — so the summary can say how much of the
source-only → oracle gap the method closed, and measures the proxy A-distance between
the domains before and after adaptation.

The methods are the registry's two domain families:

* ``domain-deep`` (``dann``, ``dan``, ``deep-coral``, ``adda``, ``domain-confusion``,
  ``drcn``): train Ganin & Lempitsky's small network on 32×32 RGB images in the shared
  loop (made for digit-like domains; minutes on a CPU). Checkpoints go to
  ``OUT/train/<model>``, so an interrupted run resumes.
* ``domain-shallow`` (``coral``, ``subspace``, ``tca``, ``kmm``, ``reweight``): adapt
  frozen pretrained features (any backbone; cached), then a logistic regression.

With ``demo``, :func:`run_demo` renders printed digits (the lectures' "SYN NUMBERS") as
the source and uses scikit-learn's bundled handwritten digits as the target: nothing to
download.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from transferkit.backbones.registry import DEFAULT_BACKBONE
from transferkit.errors import DataError, TransferkitError
from transferkit.jobs import _options
from transferkit.jobs._common import (
    SMALL_IMAGE_SIZE,
    format_score,
    format_table,
    list_unlabelled_images,
    read_labelled_folder,
    skipped_fields,
    skipped_lines,
)
from transferkit.outputs import removes_new_output_on_failure

NAME = "adapt"
HELP = ("domain adaptation: labelled source images, unlabelled target images; compares with "
        "source only and the target oracle")

DEMO_OUT = "transferkit-adapt-demo"
# The reference models of each family, by their role in the summary.
BASELINES = {"domain-deep": {"source-only": "deep-source-only", "oracle": "deep-source-only"},
             "domain-shallow": {"source-only": "source-only", "oracle": "target-oracle"}}


def adaptation_methods() -> tuple[list[str], list[str]]:
    """(deep, shallow) method names, from the registry."""
    from transferkit.methods import list_methods

    return list_methods(family="domain-deep"), list_methods(family="domain-shallow")


def add_arguments(parser) -> None:
    deep, shallow = adaptation_methods()
    parser.add_argument("--source", help="labelled source images (one sub-folder per class)")
    parser.add_argument("--target", help="unlabelled target images (any layout)")
    parser.add_argument("--target-labelled", help="a few labelled target images: they train "
                        "the target oracle (and join the loss of a semi-supervised method)")
    parser.add_argument("--target-test", help="labelled target images to score on")
    parser.add_argument("--method", choices=deep + shallow,
                        help=f"deep ({', '.join(deep)}: a small CNN on 32×32 images) or "
                        f"shallow ({', '.join(shallow)}: on frozen pretrained features); "
                        "default dann")
    _options.add_out(parser, "folder for summary.json, domain_map.png and checkpoints")
    parser.add_argument("--epochs", type=int, help="training epochs of the deep methods")
    _options.add_backbone(parser, help=f"feature backbone of the shallow methods (default "
                          f"{DEFAULT_BACKBONE})", checkpoint=False)
    _options.add_device(parser)
    _options.add_seed(parser)
    parser.add_argument("--demo", action="store_true", help="printed → handwritten digits, "
                        "generated and bundled: needs no data")
    _options.add_cache(parser)


class _Representation:
    """Turns image files into what a family of methods eats: 32×32 arrays or features."""

    def __init__(self, deep: bool, backbone: str | None, cache_dir, use_cache: bool,
                 progress: bool):
        self.deep = deep
        self.skipped: list[tuple[str, str]] = []
        self._extractor = None
        if not deep:
            from transferkit.features.extract import FrozenExtractor

            self._extractor = FrozenExtractor.from_name(backbone, cache_dir=cache_dir,
                                                        use_cache=use_cache)
        self.progress = progress

    def __call__(self, paths: list[Path], labels=None):
        import numpy as np

        if self.deep:
            from transferkit.data.images import load_small_images

            values, ok, skipped = load_small_images(paths, SMALL_IMAGE_SIZE)
        else:
            result = self._extractor.extract(paths, progress=self.progress)
            values, ok, skipped = result.features.astype(np.float64), result.ok, result.skipped
        self.skipped += skipped
        return values, (None if labels is None else np.asarray(labels)[ok])


def _check_rows(values, what: str, minimum: int = 2) -> None:
    if len(values) < minimum:
        raise DataError(f"{what}: {len(values)} readable image(s); at least {minimum} are needed.")


def _accuracy(model, X, y) -> float | None:
    import numpy as np

    return None if X is None else float(np.mean(model.predict(X) == y))


def _a_distance(source, target, random_state: int) -> float | None:
    from transferkit.evaluate.domain import proxy_a_distance

    if min(len(source), len(target)) < 5:
        return None
    return proxy_a_distance(source, target, random_state=random_state)


def _mmd(source, target, random_state: int) -> float | None:
    """RBF-kernel MMD (median-heuristic bandwidth of each space, so before and after compare)."""
    from transferkit.evaluate.domain import mmd

    if min(len(source), len(target)) < 2:
        return None
    return mmd(source, target, random_state=random_state)


@removes_new_output_on_failure
def run(source=None, target=None, method: str = "dann", out=None, target_labelled=None,
        target_test=None, epochs: int | None = None, backbone: str | None = None,
        random_state: int = 0, device: str = "auto", cache_dir=None, use_cache: bool = True,
        progress: bool = False, overwrite: bool = False, demo: bool = False) -> dict:
    """Run source only, ``method`` and (with ``target_labelled``) the oracle; see the module
    docstring. Returns the summary that ``transferkit adapt --json`` prints; with ``out``,
    also writes ``summary.json`` and ``domain_map.png`` there. ``out`` must be new, empty or
    written by transferkit, apart from the inputs; a finished run there is replaced only
    with ``overwrite`` (see :mod:`transferkit.outputs`). ``demo``: :func:`run_demo` instead
    (into ``out`` or ``transferkit-adapt-demo``), which needs no data."""
    import numpy as np

    from transferkit.methods import create_method
    from transferkit.methods.registry import method_spec
    from transferkit.outputs import input_folders, prepare_output_folder

    if demo:
        return run_demo(out or DEMO_OUT, method=method, random_state=random_state,
                        progress=progress, overwrite=overwrite,
                        **({"epochs": epochs} if epochs else {}))
    if not (source and target):
        raise TransferkitError("adapt needs --source and --target (or --demo).")
    start = time.perf_counter()
    deep, shallow = adaptation_methods()
    if method not in deep + shallow:
        raise DataError(f"unknown adaptation method {method!r}; choose one of "
                        f"{', '.join(deep + shallow)}.")
    family = method_spec(method).family
    is_deep = family == "domain-deep"
    source_images = read_labelled_folder(source, what="source images")
    classes = source_images.classes
    target_paths = list_unlabelled_images(target, what="target images")
    labelled = read_labelled_folder(target_labelled, classes) if target_labelled else None
    test = read_labelled_folder(target_test, classes) if target_test else None
    if out is not None:
        image_folders = input_folders(source_images.paths, target_paths,
                                      labelled.paths if labelled else None,
                                      test.paths if test else None)
        prepare_output_folder(out, command="adapt", overwrite=overwrite,
                              inputs=(source, target, target_labelled, target_test,
                                      *image_folders))
        out = Path(out)

    represent = _Representation(is_deep, backbone, cache_dir, use_cache, progress)
    Xs, ys = represent(source_images.paths, source_images.labels)
    if len(np.unique(ys)) < 2:
        raise DataError(f"{source}: fewer than two classes have readable images.")
    Xt, _ = represent(target_paths)
    _check_rows(Xt, f"{target}")
    Xl, yl = represent(labelled.paths, labelled.labels) if labelled else (None, None)
    X_test, y_test = represent(test.paths, test.labels) if test else (None, None)

    def estimator(role: str):
        """A new estimator for ``role``: "source-only", "oracle" or the method itself."""
        name = BASELINES[family].get(role, role)
        if not is_deep:
            return create_method(name, random_state=random_state)
        options = {"random_state": random_state, "device": device, "progress": progress}
        if epochs is not None:
            options["epochs"] = int(epochs)
        if out is not None:
            options["run_dir"] = str(out / "train" / role)
        return create_method(name, **options)

    # The method sees the labelled target rows only if it is made for them.
    semi = labelled is not None and method_spec(method).semi_supervised and len(Xl)
    X_adapt = np.concatenate([Xt, Xl]) if semi else Xt
    y_adapt = np.r_[np.full(len(Xt), -1), yl] if semi else None

    source_only = estimator("source-only").fit(Xs, ys, Xt)
    adapted = estimator(method).fit(Xs, ys, X_adapt, y_adapt)
    oracle = None
    if labelled is not None:
        _check_rows(Xl, f"{target_labelled}")
        if len(np.unique(yl)) < 2:
            raise DataError(f"{target_labelled}: the oracle needs labelled target images of "
                            "at least two classes.")
        oracle = estimator("oracle")
        oracle.fit(Xl, yl) if is_deep else oracle.fit(Xl[:0], None, Xl, yl)

    # Domain distance in the space each classifier works in.
    if is_deep:
        before = (source_only.transform(Xs), source_only.transform(Xt))
        if getattr(adapted, "source_encoder_", None) is not None:
            # ADDA aligns a code past the features; its source encoder *is* the source-only
            # network up to that code, so "before" is that encoder on both domains.
            before = (adapted.transform_source(Xs), adapted.transform_source(Xt))
        after = (adapted.transform_source(Xs), adapted.transform(Xt))
    else:
        before = (Xs, Xt)
        after = (adapted.adapted_source_[:len(Xs)], adapted.transform_target(Xt))
    summary = {
        "method": method, "family": "deep" if is_deep else "shallow",
        "source": str(source), "target": str(target), "classes": classes,
        "n_source": int(len(Xs)), "n_target": int(len(Xt)),
        "n_target_labelled": int(len(Xl)) if labelled else 0,
        "n_target_test": int(len(X_test)) if test else 0,
        "labelled_target_used_by_method": bool(semi),
        "source_only_accuracy": _accuracy(source_only, X_test, y_test),
        "adapted_accuracy": _accuracy(adapted, X_test, y_test),
        "oracle_accuracy": _accuracy(oracle, X_test, y_test) if oracle is not None else None,
        "gap_closed": None,
        "a_distance_before": _a_distance(*before, random_state),
        "a_distance_after": _a_distance(*after, random_state),
        "mmd_before": _mmd(*before, random_state),
        "mmd_after": _mmd(*after, random_state),
        **skipped_fields(represent.skipped),
        "backbone": None if is_deep else (backbone or DEFAULT_BACKBONE),
        "seed": random_state,
    }
    if None not in (summary["source_only_accuracy"], summary["adapted_accuracy"],
                    summary["oracle_accuracy"]):
        from transferkit.evaluate.domain import gap_closed

        closed = gap_closed(summary["source_only_accuracy"], summary["adapted_accuracy"],
                            summary["oracle_accuracy"])
        # None (valid JSON, unlike NaN) when the oracle does not beat source only.
        summary["gap_closed"] = None if np.isnan(closed) else closed
    if out is not None:
        from transferkit.report.domain_map import plot_domain_maps

        out.mkdir(parents=True, exist_ok=True)
        summary["domain_map"] = str(plot_domain_maps(
            {f"before (A-distance {summary['a_distance_before']:.2f})": before,
             f"after {method} (A-distance {summary['a_distance_after']:.2f})": after},
            out / "domain_map.png", random_state=random_state))
        summary["out"] = str(out)
    summary["seconds"] = time.perf_counter() - start
    if out is not None:
        _write_summary(out, summary)
    return summary


def _write_summary(folder: Path, summary: dict) -> None:
    """``summary.json`` and the HTML report of a finished run; the summary names the report."""
    from transferkit.outputs import write_json_atomic
    from transferkit.report.html import write_report

    write_json_atomic(folder / "summary.json", summary)
    summary["report"] = str(write_report(folder))


def _sklearn_digits_domain():
    """scikit-learn's bundled handwritten digits (UCI, 1797 images, 8×8, 0–16) as a domain."""
    import numpy as np
    from sklearn.datasets import load_digits

    from transferkit.data.digits import DigitDomain

    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
    return DigitDomain("handwritten (UCI, scikit-learn)", images, digits.target.astype(np.int64),
                       np.arange(len(images), dtype=np.int64))


@removes_new_output_on_failure
def run_demo(out: str | os.PathLike = DEMO_OUT, method: str = "dann", n_source: int = 2000,
             epochs: int = 15, random_state: int = 0, progress: bool = False,
             overwrite: bool = False) -> dict:
    """Printed digits (rendered from this machine's fonts) → handwritten digits.

    The handwritten target is split in half with a seeded shuffle: one half is the
    unlabelled adaptation pool (its labels train only the oracle), the other is scored.
    """
    import numpy as np

    from transferkit.data.digits import render_printed_digits, resize_domain, write_image_folder
    from transferkit.outputs import prepare_output_folder

    prepare_output_folder(out, command="adapt-demo", overwrite=overwrite)
    out = Path(out)
    data = out / "data"
    printed = render_printed_digits(n_source, random_state=random_state,
                                    size=SMALL_IMAGE_SIZE)
    handwritten = resize_domain(_sklearn_digits_domain(), SMALL_IMAGE_SIZE, rgb=True)
    order = np.random.default_rng(random_state).permutation(len(handwritten))
    pool, held_out = order[: len(order) // 2], order[len(order) // 2:]
    write_image_folder(printed, data / "printed")
    write_image_folder(handwritten.subset(pool), data / "handwritten_pool")
    write_image_folder(handwritten.subset(held_out), data / "handwritten_test")
    summary = run(data / "printed", data / "handwritten_pool", method=method, out=out / "run",
                  target_labelled=data / "handwritten_pool", target_test=data / "handwritten_test",
                  epochs=epochs, random_state=random_state, progress=progress,
                  overwrite=overwrite)
    summary["demo"] = ("printed digits (rendered from this machine's fonts) → handwritten "
                       "digits (UCI, bundled with scikit-learn); the target pool's labels "
                       "train only the oracle")
    _write_summary(out / "run", summary)  # again, now with the demo's note
    return summary


def render(summary: dict) -> str:
    lines = [summary["demo"]] if summary.get("demo") else []
    lines.append(f"method {summary['method']} ({summary['family']}): {summary['n_source']} "
                 f"source, {summary['n_target']} target images")
    lines.append(format_table([["", "target accuracy"],
                               ["source only", format_score(summary["source_only_accuracy"])],
                               [summary["method"], format_score(summary["adapted_accuracy"])],
                               ["target oracle", format_score(summary["oracle_accuracy"])]]))
    if summary["gap_closed"] is not None:
        lines.append(f"gap closed: {100 * summary['gap_closed']:.0f}% of source only → oracle")
    lines.append(f"proxy A-distance source↔target: {format_score(summary['a_distance_before'])} "
                 f"before, {format_score(summary['a_distance_after'])} after")
    if summary.get("mmd_before") is not None:
        lines.append(f"MMD source↔target: {format_score(summary['mmd_before'])} before, "
                     f"{format_score(summary['mmd_after'])} after")
    lines += skipped_lines(summary)
    if summary.get("out"):
        lines.append(f"wrote {summary['out']}/summary.json and {summary.get('domain_map')}")
    if summary.get("report"):
        lines.append(f"report: {summary['report']}")
    return "\n".join(lines)

