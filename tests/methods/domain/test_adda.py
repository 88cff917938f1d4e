"""ADDA (methods/domain/adda.py): a frozen source classifier, an untied target encoder,
and an adversarial step that gives each player only its own gradient."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from domain_problems import bars
from transferkit.methods.domain._deep_base import DeepSourceOnly, images_to_tensor
from transferkit.methods.domain.adda import ADDA

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_adda_keeps_the_source_classifier_and_trains_an_untied_target_encoder():
    from transferkit.methods.domain.adda import split_encoder

    X, y = bars(120, 0)
    Xt, _ = bars(120, 1, colour_shift=True)
    adda = ADDA(epochs=2, pretrain_epochs=2, batch_size=32).fit(X, y, Xt)
    # Step 1 is exactly the source-only network (same seed, data and batches) ...
    source = DeepSourceOnly(epochs=2, batch_size=32).fit(X, y)
    source_encoder, classifier = split_encoder(source.model_)
    for ours, theirs in zip(adda.model_.classifier.state_dict().values(),
                            classifier.state_dict().values()):
        assert torch.equal(ours, theirs)  # ... and step 2 left C frozen,
    moved = [not torch.equal(a, b) for a, b in zip(adda.model_.features.state_dict().values(),
                                                   source_encoder.state_dict().values())]
    assert any(moved)  # while the target encoder M_t moved away from M_s,
    # which ends in the first hidden layer: the aligned code is 100-d.
    assert adda.transform(Xt[:5]).shape == (5, 100) == adda.transform_source(X[:5]).shape
    with torch.no_grad():
        expected = source_encoder.eval()(images_to_tensor(X[:5])).numpy()
    np.testing.assert_allclose(adda.transform_source(X[:5]), expected, atol=1e-5)
    assert [row["stage"] for row in adda.history_] == ["source"] * 2 + ["adapt"] * 2
    assert adda.predict(Xt[:5]).shape == (5,)
    # Without target images there is nothing to adapt: M_s classifies, for both domains.
    plain = ADDA(epochs=1, batch_size=32).fit(X, y)
    np.testing.assert_allclose(plain.transform_source(X[:5]), plain.transform(X[:5]))


def test_adda_step_gives_each_player_only_its_own_gradient():
    from torch import nn

    from transferkit.methods.domain.adda import _adversarial_module

    torch.manual_seed(0)
    encoder = nn.Sequential(nn.Flatten(), nn.Linear(12, 4))
    module = _adversarial_module(encoder, copy.deepcopy(encoder), 4, 8)
    source, target = torch.randn(6, 3, 2, 2), torch.randn(6, 3, 2, 2)
    loss, _, n = ADDA(adaptation_weight=1.0)._adversarial_step()(module, (source, None, target))
    loss.backward()
    assert n == 12 and all(p.grad is None for p in module.source_encoder.parameters())
    # The discriminator's gradient is that of its own loss alone ...
    d_grads = [p.grad.clone() for p in module.discriminator.parameters()]
    module.zero_grad()
    with torch.no_grad():
        fs, ft = module.source_encoder(source), module.target_encoder(target)
    real, fake = module.discriminator(fs).squeeze(1), module.discriminator(ft).squeeze(1)
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    (bce(real, torch.ones(6)) + bce(fake, torch.zeros(6))).backward()
    for ours, alone in zip(d_grads, (p.grad for p in module.discriminator.parameters())):
        assert torch.allclose(ours, alone, atol=1e-6)
    # ... and the target encoder's that of the inverted-label loss alone.
    module.zero_grad()
    ft = module.target_encoder(target)
    bce(module.discriminator(ft).squeeze(1), torch.ones(6)).backward()
    encoder_alone = [p.grad.clone() for p in module.target_encoder.parameters()]
    module.zero_grad()
    loss, _, _ = ADDA(adaptation_weight=1.0)._adversarial_step()(module, (source, None, target))
    loss.backward()
    for ours, alone in zip((p.grad for p in module.target_encoder.parameters()), encoder_alone):
        assert torch.allclose(ours, alone, atol=1e-6)
