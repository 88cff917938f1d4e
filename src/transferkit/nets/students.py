"""The small CNN students of knowledge distillation.

Each conv stage is a 3×3 conv, BatchNorm, ReLU and a 2×2 max-pool; the last stage is
global-average pooled instead, then dropout and one linear layer give the logits.
"""

from __future__ import annotations

import torch
from torch import nn

from transferkit.errors import DataError

# name → channels of the conv stages: ~0.39 M and ~0.1 M parameters.
STUDENTS = {"small-cnn": (32, 64, 128, 256), "tiny-cnn": (16, 32, 64, 128)}
_HEAD_LAYERS = 2  # Dropout, Linear


class StudentCNN(nn.Sequential):
    """The student network ``name`` (a key of :data:`STUDENTS`) for ``n_classes``.

    A flat ``Sequential``: saved students' weights are keyed by layer index.
    """

    def __init__(self, name: str, n_classes: int, dropout: float = 0.3):
        if name not in STUDENTS:
            raise DataError(f"unknown student {name!r}; choose one of {sorted(STUDENTS)}.")
        layers, previous = [], 3
        widths = STUDENTS[name]
        for i, width in enumerate(widths):
            layers += [nn.Conv2d(previous, width, 3, padding=1, bias=False),
                       nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
            layers.append(nn.MaxPool2d(2) if i < len(widths) - 1 else nn.AdaptiveAvgPool2d(1))
            previous = width
        layers += [nn.Flatten(), nn.Dropout(dropout), nn.Linear(previous, n_classes)]
        super().__init__(*layers)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The pooled, flattened features the head reads."""
        for layer in list(self)[:-_HEAD_LAYERS]:
            x = layer(x)
        return x

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        for layer in list(self)[-_HEAD_LAYERS:]:
            features = layer(features)
        return features
