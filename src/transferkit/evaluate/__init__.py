"""Measures and evaluation protocols."""

from transferkit.evaluate.metrics import (
    binary_scores,
    classification_summary,
    equal_error_rate,
    wilson_interval,
)
from transferkit.evaluate.protocols import cross_validate, repeated_holdout

__all__ = ["binary_scores", "classification_summary", "equal_error_rate", "wilson_interval",
           "cross_validate", "repeated_holdout"]
