"""Checks of the feature arrays and labels that methods and measures are given.

One home for them so that a domain measure (:mod:`transferkit.evaluate.domain`) validates
its two domains exactly as a domain-adaptation method does, without importing any method.
scikit-learn's own validators do the work; their messages become :class:`DataError`, so
the command line prints them as one line. ``-1`` marks an unlabelled row (scikit-learn's
semi-supervised convention).
"""

from __future__ import annotations

import numpy as np
from scipy import sparse
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_array, column_or_1d, validate_data

from transferkit.errors import DataError

UNLABELLED = -1


def as_data_error(check, *args, **kwargs):
    """Run a scikit-learn validator; its (standard) message becomes a :class:`DataError`.

    TypeErrors (an array of dicts, say) stay TypeErrors, as scikit-learn's contract has it.
    """
    try:
        return check(*args, **kwargs)
    except ValueError as exc:
        if isinstance(exc, DataError):
            raise
        raise DataError(str(exc)) from exc


def _refuse_sparse(X, name: str) -> None:
    # scikit-learn refuses sparse input with a TypeError; here it is a DataError (a
    # ValueError) with scikit-learn's wording, so both its checks and the CLI accept it.
    if sparse.issparse(X):
        raise DataError(f"Sparse data was passed for {name}, but dense data is required; "
                        f"convert the {type(X).__name__} with .toarray().")


def check_features(X, name: str = "X") -> np.ndarray:
    """A dense, finite, non-empty 2-D float matrix (sparse input is refused by name)."""
    _refuse_sparse(X, name)
    return as_data_error(check_array, X, dtype=np.float64, input_name=name)


def validate_features(estimator, X, reset: bool) -> np.ndarray:
    """:func:`check_features` that also records / checks ``estimator.n_features_in_``."""
    _refuse_sparse(X, "X")
    return as_data_error(validate_data, estimator, X, reset=reset, dtype=np.float64)


def validate_labelled(estimator, X, y, what: str = "source"):
    """Features ``X`` (recording ``n_features_in_``) and their class labels ``y`` (1-D)."""
    X = validate_features(estimator, X, reset=True)
    if y is None:
        # scikit-learn's wording, which its tools (and estimator checks) recognise.
        raise DataError(f"{type(estimator).__name__} requires y to be passed, but the "
                        "target y is None.")
    y = as_data_error(column_or_1d, y, warn=True)
    if len(y) != len(X):
        raise DataError(f"{len(X)} {what} rows but {len(y)} labels; give one label per row.")
    as_data_error(check_classification_targets, y)
    return X, y


def check_domains(X, y, Xt, yt=None):
    """Validate source ``X, y`` and target ``Xt`` (same width); ``yt`` aligned with ``Xt``."""
    X = check_features(X, "X")
    Xt = check_features(Xt, "Xt")
    if X.shape[1] != Xt.shape[1]:
        raise DataError(f"source features have {X.shape[1]} columns but target features "
                        f"{Xt.shape[1]}; extract both domains with the same backbone and layer.")
    if y is not None:
        y = as_data_error(column_or_1d, y, warn=True)
        if len(y) != len(X):
            raise DataError(f"{len(X)} source rows but {len(y)} labels; give one label per row.")
    yt = check_target_labels(Xt, yt)
    return X, y, Xt, yt


def check_target_labels(Xt: np.ndarray, yt):
    """``yt`` as a 1-D array with one label (or ``-1``) per target row, or None."""
    if yt is None:
        return None
    yt = as_data_error(column_or_1d, yt, warn=True)
    if len(yt) != len(Xt):
        raise DataError(f"{len(Xt)} target rows but {len(yt)} target labels; give one "
                        f"label per target row, {UNLABELLED} for the unlabelled ones.")
    return yt


def labelled_rows(yt) -> np.ndarray:
    """Boolean mask of the target rows that carry a label (``yt != -1``)."""
    if yt is None:
        return np.zeros(0, dtype=bool)
    yt = np.asarray(yt)
    if yt.dtype.kind in "iu" or yt.dtype.kind == "f":
        return yt != UNLABELLED
    return np.array([str(v) != str(UNLABELLED) for v in yt], dtype=bool)
