"""Fixtures shared by the hostile-input tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from builders import write_class_folder


@pytest.fixture(scope="module")
def probe_model(tmp_path_factory, tiny_checkpoint):
    """A real linear-probe bundle on the tiny checkpoint (default classifier), the fitted
    probe it was saved from, and an image to predict."""
    from transferkit.bundle import save_bundle
    from transferkit.methods import LinearProbe

    root = tmp_path_factory.mktemp("probe")
    path, arch = tiny_checkpoint
    paths = sorted(str(p) for p in write_class_folder(root / "images", per_class=4).glob("*/*.png"))
    probe = LinearProbe(weights=str(path), arch=arch, runtime="eager",
                        cache_dir=str(root / "cache")).fit(paths, [Path(p).parent.name for p in paths])
    return save_bundle(probe, root / "model"), probe, paths[0]
