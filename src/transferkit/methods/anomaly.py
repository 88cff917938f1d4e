"""Anomaly detection on frozen pretrained features: fit on normal images only.

The backbone is frozen and never sees an anomaly; a density or distance model of the
*normal* images' features scores how far a new image lies from them (higher = more
anomalous). Three scorers, all on features standardised with the normal training data:

* ``"mahalanobis"`` — a Gaussian model of the normal features; the score is the
  Mahalanobis distance ``sqrt((x - mu)^T S^-1 (x - mu))`` with a Ledoit-Wolf shrinkage
  covariance ``S`` (Ledoit & Wolf 2004), well conditioned even when there are fewer
  images than feature dimensions (Rippel et al. 2020, "Modeling the Distribution of
  Normal Data in Pre-Trained Deep Features for Anomaly Detection").
* ``"ocsvm"`` — one-class SVM with an RBF kernel (Schölkopf et al. 2001, "Estimating the
  Support of a High-Dimensional Distribution"); the score is minus its decision function,
  ``nu`` bounds the share of training images left outside the support.
* ``"knn"`` — k-nearest-neighbour distance: the mean Euclidean distance to the
  ``n_neighbors`` closest normal training images (Bergman et al. 2020, "Deep Nearest
  Neighbor Anomaly Detection").

``predict`` flags an image when its score reaches ``threshold_``: the
``threshold_quantile`` quantile (default 0.95: about 5% false alarms) of *out-of-fold*
scores of the normal training images (each fold scored by a model fitted on the other
folds), because in-sample scores of the training images are optimistically low. No
anomalous image is used to set it.
"""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted

from transferkit.backbones import DEFAULT_BACKBONE
from transferkit.errors import DataError
from transferkit.features.extract import FrozenFeaturesMixin

SCORERS = ("mahalanobis", "ocsvm", "knn")


class LedoitWolfGaussian:
    """A Gaussian with the Ledoit-Wolf shrinkage covariance; squared Mahalanobis distances.

    ``S = (1 - s) C + s (tr C / d) I`` with ``C`` the empirical covariance and ``s``
    sklearn's Ledoit-Wolf shrinkage: the same matrix as ``sklearn.covariance.LedoitWolf``.
    With fewer images ``n`` than dimensions ``d`` (the usual case for pretrained
    features) ``S^-1`` is never formed: by the Woodbury identity
    ``S^-1 = (I - X^T (n b/a I + X X^T)^-1 X) / b`` (``X`` the centred data,
    ``a = 1 - s``, ``b = s tr C / d``), which costs O(n² d) instead of O(d³).
    """

    def fit(self, z: np.ndarray) -> "LedoitWolfGaussian":
        from scipy.linalg import cho_factor, cho_solve
        from sklearn.covariance import ledoit_wolf_shrinkage

        n, d = z.shape
        self.location_ = z.mean(axis=0)
        centred = z - self.location_
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=RuntimeWarning)
            self.shrinkage_ = float(ledoit_wolf_shrinkage(centred, assume_centered=True))
        mu = float((centred ** 2).sum()) / (n * d)
        a = 1.0 - self.shrinkage_
        b = max(self.shrinkage_ * mu, 1e-12 * max(mu, 1.0))  # constant features: no 1/0
        self.scale_ = b
        self.basis_ = self.inner_ = self.precision_ = None
        if a <= 0.0:  # full shrinkage: S = b I
            return self
        if n < d:
            gram = centred @ centred.T + (n * b / a) * np.eye(n)
            self.basis_ = centred
            self.inner_ = cho_solve(cho_factor(gram), np.eye(n))
        else:
            covariance = a * (centred.T @ centred) / n + b * np.eye(d)
            self.precision_ = cho_solve(cho_factor(covariance), np.eye(d))
        return self

    def mahalanobis(self, z: np.ndarray) -> np.ndarray:
        """Squared Mahalanobis distance of each row of ``z`` to the mean."""
        diff = z - self.location_
        if self.precision_ is not None:
            squared = np.einsum("ij,jk,ik->i", diff, self.precision_, diff)
        else:
            squared = (diff ** 2).sum(axis=1)
            if self.basis_ is not None:
                projected = diff @ self.basis_.T
                squared = squared - np.einsum("ij,jk,ik->i", projected, self.inner_, projected)
            squared = squared / self.scale_
        return np.maximum(squared, 0.0)


