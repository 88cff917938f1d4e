"""Fine-tuning resumes only the run it belongs to; skips and precision are reported right.

Regression tests for: a CLI fine-tune that restarted from epoch 1 after an interrupt; a
resume check blind to the data (other images or labels of the same count silently got
the old run back); validation skips counted as training skips; fp16 silently on a CPU.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import transferkit.methods.finetune as finetune_module
from transferkit import run
from transferkit.bundle import load_bundle
from transferkit.cli import main
from transferkit.errors import TransferkitError
from transferkit.methods import FineTuner
from transferkit.train import TrainConfig, TrainConfigError, fit_loop
from transferkit.train.checkpoint import CheckpointDir
from transferkit.train.data import image_loader

pytestmark = pytest.mark.usefixtures("one_torch_thread")

WORK = ".transferkit-work"
COLOURS = {"red": (220, 30, 30), "blue": (30, 30, 220)}


def write_images(root: Path, per_class: int = 6, seed: int = 0) -> Path:
    """root/{red,blue}/<i>.png: noisy squares, different pixels for each ``seed``."""
    for c, (name, colour) in enumerate(COLOURS.items()):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            rng = np.random.default_rng(seed * 1000 + c * 100 + i)
            pixels = rng.integers(90, 160, size=(32, 32, 3)).astype(np.uint8)
            pixels[8:24, 8:24] = colour
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


def files(root: Path):
    paths = sorted(root.glob("*/*.png"))
    return [str(p) for p in paths], [p.parent.name for p in paths]


def tiny_options(tiny_checkpoint, **kw) -> dict:
    path, arch = tiny_checkpoint
    options = dict(weights=str(path), arch=arch, strategy="full", epochs=2, image_size=32,
                   batch_size=8, lr=3e-3, lr_factor=1.0, num_workers=0, progress=False)
    options.update(kw)
    return options


class WatchedLoop:
    """Wraps the fine-tuning loop: records the epochs trained, and can interrupt a run
    (KeyboardInterrupt) once a given epoch is checkpointed, as Ctrl-C would."""

    def __init__(self, monkeypatch):
        self.real = finetune_module.fit_loop
        self.stop_after: int | None = None
        self.trained: list[int] = []
        monkeypatch.setattr(finetune_module, "fit_loop", self)

    def __call__(self, *args, **kwargs):
        def watch(row):
            self.trained.append(row["epoch"])
            if self.stop_after is not None and row["epoch"] >= self.stop_after:
                raise KeyboardInterrupt
        return self.real(*args, callbacks=[watch], **kwargs)


# -- issue item 5: the CLI's fine-tuning resumes ------------------------------------------

def test_interrupted_fit_resumes_at_the_next_epoch_and_saves_a_loadable_bundle(
        tiny_checkpoint, image_folder, tmp_path, monkeypatch):
    out = tmp_path / "model"
    options = tiny_options(tiny_checkpoint)
    loop = WatchedLoop(monkeypatch)
    loop.stop_after = 1
    with pytest.raises(KeyboardInterrupt):
        run.fit(image_folder, out, method="finetune", report=False, **options)
    assert (out / WORK).is_dir(), "the interrupted fit left no checkpoint to resume from"

    loop.stop_after, loop.trained = None, []
    summary = run.fit(image_folder, out, method="finetune", report=False, **options)
    assert loop.trained == [2], f"the rerun trained epochs {loop.trained}, not only the one left"
    assert summary["epochs_run"] == 2
    model = load_bundle(out)
    assert [row["epoch"] for row in model.history_] == [1, 2]
    paths, _ = files(image_folder)
    assert model.predict(paths[:3]).shape == (3,)
    assert (out / "metrics.csv").read_text().count("\n") == 3
    assert (out / "learning_curves.png").stat().st_size > 1000


def test_rerun_on_other_data_after_an_interrupt_names_the_work_folder(
        tiny_checkpoint, image_folder, tmp_path, monkeypatch):
    out = tmp_path / "model"
    options = tiny_options(tiny_checkpoint)
    loop = WatchedLoop(monkeypatch)
    loop.stop_after = 1
    with pytest.raises(KeyboardInterrupt):
        run.fit(image_folder, out, method="finetune", report=False, **options)
    loop.stop_after = None
    # Swap the two class folders: the same files and counts, every label changed.
    (image_folder / "red").rename(image_folder / "swap")
    (image_folder / "blue").rename(image_folder / "red")
    (image_folder / "swap").rename(image_folder / "blue")
    with pytest.raises(TransferkitError, match=WORK) as caught:
        run.fit(image_folder, out, method="finetune", report=False, **options)
    assert "\n" not in str(caught.value) and "--overwrite" in str(caught.value)
    loop.trained = []  # the advice works: overwriting starts over from epoch 1
    run.fit(image_folder, out, method="finetune", report=False, overwrite=True, **options)
    assert loop.trained == [1, 2]


# -- issue item 5: the resume check sees the data ----------------------------------------

def classify(model, batch):
    x, y = batch[0], batch[1]
    logits = model(x)
    return F.cross_entropy(logits, y), (logits.argmax(1) == y).sum(), len(y)


def blob_loader(flip=False, shift=0.0):
    g = torch.Generator().manual_seed(0)
    y = torch.arange(32) % 2
    x = torch.randn(32, 8, generator=g) + (y[:, None] * 2 - 1) * 1.5 + shift
    return DataLoader(TensorDataset(x, 1 - y if flip else y), batch_size=8, shuffle=True)


def blob_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))


def loop_config(**kw):
    return TrainConfig(**{**dict(epochs=3, progress=False, patience=None, channels_last=False), **kw})


def run_blobs(run_dir, loader, callbacks=()):
    model = blob_model()
    return fit_loop(model, [{"params": list(model.parameters()), "lr": 0.05}], loader, None,
                    classify, loop_config(), run_dir, callbacks)


def test_loop_refuses_to_resume_on_other_labels_of_the_same_count(tmp_path):
    def stop(row):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_blobs(tmp_path / "run", blob_loader(), [stop])
    assert CheckpointDir(tmp_path / "run").load()[3]["epoch"] == 1
    with pytest.raises(TransferkitError, match="different training run"):
        run_blobs(tmp_path / "run", blob_loader(flip=True))


def test_loop_refuses_a_completed_run_on_other_data_of_the_same_count(tmp_path):
    run_blobs(tmp_path / "run", blob_loader())
    assert run_blobs(tmp_path / "run", blob_loader()).epochs_run == 3  # same data: reused
    with pytest.raises(TransferkitError, match="different training run"):
        run_blobs(tmp_path / "run", blob_loader(shift=0.5))


def test_loop_refuses_image_files_whose_content_changed(tmp_path):
    root = write_images(tmp_path / "images", per_class=3)
    paths, names = files(root)
    labels = [int(n == "red") for n in names]

    def to_tensor(image):
        return torch.from_numpy(np.asarray(image.resize((16, 16)), dtype=np.float32) / 255).permute(2, 0, 1)

    def run_images(run_dir):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 2))
        loader = image_loader(paths, labels, to_tensor, batch_size=4, shuffle=True, num_workers=0)
        return fit_loop(model, [{"params": list(model.parameters()), "lr": 0.05}], loader, None,
                        classify, loop_config(epochs=1), run_dir)

    run_images(tmp_path / "run")
    write_images(tmp_path / "images", per_class=3, seed=5)  # same names, other pixels
    with pytest.raises(TransferkitError, match="different training run"):
        run_images(tmp_path / "run")


@pytest.fixture(scope="module")
def colour_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("finetune-data")
    return files(write_images(root / "a")), files(write_images(root / "b", seed=3))


def test_finetuner_refuses_a_run_folder_of_other_images_or_labels(tiny_checkpoint, colour_files,
                                                                 tmp_path):
    (x, y), (other_x, other_y) = colour_files
    run_dir = str(tmp_path / "run")
    first = FineTuner(**tiny_options(tiny_checkpoint, epochs=1, run_dir=run_dir)).fit(x, y)
    again = FineTuner(**tiny_options(tiny_checkpoint, epochs=1, run_dir=run_dir)).fit(x, y)
    assert again.history_ == first.history_  # same data: the finished run is reused
    swapped = ["red" if label == "blue" else "blue" for label in y]
    renamed = ["crimson" if label == "red" else label for label in y]  # same order, other name
    for images, labels in ((x, swapped), (other_x, other_y), (x, renamed)):
        with pytest.raises(TransferkitError, match="different training run"):
            FineTuner(**tiny_options(tiny_checkpoint, epochs=1, run_dir=run_dir)).fit(images, labels)


def test_finetuner_refuses_to_resume_an_interrupted_run_on_swapped_labels(
        tiny_checkpoint, colour_files, tmp_path, monkeypatch):
    (x, y), _ = colour_files
    run_dir = str(tmp_path / "run")
    loop = WatchedLoop(monkeypatch)
    loop.stop_after = 1
    with pytest.raises(KeyboardInterrupt):
        FineTuner(**tiny_options(tiny_checkpoint, run_dir=run_dir)).fit(x, y)
    loop.stop_after = None
    swapped = ["red" if label == "blue" else "blue" for label in y]
    with pytest.raises(TransferkitError, match="different training run"):
        FineTuner(**tiny_options(tiny_checkpoint, run_dir=run_dir)).fit(x, swapped)


# -- issue item 9: validation skips are not training skips --------------------------------

def test_an_unreadable_validation_image_is_listed_once_and_not_taken_from_n_train(
        tiny_checkpoint, tmp_path):
    data = tmp_path / "data"
    write_images(data / "train", per_class=6)
    write_images(data / "val", per_class=2, seed=9)
    corrupt = data / "val" / "red" / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    summary = run.fit(data, tmp_path / "model", method="finetune", report=False,
                      **tiny_options(tiny_checkpoint, epochs=1))
    assert summary["n_train"] == 12
    assert summary["n_val"] == 4
    assert [item["path"] for item in summary["skipped"]] == [str(corrupt)]
    assert summary["n_skipped"] == 1


def test_finetuner_skipped_lists_training_images_only(tiny_checkpoint, colour_files, tmp_path):
    (x, y), (val_x, val_y) = colour_files
    broken_val = tmp_path / "broken-val.png"
    broken_val.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    broken_train = tmp_path / "broken-train.png"
    broken_train.write_bytes(b"")
    with pytest.warns(UserWarning):
        model = FineTuner(**tiny_options(tiny_checkpoint, epochs=1)).fit(
            x + [str(broken_train)], y + ["red"], X_val=val_x + [str(broken_val)],
            y_val=val_y + ["blue"])
    assert [path for path, _ in model.skipped_] == [str(broken_train)]


# -- issue item 14: fp16 needs a GPU -------------------------------------------------------

def test_fp16_on_a_cpu_is_refused_before_any_work(tiny_checkpoint, colour_files, monkeypatch):
    (x, y), _ = colour_files

    def no_backbone(*args, **kwargs):
        raise AssertionError("the backbone was built before the precision was checked")

    monkeypatch.setattr("transferkit.backbones.create_backbone", no_backbone)
    with pytest.raises(TrainConfigError, match="fp16"):
        FineTuner(**tiny_options(tiny_checkpoint, precision="fp16", device="cpu")).fit(x, y)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(TrainConfigError, match="fp16"):
        FineTuner(**tiny_options(tiny_checkpoint, precision="fp16", device="auto")).fit(x, y)


def test_fp16_on_a_cpu_is_refused_by_the_loop():
    model = blob_model()
    with pytest.raises(TrainConfigError, match="fp16"):
        fit_loop(model, [{"params": list(model.parameters()), "lr": 0.05}], blob_loader(), None,
                 classify, loop_config(precision="fp16", device="cpu"))


def test_cli_fp16_on_a_cpu_is_a_one_line_error(tiny_checkpoint, image_folder, tmp_path, capsys):
    path, arch = tiny_checkpoint
    code = main(["fit", str(image_folder), "--out", str(tmp_path / "model"), "--method",
                 "finetune", "--weights", str(path), "--arch", arch, "--precision", "fp16",
                 "--device", "cpu", "--quiet"])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "fp16" in err and "\n" not in err


def test_bf16_on_a_cpu_stays_allowed(tiny_checkpoint, colour_files):
    (x, y), _ = colour_files
    model = FineTuner(**tiny_options(tiny_checkpoint, epochs=1, precision="bf16", device="cpu"))
    assert model.fit(x, y).epochs_run_ == 1
