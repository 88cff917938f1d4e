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

* ``domain-deep`` (``dann``, ``cdan``, ``mcc``, ``shot``, ``dan``, ``deep-coral``, ``adda``,
  ``domain-confusion``, ``drcn``): train a network with the method's alignment term in
  the shared loop. With a registry ``backbone`` (default ``efficientnet_lite0``) the
  pretrained network → bottleneck → classifier, its last ``trainable`` layer groups
  training on cached activations of the frozen rest (minutes per pair on a CPU; see
  :mod:`transferkit.methods.domain._pretrained`); with ``backbone="digit-cnn"`` Ganin &
  Lempitsky's small network on 32×32 images (digit-like domains; ADDA, domain confusion
  and DRCN need it). ``criterion`` (default ``"dev"`` on a pretrained backbone, or
  ``"snd"``) keeps the epoch with the best label-free score, and
  ``adaptation_weight="auto"`` picks the weight from :data:`WEIGHT_GRID` by it.
  Checkpoints go to ``OUT/train/<model>``, so an interrupted run resumes.
* ``domain-shallow`` (``coral``, ``subspace``, ``tca``, ``kmm``, ``reweight``): adapt
  frozen pretrained features (any backbone; cached), then a logistic regression.

With ``demo``, :func:`run_demo` runs one of the :data:`DEMOS` on digits it makes itself,
with nothing to download: by default scikit-learn's handwritten digits → the other
handwritten digits blended over colour photo patches (the MNIST-M recipe, a shift the
methods are made for); ``printed-to-handwritten`` is the failure case.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

from transferkit.backbones.registry import DEFAULT_BACKBONE, DIGIT_BACKBONE
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
from transferkit.train.distributed import is_main_process

NAME = "adapt"
HELP = ("domain adaptation: labelled source images, unlabelled target images; compares with "
        "source only and the target oracle")

DEMO_OUT = "transferkit-adapt-demo"
# ``adapt --demo [NAME]``: each demo's line in the summary, saying what it is and what to
# expect from it.
DEMOS = {
    "handwritten-to-photos": (
        "handwritten digits (UCI, bundled with scikit-learn) → the other handwritten digits "
        "blended over colour patches of the photos bundled with scikit-image (the MNIST-M "
        "recipe: a change of colour and texture, the shape of each digit kept, which is "
        "the shift domain adaptation is made for); the target pool's labels train only the "
        "oracle"),
    "printed-to-handwritten": (
        "printed digits (rendered from this machine's fonts) → handwritten digits (UCI, "
        "bundled with scikit-learn); the target pool's labels train only the oracle. A "
        "failure case: the two domains differ in the shapes of the digits themselves, not "
        "in colour or texture (which the printed digits' random colours already cover), so "
        "aligning the feature distributions pairs up digits of different classes and "
        "adaptation tends to score below source only"),
}
DEFAULT_DEMO = "handwritten-to-photos"
# The photo demo's 899 source images make 14 batches an epoch: 30 epochs give DANN's
# λ_p ramp ~400 steps (at 15 its gain over source only fell to +7 points on one seed of 3).
DEMO_EPOCHS = {"handwritten-to-photos": 30, "printed-to-handwritten": 15}
# Adaptation weights tried by ``adaptation_weight="auto"`` (each a full fit; the criterion
# picks one, never the target labels).
WEIGHT_GRID = (0.3, 1.0, 3.0)
CRITERIA = ("dev", "snd", "none")
# The default method on a pretrained backbone (benchmarks/RESULTS.md, domain-office31).
DEFAULT_PRETRAINED_METHOD = "shot"
DEFAULT_CRITERION = "dev"
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
                        help=f"deep ({', '.join(deep)}: train a network) or shallow "
                        f"({', '.join(shallow)}: on frozen pretrained features); default "
                        f"{DEFAULT_PRETRAINED_METHOD} on a pretrained backbone, dann on "
                        f"{DIGIT_BACKBONE}")
    _options.add_out(parser, "folder for summary.json, domain_map.png and checkpoints")
    parser.add_argument("--epochs", type=int, help="training epochs of the deep methods")
    _options.add_backbone(parser, help=f"the pretrained network (default {DEFAULT_BACKBONE}; "
                          f"see `transferkit backbones`), or {DIGIT_BACKBONE} for the deep "
                          "methods' small CNN on 32×32 images", checkpoint=False)
    parser.add_argument("--trainable", type=int, help="deep methods on a pretrained backbone: "
                        "how many of its last layer groups train besides the bottleneck and "
                        "heads (default 0; the frozen rest runs once per image and view, "
                        "cached; each group more costs much more time on a CPU)")
    parser.add_argument("--criterion", choices=CRITERIA, help="deep methods: keep the epoch "
                        "with the best label-free score — dev: deep embedded validation "
                        "(default for a pretrained backbone), snd: soft neighbourhood density "
                        "— or the last one (none)")
    parser.add_argument("--adaptation-weight", help="deep methods: weight of the alignment "
                        "term (default: the method's), or 'auto': one fit per weight in "
                        f"{list(WEIGHT_GRID)}, the criterion picks")
    _options.add_device(parser)
    _options.add_seed(parser)
    parser.add_argument("--demo", nargs="?", const=DEFAULT_DEMO, choices=list(DEMOS),
                        metavar="NAME", help=f"an embedded demo that needs no data: "
                        f"{DEFAULT_DEMO} (the default; handwritten digits → the same over "
                        "colour photo patches, where adaptation works) or "
                        "printed-to-handwritten (a shift where it fails)")
    _options.add_cache(parser)


