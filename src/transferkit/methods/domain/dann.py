"""DANN: domain-adversarial training of neural networks.

Ganin & Lempitsky 2015, "Unsupervised Domain Adaptation by Backpropagation" (ICML); Ganin
et al. 2016 (JMLR). A domain classifier ``d`` learns to tell source features from target
features, while a gradient-reversal layer (identity forward, gradient multiplied by −λ
backward) makes the feature extractor ``f`` learn to fool it:

    min_{f, c} max_d   CE(c(f(x_s)), y_s) − λ_p · BCE(d(f(x)), domain(x))

with λ_p = 2 / (1 + exp(−10 p)) − 1 rising from 0 to 1 over training progress p, so that
the noisy domain signal of the first steps does not swamp the label signal.

The domain loss is weighted by ``adaptation_weight`` = 0.3 by default, not the paper's 1:
with AdamW instead of the paper's annealed SGD, the full weight let the domain signal
dominate the shared features and cost target accuracy on every pair measured.
Figures: ``benchmarks/RESULTS.md``, section ``domain-deep``, rows "DANN" and "DANN,
domain loss ×1 (paper)".
"""

from __future__ import annotations

import math

from transferkit.methods.domain._deep_base import DeepSourceOnly


def dann_lambda(progress: float, gamma: float = 10.0) -> float:
    """λ_p = 2 / (1 + exp(−γ p)) − 1 (Ganin & Lempitsky 2015, §5)."""
    return 2.0 / (1.0 + math.exp(-gamma * progress)) - 1.0


def gradient_reversal(x, lambda_: float):
    """Identity in the forward pass; multiplies the incoming gradient by −λ backwards."""
    import torch

    class _Reverse(torch.autograd.Function):
        @staticmethod
        def forward(ctx, value):
            return value.view_as(value)

        @staticmethod
        def backward(ctx, grad):
            return -lambda_ * grad

    return _Reverse.apply(x)


class DANN(DeepSourceOnly):
    """Domain-adversarial network (see the module docstring); ``adaptation_weight``
    (default 0.3) scales the domain loss, the λ_p schedule scales the reversed gradient."""

    def __init__(self, epochs: int = 20, batch_size: int = 64, lr: float = 1e-3,
                 adaptation_weight: float = 0.3, width: int = 1, val_fraction: float = 0.1,
                 device: str = "auto", random_state: int = 0, progress: bool = False,
                 run_dir: str | None = None):
        super().__init__(epochs=epochs, batch_size=batch_size, lr=lr,
                         adaptation_weight=adaptation_weight, width=width,
                         val_fraction=val_fraction, device=device, random_state=random_state,
                         progress=progress, run_dir=run_dir)

    def _extra_modules(self, n_features: int) -> dict:
        from torch import nn

        hidden = 100 * self.width
        return {"domain": nn.Sequential(nn.Linear(n_features, hidden), nn.ReLU(),
                                        nn.Linear(hidden, 1))}

    def _adaptation_loss(self, model, source_features, target_features, progress: float,
                         target_images):
        import torch
        import torch.nn.functional as F

        features = torch.cat([source_features, target_features])
        domain = torch.cat([torch.zeros(len(source_features)), torch.ones(len(target_features))])
        logits = model.extra["domain"](gradient_reversal(features, dann_lambda(progress)))
        return F.binary_cross_entropy_with_logits(logits.squeeze(1), domain.to(logits.device))
