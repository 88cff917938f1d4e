"""Run by tests/train/test_distributed.py under ``torchrun --nproc_per_node 2`` (or
``accelerate launch``): small trainings in the shared loop whose results the main
process writes as JSON for the test to check. Not a test module itself.

    python distributed_worker.py MODE OUT_JSON [RUN_DIR] [KILL_AFTER_EPOCH]
"""

from __future__ import annotations

import json
import os
import sys

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from transferkit.train import distributed
from transferkit.train.loop import TrainConfig, fit_loop

N_VAL = 7  # not a multiple of the 2 processes, nor of the batch size


def problem(n: int, seed: int):
    """Two Gaussian blobs in 4 dimensions."""
    generator = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    x = torch.randn(n, 4, generator=generator) + 1.5 * (2 * y[:, None].float() - 1)
    return x, y


def validation_counts(out: str) -> None:
    """One epoch with a validation loader of 7 items in batches of 2: which items each
    process scored, and the loop's validation metrics next to a hand computation."""
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    x, y = problem(24, 1)
    xv, yv = problem(N_VAL, 2)
    index = torch.arange(N_VAL)
    seen: list[int] = []

    def step(net, batch):
        if len(batch) == 3:  # validation batches carry each item's index
            inputs, labels, rows = batch
            seen.extend(rows.tolist())
        else:
            inputs, labels = batch
        logits = net(inputs)
        return F.cross_entropy(logits, labels), int((logits.argmax(1) == labels).sum()), len(labels)

    train = DataLoader(TensorDataset(x, y), batch_size=4, shuffle=True)
    val = DataLoader(TensorDataset(xv, yv, index), batch_size=2, shuffle=False)
    config = TrainConfig(epochs=1, patience=None, restore_best=False, device="cpu", progress=False,
                         channels_last=False)
    result = fit_loop(model, [{"params": list(model.parameters()), "lr": 0.1}], train, val, step,
                      config)
    seen_by_process = distributed.gather_objects(seen)
    weights = distributed.gather_objects([p.detach().tolist() for p in result.model.parameters()])
    if distributed.is_main_process():
        with torch.no_grad():
            logits = result.model(xv)
            hand_loss = float(F.cross_entropy(logits, yv))
            hand_accuracy = float((logits.argmax(1) == yv).float().mean())
        row = result.history[0]
        write(out, {"world_size": distributed.world_size(), "seen": seen_by_process,
                    "val_loss": row["val_loss"], "val_accuracy": row["val_accuracy"],
                    "hand_loss": hand_loss, "hand_accuracy": hand_accuracy,
                    "same_weights": all(w == weights[0] for w in weights)})


def resumable(out: str, run_dir: str, kill_after: int) -> None:
    """Four epochs with checkpoints in ``run_dir``; every process dies right after epoch
    ``kill_after`` was checkpointed (0: never), as a killed job would."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.2),
                          nn.Linear(16, 2))
    x, y = problem(40, 3)
    xv, yv = problem(N_VAL, 4)

    def step(net, batch):
        inputs, labels = batch
        logits = net(inputs)
        return F.cross_entropy(logits, labels), int((logits.argmax(1) == labels).sum()), len(labels)

    def kill(row):
        if row["epoch"] == kill_after:
            os._exit(17)

    train = DataLoader(TensorDataset(x, y), batch_size=6, shuffle=True)
    val = DataLoader(TensorDataset(xv, yv), batch_size=4)
    config = TrainConfig(epochs=4, patience=None, device="cpu", progress=False, channels_last=False)
    result = fit_loop(model, [{"params": list(model.parameters()), "lr": 0.05}], train, val, step,
                      config, run_dir=run_dir, callbacks=[kill])
    if distributed.is_main_process():
        write(out, {"history": [{k: v for k, v in row.items() if k != "seconds"}
                                for row in result.history]})


def multitask(out: str) -> None:
    """The multi-task method (its own network and loss) through the loop: every process
    must end with the same weights, and the model must learn the two tasks."""
    from transferkit.methods import create_method

    x, y = problem(64, 5)
    features = x.repeat(1, 4).numpy()
    labels = {"a": y.numpy().astype(str), "b": (1 - y).numpy().astype(str)}
    model = create_method("multitask", tasks=["a", "b"], epochs=6, device="cpu",
                          progress=False, random_state=0).fit(features, labels)
    state = {k: v.tolist() for k, v in model.model_.state_dict().items()} \
        if hasattr(model, "model_") else None
    states = distributed.gather_objects(state)
    if distributed.is_main_process():
        predicted = model.predict(features)
        write(out, {"same_weights": all(s == states[0] for s in states),
                    "accuracy": {t: float((predicted[t] == labels[t]).mean()) for t in labels}})


def write(out: str, payload: dict) -> None:
    with open(out, "w", encoding="utf-8") as handle:
        json.dump(payload, handle)


if __name__ == "__main__":
    mode, out = sys.argv[1], sys.argv[2]
    if mode == "validation":
        validation_counts(out)
    elif mode == "resume":
        resumable(out, sys.argv[3], int(sys.argv[4]))
    elif mode == "multitask":
        multitask(out)
    else:
        raise SystemExit(f"unknown mode {mode}")
