"""Frozen-prefix activations: the chain reproduces the network, the cache hits and misses
exactly when it should, and the views are the same whatever the order of the images."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F

from builders import colour_image, write_class_folder
from transferkit.methods.finetune import install_head
from transferkit.train import keep_frozen_batchnorm_eval, last_groups, layer_groups, set_trainable
from transferkit.train.frozen_prefix import (
    NetworkChain,
    ViewPolicy,
    prefix_activations,
    prefix_digest,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SIZE = 48


def tiny_model(arch="test_efficientnet", seed=0):
    torch.manual_seed(seed)
    model = timm.create_model(arch, num_classes=2)
    install_head(model, "linear", 2, dropout=0.0)
    return model.eval()


def identity_of(model) -> dict:
    from transferkit.backbones.registry import state_dict_digest

    return {"arch": "test_efficientnet", "weights_digest": state_dict_digest(model)}


def policy(n_augmented=2, seed=0):
    import timm.data

    config = dict(input_size=(3, SIZE, SIZE), interpolation="bilinear", mean=(0.5,) * 3,
                  std=(0.5,) * 3, crop_pct=0.875)
    return ViewPolicy(timm.data.create_transform(**config, is_training=False),
                      timm.data.create_transform(**config, is_training=True), n_augmented, seed)


@pytest.fixture
def images(tmp_path):
    root = write_class_folder(tmp_path / "images", per_class=3)
    return sorted(str(p) for p in root.glob("*/*.png"))


@pytest.mark.parametrize("arch", ["test_efficientnet", "test_resnet"])
def test_prefix_then_tail_equals_the_whole_network_at_every_cut(arch):
    model = tiny_model(arch)
    chain = NetworkChain.of(model, (3, SIZE, SIZE))
    assert chain is not None and chain.n_steps >= 5
    x = torch.randn(3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(x)
        cuts = list(range(1, chain.pooled + 1))
        taps = chain.taps(cuts).eval()(x)
        for cut, activation in zip(cuts, taps):
            assert tuple(activation.shape[1:]) == chain.shapes[cut]
            torch.testing.assert_close(chain.tail(cut).eval()(activation), expected,
                                       atol=1e-5, rtol=1e-5)


def test_training_the_tail_on_prefix_outputs_matches_training_the_whole_network():
    """Train mode, frozen prefix BatchNorm in eval, the tail's in train mode: the same
    logits and the same gradients for every trainable parameter."""
    whole = tiny_model()
    groups = layer_groups(whole)
    trainable = last_groups(groups, 2)
    chain_model = copy.deepcopy(whole)
    chain = NetworkChain.of(chain_model, (3, SIZE, SIZE))
    names = [n for g in groups if g.index in trainable for n in g.param_names]
    cut = chain.cut_for(names)
    assert 0 < cut < chain.n_steps
    for model in (whole, chain_model):
        set_trainable(model, groups, trainable)
    x = torch.randn(6, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(2))
    y = torch.tensor([0, 1, 0, 1, 1, 0])
    with torch.no_grad():
        activation = chain.taps([cut]).eval()(x)[0]
    tail = chain.tail(cut)
    whole.train()
    keep_frozen_batchnorm_eval(whole)
    tail.train()
    keep_frozen_batchnorm_eval(tail)
    logits_whole, logits_tail = whole(x), tail(activation)
    torch.testing.assert_close(logits_tail, logits_whole, atol=1e-5, rtol=1e-5)
    F.cross_entropy(logits_whole, y).backward()
    F.cross_entropy(logits_tail, y).backward()
    tuned = dict(chain_model.named_parameters())
    compared = 0
    for name, parameter in whole.named_parameters():
        if parameter.requires_grad:
            torch.testing.assert_close(tuned[name].grad, parameter.grad, atol=1e-5, rtol=1e-4)
            compared += 1
        else:
            assert tuned[name].grad is None
    assert compared > 4


def test_networks_that_are_not_a_chain_are_refused():
    torch.manual_seed(0)
    vit = timm.create_model("test_vit", num_classes=2)
    assert NetworkChain.of(vit, (3, 160, 160)) is None


def run(model, cuts, paths, views, **kw):
    chain = NetworkChain.of(model, (3, SIZE, SIZE))
    return chain, prefix_activations(chain, [chain.n_steps - 2 if c == "map" else chain.pooled
                                             for c in cuts], paths, views, identity_of(model),
                                     num_workers=0, **kw)


def test_a_cache_hit_returns_identical_arrays(images, tmp_path):
    model = tiny_model()
    _, first = run(model, ["map", "pooled"], images, policy(), cache_dir=tmp_path / "c")
    assert first.n_computed == 3 * len(images) and first.n_cached == 0
    _, again = run(model, ["map", "pooled"], images, policy(), cache_dir=tmp_path / "c")
    assert again.n_cached == 3 * len(images) and again.n_computed == 0
    assert first.arrays.keys() == again.arrays.keys()
    for cut in first.arrays:
        np.testing.assert_array_equal(again.arrays[cut], first.arrays[cut])
    # The fast runtime agrees with eager PyTorch, and the views differ from each other.
    _, eager = run(model, ["map", "pooled"], images, policy(), use_cache=False, runtime="eager")
    for cut in first.arrays:
        np.testing.assert_allclose(eager.arrays[cut], first.arrays[cut], atol=1e-4, rtol=0)
        assert not np.allclose(eager.arrays[cut][:, 1], eager.arrays[cut][:, 2])


def test_a_changed_image_backbone_cut_or_view_seed_misses(images, tmp_path):
    cache = tmp_path / "c"
    model = tiny_model()
    _, first = run(model, ["map"], images, policy(), cache_dir=cache)
    colour_image((30, 200, 40), seed=99).save(images[0])  # same name, other pixels
    _, changed = run(model, ["map"], images, policy(), cache_dir=cache)
    assert changed.n_computed == 3 and changed.n_cached == 3 * (len(images) - 1)
    (cut,) = changed.arrays
    assert not np.allclose(changed.arrays[cut][0], first.arrays[cut][0])
    np.testing.assert_array_equal(changed.arrays[cut][1:], first.arrays[cut][1:])

    other_weights = tiny_model(seed=1)
    assert run(other_weights, ["map"], images, policy(), cache_dir=cache)[1].n_cached == 0
    assert run(model, ["pooled"], images, policy(), cache_dir=cache)[1].n_cached == 0
    reseeded = run(model, ["map"], images, policy(seed=5), cache_dir=cache)[1]
    assert reseeded.n_cached == len(images)  # only the centre views are shared
    more_views = run(model, ["map"], images, policy(n_augmented=3), cache_dir=cache)[1]
    assert (more_views.n_cached, more_views.n_computed) == (3 * len(images), len(images))


def test_views_depend_on_the_image_not_on_its_position(images):
    model = tiny_model()
    _, forward = run(model, ["map"], images, policy(), use_cache=False)
    _, backward = run(model, ["map"], images[::-1], policy(), use_cache=False)
    (cut,) = forward.arrays
    np.testing.assert_allclose(backward.arrays[cut][::-1], forward.arrays[cut], atol=1e-5, rtol=0)


def test_unreadable_images_are_left_out_and_named(images, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    _, result = run(tiny_model(), ["pooled"], [images[0], str(broken), images[1]], policy(),
                    use_cache=False)
    assert result.ok.tolist() == [True, False, True]
    assert [path for path, _ in result.skipped] == [str(broken)]
    assert next(iter(result.arrays.values())).shape[:2] == (2, 3)


def test_entries_are_keyed_by_the_prefix_weights_not_only_the_backbone_name(images, tmp_path):
    cache, model = tmp_path / "c", tiny_model()
    identity = identity_of(model)  # kept while the weights change: a stale name
    chain = NetworkChain.of(model, (3, SIZE, SIZE))
    cut = chain.n_steps - 2

    def activations():
        return prefix_activations(chain, [cut], images, policy(0), identity, cache_dir=cache,
                                  num_workers=0)

    first = activations()
    with torch.no_grad():
        # After the cut: the entries still hold.
        next(chain.steps[-1].parameters()).add_(1.0)
        model.get_classifier()[-1].weight.add_(1.0)
    assert activations().n_cached == len(images)
    with torch.no_grad():
        next(chain.steps[0].parameters()).mul_(0.5)  # before the cut: they do not
    changed = activations()
    assert changed.n_cached == 0 and changed.n_computed == len(images)
    assert not np.allclose(changed.arrays[cut], first.arrays[cut])
    eager = prefix_activations(chain, [cut], images, policy(0), identity, use_cache=False,
                               runtime="eager", num_workers=0)
    np.testing.assert_allclose(changed.arrays[cut], eager.arrays[cut], atol=1e-4, rtol=0)
    assert prefix_digest(model, chain.cut_name(cut)) == chain.prefix_digest(cut)
    assert prefix_digest(model, "no.such.layer") is None
