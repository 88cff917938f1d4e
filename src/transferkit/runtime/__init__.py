"""Prediction with exported models through ONNX Runtime: imports numpy, PIL and
onnxruntime only (``pip install transferkit[runtime]``), never torch, timm or
scikit-learn."""

from transferkit.runtime.onnx_predictor import OnnxPredictor, load_predictor

__all__ = ["OnnxPredictor", "load_predictor"]
