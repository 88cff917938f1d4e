"""Linear probe: a shallow classifier on frozen pretrained features.

Razavian et al. 2014, "CNN Features off-the-shelf: an Astounding Baseline for
Recognition"; Donahue et al. 2014 (DeCAF). The backbone is frozen; features of one or
more layers (the pooled pre-logits vector by default; ``layer="fne"`` or ``"all-conv"`` with
``embedding="fne"`` gives the Full-Network Embedding) feed a scikit-learn classifier
(:mod:`transferkit.features.classifiers`: fixed regularisation on standardised features by
default, ``classifier="logreg-cv"`` to choose it by cross-validation on the training set).
Several backbones can be fused: ``backbone="efficientnet_lite0+efficientnet_lite2"``
concatenates their features.

The features may also come from a feature store (``fit DATA --features FEATURES_DIR``,
:meth:`LinearProbe.use_feature_store`); ``classifier="logreg-stream"`` then trains
``logreg``'s model over the store one shard at a time
(:func:`~transferkit.features.classifiers.fit_logreg_streaming`), and validation and
test images are always scored shard by shard, so memory is bounded by a shard.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.validation import check_is_fitted

from transferkit.backbones import DEFAULT_BACKBONE
from transferkit.bundle import (
    BACKBONE_IDENTITY,
    CLASS_NAMES,
    REDO_HINT,
    check_backbone_names,
    check_classes,
    check_config,
    check_param_values,
    check_same_features,
    check_width,
    first_line,
    saved_params,
)
from transferkit.errors import BundleError, DataError, TransferkitError
from transferkit.features.classifiers import (
    CLASSIFIERS,
    EMBEDDINGS,
    LOGREG_C,
    NORMALISATIONS,
    STREAMING_CLASSIFIERS,
    announce_fit,
    array_chunks,
    describe_classifier,
    fit_logreg_streaming,
    make_probe_pipeline,
)
from transferkit.data.dataset import as_paths
from transferkit.features.extract import FrozenFeaturesMixin

SKOPS_FILE = "classifier.skops"
# The exact types the pipelines of make_probe_pipeline hold once fitted (every
# classifier, embedding, normalisation and PCA option); load_classifier refuses a file
# naming any other type (beyond PLAIN_SKOPS_TYPES below) before anything is built.
# skops itself trusts more by default (every scikit-learn estimator, unless
# transferkit.skops_io imported skops first, and some numpy and scikit-learn internals),
# so this list is checked against every type the file's schema names, not only against
# what skops calls untrusted.
# Never a whole module: skops calls a trusted callable with arguments stored in the
# file, so trusting every name in the builtins module trusts exec.
# tests/security/test_model_loading.py
# derives this list from every pipeline fit can produce, so it cannot drift.
TRUSTED_SKOPS_TYPES = (
    "sklearn.calibration.CalibratedClassifierCV",
    "sklearn.calibration._CalibratedClassifier",
    "sklearn.calibration._SigmoidCalibration",
    "sklearn.decomposition._pca.PCA",
    "sklearn.linear_model._logistic.LogisticRegression",
    "sklearn.linear_model._logistic.LogisticRegressionCV",
    "sklearn.model_selection._split.StratifiedKFold",
    "sklearn.neighbors._classification.KNeighborsClassifier",
    "sklearn.neural_network._multilayer_perceptron.MLPClassifier",
    "sklearn.neural_network._stochastic_optimizers.AdamOptimizer",
    "sklearn.pipeline.Pipeline",
    "sklearn.preprocessing._data.Normalizer",
    "sklearn.preprocessing._data.StandardScaler",
    "sklearn.preprocessing._label.LabelBinarizer",
    "transferkit.features.classifiers.LbfgsLinearSVC",
    "transferkit.features.fne.FullNetworkEmbedding",
)
# The containers and numpy values those pipelines' files name besides (skops rebuilds
# them with its own safe loaders); a file naming any type outside both lists is refused.
PLAIN_SKOPS_TYPES = (
    "builtins.bool", "builtins.dict", "builtins.float", "builtins.int", "builtins.list",
    "builtins.str", "builtins.tuple", "numpy.bool_", "numpy.float32", "numpy.float64",
    "numpy.int32", "numpy.int64", "numpy.ndarray", "numpy.random.mtrand.RandomState",
)
# config.json as _save_artifacts writes it; params leave out the machine-local options.
_CONFIG_SCHEMA = {"classes": CLASS_NAMES, "n_features": "integer", "layers": ["string"],
                  "backbone": (BACKBONE_IDENTITY, [BACKBONE_IDENTITY])}
_NOT_SAVED = ("cache_dir", "progress", "num_workers")


def encode_labels(y) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y)
    if y.ndim != 1:
        raise DataError(f"labels must be one-dimensional, got shape {y.shape}.")
    classes, encoded = np.unique(y, return_inverse=True)
    if len(classes) < 2:
        raise DataError(f"need at least two classes to train a classifier, got {list(classes)}.")
    return classes, encoded


class LinearProbe(FrozenFeaturesMixin, ClassifierMixin, BaseEstimator):
    """Frozen backbone features + a shallow classifier (``logreg``, ``logreg-cv``, ``svm``,
    ``knn``, ``mlp``, ``logreg-stream``; :meth:`describe_classifier` says which settings
    it has).

    ``X`` is a sequence of image paths. Unreadable training images are skipped with a
    warning (``skipped_`` lists them); ``predict`` raises :class:`DataError` on them.
    """

    def __init__(self, backbone: str = DEFAULT_BACKBONE, weights: str | None = None,
                 arch: str | None = None, layer: str = "pre_logits", pooling: str = "avg",
                 classifier: str = "logreg", embedding: str | None = None,
                 normalise: str | None = None, pca: float | int | None = None,
                 cv: int = 5, random_state: int = 0, cache_dir: str | None = None,
                 use_cache: bool = True, batch_size: int = 32, runtime: str = "auto",
                 num_workers: int | None = None, progress: bool = False):
        self.backbone = backbone
        self.weights = weights
        self.arch = arch
        self.layer = layer
        self.pooling = pooling
        self.classifier = classifier
        self.embedding = embedding
        self.normalise = normalise
        self.pca = pca
        self.cv = cv
        self.random_state = random_state
        self.cache_dir = cache_dir
        self.use_cache = use_cache
        self.batch_size = batch_size
        self.runtime = runtime
        self.num_workers = num_workers
        self.progress = progress

    # -- fitting ----------------------------------------------------------------------
    def fit(self, X, y, X_val=None, y_val=None):
        """Extract features of ``X`` and fit the classifier (``X_val`` is unused: whatever
        the classifier tunes, it tunes on ``X``)."""
        y = np.asarray(y)
        if len(y) != len(as_paths(X)):
            raise DataError(f"{len(as_paths(X))} images but {len(y)} labels.")
        if self.classifier in STREAMING_CLASSIFIERS and self._reads_store():
            return self._fit_streamed(X, y)
        result = self.extract(X)
        self.skipped_ = result.skipped
        self.extract_seconds_ = result.seconds
        if result.skipped:
            warnings.warn(f"skipped {len(result.skipped)} unreadable image(s): "
                          + "; ".join(reason for _, reason in result.skipped))
        return self.fit_features(result.features, y[result.ok])

    def fit_features(self, features: np.ndarray, y):
        """Fit the classifier on precomputed features (rows aligned with ``y``)."""
        self.classes_, encoded = encode_labels(y)
        if len(features) != len(encoded):
            raise DataError(f"{len(features)} feature rows but {len(encoded)} labels.")
        if self.classifier in STREAMING_CLASSIFIERS:
            from transferkit.features.shards import SHARD_ROWS

            # The same solver as over a store, on chunks of a store's shard size.
            self._fit_stream(array_chunks(features, encoded, SHARD_ROWS), len(encoded))
            self.n_features_in_ = features.shape[1]
            return self
        self.classifier_ = make_probe_pipeline(self.classifier, encoded, self.cv, self.random_state,
                                               embedding=self.embedding, normalise=self.normalise,
                                               pca=self.pca)
        with warnings.catch_warnings(), announce_fit(self.classifier_, len(encoded),
                                                     len(self.classes_), self.progress):
            # Tiny folds make some C values fail to converge; the CV picks among the rest.
            warnings.simplefilter("ignore", category=UserWarning)
            from sklearn.exceptions import ConvergenceWarning

            warnings.simplefilter("ignore", category=ConvergenceWarning)
            self.classifier_.fit(features, encoded)
        self.n_features_in_ = features.shape[1]
        return self

    # -- features from a store ---------------------------------------------------------
    def use_feature_store(self, features) -> "LinearProbe":
        """Read features from ``features`` (a
        :class:`~transferkit.features.from_store.StoreFeatures` of the images to be fitted
        and scored) instead of running the backbone. The parameters must name the
        backbone, layer and pooling that made them (``fit --features`` takes them from the
        store), so that the saved model computes the same features at predict time."""
        self.extractor_ = features
        return self

    def _reads_store(self) -> bool:
        return hasattr(self._extractor(), "stream")

    def _check_streamable(self) -> None:
        if self.pca is not None or self.embedding is not None:
            raise DataError(f"--pca and the fne embedding need every training feature in memory; "
                            f"they do not apply to --classifier {self.classifier}.")

    def _fit_stream(self, chunks, n_images: int) -> None:
        self._check_streamable()
        from sklearn.pipeline import make_pipeline
        from sklearn.linear_model import LogisticRegression
        from sklearn.preprocessing import StandardScaler

        announced = make_pipeline(StandardScaler(), LogisticRegression(C=LOGREG_C))
        with announce_fit(announced, n_images, len(self.classes_), self.progress):
            self.classifier_, self.stream_passes_ = fit_logreg_streaming(
                chunks, len(self.classes_), normalise=self.normalise)

    def _fit_streamed(self, X, y):
        """Fit ``logreg-stream`` reading the training features one shard at a time."""
        self._check_streamable()
        source = self._extractor()
        paths = as_paths(X)
        ok, skipped = source.locate(paths)
        self.skipped_ = skipped
        self.extract_seconds_ = float(getattr(source, "seconds", 0.0))
        if skipped:
            warnings.warn(f"skipped {len(skipped)} unreadable image(s): "
                          + "; ".join(reason for _, reason in skipped))
        self.classes_, encoded = encode_labels(y[ok])
        label_of = np.full(len(paths), -1, dtype=np.int64)
        label_of[ok] = encoded

        plan = source.plan(paths)  # once: every pass reads the same rows

        def chunks():
            for positions, features in source.read(plan):
                yield features, label_of[positions]

        self._fit_stream(chunks, len(encoded))
        self.n_features_in_ = int(source.dim)
        return self

    def describe_classifier(self) -> str:
        """Which classifier was fitted, with the settings it has or chose (for fit's summary)."""
        check_is_fitted(self, "classifier_")
        described = describe_classifier(self.classifier_)
        if self.classifier not in STREAMING_CLASSIFIERS:
            return described
        # "logreg (C=0.1), standardised" -> "logreg-stream (C=0.1, L-BFGS ...), standardised"
        head, _, rest = described.partition(")")
        passes = getattr(self, "stream_passes_", None)
        solved = "L-BFGS over chunks" + (f", {passes} passes" if passes else "")
        return f"{self.classifier} ({head.partition('(')[2]}, {solved}){rest}"

    # -- prediction -------------------------------------------------------------------
    def predict_proba_features(self, features: np.ndarray) -> np.ndarray:
        check_is_fitted(self, "classifier_")
        if len(features) == 0:  # scikit-learn refuses an empty array
            return np.zeros((0, len(self.classes_)))
        with np.errstate(over="ignore", invalid="ignore"):  # said once, below
            probabilities = self.classifier_.predict_proba(features)
        if not np.isfinite(probabilities).all():
            # Finite weights can still overflow: loading checks them on one row of zeros.
            raise BundleError("the classifier gives probabilities that are not finite numbers "
                              "for these images (its weights overflow on them); a model folder "
                              f"it was loaded from is damaged or was edited. {REDO_HINT}")
        return probabilities

    def predict_proba(self, X) -> np.ndarray:
        result = self.extract(X)
        if result.skipped:
            raise DataError(f"{len(result.skipped)} image(s) could not be read: "
                            + "; ".join(reason for _, reason in result.skipped[:5]))
        return self.predict_proba_features(result.features)

    def predict(self, X) -> np.ndarray:
        return self.classes_[self.predict_proba(X).argmax(axis=1)]

    def embed_paths(self, X):
        """(features of the readable images, ok mask): what the report maps in 2-D.
        Trained from a store by ``logreg-stream``, where all of them need not fit in
        memory: a seeded sample of as many as the report maps, the others marked not ok."""
        if self.classifier in STREAMING_CLASSIFIERS and self._reads_store():
            from transferkit.report.html import MAP_MAX_POINTS

            paths = as_paths(X)
            ok, _ = self._extractor().locate(paths)
            kept = np.flatnonzero(ok)
            if len(kept) > MAP_MAX_POINTS:
                rng = np.random.default_rng(self.random_state)
                kept = np.sort(rng.choice(kept, MAP_MAX_POINTS, replace=False))
            sample = np.zeros(len(paths), dtype=bool)
            sample[kept] = True
            return self._extractor().extract([paths[i] for i in kept]).features, sample
        result = self.extract(X)
        return result.features, result.ok

    def predict_paths(self, X):
        """(probabilities of readable images, ok mask, skipped list) — skips bad files.
        From a store, the images are scored one shard at a time."""
        if self._reads_store():
            check_is_fitted(self, "classifier_")
            source = self._extractor()
            paths = as_paths(X)
            ok, skipped = source.locate(paths)
            proba = np.zeros((len(paths), len(self.classes_)))
            for positions, features in source.stream(paths):
                proba[positions] = self.predict_proba_features(features)
            return proba[ok], ok, skipped
        result = self.extract(X)
        return self.predict_proba_features(result.features), result.ok, result.skipped

    # -- bundle -----------------------------------------------------------------------
    def _save_artifacts(self, folder: Path) -> dict:
        from transferkit.features.linear_head import HEAD_FILE, head_steps, save_linear_head

        check_is_fitted(self, "classifier_")
        if head_steps(self.classifier_) is not None:  # the default: numbers, no skops
            save_linear_head(self.classifier_, Path(folder) / HEAD_FILE)
        else:
            from transferkit.skops_io import skops_io

            skops_io().dump(self.classifier_, Path(folder) / SKOPS_FILE)
        extractor = self._extractor()
        return {
            "backbone": extractor.identity()["backbone"],
            "params": saved_params(self, _NOT_SAVED),
            "classes": [c.item() if hasattr(c, "item") else c for c in self.classes_],
            "layers": extractor.layers,
            "n_features": int(self.n_features_in_),
        }

    @classmethod
    def _load_artifacts(cls, folder: Path, config: dict) -> "LinearProbe":
        from transferkit.backbones.taps import POOLINGS
        from transferkit.features.extract import RUNTIMES

        check_config(folder, config, _CONFIG_SCHEMA, cls, _NOT_SAVED)
        params = config["params"]
        check_param_values(folder, params, {
            "classifier": CLASSIFIERS + STREAMING_CLASSIFIERS, "pooling": POOLINGS, "runtime": RUNTIMES,
            "embedding": (None, *EMBEDDINGS), "normalise": (None, *NORMALISATIONS)},
            positive=("batch_size",))
        _check_pca(folder, params.get("pca"))
        check_backbone_names(folder, [("backbone", params.get("backbone")),
                                      ("arch", params.get("arch"))])
        estimator = cls(**config["params"])
        # The width first (the backbone's, not only the file's word): the classifier file
        # is then read only if its shapes are the ones this model needs.
        extractor = estimator._extractor()
        check_same_features(folder, config, extractor, "its classifier")
        check_width(folder, config["n_features"], int(extractor.dim), "the backbone")
        check_classes(folder, config["classes"])
        classifier, file = _load_classifier_file(Path(folder), config)
        check_classes(folder, config["classes"], len(classifier.classes_), file)
        check_width(folder, config["n_features"], int(classifier.n_features_in_), file)
        estimator.classifier_ = classifier
        estimator.classes_ = np.asarray(config["classes"])
        estimator.n_features_in_ = config["n_features"]
        return estimator


def _check_pca(folder: Path, pca) -> None:
    """``pca`` as make_probe_pipeline takes it: none, a number of components, or a share
    of the variance in (0, 1)."""
    if pca is None or (type(pca) is int and pca >= 1) or (type(pca) is float and 0 < pca < 1):
        return
    raise BundleError(f"{folder}/config.json: params.pca is {pca!r}, neither a number of "
                      f"components (>= 1) nor a share of variance in (0, 1); the file was "
                      f"edited. {REDO_HINT}")


def _load_classifier_file(folder: Path, config: dict):
    """(pipeline, file name): ``classifier.safetensors`` (the default pipelines, see
    :mod:`transferkit.features.linear_head`) or ``classifier.skops`` (the others, and
    every model saved before the former existed). The one config.json lists is the
    model's (a file of the other name beside it is someone else's); a config listing
    neither (saved before bundles listed their files) takes the one that is there."""
    from transferkit.features.linear_head import HEAD_FILE, STEP_SEQUENCES, load_linear_head

    listed = config.get("files") if isinstance(config.get("files"), list) else []
    named = [name for name in (HEAD_FILE, SKOPS_FILE) if name in listed]
    if len(named) != 1:
        named = [name for name in (HEAD_FILE, SKOPS_FILE) if os.path.lexists(folder / name)]
        if len(named) > 1:
            raise BundleError(f"{folder} holds both {HEAD_FILE} and {SKOPS_FILE}, and its "
                              f"config.json does not say which is the model's; it was edited. "
                              f"{REDO_HINT}")
        if not named:
            raise BundleError(f"{folder}: its classifier ({HEAD_FILE} or {SKOPS_FILE}) is "
                              f"missing. {REDO_HINT}")
    if named[0] == SKOPS_FILE:
        return load_classifier(folder / SKOPS_FILE), SKOPS_FILE
    params = config["params"]
    # logreg-cv falls back to logreg's fixed C when the classes are too small for folds.
    if (params.get("classifier", "logreg") not in ("logreg", "logreg-cv", *STREAMING_CLASSIFIERS)
            or params.get("embedding") is not None or params.get("pca") is not None):
        raise BundleError(f"{folder}: {HEAD_FILE} holds a logistic regression, which "
                          f"config.json's params (classifier {params.get('classifier')!r}, "
                          f"embedding, pca) do not describe; it was edited. {REDO_HINT}")
    classifier = load_linear_head(folder / HEAD_FILE, width=config["n_features"],
                                  n_classes=len(config["classes"]))
    normalised = classifier.steps[0][0] == STEP_SEQUENCES[1][0]
    if normalised != (params.get("normalise") == "l2"):
        raise BundleError(f"{folder}: {HEAD_FILE} {'does' if normalised else 'does not'} "
                          f"normalise the features, config.json's params.normalise says "
                          f"otherwise; it was edited. {REDO_HINT}")
    _check_steps_fit_together(folder / HEAD_FILE, classifier)
    return classifier, HEAD_FILE


def _types_named_in(schema) -> set[str]:
    """Every ``module.class`` a skops schema names (walked without recursion, so a deeply
    nested file cannot exhaust the stack)."""
    names, pending = set(), [schema]
    while pending:
        node = pending.pop()
        if isinstance(node, dict):
            if "__module__" in node and "__class__" in node:
                names.add(f"{node['__module__']}.{node['__class__']}")
            pending.extend(node.values())
        elif isinstance(node, list):
            pending.extend(node)
    return names


def load_classifier(path: Path):
    """The scikit-learn pipeline in a bundle's skops file, refusing any type not in
    :data:`TRUSTED_SKOPS_TYPES` before anything in the file is built or called."""
    import zipfile

    from sklearn.pipeline import Pipeline

    from transferkit.skops_io import skops_io

    skops = skops_io()

    if not path.is_file():
        raise BundleError(f"{path.parent}: {SKOPS_FILE} is missing. {REDO_HINT}")
    try:
        with zipfile.ZipFile(path) as archive:
            unpacked = sum(member.file_size for member in archive.infolist())
        # skops stores its members uncompressed: a far larger unpacked size is a zip bomb.
        if unpacked > 64 * path.stat().st_size + 2**24:
            raise BundleError(f"{path} would unpack to {unpacked / 2**20:.0f} MiB from "
                              f"{path.stat().st_size / 2**20:.1f} MiB, which no classifier "
                              f"transferkit writes does; refusing it. {REDO_HINT}")
        untrusted = skops.get_untrusted_types(file=path)
        with zipfile.ZipFile(path) as archive:
            named_types = _types_named_in(json.loads(archive.read("schema.json")))
    except BundleError:
        raise
    except Exception as exc:  # not a zip, no schema.json, a malformed node...
        raise BundleError(f"{path}: not a readable skops file ({type(exc).__name__}: "
                          f"{first_line(exc)}). {REDO_HINT}") from exc
    # skops' own check trusts its defaults (every scikit-learn estimator, unless
    # transferkit.skops_io imported skops first); every type the file names must also be
    # one transferkit writes, whatever was imported first.
    refused = sorted((set(untrusted) | named_types)
                     - set(TRUSTED_SKOPS_TYPES) - set(PLAIN_SKOPS_TYPES))
    if refused:
        named = ", ".join(refused[:5]) + (f" and {len(refused) - 5} more" if len(refused) > 5 else "")
        raise BundleError(f"{path} holds {named}, which transferkit never writes; refusing to "
                          "load it, as it could run code. Use a model folder from a source you "
                          "trust, or re-run `transferkit fit`.")
    try:
        classifier = skops.load(path, trusted=list(TRUSTED_SKOPS_TYPES))
    except Exception as exc:
        raise BundleError(f"{path}: cannot rebuild the classifier ({type(exc).__name__}: "
                          f"{first_line(exc)}). {REDO_HINT}") from exc
    if not isinstance(classifier, Pipeline) or not hasattr(classifier, "predict_proba"):
        raise BundleError(f"{path} holds a {type(classifier).__name__}, not the classifier "
                          f"pipeline transferkit writes. {REDO_HINT}")
    _check_steps_fit_together(path, classifier, unpacked)
    return classifier


def _check_steps_fit_together(path: Path, classifier, unpacked: int | None = None) -> None:
    """Run the pipeline once on a row of zeros: its steps must take each other's widths
    and give one probability per class. Loading checks only the first step's width and
    the last step's classes, so inner steps that disagree would otherwise fail only at
    predict time, with a traceback."""
    try:
        width, n_classes = int(classifier.n_features_in_), len(classifier.classes_)
    except Exception as exc:  # an unfitted or hollowed-out pipeline
        raise BundleError(f"{path}: the classifier is not fitted ({type(exc).__name__}: "
                          f"{first_line(exc)}). {REDO_HINT}") from exc
    # Every pipeline fit writes keeps per-feature numbers (scaler, embedding, weights), so
    # a width beyond the file's size is a lie, and the probe row would be that large.
    if unpacked is not None and not 0 < width <= unpacked // 4:
        raise BundleError(f"{path}: the classifier claims {width} input features, which a "
                          f"file of {unpacked} bytes cannot describe. {REDO_HINT}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            shape = np.shape(classifier.predict_proba(np.zeros((1, width), dtype=np.float32)))
    except Exception as exc:
        raise BundleError(f"{path}: the classifier's steps do not fit together "
                          f"({type(exc).__name__}: {first_line(exc)}). {REDO_HINT}") from exc
    if shape != (1, n_classes):
        raise BundleError(f"{path}: the classifier gives probabilities of shape {list(shape)} "
                          f"for one image, not [1, {n_classes}]; its steps do not fit "
                          f"together. {REDO_HINT}")


# FNE's input: every convolutional layer as the paper defines it (``layer="all-conv"``,
# the default since issue 20), or the stage outputs (``layer="fne"``, the default
# before). Over seven measured columns the two tie on average (mean 0.827 against 0.828):
# the paper's form wins on sign_language_digits (0.897 against 0.855 test accuracy, 3
# seeds), oxford17flowers (0.963 / 0.959) and PH2 with Lite2 (melanoma 0.863 / 0.831,
# 3-class 0.708 / 0.700, 20-fold balanced accuracy), and loses on hymenoptera (0.915 /
# 0.932) and PH2 with Lite0 (0.816 / 0.853, 0.629 / 0.667); benchmarks/RESULTS.md,
# features and layers-ph2. With no accuracy to choose between them, the default is the
# method as published; the stage form, 10 times fewer features (a cold fit on
# hymenoptera 28 s against 38 s, on 100 classes 168 s against 246–326 s: README), stays
# one option away.
FNE_LAYERS = ("all-conv", "fne", "stages")  # "stages" names the same taps as "fne"


def full_network_embedding(**params) -> LinearProbe:
    """The Full-Network Embedding (Garcia-Gasulla et al. 2018, "On the Behavior of
    Convolutional Nets for Feature Extraction"): the output of every convolutional layer
    average-pooled (``layer="all-conv"``, the default, the paper's own definition, see
    :func:`transferkit.backbones.taps.conv_layers`; ``layer="fne"``: the stage outputs
    only, see :data:`FNE_LAYERS`), standardised on the training set, discretised to
    -1/0/1, then a linear SVM (another ``classifier`` may be given)."""
    params.setdefault("classifier", "svm")
    params.setdefault("layer", FNE_LAYERS[0])
    if params["layer"] not in FNE_LAYERS:
        raise TransferkitError(f"--method fne takes --layer all-conv (every convolutional "
                               f"layer, the default) or fne / stages (the stage outputs), not "
                               f"{params['layer']!r}.")
    params.update(pooling="avg", embedding="fne")  # FNE's definition
    return LinearProbe(**params)
