"""The PIL resize rules reproduce timm's eval transform and the students' resize pixel
for pixel, on real and generated images of every shape."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from builders import SHARED_DATASETS, colour_image
from transferkit.errors import TransferkitError
from transferkit.runtime.preprocessing import (
    apply_rule,
    check_rule,
    rule_from_data_config,
    stretch_rule,
)


def _images():
    """Generated images (landscape, portrait, tiny, odd sizes) and, where the shared data
    sets are, real photographs including a 100 px one (upscaled) and a GIF."""
    images = [colour_image((200, 40, 40), size=s) for s in (48, 300)]
    rng = np.random.default_rng(0)
    for width, height in ((333, 201), (150, 401), (61, 97), (257, 256)):
        images.append(Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)))
    real = [SHARED_DATASETS / "hymenoptera" / "val" / "ants" / "10308379_1b6c72e180.jpg",
            SHARED_DATASETS / "hymenoptera" / "train" / "ants" / "imageNotFound.gif",
            *sorted((SHARED_DATASETS / "sign_language_digits" / "all" / "3").glob("*"))[:1]]
    from transferkit.data.images import load_image

    images += [load_image(path) for path in real if path.is_file()]
    return images


CONFIGS = [
    # efficientnet_lite0, timm's test network, squash mode, a crop larger than the resize
    {"input_size": (3, 224, 224), "interpolation": "bicubic", "mean": (0.5,) * 3,
     "std": (0.5,) * 3, "crop_pct": 0.875, "crop_mode": "center"},
    {"input_size": (3, 160, 160), "interpolation": "bicubic", "mean": (0.485, 0.456, 0.406),
     "std": (0.229, 0.224, 0.225), "crop_pct": 0.95, "crop_mode": "center"},
    {"input_size": (3, 96, 128), "interpolation": "bilinear", "mean": (0.5,) * 3,
     "std": (0.25,) * 3, "crop_pct": 0.9, "crop_mode": "squash"},
    {"input_size": (3, 64, 64), "interpolation": "bilinear", "mean": (0.5,) * 3,
     "std": (0.5,) * 3, "crop_pct": 1.25, "crop_mode": "center"},
]


@pytest.mark.parametrize("config", CONFIGS, ids=["lite0", "test-net", "squash", "padded"])
def test_rule_reproduces_timms_eval_transform(config):
    import timm.data

    transform = timm.data.create_transform(**config, is_training=False)
    rule = rule_from_data_config(config)
    mean = np.asarray(config["mean"], dtype=np.float32)
    std = np.asarray(config["std"], dtype=np.float32)
    for image in _images():
        expected = transform(image).numpy()
        pixels = apply_rule(image, rule)
        assert pixels.dtype == np.uint8 and pixels.shape == (*config["input_size"][1:], 3)
        got = ((pixels.astype(np.float32) / 255 - mean) / std).transpose(2, 0, 1)
        assert np.abs(got - expected).max() < 1e-6, image.size


def test_stretch_rule_is_the_students_resize(tmp_path):
    from transferkit.data.images import load_small_images

    for number, image in enumerate(_images()):
        path = tmp_path / f"{number}.png"
        image.save(path)
        expected, ok, _ = load_small_images([path], 32)
        assert ok.all()
        assert np.array_equal(apply_rule(image, stretch_rule(32)), expected[0])


def test_unexportable_transforms_and_garbage_rules_are_refused():
    with pytest.raises(TransferkitError, match="crop_mode"):
        rule_from_data_config({"input_size": (3, 224, 224), "crop_mode": "border"})
    with pytest.raises(TransferkitError, match="interpolation"):
        rule_from_data_config({"input_size": (3, 224, 224), "interpolation": "random"})
    good = stretch_rule(16)
    assert check_rule(good) is None
    for bad in (None, [], {**good, "extra": 1}, {**good, "resize": "zoom"},
                {**good, "crop": [16]}, {**good, "crop": [16, True]},
                {**good, "resize_to": [0, 16]}, {**good, "interpolation": "magic"}):
        assert check_rule(bad) is not None
