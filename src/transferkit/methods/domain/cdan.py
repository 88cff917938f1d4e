"""CDAN+E: conditional domain-adversarial network with entropy conditioning.

Long, Cao, Wang & Jordan 2018, "Conditional Adversarial Domain Adaptation" (NeurIPS).
DANN's discriminator sees the features f alone, so it can be fooled by features whose
*marginal* distributions match while the classes are mixed up. CDAN's discriminator sees
the features conditioned on the classifier's predictions g = softmax(logits): the
multilinear map T(f, g) = f ⊗ g (the outer product, flattened, d·c values), or, when d·c
exceeds 4096, the randomized multilinear map T(f, g) = (R_f f) ⊙ (R_g g) / √1024 with
fixed Gaussian R_f, R_g (the paper's §3.3). Through a gradient-reversal layer:

    min_{f, c} max_D   CE(c(f(x_s)), y_s) − λ_p · Σ_i w_i BCE(D(T(f_i, g_i)), domain_i)

with λ_p DANN's schedule 2 / (1 + exp(−10 p)) − 1. Entropy conditioning (the "+E"):
w_i = 1 + exp(−H(g_i)) favours confidently classified examples, whose predictions are
trustworthy conditions; the weights are normalised to mean 1 within each domain's half
of the batch, as in the authors' code, so that both domains count equally. As in the
Transfer-Learning-Library (``tllib/alignment/cdan.py``), g is detached: the adversarial
gradient reaches the network through the features only, never through the predictions
(the authors' first code also sent a reversed gradient through the weights' entropy).
"""

from __future__ import annotations

import math

from transferkit.methods.domain._deep_base import DeepSourceOnly
from transferkit.methods.domain.dann import dann_lambda, domain_discriminator, gradient_reversal

# Above this many d·c values the map is randomized to RANDOMIZED_DIM (the paper's rule).
MULTILINEAR_LIMIT = 4096
RANDOMIZED_DIM = 1024


def multilinear_map(features, predictions):
    """f ⊗ g for each row: ``(n, d)``, ``(n, c)`` → ``(n, c·d)``, entry ``k·d + j`` =
    ``g_k · f_j`` (the class-major order of the reference code)."""
    return (predictions.unsqueeze(2) * features.unsqueeze(1)).flatten(1)


def entropy_weights(probabilities, n_source: int):
    """1 + exp(−H(g_i)) per row, normalised to mean 1 within the first ``n_source`` rows
    (the source half) and within the rest (the target half)."""
    import torch

    entropy = -(probabilities * torch.log(probabilities.clamp_min(1e-12))).sum(1)
    weights = 1.0 + torch.exp(-entropy)
    halves = [weights[:n_source], weights[n_source:]]
    return torch.cat([half / half.mean() for half in halves if len(half)])


def _conditioning_map(n_features: int, n_classes: int):
    """The module that turns (features, predictions) into the discriminator's input."""
    import torch
    from torch import nn

    class MultilinearMap(nn.Module):
        out_features = n_features * n_classes

        def forward(self, features, predictions):
            return multilinear_map(features, predictions)

    class RandomizedMultilinearMap(nn.Module):
        out_features = RANDOMIZED_DIM

        def __init__(self):
            super().__init__()
            # Drawn once (under the fit's seed) and fixed: buffers, not parameters.
            self.register_buffer("random_features", torch.randn(n_features, RANDOMIZED_DIM))
            self.register_buffer("random_predictions", torch.randn(n_classes, RANDOMIZED_DIM))

        def forward(self, features, predictions):
            return ((features @ self.random_features) * (predictions @ self.random_predictions)
                    / math.sqrt(RANDOMIZED_DIM))

    if n_features * n_classes > MULTILINEAR_LIMIT:
        return RandomizedMultilinearMap()
    return MultilinearMap()


class CDAN(DeepSourceOnly):
    """CDAN+E (see the module docstring); ``adaptation_weight`` (the base's default 1, the
    paper's) scales the conditional domain loss, the λ_p schedule the reversed gradient."""

    def _extra_modules(self, n_features: int) -> dict:
        conditioning = _conditioning_map(n_features, len(self.classes_))
        # The paper's discriminator: 1024 hidden units on a pretrained backbone; the
        # digit network's features are smaller and its data sets too, so 500 there.
        hidden = 1024 if self._uses_pretrained_backbone() else 500
        domain = domain_discriminator(conditioning.out_features, hidden, layers=2)
        return {"conditioning": conditioning, "domain": domain}

    def _adaptation_loss(self, model, batch):
        import torch
        import torch.nn.functional as F

        n_source = len(batch.source_features)
        features = torch.cat([batch.source_features, batch.target_features])
        logits = torch.cat([batch.source_logits, batch.target_logits])
        predictions = torch.softmax(logits.float(), 1).detach()
        conditioned = model.extra["conditioning"](features, predictions.to(features.dtype))
        domain_logits = model.extra["domain"](
            gradient_reversal(conditioned, dann_lambda(batch.progress))).squeeze(1)
        domain = torch.cat([torch.zeros(n_source), torch.ones(len(features) - n_source)])
        weights = entropy_weights(predictions, n_source).to(domain_logits.dtype)
        return F.binary_cross_entropy_with_logits(domain_logits, domain.to(domain_logits),
                                                  weight=weights)