class _Representation:
    """Turns image files into what a family of methods eats: 32×32 arrays for the digit
    network, readable paths for a deep method on a pretrained backbone (whose centre
    crops are computed and cached on the way), frozen features for the shallow methods."""

    def __init__(self, deep: bool, backbone: str | None, cache_dir, use_cache: bool,
                 progress: bool, trainable: int = 0):
        self.digits = deep and backbone == DIGIT_BACKBONE
        self.skipped: list[tuple[str, str]] = []
        self._extractor = self._pretrained = None
        if deep and not self.digits:
            from transferkit.methods.domain._pretrained import PretrainedInputs

            self._pretrained = PretrainedInputs(backbone, trainable=trainable, views=0,
                                                cache_dir=cache_dir, use_cache=use_cache,
                                                progress=progress)
        elif not deep:
            from transferkit.features.extract import FrozenExtractor

            self._extractor = FrozenExtractor.from_name(backbone, cache_dir=cache_dir,
                                                        use_cache=use_cache)
        self.progress = progress

    def __call__(self, paths: list[Path], labels=None):
        import numpy as np

        if self.digits:
            from transferkit.data.images import load_small_images

            values, ok, skipped = load_small_images(paths, SMALL_IMAGE_SIZE)
        elif self._pretrained is not None:
            values, ok, skipped = self._pretrained.readable(paths)
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


def _separability(source, target, random_state: int, source_weight=None) -> dict | None:
    """Proxy A-distance with its 95% interval (dimension-free domain classifier), the
    source weighted as a re-weighting method weighs it."""
    from transferkit.evaluate.domain import domain_separability

    if min(len(source), len(target)) < 5:
        return None
    return domain_separability(source, target, random_state=random_state,
                               source_weight=source_weight).as_dict()


def _mmd(source, target, random_state: int, source_weight=None) -> float | None:
    """RBF-kernel MMD (median-heuristic bandwidth of each space, so before and after compare)."""
    from transferkit.evaluate.domain import mmd

    if min(len(source), len(target)) < 2:
        return None
    return mmd(source, target, random_state=random_state, source_weight=source_weight)


