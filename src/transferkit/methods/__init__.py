"""Transfer methods, one per file, each a scikit-learn-style estimator.

Importing this package registers every method that saves a bundle (``linear_probe``,
``finetune``, ``distill``, ``siamese``), so ``transferkit predict`` / ``evaluate`` can
load any of them.
"""

from transferkit.methods import distill, siamese  # noqa: F401  (bundle registration)
from transferkit.methods.finetune import FineTuner
from transferkit.methods.linear_probe import LinearProbe

__all__ = ["FineTuner", "LinearProbe"]
