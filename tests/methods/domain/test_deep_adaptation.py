"""Deep domain adaptation: gradient reversal, λ schedule, CORAL and MMD losses, the estimator."""

from __future__ import annotations

import contextlib
import copy
import math

import numpy as np
import pytest
import torch

from transferkit.errors import DataError
from transferkit.methods.domain._deep_base import (
    DeepSourceOnly,
    images_to_tensor,
    target_batchnorm_statistics,
)
from transferkit.methods.domain.adda import ADDA
from transferkit.methods.domain.dan import DAN, multi_kernel_mmd
from transferkit.methods.domain.dann import DANN, dann_lambda, gradient_reversal
from transferkit.methods.domain.deep_coral import DeepCORAL, coral_loss
from transferkit.methods.domain.domain_confusion import (
    DomainConfusionSoftLabels,
    class_soft_labels,
    soft_label_loss,
)
from transferkit.methods.domain.drcn import ReconstructionDA


def test_gradient_reversal_is_identity_forward_and_minus_lambda_backward():
    x = torch.randn(4, 3, requires_grad=True)
    upstream = torch.randn(4, 3)
    y = gradient_reversal(x, 0.7)
    assert torch.equal(y, x)
    y.backward(upstream)
    assert torch.allclose(x.grad, -0.7 * upstream)


def test_dann_lambda_schedule():
    assert dann_lambda(0.0) == 0.0
    assert dann_lambda(0.5) == pytest.approx(2 / (1 + math.exp(-5)) - 1)
    assert dann_lambda(1.0) == pytest.approx(0.99991, abs=1e-5)
    values = [dann_lambda(p) for p in np.linspace(0, 1, 11)]
    assert values == sorted(values)


def test_coral_loss_matches_a_hand_computation():
    source = torch.tensor([[0.0, 0.0], [2.0, 0.0]])   # Cov = [[2, 0], [0, 0]]
    target = torch.tensor([[0.0, 0.0], [0.0, 2.0]])   # Cov = [[0, 0], [0, 2]]
    # ‖C_S − C_T‖²_F = 2² + 2² = 8; / (4 d²) = 8 / 16
    assert float(coral_loss(source, target)) == pytest.approx(0.5)
    assert float(coral_loss(source, source + 5.0)) == pytest.approx(0.0)  # means do not count


def test_multi_kernel_mmd_is_zero_for_one_sample_and_grows_with_a_shift():
    rng = torch.Generator().manual_seed(0)
    x = torch.randn(64, 5, generator=rng)
    assert float(multi_kernel_mmd(x, x)) == pytest.approx(0.0, abs=1e-6)
    y = torch.randn(64, 5, generator=rng)
    values = [float(multi_kernel_mmd(x, y + shift)) for shift in (0.0, 0.5, 1.0, 2.0)]
    assert values == sorted(values) and values[-1] > 10 * values[0]


def test_images_are_checked_and_scaled():
    grey = np.full((2, 32, 32), 255, dtype=np.uint8)
    tensor = images_to_tensor(grey)
    assert tensor.shape == (2, 3, 32, 32) and float(tensor.max()) == 1.0
    with pytest.raises(DataError, match="32×32"):
        images_to_tensor(np.zeros((2, 28, 28), np.uint8))
    with pytest.raises(DataError, match="no images"):
        images_to_tensor(np.zeros((0, 32, 32), np.uint8))


