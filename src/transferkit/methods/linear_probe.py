"""Linear probe: a shallow classifier on frozen pretrained features.

Razavian et al. 2014, "CNN Features off-the-shelf: an Astounding Baseline for
Recognition"; Donahue et al. 2014 (DeCAF). The backbone is frozen; features of one or
more layers (the pooled pre-logits vector by default; ``layer="fne"`` with
``embedding="fne"`` gives the Full-Network Embedding) feed a scikit-learn classifier
whose regularisation is chosen by stratified cross-validation on the training set.
Several backbones can be fused: ``backbone="efficientnet_lite0+efficientnet_lite2"``
concatenates their features.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.validation import check_is_fitted

from transferkit.backbones import DEFAULT_BACKBONE
from transferkit.bundle import register_method
from transferkit.errors import BundleError, DataError
from transferkit.features.extract import FrozenFeaturesMixin, _as_paths
from transferkit.methods.classifiers import make_probe_pipeline

SKOPS_FILE = "classifier.skops"
# What a bundle's classifier file may contain; anything else is refused on load.
_TRUSTED_PREFIXES = ("sklearn.", "numpy.", "scipy.", "builtins.",
                     "transferkit.features.fne.FullNetworkEmbedding")


def encode_labels(y) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y)
    if y.ndim != 1:
        raise DataError(f"labels must be one-dimensional, got shape {y.shape}.")
    classes, encoded = np.unique(y, return_inverse=True)
    if len(classes) < 2:
        raise DataError(f"need at least two classes to train a classifier, got {list(classes)}.")
    return classes, encoded


@register_method("linear_probe")
class LinearProbe(FrozenFeaturesMixin, ClassifierMixin, BaseEstimator):
    """Frozen backbone features + a shallow classifier (``logreg``, ``svm``, ``knn``, ``mlp``).

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
        """Extract features of ``X`` and fit the classifier (``X_val`` is unused: the
        classifier's hyper-parameters come from cross-validation on ``X``)."""
        y = np.asarray(y)
        if len(y) != len(_as_paths(X)):
            raise DataError(f"{len(_as_paths(X))} images but {len(y)} labels.")
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
        self.classifier_ = make_probe_pipeline(self.classifier, encoded, self.cv, self.random_state,
                                               embedding=self.embedding, normalise=self.normalise,
                                               pca=self.pca)
        with warnings.catch_warnings():
            # Tiny folds make some C values fail to converge; the CV picks among the rest.
            warnings.simplefilter("ignore", category=UserWarning)
            from sklearn.exceptions import ConvergenceWarning

            warnings.simplefilter("ignore", category=ConvergenceWarning)
            self.classifier_.fit(features, encoded)
        self.n_features_in_ = features.shape[1]
        return self

    # -- prediction -------------------------------------------------------------------
    def predict_proba_features(self, features: np.ndarray) -> np.ndarray:
        check_is_fitted(self, "classifier_")
        return self.classifier_.predict_proba(features)

    def predict_proba(self, X) -> np.ndarray:
        result = self.extract(X)
        if result.skipped:
            raise DataError(f"{len(result.skipped)} image(s) could not be read: "
                            + "; ".join(reason for _, reason in result.skipped[:5]))
        return self.predict_proba_features(result.features)

    def predict(self, X) -> np.ndarray:
        return self.classes_[self.predict_proba(X).argmax(axis=1)]

    def embed_paths(self, X):
        """(features of the readable images, ok mask): what the report maps in 2-D."""
        result = self.extract(X)
        return result.features, result.ok

    def predict_paths(self, X):
        """(probabilities of readable images, ok mask, skipped list) — skips bad files."""
        result = self.extract(X)
        return self.predict_proba_features(result.features), result.ok, result.skipped

    # -- bundle -----------------------------------------------------------------------
    def _save_artifacts(self, folder: Path) -> dict:
        import skops.io

        check_is_fitted(self, "classifier_")
        skops.io.dump(self.classifier_, Path(folder) / SKOPS_FILE)
        extractor = self._extractor()
        return {
            "backbone": extractor.identity()["backbone"],
            "params": {k: (str(v) if isinstance(v, os.PathLike) else v)
                       for k, v in self.get_params().items()
                       if k not in ("cache_dir", "progress", "num_workers")},
            "classes": [c.item() if hasattr(c, "item") else c for c in self.classes_],
            "layers": extractor.layers,
            "n_features": int(self.n_features_in_),
        }

    @classmethod
    def _load_artifacts(cls, folder: Path, config: dict) -> "LinearProbe":
        import skops.io

        path = Path(folder) / SKOPS_FILE
        if not path.is_file():
            raise BundleError(f"{folder}: {SKOPS_FILE} is missing.")
        untrusted = skops.io.get_untrusted_types(file=path)
        refused = [t for t in untrusted if not t.startswith(_TRUSTED_PREFIXES)]
        if refused:
            raise BundleError(f"{path} holds types transferkit does not load: {refused}.")
        estimator = cls(**config["params"])
        estimator.classifier_ = skops.io.load(path, trusted=untrusted)
        estimator.classes_ = np.asarray(config["classes"])
        estimator.n_features_in_ = int(config["n_features"])
        saved = config["backbone"] if isinstance(config["backbone"], list) else [config["backbone"]]
        here = estimator._extractor().identity()["backbone"]
        here = here if isinstance(here, list) else [here]
        for old, new in zip(saved, here):
            if old["weights_digest"] != new["weights_digest"]:
                raise BundleError(
                    f"{folder} was trained on backbone weights {old['weights_digest']} but "
                    f"{old['name']} here has weights {new['weights_digest']}; its classifier "
                    "would see different features. Install the same weights or re-run fit.")
        return estimator
