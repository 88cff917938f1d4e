"""The shared training loop: early stopping, best-weight restore, resume, schedules, files."""

from __future__ import annotations

import csv
import json
import math

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from transferkit.errors import TransferkitError
from transferkit.train import TrainConfig, TrainConfigError, fit_loop, make_accelerator
from transferkit.train.checkpoint import CheckpointDir
from transferkit.train.schedule import make_schedule


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def classify(model, batch):
    x, y = batch
    logits = model(x)
    return F.cross_entropy(logits, y), (logits.argmax(1) == y).sum(), len(y)


def blobs(n=48, seed=0, flip=False):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    x = torch.randn(n, 8, generator=g) + (y[:, None] * 2 - 1) * 1.5
    return x, (1 - y) if flip else y


def mlp(seed=0):
    torch.manual_seed(seed)
    # Dropout makes the result depend on the RNG, which resume must restore.
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 2))


def loaders(seed=0, flip_val=False):
    x, y = blobs(seed=seed)
    xv, yv = blobs(24, seed=seed + 1, flip=flip_val)
    return (DataLoader(TensorDataset(x, y), batch_size=8, shuffle=True),
            DataLoader(TensorDataset(xv, yv), batch_size=8))


def groups_of(model, lr=0.05):
    return [{"params": list(model.parameters()), "lr": lr}]


def config(**kw):
    base = dict(epochs=6, progress=False, patience=None, channels_last=False, seed=3)
    base.update(kw)
    return TrainConfig(**base)


def test_learns_and_writes_metrics_csv(tmp_path):
    model = mlp()
    train, val = loaders()
    result = fit_loop(model, groups_of(model), train, val, classify, config(), tmp_path / "run")
    assert result.epochs_run == 6 and not result.stopped_early
    assert result.history[-1]["val_accuracy"] >= 0.9
    with open(tmp_path / "run" / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy",
                             "lr", "seconds"]
    assert [int(r["epoch"]) for r in rows] == list(range(1, 7))
    assert float(rows[-1]["val_loss"]) == pytest.approx(result.history[-1]["val_loss"])
    # One complete checkpoint is kept, named by the pointer, plus the final weights.
    assert json.loads((tmp_path / "run" / "latest.json").read_text())["epoch"] == 6
    assert [p.name for p in (tmp_path / "run").glob("ckpt-*")] == ["ckpt-0006"]
    assert (tmp_path / "run" / "final" / "model.safetensors").is_file()


def test_early_stopping_restores_the_best_epoch(tmp_path):
    # Validation labels are the opposite of training labels: the better the model fits
    # the training data, the worse its validation loss, so the loss rises from epoch 1.
    model = mlp()
    train, val = loaders(flip_val=True)
    snapshots = {}

    def remember(row):
        snapshots[row["epoch"]] = {k: v.clone() for k, v in model.state_dict().items()}

    result = fit_loop(model, groups_of(model), train, val, classify,
                      config(epochs=20, patience=2), callbacks=[remember])
    losses = [row["val_loss"] for row in result.history]
    assert result.stopped_early
    assert result.epochs_run == result.best_epoch + 2 < 20
    assert losses[result.best_epoch - 1] == min(losses)
    assert losses[-1] > min(losses)
    final = model.state_dict()
    for key, value in snapshots[result.best_epoch].items():
        assert torch.equal(final[key], value), key
    assert not torch.equal(final["3.weight"], snapshots[result.epochs_run]["3.weight"])


def tiny_cnn_run(run_dir, callbacks=()):
    torch.manual_seed(0)
    model = timm.create_model("test_efficientnet", num_classes=2, drop_rate=0.2)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(24, 3, 32, 32, generator=g)
    y = (x[:, 0].mean((1, 2)) > 0).long()
    train = DataLoader(TensorDataset(x, y), batch_size=6, shuffle=True)
    val = DataLoader(TensorDataset(x[:12] * 0.5, y[:12]), batch_size=6)
    groups = [{"params": [p for n, p in model.named_parameters() if not n.startswith("classifier")], "lr": 0.003},
              {"params": list(model.classifier.parameters()), "lr": 0.01}]
    result = fit_loop(model, groups, train, val, classify,
                      config(epochs=5, patience=10, channels_last=True, schedule="onecycle"),
                      run_dir, callbacks)
    return model, result


def without_time(history):
    return [{k: v for k, v in row.items() if k != "seconds"} for row in history]