@removes_new_output_on_failure
def run(source=None, target=None, method: str | None = None, out=None, target_labelled=None,
        target_test=None, epochs: int | None = None, backbone: str | None = None,
        random_state: int = 0, device: str = "auto", cache_dir=None, use_cache: bool = True,
        progress: bool = False, overwrite: bool = False, demo: bool | str = False,
        trainable: int | None = None, criterion: str | None = None,
        adaptation_weight=None) -> dict:
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
        return run_demo(out or DEMO_OUT, method=method or "dann", name=demo,
                        random_state=random_state,
                        progress=progress, overwrite=overwrite,
                        **({"epochs": epochs} if epochs else {}))
    if not (source and target):
        raise TransferkitError("adapt needs --source and --target (or --demo).")
    start = time.perf_counter()
    deep, shallow = adaptation_methods()
    if method is None:  # the strongest unsupervised method measured for each backbone kind
        method = "dann" if backbone == DIGIT_BACKBONE else DEFAULT_PRETRAINED_METHOD
    if method not in deep + shallow:
        raise DataError(f"unknown adaptation method {method!r}; choose one of "
                        f"{', '.join(deep + shallow)}.")
    family = method_spec(method).family
    is_deep = family == "domain-deep"
    digit_only = getattr(create_method(method), "digit_only", False)
    # A method made for the digit network gets it unless another backbone is asked for.
    backbone = backbone or (DIGIT_BACKBONE if digit_only else DEFAULT_BACKBONE)
    pretrained = is_deep and backbone != DIGIT_BACKBONE
    if backbone == DIGIT_BACKBONE and not is_deep:
        raise DataError(f"{DIGIT_BACKBONE} is the deep methods' small CNN; the shallow method "
                        f"{method} needs a pretrained feature backbone (default {DEFAULT_BACKBONE}).")
    if pretrained and digit_only:
        raise DataError(f"{method} works on the {DIGIT_BACKBONE} network only (32×32 images): "
                        f"add --backbone {DIGIT_BACKBONE}, or choose dann, cdan, mcc, shot, dan "
                        "or deep-coral for a pretrained backbone.")
    if criterion not in (None, *CRITERIA):
        raise DataError(f"unknown criterion {criterion!r}; choose one of {list(CRITERIA)}.")
    if trainable is not None and not pretrained:
        raise DataError("--trainable applies to a deep method on a pretrained backbone.")
    if criterion not in (None, "none") and not is_deep:
        raise DataError("--criterion applies to the deep methods (the shallow ones do not train "
                        "over epochs).")
    criterion = (criterion or (DEFAULT_CRITERION if pretrained else "none")) if is_deep else None
    weights = _adaptation_weights(adaptation_weight, is_deep, criterion)
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

    represent = _Representation(is_deep, backbone, cache_dir, use_cache, progress,
                                0 if trainable is None else trainable)
    Xs, ys = represent(source_images.paths, source_images.labels)
    if len(np.unique(ys)) < 2:
        raise DataError(f"{source}: fewer than two classes have readable images.")
    Xt, _ = represent(target_paths)
    _check_rows(Xt, f"{target}")
    Xl, yl = represent(labelled.paths, labelled.labels) if labelled else (None, None)
    X_test, y_test = represent(test.paths, test.labels) if test else (None, None)

    def estimator(role: str, weight=None):
        """A new estimator for ``role``: "source-only", "oracle" or the method itself."""
        name = BASELINES[family].get(role, role)
        if not is_deep:
            return create_method(name, random_state=random_state)
        options = {"random_state": random_state, "device": device, "progress": progress}
        if epochs is not None:
            options["epochs"] = int(epochs)
        if out is not None:
            options["run_dir"] = str(out / "train" / (role if weight is None
                                                      else f"{role}-weight-{weight:g}"))
        if weight is not None:
            options["adaptation_weight"] = float(weight)
        if pretrained:
            options.update(backbone=backbone, cache_dir=cache_dir, use_cache=use_cache,
                           criterion=None if criterion == "none" else criterion)
            if trainable is not None:
                options["trainable"] = int(trainable)
        elif not getattr(create_method(name), "digit_only", False):
            options["backbone"] = DIGIT_BACKBONE
            if criterion != "none":
                options["criterion"] = criterion
        return create_method(name, **options)

    # The method sees the labelled target rows only if it is made for them.
    semi = labelled is not None and method_spec(method).semi_supervised and len(Xl)
    X_adapt = np.concatenate([Xt, Xl]) if semi else Xt
    y_adapt = np.r_[np.full(len(Xt), -1), yl] if semi else None

    source_only = estimator("source-only").fit(Xs, ys, Xt)
    # A method whose first stage is the source-only network (SHOT) starts from this one.
    reuse = ({"source_only": source_only}
             if is_deep and getattr(create_method(method), "starts_from_source_only", False)
             else {})
    candidates = [(weight, estimator(method, weight).fit(Xs, ys, X_adapt, y_adapt, **reuse))
                  for weight in weights]
    adapted = max(candidates, key=lambda pair: _criterion_score(pair[1], criterion))[1] \
        if len(candidates) > 1 else candidates[0][1]
    oracle = None
    if labelled is not None:
        _check_rows(Xl, f"{target_labelled}")
        if len(np.unique(yl)) < 2:
            raise DataError(f"{target_labelled}: the oracle needs labelled target images of "
                            "at least two classes.")
        oracle = estimator("oracle")
        oracle.fit(Xl, yl) if is_deep else oracle.fit(Xl[:0], None, Xl, yl)

    if not is_main_process():  # trained in step with the main process, which writes and reports
        return {}
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
    # A re-weighting method moves no feature: what it changes is how much each source row
    # counts, so "after" weighs the source rows as its classifier did.
    after_weight = None if is_deep else adapted.adapted_source_weight_
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
        "a_distance_before": None, "a_distance_after": None,
        "domain_separability_before": _separability(*before, random_state),
        "domain_separability_after": _separability(*after, random_state, after_weight),
        "source_reweighted_after": after_weight is not None,
        "mmd_before": _mmd(*before, random_state),
        "mmd_after": _mmd(*after, random_state, after_weight),
        **skipped_fields(represent.skipped),
        "backbone": backbone,
        "seed": random_state,
    }
    for when in ("before", "after"):
        measured = summary[f"domain_separability_{when}"]
        summary[f"a_distance_{when}"] = None if measured is None else measured["distance"]
    if is_deep:
        summary["criterion"] = criterion
        summary["adaptation_weight"] = float(adapted.adaptation_weight)
        summary["criterion_curve"] = [
            {"epoch": row["epoch"], "snd": row.get("snd"), "dev": row.get("dev"),
             "val_accuracy": row.get("val_accuracy"),
             **({"stage": row["stage"]} if "stage" in row else {})}
            for row in adapted.history_ if row.get("snd") is not None]
        kept = _kept_row(summary["criterion_curve"], criterion)
        if kept is not None:
            kept["kept"] = True  # the epoch the fitted model is (the loop restored it)
        if len(candidates) > 1:
            summary["weight_selection"] = [
                {"adaptation_weight": weight, "criterion": _criterion_score(model, criterion),
                 "target_accuracy": _accuracy(model, X_test, y_test)}
                for weight, model in candidates]
        if pretrained:
            summary["trainable_groups"] = adapted._inputs.trainable
            summary["cut"] = adapted._inputs.chain.cut_name(adapted._inputs.cut)
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
            {f"before (A-distance {_distance_text(summary['domain_separability_before'])})": before,
             f"after {method} (A-distance "
             f"{_distance_text(summary['domain_separability_after'])})": after},
            out / "domain_map.png", random_state=random_state))
        summary["out"] = str(out)
    summary["seconds"] = time.perf_counter() - start
    if out is not None:
        _write_summary(out, summary)
    return summary


