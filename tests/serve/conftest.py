"""A model of each kind to serve: a tiny network fitted by the CLI, and its export."""

from __future__ import annotations

import pytest

from builders import write_class_folder


@pytest.fixture(scope="session")
def models(tiny_checkpoint, tmp_path_factory):
    """(model folder fitted by `transferkit fit`, its .onnx export, images to send)."""
    from transferkit.cli import main
    from transferkit.export import export_model

    root = tmp_path_factory.mktemp("serve")
    weights, arch = tiny_checkpoint
    classes = ("red", "blue", "green")
    images = write_class_folder(root / "images", per_class=6, classes=classes)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TRANSFERKIT_CACHE_DIR", str(root / "cache"))
        assert main(["fit", str(images), "--out", str(root / "model"), "--weights", str(weights),
                     "--arch", arch, "--no-report", "--quiet"]) == 0
        export_model(root / "model", root / "model.onnx")
    sent = sorted(write_class_folder(root / "sent", per_class=2, classes=classes,
                                     seed=7).glob("*/*.png"))
    return root / "model", root / "model.onnx", sent
