"""FineTuner: learns a separable problem, strategies, unreadable files, bundle round trip."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

from builders import write_class_folder
from transferkit.bundle import load_bundle, save_bundle
from transferkit.errors import DataError
from transferkit.methods import FineTuner
from transferkit.train import TrainConfigError


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def files(root):
    paths = sorted(root.glob("*/*.png"))
    return paths, [p.parent.name for p in paths]


@pytest.fixture(scope="module")
def colour_data(tmp_path_factory):
    """Red vs blue squares: 16 per class to train, 10 per class held out."""
    root = tmp_path_factory.mktemp("colours")
    train = files(write_class_folder(root / "train", per_class=16))
    test = files(write_class_folder(root / "test", per_class=10, seed=7))
    return train, test


def tuner(tiny_checkpoint, **kw):
    path, arch = tiny_checkpoint
    params = dict(weights=str(path), arch=arch, image_size=48, batch_size=8, epochs=8, lr=3e-3,
                  lr_factor=1.0, dropout=0.0, num_workers=0, progress=False, strategy="full")
    params.update(kw)
    return FineTuner(**params)


def test_full_fine_tuning_beats_chance_on_held_out_images(tiny_checkpoint, colour_data, tmp_path):
    (train_x, train_y), (test_x, test_y) = colour_data
    model = tuner(tiny_checkpoint, run_dir=str(tmp_path / "run")).fit(train_x, train_y)
    assert model.score(test_x, test_y) >= 0.85
    assert list(model.classes_) == ["blue", "red"]
    assert 1 <= model.best_epoch_ <= model.epochs_run_ <= 8
    assert model.predict_proba(test_x[:3]).shape == (3, 2)
    assert np.allclose(model.predict_proba(test_x).sum(1), 1.0)
    run = tmp_path / "run"
    assert (run / "metrics.csv").is_file() and (run / "learning_curves.png").stat().st_size > 1000
    # Fitting again on the finished run resumes it: no training, the same weights.
    again = tuner(tiny_checkpoint, run_dir=str(run)).fit(train_x, train_y)
    assert [r["val_loss"] for r in again.history_] == [r["val_loss"] for r in model.history_]
    for key, value in model.model_.state_dict().items():
        assert torch.equal(value, again.model_.state_dict()[key]), key


def test_head_strategy_leaves_the_pretrained_network_bitwise_unchanged(tiny_checkpoint, colour_data):
    from safetensors.torch import load_file

    (train_x, train_y), _ = colour_data
    model = tuner(tiny_checkpoint, strategy="head", epochs=3, lr=0.03).fit(train_x, train_y)
    pretrained = load_file(str(tiny_checkpoint[0]))
    tuned = model.model_.state_dict()
    body = [k for k in pretrained if not k.startswith("classifier")]
    assert any(k.endswith("running_mean") for k in body)
    for key in body:  # weights and BatchNorm running statistics
        assert torch.equal(tuned[key], pretrained[key]), key
    assert [g["trainable"] for g in model.groups_] == [False] * (len(model.groups_) - 1) + [True]


def test_gradual_unfreezes_group_by_group_within_the_budget(tiny_checkpoint, colour_data):
    (train_x, train_y), _ = colour_data
    model = tuner(tiny_checkpoint, strategy="gradual", epochs=9, lr=1e-2, lr_factor=0.5).fit(train_x, train_y)
    stages = list(dict.fromkeys(row["stage"] for row in model.history_))
    assert stages[0] == "unfreeze-0" and len(stages) >= 2
    assert [int(s.split("-")[1]) for s in stages] == list(range(len(stages)))
    assert model.epochs_run_ <= 9
    assert [row["epoch"] for row in model.history_] == list(range(1, model.epochs_run_ + 1))
    # Across stages the overall best weights are kept, not merely the last stage's best.
    losses = [row["val_loss"] for row in model.history_]
    assert losses[model.best_epoch_ - 1] == min(losses)


def test_last_k_trains_only_the_last_groups(tiny_checkpoint, colour_data):
    (train_x, train_y), _ = colour_data
    model = tuner(tiny_checkpoint, strategy="last-k", k=2, epochs=1).fit(train_x, train_y)
    assert [g["trainable"] for g in model.groups_][-3:] == [True, True, True]
    assert not any(g["trainable"] for g in model.groups_[:-3])


@pytest.mark.parametrize("head", ["linear", "mlp"])
def test_bundle_round_trip_predicts_identically(tiny_checkpoint, colour_data, tmp_path, head):
    (train_x, train_y), (test_x, _) = colour_data
    labels = [{"blue": 3, "red": 7}[c] for c in train_y]  # integer labels survive too
    model = tuner(tiny_checkpoint, head=head, epochs=2, dropout=0.3).fit(train_x, labels)
    folder = save_bundle(model, tmp_path / "bundle", metrics={"note": "test"})
    loaded = load_bundle(folder)
    assert isinstance(loaded, FineTuner)
    np.testing.assert_array_equal(loaded.predict(test_x), model.predict(test_x))
    np.testing.assert_allclose(loaded.predict_proba(test_x), model.predict_proba(test_x), rtol=0, atol=1e-6)
    assert list(loaded.classes_) == [3, 7]
    assert loaded.get_params()["head"] == head
    assert loaded.history_ == model.history_


def test_unreadable_images_are_skipped_with_a_warning(tiny_checkpoint, colour_data, tmp_path):
    (train_x, train_y), _ = colour_data
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    # Worker processes decode: a corrupt file must not kill them.
    model = tuner(tiny_checkpoint, epochs=1, num_workers=1, val_fraction=0.0)
    with pytest.warns(UserWarning, match="broken.png"):
        model.fit(list(train_x) + [broken], list(train_y) + ["red"])
    assert [path for path, _ in model.skipped_] == [str(broken)]
    assert model.validation_ == "none"
    with pytest.raises(DataError, match="broken.png"):
        model.predict([train_x[0], broken])


def test_bad_input_raises_transferkit_errors(tiny_checkpoint, colour_data):
    (train_x, train_y), _ = colour_data
    with pytest.raises(DataError, match="two classes"):
        tuner(tiny_checkpoint).fit(train_x[:4], ["red"] * 4)
    with pytest.raises(DataError, match="no images"):
        tuner(tiny_checkpoint).fit([], [])
    with pytest.raises(DataError, match="labels"):
        tuner(tiny_checkpoint).fit(train_x, train_y[:-1])
    with pytest.raises(DataError, match="do not occur"):
        tuner(tiny_checkpoint).fit(train_x, train_y, X_val=train_x[:2], y_val=["green", "red"])
    with pytest.raises(DataError, match="single path"):
        tuner(tiny_checkpoint).fit(str(train_x[0]), train_y[:1])
    for bad in (dict(strategy="some"), dict(head="deep"), dict(lr_factor=0), dict(epochs=0),
                dict(val_fraction=1.0), dict(optimizer="lbfgs")):
        with pytest.raises(TrainConfigError):
            tuner(tiny_checkpoint, **bad).fit(train_x, train_y)
    with pytest.raises(NotFittedError):
        tuner(tiny_checkpoint).predict(train_x)


def test_follows_the_scikit_learn_estimator_contract(tiny_checkpoint):
    model = tuner(tiny_checkpoint, strategy="last-k", k=3)
    copy = clone(model)
    assert copy.get_params() == model.get_params()
    assert FineTuner().get_params()["strategy"] == "gradual"
    assert not hasattr(copy, "model_")
