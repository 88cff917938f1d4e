"""Shallow scikit-learn classifiers for frozen features, sized to cost less than the network.

Small target sets are the norm here (tens of images per class), but a hundred classes
is not rare, so every default fits in a few seconds whatever the number of classes:

* ``logreg``: multinomial logistic regression with a fixed ``C`` (:data:`LOGREG_C`) on
  standardised features. Over the shared image sets a fixed ``C`` was as accurate as
  choosing it by cross-validation (``benchmarks/bench_classifiers.py``), at a twentieth of
  the cost; ``logreg-cv`` keeps the search (13 values of ``C``, stratified k-fold on the
  training features, log-loss) for who wants it.
* ``svm``: a one-vs-rest linear SVM with a fixed ``C`` (:data:`SVM_C`, :data:`SVM_C_FNE` on
  the Full-Network Embedding; LinearSVC's model,
  solved for all classes at once, :class:`LbfgsLinearSVC`), turned into probabilities by
  ONE sigmoid calibration on held-out folds: ``folds + 1`` fits, where a one-vs-one
  ``SVC`` inside a calibration inside a grid search fitted ``classes²/2 × folds² × grid``
  SVMs.
* ``mlp``: one hidden layer, stopped early on a held-out tenth once every class can
  spare images for it.
* ``knn``: brute-force neighbours (see the comment in :func:`bare_classifier`).
* ``ridge`` (layer sweeps only): alpha by closed-form leave-one-out.
* ``logreg-stream`` (linear probes only): ``logreg``'s model and objective, solved by
  L-BFGS over the training features one chunk at a time (:func:`fit_logreg_streaming`),
  so memory is bounded by a chunk (a feature shard), not by the data set. ``fit
  --features`` switches to it when the training features would not fit in memory.

Whatever needs a validation signal is taken from the training features alone, never
from the validation split. The linear probe, the layer sweep and the CDFG measure all
build their classifier here.
"""

from __future__ import annotations

import sys
import time
import warnings
from contextlib import contextmanager

import numpy as np
from sklearn.calibration import CalibratedClassifierCV
from sklearn.linear_model import LogisticRegression, LogisticRegressionCV, RidgeClassifierCV
from sklearn.model_selection import StratifiedKFold
from sklearn.neighbors import KNeighborsClassifier
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC

from transferkit.errors import TransferkitError

CLASSIFIERS = ("logreg", "logreg-cv", "svm", "knn", "mlp")
# Trained from chunks of features rather than one array (fit_logreg_streaming); a linear
# probe's option only, so not among the classifiers the layer sweep or CDFG offer.
STREAMING_CLASSIFIERS = ("logreg-stream",)
# Ridge has no probabilities, so it is not offered for saved models; its closed-form
# leave-one-out choice of alpha makes it the quick probe for layer sweeps.
SWEEP_CLASSIFIERS = CLASSIFIERS + ("ridge",)
EMBEDDINGS = ("fne",)  # make_probe_pipeline's embedding, besides None
NORMALISATIONS = ("l2",)  # make_probe_pipeline's normalise, besides None
C_GRID = np.logspace(-4, 2, 13)  # logreg-cv's search
# Chosen on oxford17flowers and office31/amazon, confirmed on the other shared sets
# (benchmarks/RESULTS.md, classifiers section). Features are standardised (or
# FNE-discretised) first, so one value per kind of feature suits every backbone; logreg
# is flat in C over two decades, the SVM peaks 3× higher on the sparser FNE codes.
LOGREG_C = 0.1
SVM_C = 3e-4
SVM_C_FNE = 1e-3
# LbfgsLinearSVC solves the dual when images < features, up to this many images (its
# images × images Gram matrix: 512 MB at 8,000).
DUAL_MAX_IMAGES = 8000
# The dual's answer is made exact on its support vectors (one linear solve of their
# number per class, _exact_on_support) when those solves cost at most this many
# floating-point operations (about a second here): always for a few hundred images, not
# for 100 classes of 2,000 support vectors each (a minute of solves for 1e-4 of the
# weights; the fne fit of the 100-class benchmark).
DUAL_EXACT_FLOPS = 2e9
CALIBRATION_FOLDS = 3  # the svm's one calibration: more folds cost a fit each, gain nothing
ANNOUNCE_AFTER_S = 3.0  # a fit longer than this gets a progress line
MLP_STOPPING_IMAGES = 10  # per class, so that a tenth held out still holds every class