class AnomalyDetector(FrozenFeaturesMixin, BaseEstimator):
    """Pretrained features of normal images → an anomaly score for new images.

    Parameters: ``scorer`` (``mahalanobis``, ``ocsvm`` or ``knn``), ``n_neighbors`` (knn),
    ``nu`` and ``gamma`` (ocsvm), ``threshold_quantile`` (quantile of the out-of-fold
    normal training scores used as the decision threshold), ``cv`` (folds for those
    scores), ``random_state`` (fold assignment); and, for image paths, the extraction
    options of :class:`~transferkit.methods.linear_probe.LinearProbe`: ``backbone``,
    ``weights``, ``arch``, ``layer``, ``pooling``, ``cache_dir``, ``use_cache``,
    ``batch_size``, ``runtime``, ``num_workers``, ``progress``.

    ``fit(paths)`` / ``score_samples(paths)`` / ``predict(paths)`` work on image paths;
    ``fit_features(F)`` / ``score_features(F)`` / ``predict_features(F)`` on feature
    arrays (e.g. raw pixels, or features extracted elsewhere). Unreadable training images
    are skipped with a warning (``skipped_`` lists them); ``score_samples`` raises
    :class:`DataError` on unreadable images, ``score_paths`` skips and lists them.
    """

    def __init__(self, scorer: str = "mahalanobis", backbone: str = DEFAULT_BACKBONE,
                 weights: str | None = None, arch: str | None = None,
                 layer: str = "pre_logits", pooling: str = "avg", n_neighbors: int = 5,
                 nu: float = 0.1, gamma: str | float = "scale",
                 threshold_quantile: float = 0.95, cv: int = 5, random_state: int = 0,
                 cache_dir: str | None = None, use_cache: bool = True, batch_size: int = 32,
                 runtime: str = "auto", num_workers: int | None = None,
                 progress: bool = False):
        self.scorer = scorer
        self.backbone = backbone
        self.weights = weights
        self.arch = arch
        self.layer = layer
        self.pooling = pooling
        self.n_neighbors = n_neighbors
        self.nu = nu
        self.gamma = gamma
        self.threshold_quantile = threshold_quantile
        self.cv = cv
        self.random_state = random_state
        self.cache_dir = cache_dir
        self.use_cache = use_cache
        self.batch_size = batch_size
        self.runtime = runtime
        self.num_workers = num_workers
        self.progress = progress

    # -- checks -----------------------------------------------------------------------
    def _check_params(self) -> None:
        if self.scorer not in SCORERS:
            raise DataError(f"unknown anomaly scorer {self.scorer!r}; choose one of "
                            f"{', '.join(SCORERS)}.")
        if not 0.0 < float(self.threshold_quantile) <= 1.0:
            raise DataError(f"threshold_quantile must be in (0, 1], got {self.threshold_quantile}.")
        if self.scorer == "knn" and int(self.n_neighbors) < 1:
            raise DataError(f"n_neighbors must be at least 1, got {self.n_neighbors}.")
        if self.scorer == "ocsvm" and not 0.0 < float(self.nu) <= 1.0:
            raise DataError(f"nu must be in (0, 1], got {self.nu}.")

    @staticmethod
    def _check_features(features, what: str) -> np.ndarray:
        from scipy import sparse

        if sparse.issparse(features):
            raise DataError(f"{what} must be a dense array, got a sparse "
                            f"{type(features).__name__}; convert it with .toarray().")
        try:
            features = np.asarray(features, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise DataError(f"{what} must be a numeric array: {exc}") from exc
        if features.ndim == 1:
            features = features.reshape(1, -1)
        if features.ndim != 2:
            raise DataError(f"{what} must be a 2-D array (images × features), got shape "
                            f"{features.shape}.")
        if len(features) == 0:
            raise DataError(f"{what}: no images given.")
        if not np.isfinite(features).all():
            raise DataError(f"{what} hold NaN or infinite values.")
        return features

    # -- the scorers ------------------------------------------------------------------
    def _fit_model(self, features: np.ndarray) -> dict:
        """Standardiser + scorer fitted on normal features (no threshold)."""
        from sklearn.preprocessing import StandardScaler

        scaler = StandardScaler().fit(features)
        z = scaler.transform(features)
        if self.scorer == "mahalanobis":
            model = LedoitWolfGaussian().fit(z)
        elif self.scorer == "ocsvm":
            from sklearn.svm import OneClassSVM

            model = OneClassSVM(kernel="rbf", nu=float(self.nu), gamma=self.gamma).fit(z)
        else:
            from sklearn.neighbors import NearestNeighbors

            model = NearestNeighbors(n_neighbors=min(int(self.n_neighbors), len(z))).fit(z)
        return {"scaler": scaler, "model": model}

    def _score_model(self, fitted: dict, features: np.ndarray) -> np.ndarray:
        z = fitted["scaler"].transform(features)
        model = fitted["model"]
        if self.scorer == "mahalanobis":
            return np.sqrt(np.maximum(model.mahalanobis(z), 0.0))
        if self.scorer == "ocsvm":
            return -model.decision_function(z)
        distances, _ = model.kneighbors(z)
        return distances.mean(axis=1)

    def _out_of_fold_scores(self, features: np.ndarray) -> np.ndarray:
        """Each normal training image scored by a model that did not see it."""
        n = len(features)
        folds = min(int(self.cv), n)
        if folds < 2:
            return self._score_model(self._fit_model(features), features)
        rng = np.random.default_rng(self.random_state)
        assignment = rng.permutation(np.arange(n) % folds)
        scores = np.empty(n)
        for fold in range(folds):
            held = assignment == fold
            fitted = self._fit_model(features[~held])
            scores[held] = self._score_model(fitted, features[held])
        return scores

    # -- fitting ----------------------------------------------------------------------
    def fit_features(self, features, y=None):
        """Fit on features of normal images only (``y`` is ignored)."""
        self._check_params()
        features = self._check_features(features, "normal training features")
        if len(features) < 2:
            raise DataError(f"need at least 2 normal training images, got {len(features)}.")
        fitted = self._fit_model(features)
        self.scaler_, self.model_ = fitted["scaler"], fitted["model"]
        self.n_features_in_ = features.shape[1]
        self.train_scores_ = self._score_model(fitted, features)
        self.oof_scores_ = self._out_of_fold_scores(features)
        self.threshold_ = float(np.quantile(self.oof_scores_, float(self.threshold_quantile)))
        return self

    def fit(self, X, y=None):
        """Extract features of the normal images ``X`` (paths) and fit on them."""
        self._check_params()
        result = self.extract(X)
        self.skipped_ = result.skipped
        self.extract_seconds_ = result.seconds
        if result.skipped:
            warnings.warn(f"skipped {len(result.skipped)} unreadable image(s): "
                          + "; ".join(reason for _, reason in result.skipped))
        if not result.ok.any():
            raise DataError("none of the normal training images could be read.")
        return self.fit_features(result.features)

    # -- scoring ----------------------------------------------------------------------
    def score_features(self, features) -> np.ndarray:
        """Anomaly score of each feature row: higher = more anomalous."""
        check_is_fitted(self, "model_")
        features = self._check_features(features, "features")
        if features.shape[1] != self.n_features_in_:
            raise DataError(f"features have {features.shape[1]} columns but the detector was "
                            f"fitted on {self.n_features_in_}.")
        return self._score_model({"scaler": self.scaler_, "model": self.model_}, features)

    def predict_features(self, features) -> np.ndarray:
        """1 for anomalous (score >= ``threshold_``), 0 for normal."""
        return (self.score_features(features) >= self.threshold_).astype(int)

    def score_paths(self, X):
        """(scores of the readable images, ok mask, skipped list): skips bad files."""
        result = self.extract(X)
        scores = (self.score_features(result.features) if result.ok.any()
                  else np.zeros(0, dtype=float))
        return scores, result.ok, result.skipped

    def score_samples(self, X) -> np.ndarray:
        """Anomaly score of each image path (higher = more anomalous)."""
        scores, _, skipped = self.score_paths(X)
        if skipped:
            raise DataError(f"{len(skipped)} image(s) could not be read: "
                            + "; ".join(reason for _, reason in skipped[:5]))
        return scores

    def predict(self, X) -> np.ndarray:
        """1 for an anomalous image, 0 for a normal one (threshold ``threshold_``)."""
        check_is_fitted(self, "threshold_")
        return (self.score_samples(X) >= self.threshold_).astype(int)
