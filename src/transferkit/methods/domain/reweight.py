"""Importance re-weighting of the source loss by a density ratio from a domain classifier.

Shimodaira 2000, "Improving predictive inference under covariate shift by weighting the
log-likelihood function"; Bickel, Brückner & Scheffer 2007, "Discriminative learning for
differing training and test distributions". Under covariate shift (P(y|x) shared,
P(x) not), minimising the source loss weighted by β(x) = P_T(x)/P_S(x) minimises the
target risk. β comes from a probabilistic domain classifier p(x) = P(target | x)
(logistic regression, source vs target): β = (n_s/n_t) · p/(1 − p), clipped to
``[0, max_weight]`` and rescaled to mean 1. The gain is largest when the classifier is
misspecified (a linear model where the true boundary is not linear): the weights
then choose which part of the input space the model should fit.
"""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from transferkit.methods.domain._base import DomainAdaptationClassifier


def domain_classifier_weights(X, Xt, C: float = 1.0, max_weight: float = 10.0,
                              random_state=0) -> np.ndarray:
    """β_i = (n_s/n_t)·p_i/(1−p_i) for each source row, clipped, mean 1."""
    Z = np.vstack([X, Xt])
    d = np.r_[np.zeros(len(X)), np.ones(len(Xt))]
    model = make_pipeline(StandardScaler(),
                          LogisticRegression(C=C, max_iter=2000, random_state=random_state))
    model.fit(Z, d)
    p = np.clip(model.predict_proba(X)[:, 1], 1e-6, 1 - 1e-6)
    beta = (len(X) / len(Xt)) * p / (1.0 - p)
    beta = np.clip(beta, 0.0, max_weight)
    return beta / beta.mean()


class ImportanceReweighting(DomainAdaptationClassifier):
    """Source loss weighted by β = P_T(x)/P_S(x) estimated by a logistic domain classifier.

    Parameters: ``domain_C`` (inverse regularisation of the domain classifier),
    ``max_weight`` (clip of β before rescaling to mean 1). Fitted: ``weights_``.
    """

    def __init__(self, estimator=None, domain_C: float = 1.0, max_weight: float = 10.0,
                 random_state=0):
        self.estimator = estimator
        self.domain_C = domain_C
        self.max_weight = max_weight
        self.random_state = random_state

    def _adapt(self, X, y, Xt, yt):
        self.weights_ = domain_classifier_weights(X, Xt, self.domain_C, self.max_weight,
                                                  self.random_state)
        return X, y, self.weights_
