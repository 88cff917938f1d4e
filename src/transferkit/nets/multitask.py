"""The multi-task network: a shared block on frozen features, one head per task.

Hard parameter sharing (Caruana 1997): ``Linear(d, hidden) → ReLU → Dropout`` read by
every task, then per task ``Linear(hidden, head_hidden) → ReLU → Linear(head_hidden,
n_classes_t)`` (one linear layer when ``head_hidden`` is 0).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class MultiTaskNetwork(nn.Module):
    """Shared layers, then one head per task (a ``ModuleList`` in task order).

    ``forward(x)`` returns a list of logits, one ``(batch, n_classes_t)`` tensor per
    task. ``log_vars`` (one ``s_t`` per task) is a parameter when ``uncertainty``.
    """

    def __init__(self, n_features: int, n_classes: Sequence[int], hidden: int = 128,
                 head_hidden: int = 64, dropout: float = 0.3, uncertainty: bool = False):
        super().__init__()
        self.shared = nn.Sequential(nn.Linear(n_features, hidden), nn.ReLU(), nn.Dropout(dropout))
        self.heads = nn.ModuleList([
            nn.Sequential(nn.Linear(hidden, head_hidden), nn.ReLU(), nn.Linear(head_hidden, c))
            if head_hidden else nn.Linear(hidden, c) for c in n_classes])
        self.log_vars = nn.Parameter(torch.zeros(len(n_classes))) if uncertainty else None

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The shared representation every head reads."""
        return self.shared(x)

    def forward_head(self, shared: torch.Tensor) -> list[torch.Tensor]:
        return [head(shared) for head in self.heads]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.forward_head(self.forward_features(x))
