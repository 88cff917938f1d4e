"""Builders of small test inputs, shared by test modules (imported as ``builders``: the
tests folder is on pytest's ``pythonpath``), so no test imports from ``conftest``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SHARED_DATASETS = REPO.parent / "shared" / "datasets"


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
