"""Shared fixtures: generated image folders, a tiny local checkpoint, the shared data sets."""

from __future__ import annotations

from pathlib import Path

import pytest

from builders import SHARED_DATASETS, write_class_folder


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    """Every test gets its own feature cache, so no test sees another's entries."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("TRANSFERKIT_CACHE_DIR", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


@pytest.fixture
def image_folder(tmp_path) -> Path:
    """root/{red,blue}/*.png, 8 images per class."""
    return write_class_folder(tmp_path / "images")


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> tuple[Path, str]:
    """timm's 0.36 M-parameter ``test_efficientnet`` saved as safetensors (fast tests)."""
    import timm
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = timm.create_model("test_efficientnet", num_classes=5)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path, "test_efficientnet"


@pytest.fixture(scope="session")
def shared_datasets() -> Path:
    if not SHARED_DATASETS.is_dir():
        pytest.skip("../shared/datasets is absent (a user's machine): real-data test skipped")
    return SHARED_DATASETS


@pytest.fixture
def one_torch_thread():
    """Tiny models gain nothing from intra-op threads; on a busy 2-core machine OpenMP
    spin-waiting made them ~100x slower. Test files opt in with
    ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