class LbfgsLinearSVC(LinearSVC):
    """scikit-learn's ``LinearSVC`` model, solved for every class at once by L-BFGS.

    Same objective as liblinear's primal L2-regularised squared-hinge SVM, one-vs-rest, the
    intercept regularised as a feature of value ``intercept_scaling`` (so the same
    ``coef_`` and ``intercept_``, and ``decision_function``/``predict`` are LinearSVC's own),
    but the loss and gradient of all one-vs-rest problems are two matrix products per
    step. liblinear walks the images one at a time, one class after another, which made
    the svm the slowest classifier on 100 classes (about 10× slower than this on 1280-d
    features, and it grows with every class). Only the settings transferkit uses are
    supported: ``penalty="l2"``, ``loss="squared_hinge"``, ``multi_class="ovr"``;
    ``class_weight`` and ``sample_weight`` scale each image's ``C`` as liblinear does (a
    class's weight applies where it is the positive class).
    """

    def fit(self, X, y, sample_weight=None):
        from scipy import sparse
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.utils.class_weight import compute_class_weight
        from sklearn.utils.multiclass import check_classification_targets
        from sklearn.utils.validation import _check_sample_weight, validate_data

        self._validate_params()

        supported = {"penalty": "l2", "loss": "squared_hinge", "multi_class": "ovr"}
        unsupported = {name: getattr(self, name) for name, value in supported.items()
                       if getattr(self, name) != value}
        if unsupported:
            raise ValueError(f"{type(self).__name__} does not support {unsupported}; use "
                             "sklearn.svm.LinearSVC")
        X, y = validate_data(self, X, y, accept_sparse="csr", dtype=np.float64, order="C")
        check_classification_targets(y)
        self.classes_, encoded = np.unique(y, return_inverse=True)
        if len(self.classes_) < 2:
            raise ValueError(f"{type(self).__name__} needs images of at least 2 classes, but "
                             f"the data contains only one class: {self.classes_[0]!r}")
        # Two classes: one problem, positive = classes_[1], as liblinear does.
        positive = (encoded[:, None] == (np.arange(len(self.classes_)) if len(self.classes_) > 2
                                         else np.array([1])))
        signs = np.where(positive, 1.0, -1.0)
        sample_weight = _check_sample_weight(sample_weight, X, dtype=np.float64)
        class_weights = compute_class_weight(self.class_weight, classes=self.classes_, y=y,
                                             sample_weight=sample_weight)
        per_problem = (np.where(positive, class_weights, 1.0) if len(self.classes_) > 2
                       else class_weights[encoded][:, None])
        image_c = self.C * per_problem * sample_weight[:, None]
        if self.fit_intercept:
            column = np.full((X.shape[0], 1), float(self.intercept_scaling))
            X = (sparse.hstack([X, column], format="csr") if sparse.issparse(X)
                 else np.hstack([X, column]))
        shape = (X.shape[1], signs.shape[1])
        if not sparse.issparse(X) and X.shape[0] < X.shape[1] and X.shape[0] <= DUAL_MAX_IMAGES:
            weights, result = self._solve_dual(X, signs, image_c)
        else:
            weights, result = self._solve_primal(X, signs, image_c)
        if not result.success:
            warnings.warn(f"{type(self).__name__} did not converge in {result.nit} "
                          f"iterations ({result.message})", ConvergenceWarning)
        if self.fit_intercept:
            self.coef_ = np.ascontiguousarray(weights[:-1].T)
            self.intercept_ = weights[-1] * self.intercept_scaling
        else:
            self.coef_, self.intercept_ = np.ascontiguousarray(weights.T), np.zeros(shape[1])
        self.n_iter_ = int(result.nit)
        return self

    def _solve_primal(self, X, signs, image_c):
        """The weights ``(features, problems)`` minimising the primal objective."""
        from scipy.optimize import minimize

        shape = (X.shape[1], signs.shape[1])

        def loss_and_gradient(flat):
            weights = flat.reshape(shape)
            slack = np.maximum(0.0, 1.0 - signs * (X @ weights))
            loss = 0.5 * np.dot(flat, flat) + np.sum(image_c * slack * slack)
            gradient = weights - 2.0 * (X.T @ (image_c * signs * slack))
            return loss, gradient.ravel()

        result = minimize(loss_and_gradient, np.zeros(shape[0] * shape[1]), jac=True,
                          method="L-BFGS-B", options={"maxiter": self.max_iter, "gtol": self.tol})
        return result.x.reshape(shape), result

    def _solve_dual(self, X, signs, image_c):
        """The same weights from the dual, when there are fewer images than features (the
        Full-Network Embedding over every layer: 21,008 features for a few hundred
        images), where each primal step costs two passes over all features and many
        steps are needed. The dual of the squared-hinge SVM has one variable per image
        and problem: minimise ½ (s∘a)ᵀ K (s∘a) + Σ a² / (4c) − Σ a over a ≥ 0, with
        K = X Xᵀ computed once; then w = Xᵀ (s∘a) (Hsieh et al. 2008, liblinear's dual)."""
        from scipy.optimize import minimize

        gram = X @ X.T
        trained = image_c > 0  # an image of weight 0 takes no part: its variable stays 0
        ridge = np.where(trained, 0.5 / np.where(trained, image_c, 1.0), 0.0)
        shape = signs.shape

        def loss_and_gradient(flat):
            alpha = flat.reshape(shape)
            signed = signs * alpha
            pulled = gram @ signed
            loss = 0.5 * np.sum(signed * pulled) + 0.5 * np.sum(ridge * alpha * alpha) - alpha.sum()
            gradient = signs * pulled + ridge * alpha - trained
            return loss, gradient.ravel()

        bounds = [(0.0, None if free else 0.0) for free in trained.ravel()]
        result = minimize(loss_and_gradient, np.zeros(shape[0] * shape[1]), jac=True,
                          method="L-BFGS-B", bounds=bounds,
                          options={"maxiter": 100 * self.max_iter, "maxfun": 100 * self.max_iter,
                                   "gtol": self.tol * min(1.0, float(self.C))})
        alpha = result.x.reshape(shape)
        supports = ((alpha > 0) & trained).sum(axis=0).astype(np.float64)
        if np.sum(supports ** 3) / 3 <= DUAL_EXACT_FLOPS:
            alpha = _exact_on_support(alpha, gram, signs, ridge, trained)
        return X.T @ (signs * alpha), result


