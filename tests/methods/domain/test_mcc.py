"""MCC (methods/domain/mcc.py): the class-confusion loss against a hand computation, its
values at the extremes, and fits on digit arrays and on a pretrained backbone."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from domain_problems import bars, photo_pair
from transferkit.methods.domain._deep_base import DeepSourceOnly, images_to_tensor
from transferkit.methods.domain.mcc import MCC, MCC_TEMPERATURE, class_confusion_loss

pytestmark = pytest.mark.usefixtures("one_torch_thread")

LOGITS = np.array([[2.0, 0.5, -1.0],
                   [0.1, 1.5, 0.3],
                   [-0.5, 0.2, 2.5],
                   [1.0, 1.0, 0.0]])


def mcc_by_hand(logits, temperature=MCC_TEMPERATURE):
    """Jin et al. 2020, eqs. 1–6, written out in numpy."""
    n, c = logits.shape
    scaled = np.exp(logits / temperature)
    p = scaled / scaled.sum(1, keepdims=True)               # eq. 1
    entropy = -(p * np.log(p)).sum(1)                        # eq. 3
    w = n * (1 + np.exp(-entropy)) / (1 + np.exp(-entropy)).sum()  # eq. 4
    C = np.zeros((c, c))
    for j in range(c):
        for k in range(c):
            C[j, k] = sum(w[i] * p[i, j] * p[i, k] for i in range(n))  # eq. 5
    normalised = C / C.sum(axis=0, keepdims=True)            # category normalisation
    return (normalised.sum() - np.trace(normalised)) / c     # eq. 6


def test_mcc_loss_matches_a_hand_computation():
    expected = mcc_by_hand(LOGITS)
    assert 0.1 < expected < 0.9  # a batch with real confusion, not a degenerate case
    assert float(class_confusion_loss(torch.tensor(LOGITS))) == pytest.approx(expected, abs=1e-6)
    # The temperature matters: T = 1 gives sharper predictions and less confusion.
    sharper = float(class_confusion_loss(torch.tensor(LOGITS), temperature=1.0))
    assert sharper == pytest.approx(mcc_by_hand(LOGITS, 1.0), abs=1e-6) and sharper < expected


def test_mcc_loss_is_invariant_to_the_order_of_the_batch():
    order = [2, 0, 3, 1]
    assert float(class_confusion_loss(torch.tensor(LOGITS[order]))) == pytest.approx(
        float(class_confusion_loss(torch.tensor(LOGITS))), abs=1e-7)


def test_confident_distinct_predictions_have_no_confusion_and_a_collapse_has_most():
    confident = 100.0 * np.eye(3)[[0, 1, 2, 1, 0]]  # one-hot, every class taken
    assert float(class_confusion_loss(torch.tensor(confident))) < 1e-6
    # Uniform predictions confuse every pair: each normalised column is 1/c everywhere.
    uniform = np.zeros((5, 3))
    assert float(class_confusion_loss(torch.tensor(uniform))) == pytest.approx(2 / 3, abs=1e-6)
    # All examples certain of one class: the absent classes' columns are all confusion
    # with it, so category normalisation scores a collapse as badly as uniform guessing.
    collapsed = 100.0 * np.eye(3)[[0, 0, 0, 0, 0]]
    assert float(class_confusion_loss(torch.tensor(collapsed))) == pytest.approx(2 / 3, abs=1e-6)


def test_gradient_flows_through_the_predictions_and_lowers_the_loss():
    logits = torch.tensor(LOGITS, requires_grad=True)
    loss = class_confusion_loss(logits)
    loss.backward()
    assert logits.grad.abs().sum() > 0
    with torch.no_grad():
        stepped = logits - 0.5 * logits.grad
    assert float(class_confusion_loss(stepped)) < float(loss.detach())


def test_mcc_fits_digit_arrays_beats_chance_and_lowers_target_confusion():
    X, y = bars(200, 0)
    Xt, _ = bars(200, 1, colour_shift=True)
    test, truth = bars(300, 2, colour_shift=True)
    model = MCC(epochs=6, batch_size=32, random_state=0).fit(X, y, Xt)
    assert model.get_params()["adaptation_weight"] == 1.0  # the paper's μ
    assert model.score(test, truth) > 0.6
    plain = DeepSourceOnly(epochs=6, batch_size=32, random_state=0).fit(X, y)
    with torch.no_grad():
        images = images_to_tensor(test)
        adapted_confusion = float(class_confusion_loss(model.model_(images)))
        plain_confusion = float(class_confusion_loss(plain.model_(images)))
    # The method lowers what it minimises, on held-out target images.
    assert adapted_confusion < plain_confusion


@pytest.mark.slow  # real bundled weights: ~15 s, most of it loading the backbone
def test_mcc_adapts_a_pretrained_backbone_on_image_files(tmp_path):
    source, y, target, _ = photo_pair(tmp_path)
    model = MCC(backbone="efficientnet_lite0", trainable=0, views=0, epochs=1,
                cache_dir=tmp_path / "activations", random_state=0).fit(source, y, target)
    assert model.n_features_ == 256 and not len(model.model_.extra)  # no discriminator
    assert model.predict(target).shape == (12,)
    assert model.predict_proba(target).shape == (12, 2)
