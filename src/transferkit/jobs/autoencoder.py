"""``transferkit autoencoder``: autoencoder pretraining from folders of images.

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

from transferkit.errors import DataError
from transferkit.jobs import _options
from transferkit.jobs._common import (
    SMALL_IMAGE_SIZE,
    format_score,
    format_table,
    list_unlabelled_images,
    read_labelled_folder,
    skipped_fields,
    skipped_lines,
)
from transferkit.outputs import removes_new_output_on_failure
from transferkit.train.distributed import is_main_process

NAME = "autoencoder"
HELP = ("autoencoder pretraining on unlabelled images, then few-label classifiers: encoder + "
        "logistic regression, autoencoder- vs random-initialised network")

MIN_FINETUNE_STEPS = 300  # few labels make short epochs: fine-tune for at least this many steps
FINETUNE_BATCH = 32


def add_arguments(parser) -> None:
    parser.add_argument("--unlabelled", required=True,
                        help="unlabelled images (any layout), resized to 32×32")
    parser.add_argument("--labelled", required=True,
                        help="the few labelled images (one sub-folder per class)")
    parser.add_argument("--test", help="labelled images to score on (same classes)")
    _options.add_out(parser, "folder for reconstructions.png, summary.json and the training runs",
                     required=True)
    parser.add_argument("--epochs", type=int, help="autoencoder training epochs (default 15)")
    parser.add_argument("--finetune-epochs", type=int, help="supervised epochs (default: enough "
                        f"for {MIN_FINETUNE_STEPS} steps of {FINETUNE_BATCH} images, at least 20)")
    parser.add_argument("--noise", type=float, help="denoising: std of the Gaussian noise added "
                        "to inputs, on the [-1, 1] scale (default 0)")
    parser.add_argument("--contrast-normalise", action="store_true", help="reconstruct each "
                        "image with its colour means removed and contrast scaled: shapes, not "
                        "colours (helps on colourful digits such as MNIST-M)")
    _options.add_device(parser)
    _options.add_seed(parser)


def _read(paths, what: str, skipped: list):
    from transferkit.data.images import load_small_images

    images, ok, bad = load_small_images(paths, SMALL_IMAGE_SIZE)
    skipped += bad
    if len(images) < 2:
        raise DataError(f"{what}: {len(images)} readable image(s); at least 2 are needed.")
    return images, ok


def default_finetune_epochs(n_labelled: int, minimum_steps: int = MIN_FINETUNE_STEPS,
                            batch_size: int = FINETUNE_BATCH) -> int:
    """Epochs that give at least ``minimum_steps`` optimiser steps on ``n_labelled`` images."""
    steps = max(1, n_labelled // batch_size) if n_labelled > batch_size else 1
    return max(20, math.ceil(minimum_steps / steps))


@removes_new_output_on_failure
def run(unlabelled, labelled, out, test=None, epochs: int = 15,
        finetune_epochs: int | None = None, noise: float = 0.0,
        contrast_normalise: bool = False, random_state: int = 0, device: str = "auto",
        progress: bool = False, overwrite: bool = False) -> dict:
    """Run the job of the module docstring; return the summary that ``--json`` prints.

    ``out`` must be new, empty or written by transferkit, apart from the inputs; a finished
    run there is replaced only with ``overwrite`` (see :mod:`transferkit.outputs`)."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from transferkit.methods import create_method
    from transferkit.outputs import input_folders, prepare_output_folder, write_json_atomic

    start = time.perf_counter()
    unlabelled = Path(unlabelled)
    unlabelled_paths = list_unlabelled_images(unlabelled)
    labelled_images = read_labelled_folder(labelled)
    classes = labelled_images.classes
    test_images = read_labelled_folder(test, classes) if test is not None else None
    if out is None:
        raise DataError("give an output folder (--out) for reconstructions.png and summary.json.")
    image_folders = input_folders(unlabelled_paths, labelled_images.paths,
                                  test_images.paths if test_images is not None else None)
    prepare_output_folder(out, command="autoencoder", overwrite=overwrite,
                          inputs=(unlabelled, labelled, test, *image_folders))
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
    autoencoder = create_method("autoencoder", epochs=int(epochs), noise=noise,
                                contrast_normalise=contrast_normalise, device=device,
                                random_state=random_state, progress=progress,
                                run_dir=str(train / "autoencoder"))
    autoencoder.fit(np.concatenate([X_unlabelled, X]))
    ft_epochs = int(finetune_epochs or default_finetune_epochs(len(X)))
    options = {"epochs": ft_epochs, "batch_size": FINETUNE_BATCH, "val_fraction": 0.0,
               "device": device, "random_state": random_state, "progress": progress}
    shallow = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    shallow.fit(autoencoder.transform(X), y)
    pretrained = create_method("autoencoder-init", autoencoder=autoencoder,
                               run_dir=str(train / "ae-init"), **options).fit(X, y)
    scratch = create_method("deep-source-only", run_dir=str(train / "random-init"),
                            **options).fit(X, y)
    if not is_main_process():  # trained in step with the main process, which writes and reports
        return {}

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
        **skipped_fields(skipped),
    }
    summary["seconds"] = time.perf_counter() - start
    write_json_atomic(out / "summary.json", summary)
    return summary


def render(summary: dict) -> str:
    accuracy = summary["accuracy"]
    lines = [f"autoencoder: {summary['n_unlabelled']} unlabelled + {summary['n_labelled']} "
             f"labelled images, {summary['autoencoder_epochs']} epochs; reconstruction MSE "
             f"{summary['reconstruction_error_train']:.4f} (train), "
             f"{format_score(summary['reconstruction_error_test'])} (test)",
             format_table([["", f"test accuracy ({summary['n_test']} images)"],
                           ["encoder + logistic regression",
                            format_score(accuracy["encoder_logreg"])],
                           ["autoencoder-initialised, fine-tuned",
                            format_score(accuracy["ae_init_finetuned"])],
                           ["random-initialised", format_score(accuracy["random_init"])]])]
    if not summary["n_test"]:
        lines.append("no --test folder: give one to compare the three classifiers.")
    lines += skipped_lines(summary)
    lines.append(f"wrote {summary['out']}/summary.json and {summary['reconstructions']}")
    return "\n".join(lines)
