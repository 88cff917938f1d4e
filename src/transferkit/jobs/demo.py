"""``transferkit demo``: the same ``fit`` a user runs, on image sets shipped in wheels.

For each embedded set it reports the validation accuracy of pretrained features +
logistic regression beside the same classifier on raw pixels (the "no transfer"
baseline), and where the model was saved.
"""

from __future__ import annotations

import os
from pathlib import Path

from transferkit.jobs import _options
from transferkit.jobs._common import format_table
from transferkit.outputs import removes_new_output_on_failure

NAME = "demo"
HELP = "run fit on image sets embedded in the installed packages and compare with raw pixels"


def add_arguments(parser) -> None:
    _options.add_out(parser, "folder for the embedded sets and their models",
                     default="transferkit-demo")
    parser.add_argument("--set", dest="sets", action="append", choices=["textures", "faces"],
                        help="embedded set (repeatable; default both)")
    _options.add_cache(parser)


def raw_pixel_baseline(data: Path, classifier: str = "logreg", random_state: int = 0) -> dict:
    """Validation metrics of ``classifier`` on the raw pixels of ``data``'s images."""
    import numpy as np

    from transferkit.data import load_dataset
    from transferkit.evaluate import classification_summary
    from transferkit.features.classifiers import make_classifier
    from transferkit.features.raw_pixels import raw_pixels

    splits = load_dataset(data, random_state=random_state)
    model = make_classifier(classifier, splits.train.labels, random_state=random_state)
    model.fit(raw_pixels(splits.train.paths), splits.train.labels)
    predicted = model.predict(raw_pixels(splits.val.paths))
    names = np.asarray(splits.classes, dtype=object)
    return classification_summary(names[splits.val.labels], names[predicted], splits.classes)


@removes_new_output_on_failure
def run(out: str | os.PathLike = "transferkit-demo", sets=None, random_state: int = 0,
        overwrite: bool = False, **fit_options) -> dict:
    """Write each embedded set (``sets``, default all of
    :data:`~transferkit.data.embedded.EMBEDDED_SETS`) under ``out/data``, fit it into
    ``out/models`` and compare with raw pixels; ``fit_options`` go to
    :func:`transferkit.jobs.fit.run`. A previous demo in ``out`` is replaced only with
    ``overwrite``."""
    from transferkit.data.embedded import EMBEDDED_SETS, write_embedded_set
    from transferkit.jobs import fit
    from transferkit.outputs import prepare_output_folder

    prepare_output_folder(out, command="demo", overwrite=overwrite)
    out = Path(out)
    results = {}
    for name in sets or EMBEDDED_SETS:
        data = write_embedded_set(name, out / "data" / name, random_state=random_state)
        # The demo's own folder passed the check above: its models are the demo's to replace.
        summary = fit.run(data, out / "models" / name, random_state=random_state,
                          overwrite=True, **fit_options)
        baseline = raw_pixel_baseline(data, random_state=random_state)
        results[name] = {
            "data": str(data), "model": summary["out"], "n_train": summary["n_train"],
            "n_val": summary["n_val"], "val_accuracy": summary["val_accuracy"],
            "val_balanced_accuracy": summary["val_balanced_accuracy"],
            "raw_pixels_val_accuracy": baseline["accuracy"],
            "beats_raw_pixels": summary["val_accuracy"] > baseline["accuracy"],
            "seconds": summary["seconds"],
        }
    return results


def render(summary: dict) -> str:
    rows = [["set", "train", "val", "pretrained features", "raw pixels", "model"]]
    for name, item in summary.items():
        rows.append([name, item["n_train"], item["n_val"], f"{item['val_accuracy']:.3f}",
                     f"{item['raw_pixels_val_accuracy']:.3f}", item["model"]])
    return (format_table(rows) + "\nvalidation accuracy of logistic regression on "
            "EfficientNet-Lite0 features vs raw pixels")
