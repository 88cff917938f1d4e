"""The embedding head of the Siamese similarity: frozen features → unit vectors."""

from __future__ import annotations

import torch
from torch import nn


class PairEmbedding(nn.Module):
    """standardise (buffers ``mean``, ``scale``) → Linear → ReLU → Dropout → Linear →
    L2-normalise (``hidden=0``: one linear projection, a learned Mahalanobis-like metric)."""

    def __init__(self, n_features: int, hidden: int, embedding_dim: int, dropout: float):
        super().__init__()
        self.register_buffer("mean", torch.zeros(n_features))
        self.register_buffer("scale", torch.ones(n_features))
        if hidden:
            self.mlp = nn.Sequential(nn.Dropout(dropout), nn.Linear(n_features, hidden),
                                     nn.ReLU(), nn.Dropout(dropout),
                                     nn.Linear(hidden, embedding_dim))
        else:
            self.mlp = nn.Sequential(nn.Dropout(dropout), nn.Linear(n_features, embedding_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(self.mlp((x - self.mean) / self.scale), dim=1)