def test_interrupted_run_resumes_to_the_same_result(tmp_path):
    reference_model, reference = tiny_cnn_run(tmp_path / "straight")

    def interrupt(row):
        if row["epoch"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        tiny_cnn_run(tmp_path / "interrupted", [interrupt])
    assert CheckpointDir(tmp_path / "interrupted").load()[3]["epoch"] == 2
    # A new process would rebuild the model from scratch: so do we, then resume.
    resumed_model, resumed = tiny_cnn_run(tmp_path / "interrupted")
    assert without_time(resumed.history) == without_time(reference.history)
    assert resumed.best_epoch == reference.best_epoch
    ref_state, res_state = reference_model.state_dict(), resumed_model.state_dict()
    for key in ref_state:
        assert torch.equal(ref_state[key], res_state[key]), key
    # The metrics file of the resumed run lists every epoch once.
    with open(tmp_path / "interrupted" / "metrics.csv", newline="") as handle:
        assert [int(r["epoch"]) for r in csv.DictReader(handle)] == [1, 2, 3, 4, 5]
    # Fitting again on a completed run reproduces its end state without training.
    again_model, again = tiny_cnn_run(tmp_path / "interrupted")
    assert without_time(again.history) == without_time(reference.history)
    assert all(torch.equal(v, ref_state[k]) for k, v in again_model.state_dict().items())


def test_resume_refuses_a_checkpoint_of_another_run(tmp_path):
    model = mlp()
    train, val = loaders()

    def interrupt(row):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit_loop(model, groups_of(model), train, val, classify, config(), tmp_path, [interrupt])
    other = mlp()
    with pytest.raises(TransferkitError, match="different training run"):
        fit_loop(other, groups_of(other, lr=0.5), train, val, classify, config(), tmp_path)


def test_a_completed_run_of_other_settings_is_refused_not_reused(tmp_path):
    model = mlp()
    train, val = loaders()
    fit_loop(model, groups_of(model), train, val, classify, config(epochs=2), tmp_path)
    assert (tmp_path / "final" / "result.json").is_file()
    again = mlp()  # the same settings: the finished run is reproduced without training
    assert fit_loop(again, groups_of(again), train, val, classify, config(epochs=2),
                    tmp_path).epochs_run == 2
    fewer = mlp()  # other settings must not silently get the 2-epoch model back
    with pytest.raises(TransferkitError, match="different training run"):
        fit_loop(fewer, groups_of(fewer), train, val, classify, config(epochs=1), tmp_path)


def test_sgd_and_grad_clipping():
    model = mlp()
    train, val = loaders()
    result = fit_loop(model, groups_of(model), train, val, classify,
                      config(optimizer="sgd", grad_clip=0.5, schedule="constant"))
    assert result.history[-1]["val_accuracy"] >= 0.9


@pytest.mark.parametrize("kind", ["cosine", "onecycle", "constant"])
def test_schedules(kind):
    schedule = make_schedule(kind, total_steps=100, warmup_fraction=0.1)
    values = [schedule(step) for step in range(100)]
    assert max(values) == pytest.approx(1.0, abs=0.01)
    assert values[0] < 0.2
    if kind == "cosine":
        assert values.index(max(values)) == 10 and values[-1] < 0.01
    if kind == "onecycle":
        assert values.index(max(values)) == 30 and values[-1] < 1e-3


def test_bad_settings_are_refused():
    model = mlp()
    train, val = loaders()
    for bad in (dict(optimizer="adam2"), dict(schedule="step"), dict(precision="fp8"),
                dict(epochs=0), dict(patience=0)):
        with pytest.raises(TrainConfigError):
            fit_loop(model, groups_of(model), train, val, classify, config(**bad))
    for p in model.parameters():
        p.requires_grad_(False)
    with pytest.raises(TrainConfigError, match="nothing to train"):
        fit_loop(model, [], train, val, classify, config())


def test_precision_can_change_within_one_process():
    model = mlp()
    train, val = loaders()
    for precision in ("bf16", "fp32"):
        result = fit_loop(model, groups_of(model), train, val, classify,
                          config(epochs=1, precision=precision))
        assert math.isfinite(result.history[0]["train_loss"])
        assert make_accelerator("cpu", precision).mixed_precision == {"bf16": "bf16", "fp32": "no"}[precision]


def test_annealed_schedule_is_ganin_and_lempitskys():
    schedule = make_schedule("annealed", total_steps=100)
    for step in (0, 25, 50, 100):
        assert schedule(step) == pytest.approx((1 + 10 * step / 100) ** -0.75)
    assert schedule(200) == pytest.approx(11 ** -0.75)  # progress is capped at 1


def test_a_monitor_from_evaluate_chooses_the_kept_epoch(tmp_path):
    """``evaluate``'s numbers join each row; ``monitor``/``monitor_mode`` pick the epoch
    whose weights are kept, here a made-up score that peaks at epoch 3."""
    model = mlp()
    train, val = loaders()
    scores = iter([0.1, 0.5, 0.9, 0.2, 0.3, 0.4])
    snapshots = []

    def evaluate(network):
        snapshots.append({k: v.clone() for k, v in network.state_dict().items()})
        return {"score": next(scores)}

    result = fit_loop(model, groups_of(model), train, val, classify,
                      config(monitor="score", monitor_mode="max", restore_best=True), tmp_path,
                      evaluate=evaluate)
    assert [row["score"] for row in result.history] == [0.1, 0.5, 0.9, 0.2, 0.3, 0.4]
    assert result.best_epoch == 3
    kept = result.model.state_dict()
    assert all(torch.equal(kept[k], snapshots[2][k]) for k in kept)
    with open(tmp_path / "metrics.csv") as handle:
        assert "score" in next(csv.reader(handle))
    with pytest.raises(TrainConfigError, match="monitor_mode"):
        config(monitor_mode="up").validate()
