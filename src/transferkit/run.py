"""The jobs as plain functions, under the names earlier releases (and the README) use:
``transferkit.run.fit`` is :func:`transferkit.jobs.fit.run`, and so on. New code can
import the job modules of :mod:`transferkit.jobs` directly."""

from transferkit.jobs import anomaly as _anomaly
from transferkit.jobs import cdfg as _cdfg
from transferkit.jobs import evaluate as _evaluate
from transferkit.jobs import fit as _fit
from transferkit.jobs import predict as _predict

fit = _fit.run
predict = _predict.run
evaluate = _evaluate.run
anomaly = _anomaly.run
cdfg = _cdfg.run
negative_transfer_summary = _fit.negative_transfer_summary

__all__ = ["anomaly", "cdfg", "evaluate", "fit", "negative_transfer_summary", "predict"]