def _adaptation_weights(value, is_deep: bool, criterion: str | None) -> list:
    """The weights to fit: ``[None]`` (the method's own), one given weight, or the grid."""
    if value is None:
        return [None]
    if not is_deep:
        raise DataError("--adaptation-weight applies to the deep methods only.")
    if str(value).strip().lower() == "auto":
        if criterion in (None, "none"):
            raise DataError("--adaptation-weight auto needs a criterion to choose by "
                            "(--criterion snd).")
        return list(WEIGHT_GRID)
    try:
        weight = float(value)
    except ValueError:
        raise DataError(f"--adaptation-weight must be a number or 'auto', got {value!r}.") from None
    if not weight >= 0 or weight == float("inf"):
        raise DataError(f"--adaptation-weight must be a finite number >= 0, got {value!r}.")
    return [weight]


def _kept_row(curve: list[dict], criterion: str | None) -> dict | None:
    """The row of the epoch the training loop kept: the best criterion value of the last
    stage (its first, as the loop keeps the first best), or None without a criterion."""
    if criterion not in ("dev", "snd") or not curve:
        return None
    last = [row for row in curve if row.get("stage") == curve[-1].get("stage")
            and row.get(criterion) is not None and not math.isnan(row[criterion])]
    if not last:
        return None
    return (min if criterion == "dev" else max)(last, key=lambda row: row[criterion])


def _criterion_score(model, criterion: str) -> float:
    """The label-free score of a fitted deep model at the epoch it kept (its last stage's,
    for a method trained in stages), signed so that higher is better (DEV is a risk: its
    negative); -inf when it has none."""
    kept = _kept_row(getattr(model, "history_", []), criterion)
    if kept is None:
        return float("-inf")
    return kept[criterion] if criterion == "snd" else -kept[criterion]


