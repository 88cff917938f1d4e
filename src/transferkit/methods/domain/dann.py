"""DANN: domain-adversarial training of neural networks.

Ganin & Lempitsky 2015, "Unsupervised Domain Adaptation by Backpropagation" (ICML); Ganin
et al. 2016 (JMLR). A domain classifier ``d`` learns to tell source features from target
features, while a gradient-reversal layer (identity forward, gradient multiplied by −λ
backward) makes the feature extractor ``f`` learn to fool it:

    min_{f, c} max_d   CE(c(f(x_s)), y_s) − λ_p · BCE(d(f(x)), domain(x))

with λ_p = 2 / (1 + exp(−10 p)) − 1 rising from 0 to 1 over training progress p, so that
the noisy domain signal of the first steps does not swamp the label signal.

The domain classifier is the paper's: one hidden layer of 100 units on the digit network,
and on a pretrained backbone (bottleneck features) two of 1,024 with dropout, as Ganin
et al. 2016 used for Office-31 and the reference implementations do
(:func:`domain_discriminator`, shared with CDAN).

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


def domain_discriminator(n_inputs: int, hidden: int, layers: int = 2):
    """A domain classifier: ``layers`` hidden layers of ``hidden`` ReLU units (dropout 0.5
    between them when there are two, as Ganin et al. 2016 and Long et al. 2018 use on
    pretrained backbones), then one logit."""
    from torch import nn

    modules, width = [], n_inputs
    for _ in range(layers):
        modules += [nn.Linear(width, hidden), nn.ReLU()] + ([nn.Dropout(0.5)] if layers > 1 else [])
        width = hidden
    return nn.Sequential(*modules, nn.Linear(width, 1))


class DANN(DeepSourceOnly):
    """Domain-adversarial network (see the module docstring); ``adaptation_weight``
    (default 0.3) scales the domain loss, the λ_p schedule scales the reversed gradient."""

    def __init__(self, epochs: int | None = None, batch_size: int | None = None,
                 lr: float | None = None,
                 adaptation_weight: float = 0.3, width: int = 1, val_fraction: float = 0.1,
                 device: str = "auto", random_state: int = 0, progress: bool = False,
                 run_dir: str | None = None, backbone: str | None = None,
                 schedule: str | None = None, trainable: int = 0, bottleneck: int = 256,
                 views: int = 4, criterion: str | None = None, cache_dir=None,
                 use_cache: bool = True):
        super().__init__(epochs=epochs, batch_size=batch_size, lr=lr,
                         adaptation_weight=adaptation_weight, width=width,
                         val_fraction=val_fraction, device=device, random_state=random_state,
                         progress=progress, run_dir=run_dir, backbone=backbone,
                         schedule=schedule, trainable=trainable, bottleneck=bottleneck,
                         views=views, criterion=criterion, cache_dir=cache_dir,
                         use_cache=use_cache)

    def _extra_modules(self, n_features: int) -> dict:
        if self._uses_pretrained_backbone():
            return {"domain": domain_discriminator(n_features, 1024, layers=2)}
        return {"domain": domain_discriminator(n_features, 100 * self.width, layers=1)}

    def _adaptation_loss(self, model, batch):
        import torch
        import torch.nn.functional as F

        features = torch.cat([batch.source_features, batch.target_features])
        domain = torch.cat([torch.zeros(len(batch.source_features)),
                            torch.ones(len(batch.target_features))])
        logits = model.extra["domain"](gradient_reversal(features, dann_lambda(batch.progress)))
        return F.binary_cross_entropy_with_logits(logits.squeeze(1), domain.to(logits.device))
