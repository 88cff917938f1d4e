"""Shared fixtures: generated image folders, a tiny local checkpoint, the shared data sets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SHARED_DATASETS = REPO.parent / "shared" / "datasets"


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    """Every test gets its own feature cache, so no test sees another's entries."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("TRANSFERKIT_CACHE_DIR", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def colour_image(colour, size=48, seed=0, shape="square") -> Image.Image:
    """A noisy image of a coloured shape: classes by colour are easy for any network."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(90, 160, size=(size, size, 3)).astype(np.uint8)
    lo, hi = size // 4 + int(rng.integers(-4, 5)), 3 * size // 4 + int(rng.integers(-4, 5))
    pixels[lo:hi, lo:hi] = np.clip(np.array(colour) + rng.integers(-20, 21, 3), 0, 255)
    return Image.fromarray(pixels)


CLASS_COLOURS = {"red": (220, 30, 30), "blue": (30, 30, 220), "green": (30, 200, 40)}


def write_class_folder(root: Path, per_class: int = 8, classes=("red", "blue"), seed=0,
                       suffix=".png") -> Path:
    for c, name in enumerate(classes):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            colour_image(CLASS_COLOURS[name], seed=seed * 1000 + c * 100 + i).save(folder / f"{i}{suffix}")
    return root


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
