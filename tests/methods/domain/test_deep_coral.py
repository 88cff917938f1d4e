"""Deep CORAL (methods/domain/deep_coral.py): the CORAL loss between feature batches."""

from __future__ import annotations

import pytest
import torch

from transferkit.methods.domain.deep_coral import coral_loss

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_coral_loss_matches_a_hand_computation():
    source = torch.tensor([[0.0, 0.0], [2.0, 0.0]])   # Cov = [[2, 0], [0, 0]]
    target = torch.tensor([[0.0, 0.0], [0.0, 2.0]])   # Cov = [[0, 0], [0, 2]]
    # ‖C_S − C_T‖²_F = 2² + 2² = 8; / (4 d²) = 8 / 16
    assert float(coral_loss(source, target)) == pytest.approx(0.5)
    assert float(coral_loss(source, source + 5.0)) == pytest.approx(0.0)  # means do not count
