"""CDAN+E (methods/domain/cdan.py): the multilinear map, the entropy weights, the reversed
gradient reaching the feature extractor, and fits on digit arrays and on a pretrained
backbone."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from domain_problems import bars, photo_pair
from transferkit.methods.domain import cdan as cdan_module
from transferkit.methods.domain._deep_base import DomainBatch, images_to_tensor
from transferkit.methods.domain.cdan import (
    CDAN,
    MULTILINEAR_LIMIT,
    RANDOMIZED_DIM,
    entropy_weights,
    multilinear_map,
)
from transferkit.methods.domain.dann import dann_lambda

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_multilinear_map_is_the_flattened_outer_product():
    rng = np.random.default_rng(0)
    f, g = rng.normal(size=(3, 4)), rng.dirichlet(np.ones(2), 3)
    out = multilinear_map(torch.tensor(f), torch.tensor(g)).numpy()
    assert out.shape == (3, 4 * 2)
    for row in range(3):
        # Class-major: entry k·d + j is g_k · f_j.
        np.testing.assert_allclose(out[row], np.outer(g[row], f[row]).ravel(), rtol=1e-12)
    np.testing.assert_allclose(out[0, 4 + 1], g[0, 1] * f[0, 1], rtol=1e-12)


def _fitted_shell(n_classes: int) -> CDAN:
    """An unfitted CDAN that knows its classes, as ``fit`` does before building modules."""
    method = CDAN()
    method.classes_ = np.arange(n_classes)
    return method


def test_the_map_is_randomized_only_above_4096_values():
    small = _fitted_shell(2)._extra_modules(256)  # 512 values: the full map
    assert small["conditioning"].out_features == 512
    assert small["domain"][0].in_features == 512
    torch.manual_seed(0)
    large = _fitted_shell(10)._extra_modules(1200)  # 12000 > 4096: randomized
    conditioning = large["conditioning"]
    assert 1200 * 10 > MULTILINEAR_LIMIT and conditioning.out_features == RANDOMIZED_DIM
    # The random matrices are buffers (saved, moved with the model), not trained.
    assert not list(conditioning.parameters()) and len(list(conditioning.buffers())) == 2
    f, g = torch.randn(5, 1200), torch.softmax(torch.randn(5, 10), 1)
    by_hand = ((f @ conditioning.random_features) * (g @ conditioning.random_predictions)
               / math.sqrt(RANDOMIZED_DIM))
    assert torch.allclose(conditioning(f, g), by_hand)
    assert conditioning(f, g).shape == (5, RANDOMIZED_DIM)


def test_entropy_weights_match_a_hand_computation():
    p = np.array([[1.0, 0.0], [0.5, 0.5], [0.9, 0.1],  # source half
                  [0.2, 0.8], [0.5, 0.5]])             # target half
    entropy = -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1)), 0), axis=1)
    raw = 1 + np.exp(-entropy)
    assert raw[0] == 2.0 and raw[1] == pytest.approx(1.5)  # certain: 2; uniform: 1 + 1/2
    expected = np.r_[raw[:3] / raw[:3].mean(), raw[3:] / raw[3:].mean()]
    weights = entropy_weights(torch.tensor(p), 3).numpy()
    np.testing.assert_allclose(weights, expected, rtol=1e-9)
    assert weights[:3].mean() == pytest.approx(1) and weights[3:].mean() == pytest.approx(1)


def _domain_loss_gradients(model, method, source, target, progress):
    model.zero_grad()
    source_features = model.forward_features(source)
    target_features = model.forward_features(target)
    batch = DomainBatch(source_features, target_features, model.forward_head(source_features),
                        model.forward_head(target_features), progress, target)
    method._adaptation_loss(model, batch).backward()
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def test_reversed_gradient_reaches_the_feature_extractor(monkeypatch):
    method = _fitted_shell(2)
    method._inputs = None  # the digit network
    model = method._new_network().eval()  # eval: no dropout, the same function both times
    source, _ = bars(8, 0)
    target, _ = bars(8, 1, colour_shift=True)
    source, target = images_to_tensor(source), images_to_tensor(target)
    progress = 0.5
    reversed_ = _domain_loss_gradients(model, method, source, target, progress)
    # The same loss without the reversal layer: the direction the discriminator descends.
    monkeypatch.setattr(cdan_module, "gradient_reversal", lambda x, lambda_: x)
    plain = _domain_loss_gradients(model, method, source, target, progress)
    lambda_ = dann_lambda(progress)
    encoder = [name for name in plain if name.startswith("features.")]
    assert encoder and all(plain[name].abs().sum() > 0 for name in encoder)
    for name in encoder:  # the feature extractor climbs the discriminator's loss
        assert torch.allclose(reversed_[name], -lambda_ * plain[name], rtol=1e-4, atol=1e-7)
    for name in [name for name in plain if name.startswith("extra.domain")]:
        assert torch.allclose(reversed_[name], plain[name])  # the discriminator descends it
    # Predictions are conditions, not paths: the classifier gets no adversarial gradient.
    assert all(not name.startswith("classifier.") for name in reversed_)


def test_cdan_fits_digit_arrays_and_beats_chance_on_a_colour_shift():
    X, y = bars(200, 0)
    Xt, _ = bars(200, 1, colour_shift=True)
    test, truth = bars(300, 2, colour_shift=True)
    model = CDAN(epochs=6, batch_size=32, random_state=0).fit(X, y, Xt)
    assert model.get_params()["adaptation_weight"] == 1.0  # the paper's weight
    assert model.model_.extra["domain"][0].in_features == 1200 * 2  # f ⊗ g, not randomized
    assert model.score(test, truth) > 0.65
    assert model.predict_proba(test).shape == (300, 2)


@pytest.mark.slow  # real bundled weights: ~15 s, most of it loading the backbone
def test_cdan_adapts_a_pretrained_backbone_on_image_files(tmp_path):
    source, y, target, _ = photo_pair(tmp_path)
    model = CDAN(backbone="efficientnet_lite0", trainable=0, views=0, epochs=1,
                 cache_dir=tmp_path / "activations", random_state=0).fit(source, y, target)
    # The bottleneck is 256 wide; 256 × 2 classes is the full map, under the paper's
    # 1024-unit discriminator.
    assert model.n_features_ == 256
    assert model.model_.extra["domain"][0].in_features == 512
    assert model.model_.extra["domain"][0].out_features == 1024
    assert model.predict(target).shape == (12,)
    assert model.predict_proba(target).shape == (12, 2)
