"""Deep domain adaptation on a pretrained backbone (methods/domain/_pretrained.py): the
network from the cut on, the cached frozen prefix, the label-free early stopping."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from builders import write_class_folder
from transferkit.errors import DataError
from transferkit.methods.domain._deep_base import DeepSourceOnly
from transferkit.methods.domain._pretrained import (
    BACKBONE_LR_FACTOR,
    PretrainedInputs,
    is_image_files,
)
from transferkit.methods.domain.dann import DANN

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def domains(tmp_path_factory):
    """A source folder and a target folder of the same two colour classes, the target
    darker (a shift), as lists of paths and labels."""
    from transferkit.data.dataset import read_image_folder

    root = tmp_path_factory.mktemp("domains")
    source = read_image_folder(write_class_folder(root / "source", per_class=6, seed=0))
    target = read_image_folder(write_class_folder(root / "target", per_class=6, seed=1))
    return source, target


def test_image_files_are_told_from_pixel_arrays(tmp_path):
    assert is_image_files(["a.jpg", "b.jpg"]) and is_image_files(tmp_path)
    assert is_image_files(np.array(["a.jpg"]))
    assert not is_image_files(np.zeros((2, 32, 32), dtype=np.uint8))
    assert not is_image_files([np.zeros((32, 32))])


def test_the_cut_follows_the_number_of_trainable_groups(tmp_path):
    head_only = PretrainedInputs(trainable=0, views=0, cache_dir=tmp_path)
    assert head_only.chain.cut_name(head_only.cut) == "pooled"
    last = PretrainedInputs(trainable=1, views=0, cache_dir=tmp_path)
    # Lite0's last group is blocks.6 + conv_head + bn2: the cut is blocks.6's input.
    assert last.chain.cut_name(last.cut) == "blocks.6"
    network = last.network(n_classes=3, bottleneck=16)
    assert network(torch.randn(2, *last.chain.shapes[last.cut])).shape == (2, 3)
    groups = last.param_groups(network, lr=0.01, weight_decay=0.0)
    tail = {id(p) for p in network.features[0].parameters()}
    assert groups[0]["lr"] == pytest.approx(0.01 * BACKBONE_LR_FACTOR)
    assert {id(p) for p in groups[0]["params"]} == tail
    assert not tail & {id(p) for p in groups[1]["params"]}
    # Each network owns copies: training one never moves the backbone or another network.
    assert network.features[0].steps[0] is not last.chain.steps[last.cut]


def test_refuses_bad_settings(tmp_path):
    with pytest.raises(DataError, match="trainable"):
        PretrainedInputs(trainable=-1, cache_dir=tmp_path)
    with pytest.raises(DataError, match="views"):
        PretrainedInputs(views=-2, cache_dir=tmp_path)


def test_source_only_and_dann_fit_on_image_files_and_train_the_tail(domains, tmp_path):
    source, target = domains
    baseline = DeepSourceOnly(trainable=1, views=1, epochs=2, bottleneck=16, cache_dir=tmp_path)
    baseline.fit(source.paths, source.labels, target.paths)
    assert baseline.predict(target.paths).shape == (len(target.paths),)
    assert set(baseline.predict(target.paths)) <= set(source.labels)
    # The tail trained: its first step's weights moved away from the pretrained ones.
    inputs = baseline._inputs
    trained = baseline.model_.features[0].steps[0].state_dict()
    pretrained = inputs.chain.steps[inputs.cut].state_dict()
    assert any(not torch.equal(trained[k], pretrained[k]) for k in trained
               if trained[k].dtype.is_floating_point)
    # The views of every image were cached: a second model's fit computes nothing new.
    adapted = DANN(trainable=1, views=1, epochs=2, bottleneck=16, cache_dir=tmp_path,
                   criterion="snd")
    adapted.fit(source.paths, source.labels, target.paths)
    assert adapted.transform(target.paths).shape == (len(target.paths), 16)
    scores = [row["snd"] for row in adapted.history_]
    assert len(scores) == 2 and all(np.isfinite(scores))


def test_the_backbone_keeps_its_batchnorm_statistics_and_adabn_moves_only_the_bottleneck(
        domains, tmp_path):
    """Training the backbone's last group: its BatchNorm layers keep the pretrained running
    statistics (inference mode) while their affine weights learn; AdaBN re-estimates the
    bottleneck's statistics on the target and leaves the backbone's alone (re-estimating
    those too cost MCC 13-20 points of Office-31 target accuracy on the GPU)."""
    from torch import nn

    from transferkit.methods.domain.mcc import MCC

    source, target = domains
    model = MCC(trainable=1, views=1, epochs=2, bottleneck=16, cache_dir=tmp_path)
    model.fit(source.paths, source.labels, target.paths)
    inputs = model._inputs
    tail, pretrained = model.model_.features[0], inputs.chain.steps[inputs.cut:]

    def norms(modules):
        return [m for module in modules for m in module.modules()
                if isinstance(m, nn.modules.batchnorm._BatchNorm)]

    kept = norms(tail.steps)
    assert kept and len(kept) == len(norms(pretrained))
    for trained, original in zip(kept, norms(pretrained)):
        assert torch.equal(trained.running_mean, original.running_mean)
        assert torch.equal(trained.running_var, original.running_var)
    assert any(not torch.equal(t.weight, o.weight) for t, o in zip(kept, norms(pretrained)))
    tail.train()
    assert not any(m.training for m in kept)
    # The bottleneck's statistics are the target's own (AdaBN), computed after training.
    bottleneck_norm = model.model_.features[2]
    with torch.no_grad():
        pooled = tail.eval()(inputs.predict_array(target.paths))
        expected = model.model_.features[1](pooled).mean(0)
    assert torch.allclose(bottleneck_norm.running_mean, expected, atol=1e-4)


def test_label_free_early_stopping_keeps_the_best_scoring_epoch(domains, tmp_path):
    source, target = domains
    model = DeepSourceOnly(trainable=0, views=0, epochs=3, bottleneck=8, cache_dir=tmp_path,
                           criterion="snd", random_state=1)
    model.fit(source.paths, source.labels, target.paths)
    scores = [row["snd"] for row in model.history_]
    best = int(np.argmax(scores))
    # The kept weights are those of the best epoch: recomputing the score agrees.
    from transferkit.evaluate.selection import snd

    assert snd(model.predict_proba(target.paths)) == pytest.approx(scores[best], rel=1e-4)


def test_digit_only_methods_refuse_image_files(domains):
    from transferkit.methods.domain.adda import ADDA

    source, target = domains
    with pytest.raises(DataError, match="digit-cnn"):
        ADDA(epochs=1).fit(source.paths, source.labels, target.paths)