def _exact_on_support(alpha, gram, signs, ridge, trained) -> np.ndarray:
    """The dual solution made exact: L-BFGS finds which images are support vectors (a > 0);
    on them the optimum solves one linear system per problem, (s sᵀ ∘ K + diag(1/2c)) a = 1.
    Kept only where it is optimal (every support value positive, every other image's
    gradient non-negative), else L-BFGS's answer stays. Without it the weights stop about
    1e-7 from the optimum, and an image of weight 2 differs from two copies of it by that
    much (scikit-learn's check_sample_weight_equivalence asks for 1e-7)."""
    alpha = alpha.copy()
    for j in range(alpha.shape[1]):
        support = (alpha[:, j] > 0) & trained[:, j]
        if not support.any():
            continue
        s = signs[support, j]
        system = gram[np.ix_(support, support)] * np.outer(s, s) + np.diag(ridge[support, j])
        try:
            exact = np.linalg.solve(system, np.ones(int(support.sum())))
        except np.linalg.LinAlgError:
            continue
        candidate = np.where(support, 0.0, alpha[:, j])
        candidate[support] = exact
        gradient = (signs[:, j] * (gram @ (signs[:, j] * candidate)) + ridge[:, j] * candidate
                    - trained[:, j])
        if (exact > 0).all() and (gradient[trained[:, j] & ~support] >= -1e-9).all():
            alpha[:, j] = candidate
    return alpha


def _class_sizes(y) -> np.ndarray:
    return np.bincount(np.unique(y, return_inverse=True)[1])


def _folds(y, cv: int, random_state: int):
    n_splits = min(cv, int(_class_sizes(y).min()))
    if n_splits < 2:
        return None  # a class with one image: no CV possible
    return StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=random_state)


