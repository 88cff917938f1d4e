"""The one training loop every deep transfer method uses.

Methods bring a model, optimiser param groups, data loaders and a ``step_fn`` that
computes the loss of one batch; this loop owns everything else: device and precision
(Hugging Face Accelerate, so the same code runs on CPU, one GPU with AMP, or several
under ``accelerate launch`` / ``torchrun``), the optimiser and schedule, gradient
clipping, early stopping on validation loss, restoring the best weights, atomic
resumable checkpoints, ``metrics.csv``, a progress bar and seeding.

``step_fn(model, batch) -> (loss, n_correct, n_items)``: ``loss`` is the batch's mean
loss (a tensor with grad in training), ``n_correct`` how many items were classified
right (int or tensor; 0 when it does not apply), ``n_items`` how many items the batch
held. A batch with ``n_items == 0`` (every image in it unreadable) is skipped.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable

import torch
from torch import nn

from transferkit.errors import TransferkitError
from transferkit.train.checkpoint import (
    CheckpointDir,
    data_fingerprint,
    rng_state,
    set_rng_state,
    write_metrics_csv,
)
from transferkit.train import cpu_memory
from transferkit.train.groups import keep_frozen_batchnorm_eval
from transferkit.train.schedule import SCHEDULES, make_schedule

OPTIMIZERS = ("adamw", "sgd")
PRECISIONS = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}
DEVICES = ("auto", "cpu", "cuda")


class TrainConfigError(TransferkitError, ValueError):
    """A training hyper-parameter is out of range or unknown."""


class RunMismatchError(TransferkitError):
    """A run folder holds checkpoints of another training run (other settings or data)."""


def resolves_to_cpu(device: str) -> bool:
    """Whether ``device`` ("auto", "cpu", "cuda") puts training on the CPU."""
    if device == "cpu":
        return True
    if device == "cuda":
        return False
    mps = getattr(torch.backends, "mps", None)
    return not torch.cuda.is_available() and not (mps is not None and mps.is_available())


def check_device_and_precision(device: str, precision: str) -> None:
    """Refuse a device or precision that is unknown or cannot work here, before any work."""
    if precision not in PRECISIONS:
        raise TrainConfigError(f"unknown precision {precision!r}; choose one of {tuple(PRECISIONS)}.")
    if device not in DEVICES:
        raise TrainConfigError(f"unknown device {device!r}; choose one of {DEVICES}.")
    if device == "cuda" and not torch.cuda.is_available():
        raise TrainConfigError("device='cuda' but no CUDA GPU is visible; use device='auto' or 'cpu'.")
    # Accelerate would run fp16 on a CPU without complaint but also without the gradient
    # scaler that keeps fp16 gradients from underflowing to zero.
    if precision == "fp16" and resolves_to_cpu(device):
        raise TrainConfigError("precision 'fp16' needs a GPU and training would run on the CPU; "
                               "use 'bf16' (or 'fp32') on a CPU.")


@dataclass
class TrainConfig:
    """Everything about *how* to train; *what* to train comes from the method."""

    epochs: int = 10
    optimizer: str = "adamw"  # "adamw" or "sgd" (with Nesterov momentum)
    momentum: float = 0.9
    schedule: str = "cosine"  # "cosine" (linear warm-up + cosine), "onecycle", "constant"
    warmup_fraction: float = 0.1
    grad_clip: float | None = 1.0  # max global gradient norm; None disables
    patience: int | None = 3  # epochs without improvement of ``monitor`` before stopping
    restore_best: bool = True
    # The metrics row entry that early stopping and restore_best follow: "val_loss", or a
    # key ``fit_loop``'s ``evaluate`` adds (a label-free criterion in domain adaptation).
    monitor: str = "val_loss"
    monitor_mode: str = "min"  # "min" or "max": whether lower or higher is better
    device: str = "auto"  # "auto", "cpu" or "cuda"
    precision: str = "fp32"  # "fp32", "bf16" or "fp16" (fp16 needs a GPU)
    channels_last: bool = True
    seed: int = 0
    progress: bool = True
    resume: bool = True
    desc: str = "train"

    def validate(self) -> None:
        if not isinstance(self.epochs, int) or self.epochs < 1:
            raise TrainConfigError(f"epochs must be a positive integer, got {self.epochs!r}.")
        if self.optimizer not in OPTIMIZERS:
            raise TrainConfigError(f"unknown optimizer {self.optimizer!r}; choose one of {OPTIMIZERS}.")
        if self.schedule not in SCHEDULES:
            raise TrainConfigError(f"unknown schedule {self.schedule!r}; choose one of {SCHEDULES}.")
        check_device_and_precision(self.device, self.precision)
        if self.monitor_mode not in ("min", "max"):
            raise TrainConfigError(f"monitor_mode must be 'min' or 'max', got {self.monitor_mode!r}.")
        if self.patience is not None and self.patience < 1:
            raise TrainConfigError(f"patience must be >= 1 or None, got {self.patience}.")


@dataclass
class TrainResult:
    history: list[dict]
    best_epoch: int | None  # 1-based epoch whose weights were kept (the last one without validation)
    epochs_run: int
    stopped_early: bool
    model: nn.Module | None = field(default=None, repr=False)


def make_accelerator(device: str = "auto", precision: str = "fp32"):
    """An ``Accelerator`` for ``device``/``precision``, even if one with other settings exists.

    Accelerate keeps one global state per process; in a single process we may reset it
    (e.g. a bf16 run after an fp32 one). Under a distributed launcher we may not.
    """
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, PartialState

    from transferkit.train.distributed import is_distributed

    mixed = PRECISIONS[precision]
    cpu = device == "cpu"
    if is_distributed():
        # Accelerate joins a launcher's processes on CPUs (gloo) only when told they run
        # on CPUs: without it, "auto" on a machine without a GPU trains each one alone.
        cpu = resolves_to_cpu(device)
        if PartialState._shared_state and (PartialState().device.type == "cpu") != cpu:
            raise TrainConfigError(
                f"device {device!r} differs from the one this distributed run already uses "
                f"({PartialState().device.type}); give every training of the run the same --device.")
    if AcceleratorState._shared_state:
        state = AcceleratorState()
        changed = state.mixed_precision != mixed or (cpu and state.device.type != "cpu") or (
            not cpu and state.device.type == "cpu" and torch.cuda.is_available())
        if changed:
            if PartialState().num_processes > 1:
                raise TrainConfigError("cannot change device/precision inside a distributed run.")
            AcceleratorState._reset_state(reset_partial_state=True)
    return Accelerator(mixed_precision=mixed, cpu=cpu)


def build_optimizer(param_groups: list[dict], config: TrainConfig) -> torch.optim.Optimizer:
    if not param_groups or not any(g["params"] for g in param_groups):
        raise TrainConfigError("nothing to train: every parameter is frozen.")
    if config.optimizer == "sgd":
        return torch.optim.SGD(param_groups, lr=param_groups[-1]["lr"], momentum=config.momentum,
                               nesterov=config.momentum > 0)
    return torch.optim.AdamW(param_groups, lr=param_groups[-1]["lr"])


def _channels_last(batch):
    if isinstance(batch, torch.Tensor):
        return batch.contiguous(memory_format=torch.channels_last) if batch.ndim == 4 else batch
    if isinstance(batch, (list, tuple)):
        return type(batch)(_channels_last(b) for b in batch)
    if isinstance(batch, dict):
        return {k: _channels_last(v) for k, v in batch.items()}
    return batch


def _fingerprint(config: TrainConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int,
                 data: str, settings: dict | None) -> dict:
    # What must match for a checkpoint to belong to this run (progress/device may differ).
    # The data matter too: other images or labels of the same count must not resume a run.
    keep = {k: v for k, v in asdict(config).items() if k not in ("progress", "resume", "device", "desc")}
    keep["steps_per_epoch"] = steps_per_epoch
    keep["param_groups"] = [[len(g["params"]), g["lr"] if "initial_lr" not in g else g["initial_lr"],
                             g.get("weight_decay")]
                            for g in optimizer.param_groups]
    keep["data"] = data
    keep["settings"] = settings
    return json.loads(json.dumps(keep, default=str))


def _run_epoch(model, loader, step_fn, accelerator, config, optimizer=None, scheduler=None,
               desc="", average=False) -> tuple[float, float, int]:
    """One pass; trains when ``optimizer`` is given. Returns (mean loss, accuracy, items),
    summed over the processes. ``average``: several processes train one model, and each
    step's gradients are averaged over them (see
    :func:`transferkit.train.distributed.average_gradients`)."""
    from tqdm.auto import tqdm

    from transferkit.train.distributed import average_gradients

    training = optimizer is not None
    trainable = [p for group in optimizer.param_groups for p in group["params"]] if training else []
    totals = torch.zeros(3, dtype=torch.float64)  # loss sum, correct, items
    bar = tqdm(loader, desc=desc, leave=False, dynamic_ncols=True,
               disable=not config.progress or not accelerator.is_local_main_process)
    context = torch.enable_grad() if training else torch.no_grad()
    with context:
        for batch in bar:
            if config.channels_last:
                batch = _channels_last(batch)
            loss, correct, n_items = step_fn(model, batch)
            n_items = int(n_items)
            if training and average:
                # Every process joins every step's all-reduce, even one whose batch held no
                # readable image, and steps with the averaged gradients; a step no process
                # had items for is skipped by all of them.
                if n_items > 0:
                    accelerator.backward(loss)
                stepping = average_gradients(trainable, n_items > 0)
            else:
                stepping = n_items > 0
                if training and stepping:
                    accelerator.backward(loss)
            if training and stepping:
                if config.grad_clip:
                    accelerator.clip_grad_norm_(model.parameters(), config.grad_clip)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            if n_items == 0:
                continue
            value = float(loss.detach())
            totals += torch.tensor([value * n_items, float(correct), n_items], dtype=torch.float64)
            bar.set_postfix(loss=f"{totals[0] / totals[2]:.4f}")
    totals = accelerator.reduce(totals.to(accelerator.device), reduction="sum").cpu()
    items = int(totals[2])
    if items == 0:
        return math.nan, math.nan, 0
    return float(totals[0] / items), float(totals[1] / items), items


def _state_dict(accelerator, model) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in accelerator.unwrap_model(model).state_dict().items()}


def fit_loop(model: nn.Module, param_groups: list[dict], train_loader: Iterable,
             val_loader: Iterable | None, step_fn: Callable, config: TrainConfig,
             run_dir: str | os.PathLike | None = None,
             callbacks: Iterable[Callable[[dict], None]] = (),
             data_digest: str | None = None,
             settings: dict | None = None,
             evaluate: Callable[[nn.Module], dict] | None = None) -> TrainResult:
    """Train ``model`` in place; return the history and which epoch's weights were kept.

    ``param_groups``: optimiser groups (each with its own ``lr``), e.g. from
    :func:`transferkit.train.groups.discriminative_param_groups`. ``run_dir``: where
    checkpoints and ``metrics.csv`` go; a run found there is resumed (``config.resume``)
    only if it had the same settings and data, else :class:`RunMismatchError`.
    ``callbacks``: called with each epoch's metrics row after its checkpoint is written.
    ``data_digest``: the data's digest from
    :func:`transferkit.train.checkpoint.data_fingerprint`, for a caller that trains
    several times on the same data (computed from the loaders when None).
    ``settings``: the method's own settings a checkpoint must match too (JSON-able).
    ``evaluate``: called with the (unwrapped, eval-mode) model after each epoch; the
    numbers it returns join the metrics row, and ``config.monitor`` may name one of them.
    """
    from accelerate.utils import set_seed

    from transferkit.train import distributed

    config.validate()
    accelerator = make_accelerator(config.device, config.precision)
    on_cpu = accelerator.device.type == "cpu"
    if on_cpu:  # large activations are freed and allocated again at every step
        cpu_memory.keep_freed_memory()
    checkpoints = CheckpointDir(run_dir) if run_dir is not None else None
    # Several processes (torchrun / accelerate launch): each trains on its share of the
    # batches; the main process alone reads and writes the run folder and hands what it
    # read to the others, so a run folder need not be visible to every machine.
    several = accelerator.num_processes > 1

    set_seed(config.seed)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(param_groups, config)
    steps_per_epoch = len(train_loader)  # before sharding: the scheduler steps once per process
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, make_schedule(config.schedule, config.epochs * steps_per_epoch, config.warmup_fraction))
    fingerprint = None
    if checkpoints is not None:  # hashing the data is only worth it when there is a run to match
        data = data_digest or data_fingerprint(train_loader, val_loader)
        fingerprint = _fingerprint(config, optimizer, steps_per_epoch, data, settings)
    mismatch = (f"{run_dir} holds a checkpoint of a different training run (other settings or "
                "data). Give a new run folder, or start over (`--overwrite` on the command "
                "line; it drops only the training state).")
    if checkpoints is not None and config.resume:
        final = distributed.on_main_process(checkpoints.load_final) if several else \
            checkpoints.load_final()
        if final is not None:  # this run already completed: reproduce its end state
            weights, result = final
            # A completed run of other settings (say fewer epochs) must not stand in for this one.
            if result.get("fingerprint") != fingerprint:
                raise RunMismatchError(mismatch)
            accelerator.unwrap_model(model).load_state_dict(weights)
            return TrainResult(result["history"], result["best_epoch"], result["epochs_run"],
                               result["stopped_early"], model)
    if several:
        epoch_order = _seed_epoch_order(train_loader)
        # No DDP wrapper (see distributed.average_gradients): the model is only placed on
        # the device (and given autocast); its gradients are averaged after each backward.
        model = accelerator.prepare_model(model, evaluation_mode=True)
        optimizer, train_loader, scheduler = accelerator.prepare(optimizer, train_loader, scheduler)
        if val_loader is not None:
            val_loader = _shard_without_padding(val_loader, accelerator)
    else:
        epoch_order = None
        model, optimizer, train_loader, scheduler = accelerator.prepare(model, optimizer, train_loader,
                                                                        scheduler)
        if val_loader is not None:
            val_loader = accelerator.prepare(val_loader)

    history: list[dict] = []
    best_loss, best_epoch, bad_epochs, start_epoch = math.inf, None, 0, 0
    best_state: dict | None = None
    stopped_early = False
    loaded = None
    if checkpoints is not None and config.resume:
        loaded = distributed.on_main_process(checkpoints.load) if several else checkpoints.load()
    if loaded is not None:
        weights, best_state, state, progress = loaded
        if progress.get("fingerprint") != fingerprint:
            raise RunMismatchError(mismatch)
        accelerator.unwrap_model(model).load_state_dict(weights)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if accelerator.scaler is not None and "scaler" in state:
            accelerator.scaler.load_state_dict(state["scaler"])
        # Each process resumes its own random streams when the run had as many processes.
        per_process = state.get("rng_per_process")
        if several and per_process and len(per_process) == accelerator.num_processes:
            set_rng_state(per_process[accelerator.process_index])
        else:
            set_rng_state(state["rng"])
        history = progress["history"]
        best_loss = progress["best_loss"] if progress["best_loss"] is not None else math.inf
        best_epoch, bad_epochs = progress["best_epoch"], progress["bad_epochs"]
        start_epoch = progress["epoch"]
        stopped_early = progress["stopped_early"]

    if several:  # one model: the copies start equal (a resumed one from the main process's)
        distributed.broadcast_module(accelerator.unwrap_model(model))

    # A run interrupted after its stopping epoch was checkpointed trains no further.
    first_epoch = config.epochs + 1 if stopped_early else start_epoch + 1
    for epoch in range(first_epoch, config.epochs + 1):
        started = time.perf_counter()
        if epoch_order is not None:
            epoch_order(config.seed, epoch)
        model.train()
        keep_frozen_batchnorm_eval(model)
        desc = f"{config.desc} {epoch}/{config.epochs}"
        train_loss, train_acc, _ = _run_epoch(model, train_loader, step_fn, accelerator, config,
                                              optimizer, scheduler, desc, average=several)
        if several:
            distributed.average_buffers(accelerator.unwrap_model(model))
        val_loss = val_acc = None
        if val_loader is not None:
            model.eval()
            val_loss, val_acc, _ = _run_epoch(model, val_loader, step_fn, accelerator, config,
                                              desc=f"{desc} val")
        row = {"epoch": epoch, "train_loss": train_loss, "train_accuracy": train_acc,
               "val_loss": val_loss, "val_accuracy": val_acc,
               "lr": max(g["lr"] for g in optimizer.param_groups),
               "seconds": round(time.perf_counter() - started, 3)}
        if evaluate is not None:
            model.eval()
            with torch.no_grad():
                if several:
                    # Computed once, by the main process, so every process follows the same
                    # monitored value to the same early-stopping and best-epoch decision.
                    row.update(distributed.on_main_process(evaluate, accelerator.unwrap_model(model)))
                else:
                    row.update(evaluate(accelerator.unwrap_model(model)))
        if several:  # the same row everywhere (seconds and all), hence the same decisions
            row = distributed.broadcast_object(row)
        history.append(row)

        improved = False
        monitored = row.get(config.monitor)
        if monitored is not None and not math.isnan(monitored):
            # best_loss holds the monitored value, negated when higher is better.
            value = monitored if config.monitor_mode == "min" else -monitored
            if value < best_loss:
                best_loss, best_epoch, bad_epochs, improved = value, epoch, 0, True
                best_state = _state_dict(accelerator, model)
            else:
                bad_epochs += 1
            stopped_early = config.patience is not None and bad_epochs >= config.patience

        if checkpoints is not None:
            rng_per_process = distributed.gather_objects(rng_state()) if several else None
            if accelerator.is_main_process:
                state = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                         "rng": rng_state()}
                if rng_per_process is not None:
                    state["rng_per_process"] = rng_per_process
                if accelerator.scaler is not None:
                    state["scaler"] = accelerator.scaler.state_dict()
                progress = {"epoch": epoch, "history": history, "fingerprint": fingerprint,
                            "best_loss": None if math.isinf(best_loss) else best_loss,
                            "best_epoch": best_epoch, "bad_epochs": bad_epochs,
                            "stopped_early": stopped_early}
                checkpoints.save(epoch, _state_dict(accelerator, model), best_state, improved,
                                 state, progress)
                write_metrics_csv(checkpoints.root / "metrics.csv", history)
            accelerator.wait_for_everyone()
        for callback in callbacks:
            callback(row)
        if stopped_early:
            break

    if config.restore_best and best_state is not None:
        accelerator.unwrap_model(model).load_state_dict(best_state)
    model = accelerator.unwrap_model(model, keep_fp32_wrapper=False)
    if config.channels_last:
        model = model.to(memory_format=torch.contiguous_format)
    restored = config.restore_best and best_state is not None
    kept_epoch = best_epoch if restored else (history[-1]["epoch"] if history else None)
    result = TrainResult(history, kept_epoch, len(history), stopped_early, model)
    if checkpoints is not None and accelerator.is_main_process:
        checkpoints.save_final(_state_dict(accelerator, model),
                               {"history": history, "best_epoch": result.best_epoch,
                                "epochs_run": result.epochs_run, "stopped_early": stopped_early,
                                "fingerprint": fingerprint})
    if several:  # the next stage's main process may read what this one just wrote
        accelerator.wait_for_everyone()
    accelerator.free_memory()
    if on_cpu:
        cpu_memory.release_freed_memory()
    return result


def _seed_epoch_order(train_loader) -> Callable[[int, int], None] | None:
    """With several processes, a function ``(seed, epoch)`` that sets the training
    sampler's shuffling for an epoch, or None when the sampler draws no random order.

    Accelerate hands the sampler's generator from the main process to the others at each
    epoch, so that they split one order between them; seeding it from (seed, epoch)
    makes that order also independent of what ran before, so a run resumed after a kill
    shuffles as the uninterrupted one did.
    """
    from accelerate.data_loader import get_sampler

    sampler = get_sampler(train_loader)
    if not hasattr(sampler, "generator"):
        return None
    generator = torch.Generator()
    sampler.generator = generator

    def seed_epoch(seed: int, epoch: int) -> None:
        generator.manual_seed(int(seed) * 1_000_003 + int(epoch))

    return seed_epoch


def _shard_without_padding(val_loader, accelerator):
    """Each process's share of the validation batches, with no batch repeated.

    ``accelerator.prepare`` would make every process's share equally long by repeating
    the first items (``even_batches``), and summing those shares then scores the repeats
    twice. Training needs equal shares (every step's all-reduce needs every process);
    validation does not, so its loader is sharded here with ``even_batches=False``: the
    shares together hold each item exactly once, and summed (loss, correct, items) give
    the metrics of exactly the validation set. Cheaper than ``gather_for_metrics`` too,
    which would gather every item's predictions rather than three sums.
    """
    from accelerate.data_loader import prepare_data_loader

    return prepare_data_loader(val_loader, device=accelerator.device,
                               num_processes=accelerator.num_processes,
                               process_index=accelerator.process_index,
                               put_on_device=accelerator.device_placement, rng_types=None,
                               even_batches=False)