def _write_summary(folder: Path, summary: dict) -> None:
    """``summary.json`` and the HTML report of a finished run; the summary names the report."""
    from transferkit.outputs import write_json_atomic
    from transferkit.report.html import write_report

    write_json_atomic(folder / "summary.json", summary)
    summary["report"] = str(write_report(folder))


@removes_new_output_on_failure
def run_demo(out: str | os.PathLike = DEMO_OUT, method: str = "dann",
             name: str | bool = DEFAULT_DEMO, n_source: int = 2000, epochs: int | None = None,
             random_state: int = 0, progress: bool = False, overwrite: bool = False) -> dict:
    """Run the embedded demo ``name`` (one of :data:`DEMOS`; ``True``: the default) with
    :func:`run`, on digits it writes under ``out/data``; the run goes to ``out/run``.

    * ``handwritten-to-photos`` (:data:`DEFAULT_DEMO`): half of scikit-learn's handwritten
      digits are the source, the other half blended over photo patches is the target
      (:func:`transferkit.data.digits.handwritten_to_photo_blended`).
    * ``printed-to-handwritten``: ``n_source`` printed digits → all the handwritten
      digits, split in half with a seeded shuffle.

    The target pool is the unlabelled adaptation set (its labels train only the oracle);
    the other target part is scored. A deep method trains the digit network
    (:data:`~transferkit.backbones.registry.DIGIT_BACKBONE`) for ``epochs`` (default
    :data:`DEMO_EPOCHS`); ``random_state`` seeds the data as well as the training.
    """
    import numpy as np

    from transferkit.data.digits import (
        handwritten_to_photo_blended,
        render_printed_digits,
        resize_domain,
        sklearn_handwritten_digits,
        write_image_folder,
    )
    from transferkit.outputs import prepare_output_folder

    name = DEFAULT_DEMO if name is True or name is None else name
    if name not in DEMOS:
        raise DataError(f"unknown demo {name!r}; choose one of {', '.join(DEMOS)}.")
    prepare_output_folder(out, command="adapt-demo", overwrite=overwrite)
    out = Path(out)
    data = out / "data"
    if name == "printed-to-handwritten":
        source = render_printed_digits(n_source, random_state=random_state,
                                       size=SMALL_IMAGE_SIZE)
        handwritten = resize_domain(sklearn_handwritten_digits(), SMALL_IMAGE_SIZE, rgb=True)
        order = np.random.default_rng(random_state).permutation(len(handwritten))
        pool = handwritten.subset(order[: len(order) // 2])
        test = handwritten.subset(order[len(order) // 2:])
        folders = ("printed", "handwritten_pool", "handwritten_test")
    else:
        split = handwritten_to_photo_blended(SMALL_IMAGE_SIZE, random_state=random_state)
        source, pool, test = split.source, split.target_adapt, split.target_test
        folders = ("handwritten", "photo_digits_pool", "photo_digits_test")
    for domain, folder in zip((source, pool, test), folders):
        write_image_folder(domain, data / folder)
    deep, _ = adaptation_methods()
    summary = run(data / folders[0], data / folders[1], method=method, out=out / "run",
                  target_labelled=data / folders[1], target_test=data / folders[2],
                  epochs=epochs or DEMO_EPOCHS[name],
                  backbone=DIGIT_BACKBONE if method in deep else None,
                  random_state=random_state, progress=progress, overwrite=overwrite)
    summary["demo"] = DEMOS[name]
    summary["demo_name"] = name
    _write_summary(out / "run", summary)  # again, now with the demo's note
    return summary


def _distance_text(measured: dict | None) -> str:
    if measured is None:
        return "n/a"
    low, high = measured["interval"]
    return f"{measured['distance']:.2f} [{low:.2f}, {high:.2f}]"


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
    lines.append("proxy A-distance source↔target (95% interval): "
                 f"{_distance_text(summary.get('domain_separability_before'))} before, "
                 f"{_distance_text(summary.get('domain_separability_after'))} after"
                 + (" (source re-weighted)" if summary.get("source_reweighted_after") else ""))
    if summary.get("mmd_before") is not None:
        lines.append(f"MMD source↔target: {format_score(summary['mmd_before'])} before, "
                     f"{format_score(summary['mmd_after'])} after")
    lines += skipped_lines(summary)
    if summary.get("out"):
        lines.append(f"wrote {summary['out']}/summary.json and {summary.get('domain_map')}")
    if summary.get("report"):
        lines.append(f"report: {summary['report']}")
    return "\n".join(lines)

