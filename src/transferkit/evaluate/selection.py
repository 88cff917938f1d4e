"""Choosing a domain-adaptation model without target labels.

In unsupervised domain adaptation the target has no labels, so neither the number of
epochs nor the adaptation weight can be chosen on target accuracy; source validation
accuracy is a poor proxy, since adapting trades source fit for target fit.

* :func:`snd` — soft neighbourhood density, Saito, Kim, Teterwak, Sclaroff, Darrell &
  Saenko 2021, "Tune it the Right Way: Unsupervised Validation of Domain Adaptation via
  Soft Neighborhood Density" (ICCV). A good adapted model maps each target image close
  to *several* others in its class cluster: with the target predictions L2-normalised,
  each image's similarities to the others are turned into a distribution by a
  temperature softmax, and SND is the mean entropy of those distributions. Higher is
  better; a scattered model scores low. A model that maps every target image onto the
  same prediction scores the maximum, log(n − 1) (each image's neighbours are all
  equally close), so SND can prefer a collapse: read it beside the source accuracy.
* :func:`dev_risk` — deep embedded validation, You, Wang, Long & Jordan 2019, "Towards
  Accurate Model Selection in Deep Unsupervised Domain Adaptation" (ICML). The target
  risk is the source risk re-weighted by the density ratio w(x) = p_t(x) / p_s(x) of the
  model's features; a domain classifier estimates w, and a control variate (E[w] = 1)
  cancels most of the variance the weights add. Lower is better.
"""

from __future__ import annotations

import numpy as np

SND_TEMPERATURE = 0.05  # the paper's τ


def snd(probabilities, temperature: float = SND_TEMPERATURE, max_samples: int = 2000,
        random_state: int = 0) -> float:
    """Soft neighbourhood density of target predictions ``probabilities`` ``(n, classes)``.

    ``(1/n) Σ_i H(softmax_j≠i(⟨p̂_i, p̂_j⟩ / τ))`` with ``p̂`` the L2-normalised rows; a
    random subset of ``max_samples`` rows keeps the n × n similarity matrix small.
    """
    P = np.asarray(probabilities, dtype=np.float64)
    if P.ndim != 2 or len(P) < 2:
        raise ValueError(f"snd needs an (n >= 2, classes) array of probabilities, got {P.shape}.")
    if len(P) > max_samples:
        P = P[np.random.default_rng(random_state).choice(len(P), max_samples, replace=False)]
    P = P / np.maximum(np.linalg.norm(P, axis=1, keepdims=True), 1e-12)
    logits = P @ P.T / temperature
    np.fill_diagonal(logits, -np.inf)  # an image is not its own neighbour
    logits -= logits.max(axis=1, keepdims=True)
    weights = np.exp(logits)
    weights /= weights.sum(axis=1, keepdims=True)
    entropy = -(weights * np.log(np.where(weights > 0, weights, 1.0))).sum(axis=1)
    return float(entropy.mean())


def _feature_matrix(name: str, values) -> np.ndarray:
    from transferkit.errors import DataError

    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 2 or len(array) < 2:
        raise DataError(f"{name} must be an (n >= 2, features) array, got shape {array.shape}.")
    if not np.isfinite(array).all():
        raise DataError(f"{name} holds NaN or infinite values.")
    return array


def density_ratios(source_features, target_features, evaluate_features,
                   random_state: int = 0) -> np.ndarray:
    """w(x) = p_t(x) / p_s(x) at the rows of ``evaluate_features``, from a domain classifier.

    A logistic regression on standardised features learns source (0) vs target (1); by
    Bayes, p_t(x) / p_s(x) = (n_s / n_t) · P(target | x) / P(source | x). Its
    regularisation is chosen by cross-validated log-loss (the reference code chooses its
    domain classifier's by held-out accuracy), because the ratios need calibrated
    probabilities: an over-fitted classifier drives them to 0 and ∞.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV, StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from transferkit.errors import DataError

    source = _feature_matrix("source features", source_features)
    target = _feature_matrix("target features", target_features)
    evaluate = _feature_matrix("features to weigh", evaluate_features)
    if not source.shape[1] == target.shape[1] == evaluate.shape[1]:
        raise DataError(f"the feature widths differ: source {source.shape[1]}, target "
                        f"{target.shape[1]}, weighed rows {evaluate.shape[1]}.")
    X = np.vstack([source, target])
    domain = np.r_[np.zeros(len(source)), np.ones(len(target))]
    folds = StratifiedKFold(int(min(3, len(source), len(target))), shuffle=True,
                            random_state=random_state)
    # C above 1 only over-fits separable domains (ratios towards 0 and ∞) and is where
    # L-BFGS needs thousands of iterations: 36 s per call on Office-31 features.
    classifier = GridSearchCV(make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)),
                              {"logisticregression__C": np.logspace(-3, 0, 4)},
                              scoring="neg_log_loss", cv=folds)
    classifier.fit(X, domain)
    p_target = np.clip(classifier.predict_proba(evaluate)[:, 1], 1e-12, 1 - 1e-12)
    return len(source) / len(target) * p_target / (1.0 - p_target)


def dev_risk(source_val_features, source_val_losses, target_features,
             source_train_features=None, random_state: int = 0) -> float:
    """Deep embedded validation: the estimated target risk of a model (lower is better).

    ``source_val_features`` ``(n, d)``: the model's features of held-out labelled source
    images, ``source_val_losses`` ``(n,)`` its loss on each (cross-entropy or 0/1 error);
    ``target_features`` ``(m, d)``: its features of the unlabelled target images. With
    ``w`` the density ratios of the validation rows (:func:`density_ratios`, the domain
    classifier trained on ``source_train_features`` vs the target as in the paper; without
    them, on one half of the validation rows vs the target, evaluated on the other half and
    the other way round, so no row is weighed by a classifier that saw it),

        DEV = mean(w ℓ) + η mean(w) − η,   η = −Cov(w ℓ, w) / Var(w).

    Since E[w] = 1 under the source, the η term has mean zero and only removes the
    variance w ℓ shares with w (the paper's control variate).
    """
    from transferkit.errors import DataError

    val = _feature_matrix("source validation features", source_val_features)
    losses = np.asarray(source_val_losses, dtype=np.float64)
    if losses.shape != (len(val),):
        raise DataError(f"source validation losses must be one value per validation row "
                        f"({len(val)}), got shape {losses.shape}.")
    if not np.isfinite(losses).all():
        raise DataError("the source validation losses hold NaN or infinite values.")
    target = _feature_matrix("target features", target_features)
    if source_train_features is not None:
        weights = density_ratios(source_train_features, target, val, random_state)
    else:
        if len(val) < 4:
            raise DataError(f"dev_risk needs at least 4 source validation rows to split "
                            f"without source_train_features, got {len(val)}.")
        order = np.random.default_rng(random_state).permutation(len(val))
        halves = np.array_split(order, 2)
        weights = np.empty(len(val))
        for weighed, trained in (halves, halves[::-1]):
            weights[weighed] = density_ratios(val[trained], target, val[weighed], random_state)
    weighted = weights * losses
    variance = np.var(weights, ddof=1)
    # Equal weights (no shift detected): the control variate has nothing to remove.
    eta = -np.cov(weighted, weights, ddof=1)[0, 1] / variance if variance > 1e-12 else 0.0
    return float(weighted.mean() + eta * weights.mean() - eta)
