"""The scikit-learn part of a linear probe as an ONNX graph, through skl2onnx.

Input ``features`` (float32, ``(N, D)``: the network's pooled features), output
``probabilities`` (float32, ``(N, C)``, no ZipMap). skl2onnx converts every step
transferkit writes except our own Full-Network Embedding, whose converter is registered
here: standardise (in float64, as scikit-learn computes it), then -1/0/+1 by the two
thresholds.

A conversion must be faithful, not just possible: skl2onnx 1.20 converts a k-NN with
``weights="distance"``, but its graph weighs every neighbour equally (it negates the
distances before ``Max(d, 1e-6)``), so such a classifier is refused by name rather than
exported wrong. The export checks the whole file against the bundle afterwards too.
"""

from __future__ import annotations

import numpy as np
from onnx import TensorProto

from transferkit.errors import TransferkitError

TARGET_OPSET = {"": 17, "ai.onnx.ml": 3}
INPUT_NAME, OUTPUT_NAME = "features", "probabilities"
# transferkit.features.classifiers' choices whose pipelines convert faithfully (checked
# for every choice by tests/export/test_sklearn_steps.py).
EXPORTABLE_CLASSIFIERS = "logreg, logreg-cv, svm and mlp (knn only with uniform weights)"


class UnfaithfulConversion(TransferkitError):
    """A classifier skl2onnx cannot convert into a graph that predicts as it does."""


def _refuse(what: str, why: str):
    raise UnfaithfulConversion(f"the classifier {what} has no faithful ONNX conversion ({why}); "
                               f"export supports {EXPORTABLE_CLASSIFIERS}.")


def check_faithful(step) -> None:
    """Refuse any step whose ONNX conversion would not predict as scikit-learn does."""
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
    from sklearn.model_selection import GridSearchCV
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import Normalizer, StandardScaler
    from sklearn.svm import SVC, LinearSVC

    from transferkit.features.fne import FullNetworkEmbedding

    name = type(step).__name__
    if isinstance(step, Pipeline):
        for _, inner in step.steps:
            check_faithful(inner)
    elif isinstance(step, GridSearchCV):
        if not hasattr(step, "best_estimator_"):
            _refuse(name, "it was fitted without refit, so it holds no model")
        check_faithful(step.best_estimator_)
    elif isinstance(step, CalibratedClassifierCV):
        if step.method != "sigmoid":
            _refuse(name, f"calibration {step.method!r}; only Platt's sigmoid converts")
        for calibrated in step.calibrated_classifiers_:
            check_faithful(calibrated.estimator)
    elif isinstance(step, SVC):
        if step.kernel != "linear":
            _refuse(f"SVC(kernel={step.kernel!r})", "only the linear kernel is exported")
    elif isinstance(step, KNeighborsClassifier):
        if step.weights != "uniform":
            _refuse(f"KNeighborsClassifier(weights={step.weights!r})",
                    "skl2onnx weighs every neighbour equally")
        if step.effective_metric_ != "euclidean":
            _refuse(f"KNeighborsClassifier(metric={step.effective_metric_!r})",
                    "only the euclidean metric is exported")
    elif isinstance(step, Normalizer):
        if step.norm != "l2":
            _refuse(f"Normalizer(norm={step.norm!r})", "only l2 is exported")
    elif not isinstance(step, (StandardScaler, PCA, FullNetworkEmbedding, LogisticRegression,
                               LogisticRegressionCV, LinearSVC, MLPClassifier)):
        _refuse(name, "transferkit has not checked skl2onnx's converter for it")


# What a subclass must not override for its parent's converter to stay faithful.
_PREDICTING = ("decision_function", "predict", "predict_proba", "predict_log_proba",
               "transform")


