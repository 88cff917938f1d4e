"""Full-Network Embedding.

Garcia-Gasulla et al. 2018, "On the Behavior of Convolutional Nets for Feature
Extraction" (JAIR): (1) spatial average pooling of the output of every convolutional
layer (done by the extractor with ``layer="all-conv"``, the default of ``--method fne``,
see :func:`transferkit.backbones.taps.conv_layers`; ``layer="fne"`` pools only the stage
outputs and the final features, as accurate on our sets, see
``methods.linear_probe.FNE_LAYERS``), (2) per-feature
standardisation with statistics of the training set, (3) discretisation of each
standardised value to -1 (below ``low``), 0, or +1 (above ``high``), then a linear SVM.
Discretisation keeps only "is this feature unusually absent / present for this image",
which removes noise and makes features of very different layers comparable.
"""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted, validate_data

DEFAULT_LOW = -0.25
DEFAULT_HIGH = 0.15


def discretise(values, low: float = DEFAULT_LOW, high: float = DEFAULT_HIGH) -> np.ndarray:
    """-1 where ``values < low``, +1 where ``values > high``, else 0."""
    values = np.asarray(values, dtype=np.float64)
    if low > high:
        raise ValueError(f"low threshold {low} is above high threshold {high}")
    return np.where(values > high, 1, np.where(values < low, -1, 0)).astype(np.int8)


class FullNetworkEmbedding(TransformerMixin, BaseEstimator):
    """Standardise with training statistics, then discretise to {-1, 0, 1}.

    Input: the concatenated average-pooled layer features (``FrozenExtractor(layer="fne")``,
    the stage outputs, or every convolutional layer with ``layer="all-conv"``).
    ``low``/``high`` are the discretisation thresholds (paper: -0.25 and 0.15).
    """

    def __init__(self, low: float = DEFAULT_LOW, high: float = DEFAULT_HIGH):
        self.low = low
        self.high = high

    def fit(self, X, y=None):
        X = validate_data(self, X, dtype=np.float64)
        if self.low > self.high:
            raise ValueError(f"low threshold {self.low} is above high threshold {self.high}")
        self.mean_ = X.mean(axis=0)
        std = X.std(axis=0)
        # A feature constant on the training set carries no information: map it to 0.
        self.scale_ = np.where(std > 1e-12, std, np.inf)
        return self

    def transform(self, X) -> np.ndarray:
        check_is_fitted(self, "mean_")
        X = validate_data(self, X, dtype=[np.float64, np.float32], reset=False)
        return discretise((X - self.mean_) / self.scale_, self.low, self.high).astype(X.dtype)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        return tags
