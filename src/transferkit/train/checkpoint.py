"""Resumable training checkpoints that are never seen half-written.

Layout of a run folder::

    run_dir/
      latest.json              pointer to the newest complete checkpoint (written last)
      ckpt-0003/
        model.safetensors      the model's parameters and buffers after epoch 3
        best.safetensors       the best weights so far (hard link when unchanged)
        state.pt               optimiser, scheduler, grad scaler, RNG states (tensors only)
        progress.json          epoch, history, early-stopping state, run fingerprint
      final/                   written once the run completes: weights actually kept
      metrics.csv              one row per epoch

A checkpoint folder is filled first and the pointer is replaced atomically afterwards
(``os.replace``), so an interrupt at any moment leaves either the previous checkpoint or
the new one, never a mix. We do not use ``Accelerator.save_state`` because it pickles
the RNG states; here tensors go to safetensors and the rest to a ``torch.save`` file that
is always read back with ``weights_only=True``.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import pickle
import random
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from transferkit.errors import TransferkitError
from transferkit.outputs import write_bytes_atomic, write_json_atomic

POINTER = "latest.json"
FINAL = "final"
METRIC_COLUMNS = ("epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "seconds")


def _tensor_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # safetensors wants contiguous CPU tensors that share no storage.
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}


def save_tensors(path: Path, state: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save

    write_bytes_atomic(path, save(_tensor_dict(state)))


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def torch_save_bytes(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def torch_load(path: Path):
    # Our own files, but loaded as if they came from anyone: weights_only=True makes the
    # unpickler refuse every global beyond tensors and plain containers, so a crafted
    # file cannot run code. Never turn it off.
    return torch.load(path, map_location="cpu", weights_only=True)


def describe_load_error(exc: BaseException) -> str:
    """One line on why a weights file could not be read. torch's own message for a
    refused pickle runs to paragraphs and suggests weights_only=False, which would run
    whatever the file holds, so it is never shown."""
    text = str(exc).strip()
    if isinstance(exc, pickle.UnpicklingError) and "weights only load failed" in text.lower():
        refused = re.search(r"GLOBAL (\S+)", text)
        return ("it holds Python objects beyond tensors"
                + (f" ({refused.group(1)})" if refused else "")
                + " that loading would have to run, so it was refused")
    return f"{type(exc).__name__}: {text.splitlines()[0][:300] if text else 'no details'}"


def rng_state() -> dict:
    """Python, NumPy, torch (CPU and CUDA) RNG states in a ``weights_only``-loadable form."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    numpy = state["numpy"]
    np.random.set_state((numpy["kind"], numpy["keys"].numpy().astype(np.uint32), numpy["pos"],
                         numpy["has_gauss"], numpy["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def write_metrics_csv(path: Path, history: list[dict]) -> None:
    """All epochs so far, rewritten whole each time so a resumed run's file stays consistent."""
    extra = [k for row in history for k in row if k not in METRIC_COLUMNS]
    columns = list(METRIC_COLUMNS) + list(dict.fromkeys(extra))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    for row in history:
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in columns})
    write_bytes_atomic(Path(path), buffer.getvalue().encode("utf-8"))


def dataset_fingerprint(dataset) -> str | None:
    """SHA-256 of the items ``dataset`` yields, in order, or None when that cannot be known
    without iterating it (a checkpoint is then matched on its settings alone).

    Image files (a dataset with ``paths`` and ``labels``, such as
    :class:`transferkit.train.data.ImageFiles`): each file's content digest and its label,
    so moving the data keeps the fingerprint while one changed pixel or label changes it.
    In-memory tensors (``TensorDataset``): their dtypes, shapes and bytes. Any other
    dataset with a ``fingerprint()`` method (e.g. the domain-adaptation pairings of source
    and target tensors): what it returns.
    """
    from torch.utils.data import TensorDataset

    from transferkit.features.cache import file_digest

    own = getattr(dataset, "fingerprint", None)
    if callable(own):
        return own()
    digest = hashlib.sha256()
    if hasattr(dataset, "paths") and hasattr(dataset, "labels"):
        for path, label in zip(dataset.paths, dataset.labels, strict=True):
            try:
                content = file_digest(path)
            except OSError as exc:  # training skips it the same way each time
                content = f"unreadable: {type(exc).__name__}"
            digest.update(f"{content} {int(label)}\n".encode())
        return digest.hexdigest()
    if isinstance(dataset, TensorDataset):
        return tensors_fingerprint(*dataset.tensors)
    return None


def tensors_fingerprint(*values) -> str:
    """SHA-256 of tensors (dtype, shape and bytes) and plain values (their text), in order."""
    digest = hashlib.sha256()
    for value in values:
        if isinstance(value, np.ndarray):
            value = torch.from_numpy(np.ascontiguousarray(value))
        if isinstance(value, torch.Tensor):
            tensor = value.detach().cpu().contiguous()
            digest.update(f"{tensor.dtype} {tuple(tensor.shape)}\n".encode())
            if tensor.numel():  # an empty tensor has no bytes (and may not view as them)
                digest.update(memoryview(tensor.reshape(-1).view(torch.uint8).numpy()))
        else:
            digest.update(f"{value!r}\n".encode())
    return digest.hexdigest()


def data_fingerprint(train_loader, val_loader=None, extra=None) -> str:
    """One digest of the training and validation data (see :func:`dataset_fingerprint`);
    ``extra``: JSON-able facts the loaders cannot show, such as the class names."""
    parts = [dataset_fingerprint(getattr(loader, "dataset", None)) if loader is not None else "none"
             for loader in (train_loader, val_loader)]
    text = json.dumps({"train": parts[0], "val": parts[1], "extra": extra}, sort_keys=True,
                      default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _refuse_link(path: Path, what: str) -> None:
    # Checkpoints are written into folders this class creates; a link there was put by
    # someone else, and following it would write (and later delete) wherever it points.
    if path.is_symlink():
        raise TransferkitError(f"{path}: this {what} is a symbolic link, and checkpoints are "
                               "never written through a link; remove it or give another run "
                               "folder (nothing was changed).")


class CheckpointDir:
    """Reads and writes the checkpoints of one training run (see the module docstring).
    A link at the run folder, or where it puts a checkpoint, is refused, never followed."""

    def __init__(self, run_dir: str | os.PathLike):
        self.root = Path(run_dir)
        _refuse_link(self.root, "run folder")

    # -- writing ----------------------------------------------------------------------
    def save(self, epoch: int, model_state: dict, best_state: dict | None, best_changed: bool,
             state: dict, progress: dict) -> Path:
        folder = self.root / f"ckpt-{epoch:04d}"
        _refuse_link(folder, "checkpoint folder")
        self.root.mkdir(parents=True, exist_ok=True)
        previous = self.latest()
        if folder.exists():  # left over from an interrupted attempt at this epoch
            shutil.rmtree(folder)
        folder.mkdir()
        save_tensors(folder / "model.safetensors", model_state)
        if best_state is not None:
            old_best = previous / "best.safetensors" if previous else None
            if not best_changed and old_best is not None and old_best.is_file():
                os.link(old_best, folder / "best.safetensors")  # unchanged: no second copy
            else:
                save_tensors(folder / "best.safetensors", best_state)
        write_bytes_atomic(folder / "state.pt", torch_save_bytes(state))
        write_json_atomic(folder / "progress.json", progress)
        write_json_atomic(self.root / POINTER, {"checkpoint": folder.name, "epoch": epoch})
        # Only now is the older checkpoint redundant.
        for old in self.root.glob("ckpt-*"):
            if old != folder:
                shutil.rmtree(old, ignore_errors=True)
        return folder

    def save_final(self, model_state: dict, result: dict) -> None:
        target = self.root / FINAL
        _refuse_link(target, "final-weights folder")
        staging = Path(tempfile.mkdtemp(dir=self.root, prefix=".final-"))
        save_tensors(staging / "model.safetensors", model_state)
        write_json_atomic(staging / "result.json", result)
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)

    # -- reading ----------------------------------------------------------------------
    def latest(self) -> Path | None:
        pointer = self.root / POINTER
        if not pointer.is_file():
            return None
        try:
            name = json.loads(pointer.read_text(encoding="utf-8"))["checkpoint"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise TransferkitError(f"{pointer}: damaged checkpoint pointer ({describe_load_error(exc)}); "
                                   f"delete {self.root} or give another run folder.") from exc
        # Only a folder this class writes: an edited pointer must not lead out of the run.
        if not isinstance(name, str) or not re.fullmatch(r"ckpt-\d{4,}", name):
            raise TransferkitError(f"{pointer}: damaged checkpoint pointer (names {name!r}, not a "
                                   f"ckpt-NNNN folder); delete {self.root} or give another run folder.")
        folder = self.root / name
        _refuse_link(folder, "checkpoint folder")
        return folder if folder.is_dir() else None

    def load(self) -> tuple[dict, dict | None, dict, dict] | None:
        """``(model_state, best_state, state, progress)`` of the newest checkpoint, or None."""
        folder = self.latest()
        if folder is None:
            return None
        try:
            best = folder / "best.safetensors"
            return (load_tensors(folder / "model.safetensors"),
                    load_tensors(best) if best.is_file() else None,
                    torch_load(folder / "state.pt"),
                    json.loads((folder / "progress.json").read_text(encoding="utf-8")))
        except Exception as exc:  # any damage: say which folder, do not guess
            raise TransferkitError(f"{folder}: cannot resume from this checkpoint "
                                   f"({describe_load_error(exc)}). Delete it to start over.") from exc

    def load_final(self) -> tuple[dict, dict] | None:
        folder = self.root / FINAL
        if not (folder / "result.json").is_file():
            return None
        try:
            return (load_tensors(folder / "model.safetensors"),
                    json.loads((folder / "result.json").read_text(encoding="utf-8")))
        except Exception as exc:  # any damage: say which folder, do not guess
            raise TransferkitError(f"{folder}: cannot reuse this finished run "
                                   f"({describe_load_error(exc)}). Delete it to train again.") from exc
