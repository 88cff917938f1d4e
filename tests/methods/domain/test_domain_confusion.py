"""Domain confusion with soft labels (methods/domain/domain_confusion.py): the per-class
soft labels, their loss, and the few labelled target images."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from domain_problems import bars
from transferkit.methods.domain.domain_confusion import (
    DomainConfusionSoftLabels,
    class_soft_labels,
    soft_label_loss,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_soft_labels_match_a_hand_computation():
    logits = torch.tensor([[2.0, 0.0], [0.0, 0.0], [0.0, 4.0]])
    labels = torch.tensor([0, 0, 1])
    soft = class_soft_labels(logits, labels, 2, temperature=2.0)
    # class 0: mean of softmax([1, 0]) and softmax([0, 0]); class 1: softmax([0, 2])
    e = math.exp(1.0)
    expected_0 = [(e / (e + 1) + 0.5) / 2, (1 / (e + 1) + 0.5) / 2]
    assert soft[0].tolist() == pytest.approx(expected_0)
    assert soft[1].tolist() == pytest.approx([1 / (1 + math.exp(2)), math.exp(2) / (1 + math.exp(2))])
    assert torch.allclose(soft.sum(1), torch.ones(2))
    # L_soft = −Σ_k l_k log softmax(z / τ)_k for one row of class 0 with logits (0, 2):
    row = torch.tensor([[0.0, 2.0]])
    log_p = [math.log(1 / (1 + e)), math.log(e / (1 + e))]
    hand = -(expected_0[0] * log_p[0] + expected_0[1] * log_p[1])
    assert float(soft_label_loss(row, torch.tensor([0]), soft, 2.0)) == pytest.approx(hand)


def test_domain_confusion_uses_the_labelled_target_images():
    X, y = bars(120, 0)
    Xt, yt = bars(120, 1, colour_shift=True)
    partial = np.full(len(yt), -1)
    partial[:8] = yt[:8]
    model = DomainConfusionSoftLabels(epochs=2, pretrain_epochs=1, batch_size=32).fit(
        X, y, Xt, partial)
    assert model.soft_labels_.shape == (2, 2)
    assert np.allclose(model.soft_labels_.sum(1), 1.0)
    # Soft labels are softened: the true class dominates, the other keeps some mass.
    assert np.all(np.diag(model.soft_labels_) > 0.5) and np.all(model.soft_labels_ > 0)
    assert [row["stage"] for row in model.history_] == ["source", "adapt", "adapt"]
