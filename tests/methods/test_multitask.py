"""Multi-task learning: per-task gradients, loss weighting, missing labels, CSV, CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from transferkit.data.dataset import read_multitask_csv
from transferkit.errors import DataError
from transferkit.methods.multitask import MultiTaskClassifier, combine_task_losses, task_losses
from transferkit.nets.multitask import MultiTaskNetwork

torch.set_num_threads(1)


def _batch(n=12, d=8, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=generator)
    y = torch.stack([torch.randint(3, (n,), generator=generator),
                     torch.randint(2, (n,), generator=generator)], dim=1)
    return x, y


def _grads(module):
    return [p.grad for p in module.parameters()]


@pytest.mark.parametrize("own", [0, 1])
def test_each_head_gets_gradients_only_from_its_own_task(own):
    torch.manual_seed(0)
    net = MultiTaskNetwork(8, [3, 2], hidden=16, head_hidden=8, dropout=0.0)
    x, y = _batch()
    losses = task_losses(net(x), y)
    losses[own].backward()
    other = 1 - own
    assert all(g is None or not g.any() for g in _grads(net.heads[other]))
    assert all(g is not None and g.abs().sum() > 0 for g in _grads(net.heads[own]))
    assert all(g is not None and g.abs().sum() > 0 for g in _grads(net.shared))


def test_in_the_weighted_total_a_head_sees_only_its_own_term():
    torch.manual_seed(0)
    net = MultiTaskNetwork(8, [3, 2], hidden=16, head_hidden=8, dropout=0.0, uncertainty=True)
    with torch.no_grad():
        net.log_vars.copy_(torch.tensor([0.4, -0.7]))
    x, y = _batch()
    combine_task_losses(task_losses(net(x), y), "uncertainty", log_vars=net.log_vars).backward()
    total = [g.clone() for g in _grads(net.heads[1])]
    net.zero_grad(set_to_none=True)
    losses = task_losses(net(x), y)
    (torch.exp(-net.log_vars[1]) * losses[1]).backward()  # task 1's term alone
    for a, b in zip(total, _grads(net.heads[1])):
        torch.testing.assert_close(a, b)


def test_uncertainty_weighting_matches_a_hand_computation():
    losses = [torch.tensor(1.2), torch.tensor(0.7)]
    s = torch.tensor([0.3, -0.5], requires_grad=True)
    total = combine_task_losses(losses, "uncertainty", log_vars=s)
    expected = math.exp(-0.3) * 1.2 + 0.3 + math.exp(0.5) * 0.7 - 0.5
    assert total.item() == pytest.approx(expected, rel=1e-6)
    total.backward()  # d/ds_t = 1 - exp(-s_t) L_t
    assert s.grad.tolist() == pytest.approx([1 - math.exp(-0.3) * 1.2, 1 - math.exp(0.5) * 0.7],
                                            rel=1e-6)
    fixed = combine_task_losses(losses, "fixed", weights=[2.0, 0.5])
    assert float(fixed) == pytest.approx(2.0 * 1.2 + 0.5 * 0.7)
    assert float(combine_task_losses(losses)) == pytest.approx(1.9)


def test_missing_labels_are_ignored_in_their_task_loss():
    torch.manual_seed(0)
    logits = [torch.randn(6, 3), torch.randn(6, 2)]
    y = torch.tensor([[0, -1], [2, 1], [-1, 0], [1, -1], [-1, 1], [0, 0]])
    losses = task_losses(logits, y)
    known = y[:, 0] != -1
    torch.testing.assert_close(losses[0], F.cross_entropy(logits[0][known], y[known, 0]))
    changed = [logits[0].clone(), logits[1].clone()]
    changed[1][y[:, 1] == -1] += 100.0  # whatever the net says on unlabelled rows
    torch.testing.assert_close(task_losses(changed, y)[1], losses[1])
    # A task without any label in a batch adds nothing (no s_t term either).
    only_first = torch.tensor([[0, -1], [1, -1]])
    losses = task_losses([torch.zeros(2, 3), torch.zeros(2, 2)], only_first)
    assert losses[1] is None
    s = torch.tensor([0.0, 5.0])
    assert float(combine_task_losses(losses, "uncertainty", log_vars=s)) == pytest.approx(math.log(3))


def _clusters(n_per=40, seed=0):
    """Four Gaussian clusters: task 'fine' = the cluster, task 'coarse' = cluster ≥ 2."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 3, size=(4, 10))
    labels = np.repeat(np.arange(4), n_per)
    X = centres[labels] + rng.normal(0, 1, size=(len(labels), 10))
    return X, labels, (labels >= 2).astype(int)


