"""Layer groups: timm's stage order, freezing (weights and BatchNorm), discriminative LRs."""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from transferkit.methods.finetune import install_head
from transferkit.train import (
    TrainConfig,
    discriminative_param_groups,
    fit_loop,
    keep_frozen_batchnorm_eval,
    last_groups,
    layer_groups,
    set_trainable,
)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny(arch="test_efficientnet", n_classes=2):
    torch.manual_seed(0)
    return timm.create_model(arch, num_classes=n_classes)


@pytest.mark.parametrize("arch, stem, head", [("test_efficientnet", "conv_stem+bn1", "classifier"),
                                              ("test_resnet", "conv1+bn1", "fc")])
def test_groups_follow_depth_and_cover_every_parameter_once(arch, stem, head):
    model = tiny(arch)
    groups = layer_groups(model)
    assert groups[0].name == stem
    assert groups[-1].name == head and groups[-1].is_head
    assert not any(g.is_head for g in groups[:-1])
    assert [g.index for g in groups] == list(range(len(groups)))
    listed = [n for g in groups for n in g.param_names]
    assert sorted(listed) == sorted(n for n, _ in model.named_parameters())
    assert len(listed) == len(set(listed))
    # Stages appear in forward order: stage numbers never decrease along the groups.
    stages = [int(g.name.split(".")[1].split("+")[0]) for g in groups if g.name.startswith("blocks.")]
    assert stages == sorted(stages) and len(stages) >= 3 or arch == "test_resnet"


def test_new_mlp_head_is_the_last_group():
    model = tiny()
    install_head(model, "mlp", 3, dropout=0.1)
    groups = layer_groups(model)
    assert groups[-1].is_head
    assert all(n.startswith("classifier.") for n in groups[-1].param_names)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 3)


@pytest.mark.parametrize("factor", [1 / 3, 0.5])
def test_discriminative_learning_rates(factor):
    model = tiny()
    groups = layer_groups(model)
    n = len(groups)
    set_trainable(model, groups, {g.index for g in groups})
    param_groups = discriminative_param_groups(model, groups, lr=0.1, factor=factor, weight_decay=0.05)
    assert {g["group_index"] for g in param_groups} == set(range(n))
    for group in param_groups:
        assert group["lr"] == pytest.approx(0.1 * factor ** (n - 1 - group["group_index"]))
        assert group["weight_decay"] == (0.0 if group["name"].endswith("/no_decay") else 0.05)
    # The optimiser built by the loop carries exactly these rates.
    optimizer = torch.optim.AdamW(param_groups)
    assert [g["lr"] for g in optimizer.param_groups] == [g["lr"] for g in param_groups]
    head = [g for g in param_groups if g["group_index"] == n - 1]
    assert all(g["lr"] == pytest.approx(0.1) for g in head)


def test_frozen_groups_get_no_optimizer_entry():
    model = tiny()
    groups = layer_groups(model)
    set_trainable(model, groups, last_groups(groups, 1))
    param_groups = discriminative_param_groups(model, groups, lr=0.01)
    assert {g["group_index"] for g in param_groups} == {len(groups) - 2, len(groups) - 1}
    for group in groups[:-2]:
        assert not any(p.requires_grad for p in group.parameters(model))


def test_frozen_batchnorm_stays_in_eval_mode_after_train():
    model = tiny()
    groups = layer_groups(model)
    set_trainable(model, groups, last_groups(groups, 1))
    model.train()
    switched = keep_frozen_batchnorm_eval(model)
    assert switched > 0
    assert model.bn1.training is False  # stem: frozen
    assert model.bn2.training is True  # conv_head's BN belongs to the last, trainable group


def test_frozen_parameters_and_running_stats_bitwise_unchanged_after_training():
    model = tiny()
    groups = layer_groups(model)
    set_trainable(model, groups, last_groups(groups, 1))
    frozen_names = [n for g in groups[:-2] for n in g.param_names]
    frozen_prefixes = {n.rsplit(".", 1)[0] for n in frozen_names}
    before = {k: v.clone() for k, v in model.state_dict().items()}

    torch.manual_seed(1)
    x = torch.randn(16, 3, 32, 32) * 3 + 1  # statistics unlike the initial running stats
    y = torch.randint(0, 2, (16,))

    def step(m, batch):
        images, labels = batch
        logits = m(images)
        return F.cross_entropy(logits, labels), (logits.argmax(1) == labels).sum(), len(labels)

    # AdamW with weight decay: a frozen tensor would move if it reached the optimiser.
    param_groups = discriminative_param_groups(model, groups, lr=0.05, weight_decay=0.1)
    fit_loop(model, param_groups, DataLoader(TensorDataset(x, y), batch_size=8), None, step,
             TrainConfig(epochs=2, progress=False, patience=None))
    after = model.state_dict()
    checked_stats = 0
    for key, value in before.items():
        owner = key.rsplit(".", 1)[0]
        if owner in frozen_prefixes:
            assert torch.equal(after[key], value), key  # weights, biases, running stats, counters
            checked_stats += key.endswith("running_mean")
    assert checked_stats >= 3
    # ... while the trainable part did learn and its BatchNorm statistics did update.
    assert not torch.equal(after["classifier.weight"], before["classifier.weight"])
    assert not torch.equal(after["bn2.running_mean"], before["bn2.running_mean"])