def bars(n, seed, colour_shift=False):
    """Horizontal (0) vs vertical (1) bars; the shifted domain has coloured backgrounds."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    images = np.zeros((n, 32, 32, 3), np.float32)
    for i, label in enumerate(labels):
        background = rng.uniform(0, 1, 3) if colour_shift else np.zeros(3)
        foreground = np.clip(1 - background, 0, 1) if colour_shift else np.ones(3)
        picture = np.tile(background, (32, 32, 1))
        position, width = rng.integers(4, 24), rng.integers(3, 7)
        if label == 0:
            picture[position:position + width, 4:28] = foreground
        else:
            picture[4:28, position:position + width] = foreground
        images[i] = np.clip(picture + rng.normal(0, 0.05, picture.shape), 0, 1)
    return images, labels


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_source_only_learns_and_the_domain_classifier_is_trained(tmp_path):
    X, y = bars(200, 0)
    Xt, _ = bars(200, 1, colour_shift=True)
    plain = DeepSourceOnly(epochs=3, batch_size=32).fit(X, y)
    test, truth = bars(100, 2)
    assert plain.score(test, truth) > 0.9
    assert plain.transform(test).shape == (100, plain.n_features_)
    adapted = DANN(epochs=2, batch_size=32, run_dir=str(tmp_path / "run")).fit(X, y, Xt)
    assert (tmp_path / "run" / "metrics.csv").is_file()
    fresh = DANN(epochs=1, batch_size=32)
    # The domain classifier's weights moved: the adversarial branch took part in training.
    torch.manual_seed(0)
    untrained = fresh._extra_modules(adapted.n_features_)["domain"]
    assert not torch.equal(untrained[0].weight, adapted.model_.extra["domain"][0].weight)
    # 180 training images (10% held out), batches of 32 with the last partial one
    # dropped: 5 steps an epoch; the progress counter behind λ_p counted them all.
    assert int(adapted.model_.steps_done) == 2 * (180 // 32)


@pytest.fixture(scope="module")
def colour_shift():
    """Bars on black (source) → bars on random colour backgrounds (target), and the
    source-only network's target accuracy over two seeds (the baseline to beat)."""
    X, y = bars(200, 0)
    Xt, yt = bars(200, 1, colour_shift=True)
    test, truth = bars(300, 2, colour_shift=True)
    with torch_threads(1):
        baseline = np.mean([DeepSourceOnly(epochs=6, batch_size=32, random_state=seed)
                            .fit(X, y).score(test, truth) for seed in (0, 1)])
    return X, y, Xt, yt, test, truth, baseline


@contextlib.contextmanager
def torch_threads(n):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("method", [DANN, DAN, DeepCORAL, ADDA, DomainConfusionSoftLabels,
                                    ReconstructionDA], ids=lambda cls: cls.__name__)
def test_each_deep_method_beats_source_only_on_a_colour_shift(colour_shift, method):
    X, y, Xt, yt, test, truth, baseline = colour_shift
    target_labels = None
    if method is DomainConfusionSoftLabels:  # semi-supervised: ten labelled target images
        target_labels = np.full(len(yt), -1)
        target_labels[:10] = yt[:10]
    accuracy = np.mean([method(epochs=6, batch_size=32, random_state=seed)
                        .fit(X, y, Xt, target_labels).score(test, truth) for seed in (0, 1)])
    assert accuracy > baseline + 0.02, (accuracy, baseline)


def test_target_batchnorm_statistics_are_the_target_moments():
    from torch import nn

    model = nn.Sequential(nn.Conv2d(3, 2, 1), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(2, 2),
                          nn.BatchNorm1d(2))
    target = torch.randn(40, 3, 1, 1) * 3 + 5
    target_batchnorm_statistics(model, target, batch_size=40)
    with torch.no_grad():
        conv = model[0](target)
    assert torch.allclose(model[1].running_mean, conv.mean((0, 2, 3)), atol=1e-5)
    assert torch.allclose(model[1].running_var, conv.var((0, 2, 3)), atol=1e-4)
    assert model[1].momentum == 0.1 and not model.training
    # In equal batches the running mean is the average of the batch means: the target mean.
    target_batchnorm_statistics(model, target, batch_size=8)
    assert torch.allclose(model[1].running_mean, conv.mean((0, 2, 3)), atol=1e-5)


def test_bad_input_is_refused_with_a_clear_error():
    X, y = bars(20, 0)
    with pytest.raises(DataError, match="two classes"):
        DAN(epochs=1).fit(X, np.zeros(20))
    with pytest.raises(DataError, match="labels"):
        DAN(epochs=1).fit(X, y[:5])


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


def test_reconstruction_da_learns_to_rebuild_the_target():
    X, y = bars(120, 0)
    Xt, _ = bars(120, 1, colour_shift=True)
    model = ReconstructionDA(epochs=10, batch_size=16, lr=3e-3).fit(X, y, Xt)
    rebuilt = model.reconstruct(Xt)
    assert rebuilt.shape == Xt.shape and rebuilt.min() >= 0 and rebuilt.max() <= 1
    # Better than the best constant answer, the mean target image.
    mean_image_error = float(np.mean((Xt.mean(0) - Xt) ** 2))
    assert float(np.mean((rebuilt - Xt) ** 2)) < 0.75 * mean_image_error
