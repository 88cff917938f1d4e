"""Ganin & Lempitsky's "MNIST architecture" for 32×32 RGB digits, and its mirror decoder.

Ganin & Lempitsky 2015, Fig. 4 / supplementary: the encoder is conv 5×5 (32) → max-pool
→ ReLU → conv 5×5 (48) → max-pool → ReLU (1200-d at width 1), the label predictor FC 100
→ FC 100 → classes. The decoder (Ghifary et al. 2016, DRCN) maps the 48×5×5 code back:
upsample → transposed 5×5 conv (32) → upsample → transposed 5×5 conv (3) → tanh, giving
images in the encoder's [−1, 1] input range. ``width`` multiplies every channel count.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


def digit_feature_size(width: int = 1) -> int:
    """Length of the encoder's flattened output (1200 at width 1)."""
    return 48 * width * 5 * 5


def digit_encoder(width: int = 1) -> nn.Sequential:
    """The convolutional feature extractor: ``(N, 3, 32, 32)`` → ``(N, 1200 · width)``."""
    c1, c2 = 32 * width, 48 * width
    return nn.Sequential(
        nn.Conv2d(3, c1, 5), nn.BatchNorm2d(c1), nn.MaxPool2d(2), nn.ReLU(),
        nn.Conv2d(c1, c2, 5), nn.BatchNorm2d(c2), nn.Dropout2d(0.1), nn.MaxPool2d(2), nn.ReLU(),
        nn.Flatten())


def digit_classifier(n_classes: int, width: int = 1) -> nn.Sequential:
    """The label predictor on the encoder's features: FC 100 → FC 100 → ``n_classes``."""
    hidden = 100 * width
    return nn.Sequential(nn.Linear(digit_feature_size(width), hidden), nn.BatchNorm1d(hidden),
                         nn.ReLU(), nn.Linear(hidden, hidden), nn.BatchNorm1d(hidden), nn.ReLU(),
                         nn.Linear(hidden, n_classes))


def digit_decoder(width: int = 1) -> nn.Sequential:
    """The encoder's mirror: features → ``(N, 3, 32, 32)`` images in [−1, 1]."""
    c1, c2 = 32 * width, 48 * width
    return nn.Sequential(
        nn.Unflatten(1, (c2, 5, 5)),
        nn.Upsample(scale_factor=2), nn.ConvTranspose2d(c2, c1, 5), nn.BatchNorm2d(c1), nn.ReLU(),
        nn.Upsample(scale_factor=2), nn.ConvTranspose2d(c1, 3, 5), nn.Tanh())


class DigitNetwork(nn.Module):
    """``features`` (the encoder) and ``classifier``, plus a method's ``extra`` modules.

    ``extra_modules(n_features)`` gives the modules a method trains beside the network (a
    domain classifier, a decoder), kept in the ``extra`` dict. ``steps_done`` counts the
    training steps taken: a buffer, so the progress behind λ schedules is checkpointed and
    a resumed run continues the schedule.
    """

    def __init__(self, n_classes: int, width: int = 1,
                 extra_modules: Callable[[int], dict] | None = None):
        super().__init__()
        self.features = digit_encoder(width)
        self.classifier = digit_classifier(n_classes, width)
        self.n_features = digit_feature_size(width)
        self.extra = nn.ModuleDict(extra_modules(self.n_features) if extra_modules else {})
        self.register_buffer("steps_done", torch.zeros((), dtype=torch.long))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.classifier(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class DigitAutoencoder(nn.Module):
    """``encoder`` (the digit encoder, so its weights load into a :class:`DigitNetwork`'s
    ``features``) and ``decoder``; ``forward`` reconstructs the input."""

    def __init__(self, width: int = 1):
        super().__init__()
        self.encoder = digit_encoder(width)
        # A classifier head is built and dropped between the two so that a seeded run draws
        # the same initial weights as the autoencoder always has (the figures in
        # benchmarks/RESULTS.md were measured so).
        digit_classifier(2, width)
        self.decoder = digit_decoder(width)
        self.n_features = digit_feature_size(width)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))
