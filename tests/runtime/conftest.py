"""An exported model to run: a tiny distilled student (seconds to train and export)."""

from __future__ import annotations

import numpy as np
import pytest


def _colour_squares(n_per_class: int, size: int, seed: int):
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for c, colour in enumerate(((220, 30, 30), (30, 30, 220))):
        for _ in range(n_per_class):
            img = rng.integers(90, 160, size=(size, size, 3))
            img[4:12, 4:12] = colour
            images.append(img)
            labels.append(["red", "blue"][c])
    return np.asarray(images, dtype=np.uint8), np.asarray(labels)


@pytest.fixture(scope="session")
def student_export(tmp_path_factory):
    """(model folder, exported .onnx file) of a 16-pixel tiny-cnn student."""
    import torch

    from transferkit.bundle import save_bundle
    from transferkit.export import export_model
    from transferkit.methods.distill import DistilledStudent

    torch.manual_seed(0)
    X, y = _colour_squares(12, 16, 0)
    student = DistilledStudent(student="tiny-cnn", image_size=16, epochs=2, batch_size=8,
                               device="cpu").fit(X, y)
    root = tmp_path_factory.mktemp("student")
    folder = save_bundle(student, root / "student", metrics={"val_accuracy": 0.9})
    summary = export_model(folder, root / "student.onnx")
    return folder, root / "student.onnx", summary