def bare_classifier(name: str, y, cv: int = 5, random_state: int = 0):
    """A fresh, unfitted classifier. ``y`` sizes its folds: ``cv`` folds for the search of
    ``logreg-cv``, at most :data:`CALIBRATION_FOLDS` for the calibration of ``svm``."""
    if name not in SWEEP_CLASSIFIERS:
        raise TransferkitError(f"unknown classifier {name!r}; choose one of {', '.join(CLASSIFIERS)}.")
    if name == "ridge":
        return RidgeClassifierCV(alphas=np.logspace(-2, 4, 13))
    if name == "logreg":
        return LogisticRegression(C=LOGREG_C, max_iter=1000)
    if name == "logreg-cv":
        folds = _folds(y, cv, random_state)
        if folds is None:
            return LogisticRegression(C=LOGREG_C, max_iter=1000)
        return LogisticRegressionCV(Cs=C_GRID, cv=folds, max_iter=5000, scoring="neg_log_loss",
                                    l1_ratios=(0.0,), use_legacy_attributes=False)
    if name == "svm":
        folds = _folds(y, min(cv, CALIBRATION_FOLDS), random_state)
        if folds is None:
            raise TransferkitError("the svm classifier needs at least two training images per "
                                   "class (for probability calibration); use logreg or knn.")
        # Platt scaling fitted on held-out folds turns SVM margins into probabilities;
        # ensemble=False keeps one SVM (refitted on all images) and one calibrator, the
        # shape skl2onnx converts.
        return CalibratedClassifierCV(LbfgsLinearSVC(C=SVM_C, max_iter=1000),
                                      method="sigmoid", cv=folds, ensemble=False)
    if name == "knn":
        smallest = int(_class_sizes(y).min())
        # Brute force: a fitted KD-tree is rebuilt from index arrays that scikit-learn
        # trusts without bounds checks, so a crafted classifier file could crash the
        # process on load (skops refuses sklearn's trees for the same reason); for the
        # few thousand training images of a probe, brute force is as fast.
        return KNeighborsClassifier(n_neighbors=max(1, min(5, smallest)), weights="distance",
                                    algorithm="brute")
    # Without a held-out share, training stops only once its own loss is flat, which on
    # separable features takes hundreds of epochs for no gain in accuracy.
    stop_early = int(_class_sizes(y).min()) >= MLP_STOPPING_IMAGES
    return MLPClassifier(hidden_layer_sizes=(256,), alpha=1e-3, max_iter=300 if stop_early else 200,
                         early_stopping=stop_early, random_state=random_state)


def make_classifier(name: str, y, cv: int = 5, random_state: int = 0):
    """Standardisation + the classifier ``name``: the plain linear-probe pipeline."""
    return make_pipeline(StandardScaler(), bare_classifier(name, y, cv, random_state))


def make_probe_pipeline(classifier: str, y, cv: int = 5, random_state: int = 0,
                        embedding: str | None = None, normalise: str | None = None,
                        pca: float | int | None = None):
    """Feature post-processing + classifier, fitted on training features only.

    ``embedding="fne"``: Full-Network Embedding (standardise + discretise), no scaler
    after it; otherwise optional L2 normalisation of each vector, then per-feature
    standardisation. ``pca``: keep ``k`` components (int) or a share of variance (float).
    """
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import Normalizer

    steps = []
    if embedding in EMBEDDINGS:
        from transferkit.features.fne import FullNetworkEmbedding

        steps.append(FullNetworkEmbedding())
    elif embedding is not None:
        raise TransferkitError(f"unknown embedding {embedding!r}; the only one is 'fne'.")
    else:
        if normalise in NORMALISATIONS:
            steps.append(Normalizer())
        elif normalise is not None:
            raise TransferkitError(f"unknown normalisation {normalise!r}; use 'l2' or none.")
        steps.append(StandardScaler())
    if pca is not None:
        n_train = len(y)
        if isinstance(pca, float) and not 0 < pca < 1:
            raise TransferkitError(f"pca as a share of variance must lie in (0, 1), got {pca}.")
        if isinstance(pca, int) and pca < 1:
            raise TransferkitError(f"pca needs at least one component, got {pca}.")
        components = min(pca, n_train - 1) if isinstance(pca, int) else pca
        steps.append(PCA(n_components=components, random_state=random_state))
    final = bare_classifier(classifier, y, cv, random_state)
    if embedding == "fne" and classifier == "svm":
        final.estimator.set_params(C=SVM_C_FNE)
    steps.append(final)
    return make_pipeline(*steps)


# --------------------------------------------------------------------------- streaming

# LogisticRegression's own defaults, so that the streamed solve stops where its solve does.
LOGREG_MAX_ITER = 1000
LOGREG_TOL = 1e-4
# Bytes of memory the in-memory solvers need per training feature value: the float32
# features, the standardised copy and the solver's float64 working copy (measured with
# tracemalloc on fit_features, benchmarks/bench_fit_features.py); fit --features streams
# when n_train x dim x this exceeds its --max-memory.
IN_MEMORY_BYTES_PER_VALUE = 16


