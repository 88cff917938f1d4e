"""Prediction with exported models through ONNX Runtime: imports numpy, PIL and
onnxruntime only (``pip install transferkit[runtime]``), never torch, timm or
scikit-learn. :class:`OnnxPredictor` for classifiers, :class:`OnnxSegmenter` for
segmentation models."""

from transferkit.runtime.onnx_predictor import OnnxPredictor, load_predictor
from transferkit.runtime.onnx_segmenter import OnnxSegmenter

__all__ = ["OnnxPredictor", "OnnxSegmenter", "load_predictor"]
