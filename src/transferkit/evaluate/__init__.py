"""Measures and evaluation protocols."""

from transferkit.evaluate.metrics import classification_summary

__all__ = ["classification_summary"]