def fit_logreg_streaming(chunks, n_classes: int, C: float = LOGREG_C,
                         normalise: str | None = None, max_iter: int = LOGREG_MAX_ITER,
                         tol: float = LOGREG_TOL):
    """``logreg``'s pipeline (optional L2 normalisation, standardisation, multinomial
    logistic regression with ``C``) fitted on data seen one chunk at a time.

    ``chunks()`` returns a fresh iterable of ``(X, y)`` pairs (float features, integer
    labels in ``0..n_classes-1``) on every call; nothing but one chunk and the model is
    held at once. A first pass fits the scaler (``StandardScaler.partial_fit``: the same
    mean and variance as a fit on all rows); then L-BFGS minimises scikit-learn's own
    objective for ``LogisticRegression(C=C)`` -- the mean log-loss plus
    ``||W||^2 / (2 C n)``, intercept unpenalised, one weight vector for two classes and
    one per class (softmax) otherwise -- with its settings (``gtol=tol``, ``maxls=50``),
    each function evaluation being one pass over the chunks. So the result is the model
    ``LogisticRegression.fit`` finds on the whole array, to the solver's tolerance, and
    is saved, exported and loaded as one (a plain ``LogisticRegression`` holding the
    solution). Stochastic gradient descent needs fewer passes but, at the same
    regularisation, stopped 2-10 points short of this optimum on the shared image sets
    (``benchmarks/bench_fit_features.py``), where the exact solve loses nothing.

    Returns ``(pipeline, passes)``: ``passes`` counts the passes over the data.
    """
    from scipy.optimize import minimize
    from scipy.special import expit, logsumexp
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.preprocessing import Normalizer

    if normalise not in (None, *NORMALISATIONS):
        raise TransferkitError(f"unknown normalisation {normalise!r}; use 'l2' or none.")
    normaliser = Normalizer() if normalise == "l2" else None
    scaler = StandardScaler()
    counts = np.zeros(n_classes, dtype=np.int64)
    for X, y in chunks():
        if len(X) == 0:
            continue
        X = np.asarray(X)
        if normaliser is not None:
            if not hasattr(normaliser, "n_features_in_"):
                normaliser.fit(X)  # stateless: fitting only records the width
            X = normaliser.transform(X)
        scaler.partial_fit(X)
        counts += np.bincount(np.asarray(y), minlength=n_classes)[:n_classes]
    n = int(counts.sum())
    if (counts == 0).any() or n_classes < 2:
        raise TransferkitError(f"every one of the {n_classes} classes needs training rows; "
                               f"got {counts.tolist()} rows per class.")
    dim = int(scaler.n_features_in_)
    binary = n_classes == 2
    rows = 1 if binary else n_classes  # LogisticRegression's coef_ rows
    l2 = 1.0 / (C * n)
    passes = 0

    def standardised(X):
        X = np.asarray(X)
        if normaliser is not None:
            X = normaliser.transform(X)
        return scaler.transform(X).astype(np.float64, copy=False)

    def loss_and_gradient(flat):
        nonlocal passes
        passes += 1
        weights, bias = flat[:rows * dim].reshape(rows, dim), flat[rows * dim:]
        loss, grad_w, grad_b = 0.0, np.zeros_like(weights), np.zeros_like(bias)
        for X, y in chunks():
            if len(X) == 0:
                continue
            Z, y = standardised(X), np.asarray(y)
            raw = Z @ weights.T + bias
            if binary:  # scikit-learn's HalfBinomialLoss: log(1 + e^raw) - y raw
                raw, target = raw[:, 0], (y == 1).astype(np.float64)
                loss += float(np.sum(np.logaddexp(0.0, raw) - target * raw))
                error = (expit(raw) - target)[:, None]
            else:  # HalfMultinomialLoss: logsumexp(raw) - raw[y]
                norm = logsumexp(raw, axis=1)
                loss += float(np.sum(norm - raw[np.arange(len(y)), y]))
                error = np.exp(raw - norm[:, None])
                error[np.arange(len(y)), y] -= 1.0
            grad_w += error.T @ Z
            grad_b += error.sum(axis=0)
        value = loss / n + 0.5 * l2 * float(np.dot(weights.ravel(), weights.ravel()))
        gradient = np.concatenate([(grad_w / n + l2 * weights).ravel(), grad_b / n])
        return value, gradient

    result = minimize(loss_and_gradient, np.zeros(rows * dim + rows), jac=True,
                      method="L-BFGS-B", options={"maxiter": max_iter, "maxls": 50, "gtol": tol,
                                                  "ftol": 64 * np.finfo(float).eps})
    if not result.success:
        warnings.warn(f"the streamed logistic regression did not converge in {max_iter} "
                      f"iterations ({result.message})", ConvergenceWarning)
    model = LogisticRegression(C=C, max_iter=max_iter, tol=tol)
    model.classes_ = np.arange(n_classes)
    model.coef_ = np.ascontiguousarray(result.x[:rows * dim].reshape(rows, dim))
    model.intercept_ = np.array(result.x[rows * dim:])
    model.n_features_in_ = dim
    model.n_iter_ = np.array([result.nit], dtype=np.int32)
    steps = ([normaliser] if normaliser is not None else []) + [scaler, model]
    return make_pipeline(*steps), passes


