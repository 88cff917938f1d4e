"""The embedded demo: the same ``fit`` a user runs, on image sets shipped in wheels.

For each embedded set it prints the validation accuracy of pretrained features +
logistic regression beside the same classifier on raw pixels (the "no transfer"
baseline), and where the model was saved.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from transferkit import run
from transferkit.data import load_dataset
from transferkit.data.embedded import EMBEDDED_SETS, write_embedded_set
from transferkit.evaluate import classification_summary
from transferkit.methods.classifiers import make_classifier
from transferkit.methods.raw_pixels import raw_pixels


def raw_pixel_baseline(data: Path, classifier: str = "logreg", random_state: int = 0) -> dict:
    splits = load_dataset(data, random_state=random_state)
    model = make_classifier(classifier, splits.train.labels, random_state=random_state)
    model.fit(raw_pixels(splits.train.paths), splits.train.labels)
    predicted = model.predict(raw_pixels(splits.val.paths))
    names = np.asarray(splits.classes, dtype=object)
    return classification_summary(names[splits.val.labels], names[predicted], splits.classes)


def run_demo(out: str | os.PathLike = "transferkit-demo", sets=EMBEDDED_SETS,
             random_state: int = 0, overwrite: bool = False, **fit_options) -> dict:
    """Write each embedded set under ``out/data``, fit it into ``out/models`` and compare
    with raw pixels. A previous demo in ``out`` is replaced only with ``overwrite``."""
    from transferkit.outputs import prepare_output_folder

    prepare_output_folder(out, command="demo", overwrite=overwrite)
    out = Path(out)
    results = {}
    for name in sets:
        data = write_embedded_set(name, out / "data" / name, random_state=random_state)
        # The demo's own folder passed the check above: its models are the demo's to replace.
        summary = run.fit(data, out / "models" / name, random_state=random_state,
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
