"""The ``transferkit autoencoder`` job: autoencoder pretraining from folders of images.

An *unlabelled* folder (any layout; sub-folder names are ignored), a *labelled* folder
(one sub-folder per class: the few labels) and optionally a labelled *test* folder with
the same classes. All images are read as 32×32 RGB. The job trains a convolutional
autoencoder (:class:`~transferkit.methods.autoencoder.ConvAutoencoder`) on the unlabelled
images together with the labelled ones (their labels unused), then trains three
classifiers on the same labelled images:

* ``encoder + logistic regression``: the frozen encoder's features, standardised;
* ``autoencoder-initialised``: the digit network with the encoder as initialisation,
  fine-tuned end to end;
* ``random-initialised``: the same network and training from random weights, the
  baseline the pretraining has to beat.

With a test folder the summary gives each one's accuracy. ``OUT`` receives
``reconstructions.png`` (inputs above their reconstructions), ``summary.json`` and the
training runs under ``OUT/train/`` (checkpoints and ``metrics.csv``; a run cut short
resumes).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np

from transferkit.data.dataset import LabelledImages, list_image_files, read_image_folder
from transferkit.errors import DataError

IMAGE_SIZE = 32
MIN_FINETUNE_STEPS = 300  # few labels make short epochs: fine-tune for at least this many steps
FINETUNE_BATCH = 32


def _read(paths, what: str, skipped: list) -> tuple[np.ndarray, np.ndarray]:
    from transferkit.data.images import load_small_images

    images, ok, bad = load_small_images(paths, IMAGE_SIZE)
    skipped += bad
    if len(images) < 2:
        raise DataError(f"{what}: {len(images)} readable image(s); at least 2 are needed.")
    return images, ok


def _labelled(folder, classes=None) -> LabelledImages:
    images = read_image_folder(folder, classes)
    if classes is None and len(images.classes) < 2:
        raise DataError(f"{folder}: the labelled images need at least two classes, found "
                        f"{images.classes}.")
    return images


def default_finetune_epochs(n_labelled: int, minimum_steps: int = MIN_FINETUNE_STEPS,
                    batch_size: int = FINETUNE_BATCH) -> int:
    """Epochs that give at least ``minimum_steps`` optimiser steps on ``n_labelled`` images."""
    steps = max(1, n_labelled // batch_size) if n_labelled > batch_size else 1
    return max(20, math.ceil(minimum_steps / steps))


def run_autoencoder(unlabelled, labelled, out, test=None, epochs: int = 15,
                    finetune_epochs: int | None = None, noise: float = 0.0,
                    contrast_normalise: bool = False, random_state: int = 0, device: str = "auto",
                    progress: bool = False, overwrite: bool = False) -> dict:
    """Run the job of the module docstring; return the summary that ``--json`` prints.

    ``out`` must be new, empty or written by transferkit, apart from the inputs; a finished
    run there is replaced only with ``overwrite`` (see :mod:`transferkit.outputs`)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from transferkit.bundle import write_json_atomic
    from transferkit.methods.autoencoder import AutoencoderInitialisedClassifier, ConvAutoencoder
    from transferkit.methods.deep_adaptation import DeepSourceOnly
    from transferkit.outputs import prepare_output_folder

    start = time.perf_counter()
    unlabelled = Path(unlabelled)
    if not unlabelled.is_dir():
        raise DataError(f"{unlabelled}: not a folder of unlabelled images.")
    unlabelled_paths = list_image_files(unlabelled)
    if not unlabelled_paths:
        raise DataError(f"{unlabelled}: no images found.")
    labelled_images = _labelled(labelled)
    classes = labelled_images.classes
    test_images = _labelled(test, classes) if test is not None else None
    if out is None:
        raise DataError("give an output folder (--out) for reconstructions.png and summary.json.")
    prepare_output_folder(out, command="autoencoder", inputs=(unlabelled, labelled, test),
                          overwrite=overwrite)
    out = Path(out)

    skipped: list[tuple[str, str]] = []
    X_unlabelled, _ = _read(unlabelled_paths, str(unlabelled), skipped)
    X, ok = _read(labelled_images.paths, str(labelled), skipped)
    y = np.asarray(labelled_images.labels)[ok]
    if len(np.unique(y)) < 2:
        raise DataError(f"{labelled}: fewer than two classes have readable images.")
    X_test = y_test = None
    if test_images is not None:
        X_test, ok = _read(test_images.paths, str(test), skipped)
        y_test = np.asarray(test_images.labels)[ok]

    train = out / "train"
    autoencoder = ConvAutoencoder(epochs=int(epochs), noise=noise,
                                  contrast_normalise=contrast_normalise, device=device,
                                  random_state=random_state, progress=progress,
                                  run_dir=str(train / "autoencoder"))
    autoencoder.fit(np.concatenate([X_unlabelled, X]))
    ft_epochs = int(finetune_epochs or default_finetune_epochs(len(X)))
    options = {"epochs": ft_epochs, "batch_size": FINETUNE_BATCH, "val_fraction": 0.0,
               "device": device, "random_state": random_state, "progress": progress}
    shallow = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    shallow.fit(autoencoder.transform(X), y)
    pretrained = AutoencoderInitialisedClassifier(autoencoder, run_dir=str(train / "ae-init"),
                                                  **options).fit(X, y)
    scratch = DeepSourceOnly(run_dir=str(train / "random-init"), **options).fit(X, y)

    def accuracy(predict):
        return None if X_test is None else float(np.mean(predict(X_test) == y_test))

    out.mkdir(parents=True, exist_ok=True)
    shown = X_test if X_test is not None else X_unlabelled
    figure = autoencoder.save_reconstructions(shown, out / "reconstructions.png")
    summary = {
        "unlabelled": str(unlabelled), "labelled": str(labelled),
        "test": None if test is None else str(test), "classes": classes,
        "n_unlabelled": int(len(X_unlabelled)), "n_labelled": int(len(X)),
        "n_test": 0 if X_test is None else int(len(X_test)),
        "autoencoder_epochs": int(epochs), "finetune_epochs": ft_epochs, "noise": noise,
        "contrast_normalise": bool(contrast_normalise),
        "reconstruction_error_train": float(autoencoder.history_[-1]["train_loss"]),
        "reconstruction_error_test": (None if X_test is None
                                      else autoencoder.reconstruction_error(X_test)),
        "accuracy": {
            "encoder_logreg": accuracy(lambda Z: shallow.predict(autoencoder.transform(Z))),
            "ae_init_finetuned": accuracy(pretrained.predict),
            "random_init": accuracy(scratch.predict),
        },
        "reconstructions": str(figure), "out": str(out), "seed": random_state,
        "n_skipped": len(skipped),
        "skipped": [{"path": p, "reason": r} for p, r in skipped],
    }
    summary["seconds"] = time.perf_counter() - start
    write_json_atomic(out / "summary.json", summary)
    return summary