def array_chunks(X, y, rows: int):
    """``chunks`` for :func:`fit_logreg_streaming` over arrays already in memory."""
    def chunks():
        for start in range(0, len(y), rows):
            yield X[start:start + rows], y[start:start + rows]
    return chunks


# --------------------------------------------------------------------------- description

def _describe_step(step) -> str | None:
    """What a pre-processing step does, in a few words; None for an unknown step."""
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import Normalizer

    if isinstance(step, StandardScaler):
        return "standardised"
    if isinstance(step, Normalizer):
        return "L2-normalised"
    if isinstance(step, PCA):
        kept = getattr(step, "n_components_", step.n_components)
        return f"PCA {kept:g}" if isinstance(kept, float) else f"PCA {kept} components"
    if type(step).__name__ == "FullNetworkEmbedding":  # no import: fne pulls nothing new
        return f"full-network embedding ({step.low:g} / {step.high:g})"
    return None


def _describe_final(model) -> str:
    if isinstance(model, LogisticRegressionCV):
        folds = getattr(model.cv, "n_splits", model.cv)
        chosen = f"C={float(np.ravel(model.C_)[0]):.3g} " if hasattr(model, "C_") else "C "
        return f"logreg-cv ({chosen}chosen by {folds}-fold CV from {len(model.Cs)} values)"
    if isinstance(model, LogisticRegression):
        return f"logreg (C={model.C:g})"
    if isinstance(model, CalibratedClassifierCV):
        inner = model.estimator
        folds = getattr(model.cv, "n_splits", model.cv)
        kind = (f"LinearSVC one-vs-rest, C={inner.C:g}" if isinstance(inner, LinearSVC)
                else type(inner).__name__)
        return f"svm ({kind}, {model.method} calibration, {folds} folds)"
    if isinstance(model, KNeighborsClassifier):
        return f"knn (k={model.n_neighbors}, {model.weights}-weighted, {model.algorithm} force)" \
            if model.algorithm == "brute" else f"knn (k={model.n_neighbors}, {model.weights})"
    if isinstance(model, MLPClassifier):
        epochs = f", {model.n_iter_} epochs" if hasattr(model, "n_iter_") else ""
        stopping = "early stopping" if model.early_stopping else "no early stopping"
        return (f"mlp ({', '.join(map(str, model.hidden_layer_sizes))} hidden, "
                f"alpha={model.alpha:g}, {stopping}{epochs})")
    if isinstance(model, RidgeClassifierCV):
        chosen = f"alpha={model.alpha_:.3g} " if hasattr(model, "alpha_") else "alpha "
        return f"ridge ({chosen}chosen by leave-one-out from {len(model.alphas)} values)"
    return type(model).__name__


def describe_classifier(pipeline) -> str:
    """One line saying which classifier a probe pipeline holds and with what settings,
    e.g. ``"logreg (C=0.1), standardised"``; fitted, it names what was chosen."""
    steps = [step for _, step in pipeline.steps] if hasattr(pipeline, "steps") else [pipeline]
    before = [text for text in map(_describe_step, steps[:-1]) if text]
    final = _describe_final(steps[-1])
    return final + (", " + ", ".join(before) if before else "")


@contextmanager
def announce_fit(pipeline, n_images: int, n_classes: int, progress: bool,
                 after_seconds: float = ANNOUNCE_AFTER_S):
    """With ``progress``: a line on stderr once a classifier fit has run ``after_seconds``,
    and its time when it ends, so a fit of many seconds is not mistaken for a hang while
    the usual sub-second fit prints nothing."""
    if not progress:
        yield
        return
    import threading

    start = time.perf_counter()
    message = (f"fitting classifier {describe_classifier(pipeline)} on {n_images} images of "
               f"{n_classes} classes …")
    timer = threading.Timer(after_seconds, print, (message,),
                            {"file": sys.stderr, "flush": True})
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
    if time.perf_counter() - start >= after_seconds:
        print(f"classifier fitted in {time.perf_counter() - start:.1f} s", file=sys.stderr,
              flush=True)
