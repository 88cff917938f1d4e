"""Transfer methods, one per file, each a scikit-learn-style estimator."""

from transferkit.methods.finetune import FineTuner
from transferkit.methods.linear_probe import LinearProbe

__all__ = ["FineTuner", "LinearProbe"]
