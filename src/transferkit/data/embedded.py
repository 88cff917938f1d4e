"""Small real image sets that ship inside installed wheels (scikit-image), for the demo.

* ``textures``: the photographs ``brick``, ``grass`` and ``gravel`` (512×512 grey). Training
  patches come from the left half of each photograph and validation patches from the
  right half, so no validation pixel was seen in training.
* ``faces``: ``lfw_subset`` — 100 face and 100 non-face 25×25 crops from LFW.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from transferkit.errors import DataError

EMBEDDED_SETS = ("textures", "faces")


def _save(array: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def write_textures(root: Path, n_train: int = 10, n_val: int = 20, patch: int = 96,
                   random_state: int = 0) -> Path:
    import skimage.data

    rng = np.random.default_rng(random_state)
    for name in ("brick", "grass", "gravel"):
        image = getattr(skimage.data, name)()
        half = image.shape[1] // 2
        for split, count, x0 in (("train", n_train, 0), ("val", n_val, half)):
            for i in range(count):
                y = int(rng.integers(0, image.shape[0] - patch))
                x = x0 + int(rng.integers(0, half - patch))
                _save(image[y:y + patch, x:x + patch], root / split / name / f"{name}_{i:03d}.png")
    return root


def write_faces(root: Path, n_train: int = 10, random_state: int = 0) -> Path:
    import skimage.data

    crops = skimage.data.lfw_subset()  # floats in [0, 1]; first 100 faces, then non-faces
    crops = (np.clip(crops, 0, 1) * 255).round().astype(np.uint8)
    rng = np.random.default_rng(random_state)
    for name, block in (("face", crops[:100]), ("non_face", crops[100:])):
        order = rng.permutation(len(block))
        for rank, index in enumerate(order):
            split = "train" if rank < n_train else "val"
            _save(block[index], root / split / name / f"{name}_{index:03d}.png")
    return root


def write_embedded_set(name: str, root: str | os.PathLike, random_state: int = 0) -> Path:
    """Write the embedded set ``name`` as an image folder with ``train/`` and ``val/``."""
    root = Path(root)
    if name == "textures":
        return write_textures(root, random_state=random_state)
    if name == "faces":
        return write_faces(root, random_state=random_state)
    raise DataError(f"unknown embedded set {name!r}; choose one of {', '.join(EMBEDDED_SETS)}.")
