"""Shallow scikit-learn classifiers for frozen features, with hyper-parameters chosen by CV.

Small target sets are the norm here (tens of images per class), so every choice that
needs a validation signal (the regularisation strength C) is made by stratified
cross-validation on the training features alone, never on the validation split.
The linear probe, the layer sweep and the CDFG measure all build their classifier here.
"""

from __future__ import annotations

import numpy as np
from sklearn.calibration import CalibratedClassifierCV
from sklearn.linear_model import LogisticRegression, LogisticRegressionCV, RidgeClassifierCV
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.neighbors import KNeighborsClassifier
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from transferkit.errors import TransferkitError

CLASSIFIERS = ("logreg", "svm", "knn", "mlp")
# Ridge has no probabilities, so it is not offered for saved models; its closed-form
# leave-one-out choice of alpha makes it the quick probe for layer sweeps.
SWEEP_CLASSIFIERS = CLASSIFIERS + ("ridge",)
EMBEDDINGS = ("fne",)  # make_probe_pipeline's embedding, besides None
NORMALISATIONS = ("l2",)  # make_probe_pipeline's normalise, besides None
C_GRID = np.logspace(-4, 2, 13)


def _folds(y, cv: int, random_state: int):
    smallest = int(np.bincount(np.unique(y, return_inverse=True)[1]).min())
    n_splits = min(cv, smallest)
    if n_splits < 2:
        return None  # a class with one image: no CV possible, use defaults
    return StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=random_state)


def bare_classifier(name: str, y, cv: int = 5, random_state: int = 0):
    """A fresh, unfitted classifier; ``y`` sizes the CV folds of its hyper-parameter search."""
    if name not in SWEEP_CLASSIFIERS:
        raise TransferkitError(f"unknown classifier {name!r}; choose one of {', '.join(CLASSIFIERS)}.")
    folds = _folds(y, cv, random_state)
    if name == "ridge":
        return RidgeClassifierCV(alphas=np.logspace(-2, 4, 13))
    if name == "logreg":
        if folds is None:
            model = LogisticRegression(C=1.0, max_iter=5000)
        else:
            model = LogisticRegressionCV(Cs=C_GRID, cv=folds, max_iter=5000, scoring="neg_log_loss",
                                         l1_ratios=(0.0,), use_legacy_attributes=False)
    elif name == "svm":
        if folds is None:
            raise TransferkitError("the svm classifier needs at least two training images per "
                                   "class (for C and probability calibration); use logreg or knn.")
        # Platt scaling fitted on held-out folds turns SVM margins into probabilities.
        svc = CalibratedClassifierCV(SVC(kernel="linear", random_state=random_state),
                                     cv=folds, ensemble=False)
        model = GridSearchCV(svc, {"estimator__C": C_GRID}, cv=folds, scoring="balanced_accuracy")
    elif name == "knn":
        smallest = int(np.bincount(np.unique(y, return_inverse=True)[1]).min())
        # Brute force: a fitted KD-tree is rebuilt from index arrays that scikit-learn
        # trusts without bounds checks, so a crafted classifier file could crash the
        # process on load (skops refuses sklearn's trees for the same reason); for the
        # few thousand training images of a probe, brute force is as fast.
        model = KNeighborsClassifier(n_neighbors=max(1, min(5, smallest)), weights="distance",
                                     algorithm="brute")
    else:
        model = MLPClassifier(hidden_layer_sizes=(256,), alpha=1e-3, max_iter=1000,
                              early_stopping=len(y) >= 100, random_state=random_state)
    return model


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
    steps.append(bare_classifier(classifier, y, cv, random_state))
    return make_pipeline(*steps)
