"""ONNX export of saved models (``transferkit export``): torch.onnx for the networks,
skl2onnx for scikit-learn steps, ``onnx.compose`` to join them. Needs torch and
``skl2onnx`` (``pip install transferkit[export]``); predicting with an exported file needs
neither (:mod:`transferkit.runtime`)."""

from transferkit.export.exporter import EXPORTABLE_METHODS, export_model

__all__ = ["EXPORTABLE_METHODS", "export_model"]
