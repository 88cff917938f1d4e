"""DANN: domain-adversarial training of neural networks.

Ganin & Lempitsky 2015, "Unsupervised Domain Adaptation by Backpropagation" (ICML); Ganin
et al. 2016 (JMLR). A domain classifier ``d`` learns to tell source features from target
features, while a gradient-reversal layer (identity forward, gradient multiplied by −λ
backward) makes the feature extractor ``f`` learn to fool it:

    min_{f, c} max_d   CE(c(f(x_s)), y_s) − λ_p · BCE(d(f(x)), domain(x))

with λ_p = 2 / (1 + exp(−10 p)) − 1 rising from 0 to 1 over training progress p, so that
the noisy domain signal of the first steps does not swamp the label signal.
"""

from __future__ import annotations

import math

from transferkit.methods.deep_adaptation import DeepSourceOnly


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
    scales the domain loss, the λ_p schedule scales the reversed gradient."""

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