def _steps(step):
    """``step`` and every estimator inside it that predicts (pipeline steps, a grid
    search's refitted model, each calibrated classifier's estimator)."""
    yield step
    inner = [s for _, s in getattr(step, "steps", [])]
    inner += [getattr(step, "best_estimator_", None)]
    inner += [c.estimator for c in getattr(step, "calibrated_classifiers_", [])]
    for child in inner:
        if child is not None:
            yield from _steps(child)


def _convert_subclasses_as_their_parents(pipeline) -> None:
    """A subclass that only changes how a model is fitted (features.classifiers'
    LbfgsLinearSVC: LinearSVC's model, another solver) is converted by its parent's
    converter; one that changes how it predicts is refused."""
    from skl2onnx._supported_operators import sklearn_operator_name_map

    for step in _steps(pipeline):
        cls = type(step)
        if cls in sklearn_operator_name_map:
            continue
        parent = next((base for base in cls.__mro__[1:] if base in sklearn_operator_name_map),
                      None)
        if parent is None:
            continue
        changed = [name for name in _PREDICTING
                   if getattr(cls, name, None) is not getattr(parent, name, None)]
        if changed:
            _refuse(cls.__name__, f"it changes {parent.__name__}'s {', '.join(changed)}")
        sklearn_operator_name_map[cls] = sklearn_operator_name_map[parent]


def _fne_shape(operator) -> None:
    from skl2onnx.common.data_types import FloatTensorType

    rows = operator.inputs[0].get_first_dimension()
    operator.outputs[0].type = FloatTensorType([rows, int(operator.raw_operator.mean_.shape[0])])


def _fne_converter(scope, operator, container) -> None:
    """FullNetworkEmbedding.transform: ((x - mean) / scale) in float64, then
    +1 above ``high``, -1 below ``low``, else 0, as float32."""
    from skl2onnx.algebra.onnx_ops import OnnxCast, OnnxDiv, OnnxGreater, OnnxLess, OnnxSub

    fne, opv = operator.raw_operator, container.target_opset
    x = OnnxCast(operator.inputs[0], to=TensorProto.DOUBLE, op_version=opv)
    z = OnnxDiv(OnnxSub(x, fne.mean_.astype(np.float64), op_version=opv),
                fne.scale_.astype(np.float64), op_version=opv)
    above = OnnxCast(OnnxGreater(z, np.array([fne.high], dtype=np.float64), op_version=opv),
                     to=TensorProto.FLOAT, op_version=opv)
    below = OnnxCast(OnnxLess(z, np.array([fne.low], dtype=np.float64), op_version=opv),
                     to=TensorProto.FLOAT, op_version=opv)
    OnnxSub(above, below, op_version=opv,
            output_names=operator.outputs[:1]).add_to(scope, container)


def register_converters() -> None:
    from skl2onnx import update_registered_converter

    from transferkit.features.fne import FullNetworkEmbedding

    update_registered_converter(FullNetworkEmbedding, "TransferkitFullNetworkEmbedding",
                                _fne_shape, _fne_converter)


def convert_classifier(pipeline, n_features: int):
    """The fitted probe pipeline as an ONNX ModelProto: ``features`` → ``probabilities``
    (and ``label``, which the merge drops)."""
    try:
        from skl2onnx import convert_sklearn
    except ImportError as exc:  # an optional extra: a plain install has no skl2onnx
        raise TransferkitError("exporting a classifier on features needs skl2onnx: "
                               "pip install 'transferkit[export]'.") from exc
    from skl2onnx.common.data_types import FloatTensorType

    check_faithful(pipeline)
    register_converters()
    _convert_subclasses_as_their_parents(pipeline)
    model = convert_sklearn(pipeline,
                            initial_types=[(INPUT_NAME, FloatTensorType([None, n_features]))],
                            options={"zipmap": False}, target_opset=TARGET_OPSET)
    outputs = [output.name for output in model.graph.output]
    if OUTPUT_NAME not in outputs:
        raise TransferkitError(f"skl2onnx gave outputs {outputs}, no {OUTPUT_NAME!r}; this "
                               "skl2onnx version is not supported.")
    return model