@pytest.mark.parametrize("weighting", ["fixed", "uncertainty"])
def test_both_tasks_are_learnt_on_a_synthetic_problem(weighting):
    X, fine, coarse = _clusters(seed=0)
    Xt = X + np.random.default_rng(9).normal(0, 0.5, X.shape)  # fresh draws near the same centres
    fine_t, coarse_t = fine, coarse
    model = MultiTaskClassifier(task_weighting=weighting, epochs=25, hidden=32, head_hidden=16,
                                device="cpu", random_state=0)
    model.fit(X, {"fine": fine, "coarse": coarse})
    scores = model.score_tasks(Xt, {"fine": fine_t, "coarse": coarse_t})
    assert scores["fine"] > 0.9 and scores["coarse"] > 0.9
    predictions = model.predict(Xt)
    assert set(predictions) == {"fine", "coarse"} and predictions["fine"].shape == (len(Xt),)
    assert len(model.history_) == 25
    if weighting == "uncertainty":
        assert set(model.log_vars_) == {"fine", "coarse"}
        assert model.task_weights_["fine"] == pytest.approx(math.exp(-model.log_vars_["fine"]))
    else:
        assert model.task_weights_ == {"fine": 1.0, "coarse": 1.0}


def test_rows_missing_a_label_still_train_the_other_task():
    X, fine, coarse = _clusters(seed=1)
    fine_partial = fine.astype(object)
    fine_partial[::2] = None  # half the rows lack the fine label
    coarse_partial = coarse.copy()
    coarse_partial[1::4] = -1
    model = MultiTaskClassifier(tasks=["fine", "coarse"], epochs=20, hidden=32, head_hidden=16,
                                device="cpu").fit(X, np.stack([fine_partial, coarse_partial], 1))
    assert list(model.classes_["fine"]) == [0, 1, 2, 3]
    assert list(model.classes_["coarse"]) == [0, 1]
    assert model.score(X, np.stack([fine, coarse], 1)) > 0.9


def test_estimator_errors_are_clear():
    X, fine, coarse = _clusters(n_per=5)
    with pytest.raises(DataError, match="only one class"):
        MultiTaskClassifier(epochs=1).fit(X, {"a": fine, "b": np.zeros(len(X))})
    with pytest.raises(DataError, match="no labelled row"):
        MultiTaskClassifier(epochs=1).fit(X, {"a": fine, "b": [-1] * len(X)})
    with pytest.raises(DataError, match="task_weights"):
        MultiTaskClassifier(epochs=1, task_weights=[1.0]).fit(X, {"a": fine, "b": coarse})
    with pytest.raises(DataError, match="rows of labels"):
        MultiTaskClassifier(epochs=1).fit(X[:-1], {"a": fine, "b": coarse})


def _write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def test_multitask_csv_is_read_and_its_errors_are_clear(tmp_path):
    good = _write(tmp_path / "good.csv", "path,digit,high\na.png,1,no\nb.png,7,yes\nc.png,,yes\n")
    data = read_multitask_csv(good)
    assert data.tasks == ["digit", "high"]
    assert data.labels["digit"] == ["1", "7", None]
    assert data.paths[0] == tmp_path / "a.png"
    assert read_multitask_csv(good, ["high"]).tasks == ["high"]
    cases = {
        "path,digit\n": "lists no images",
        "file,digit\na.png,1\n": "'path' column",
        "path,digit\na.png,1\nb.png,2\n|high": "not in the CSV",
        "path,digit,high\na.png,1,\nb.png,2,\n": "'high' is empty",
        "path,digit,high\na.png,1,yes\nb.png,2,yes\n": "only one class",
    }
    for i, (text, message) in enumerate(cases.items()):
        text, _, tasks = text.partition("|")
        path = _write(tmp_path / f"bad{i}.csv", text)
        with pytest.raises(DataError, match=message):
            read_multitask_csv(path, ["digit", tasks] if tasks else None)


def test_cli_compares_multitask_with_single_task(tmp_path, capsys, tiny_checkpoint):
    from builders import colour_image

    from transferkit.cli import main

    colours = {"red": (220, 30, 30), "orange": (230, 140, 20), "blue": (30, 30, 220),
               "cyan": (20, 200, 220)}
    rows = ["path,colour,warm"]
    for c, (name, rgb) in enumerate(colours.items()):
        for i in range(6):
            colour_image(rgb, seed=c * 100 + i).save(tmp_path / f"{name}{i}.png")
            rows.append(f"{name}{i}.png,{name},{'yes' if c < 2 else 'no'}")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    path, arch = tiny_checkpoint
    code = main(["multitask", str(tmp_path / "labels.csv"), "--tasks", "colour,warm",
                 "--weighting", "uncertainty", "--epochs", "5", "--device", "cpu", "--json",
                 "--weights", str(path), "--arch", arch, "--val-fraction", "0.34"])
    result = json.loads(capsys.readouterr().out)
    assert code == 0
    assert result["tasks"] == ["colour", "warm"] and result["n_val"] == 8
    for task in ("colour", "warm"):
        info = result["per_task"][task]
        assert 0.0 <= info["multitask_accuracy"] <= 1.0
        assert 0.0 <= info["single_task_accuracy"] <= 1.0
    assert set(result["log_vars"]) == {"colour", "warm"}

    code = main(["multitask", str(tmp_path / "labels.csv"), "--tasks", "colour,size"])
    assert code == 2
    assert "not in the CSV" in capsys.readouterr().err
