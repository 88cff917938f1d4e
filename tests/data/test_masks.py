"""Segmentation pairs and masks: pairing by name, declared classes, sizes, odd modes."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from transferkit.data.masks import check_same_size, load_mask, pair_images_and_masks
from transferkit.errors import DataError


def _image(path, size=(12, 10)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size[1], size[0], 3), 90, np.uint8)).save(path)
    return path


def _mask(path, values, mode="L"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(values, dtype=np.uint8)).convert(mode).save(path)
    return path


def test_pairs_match_by_stem_and_list_the_unpaired(tmp_path):
    for name in ("a.jpg", "b.png", "only_image.png"):
        _image(tmp_path / "images" / name)
    for name in ("a.png", "b.bmp", "only_mask.png"):
        _mask(tmp_path / "masks" / name, np.zeros((10, 12)))
    pairs = pair_images_and_masks(tmp_path / "images", tmp_path / "masks")
    assert [p.name for p in pairs.images] == ["a.jpg", "b.png"]
    assert [p.name for p in pairs.masks] == ["a.png", "b.bmp"]
    reasons = " | ".join(reason for _, reason in pairs.unpaired)
    assert "only_image.png: no mask" in reasons and "only_mask.png: no image" in reasons
    assert len(pairs.unpaired) == 2


def test_no_pair_at_all_is_one_clear_error(tmp_path):
    _image(tmp_path / "images" / "x.png")
    _mask(tmp_path / "masks" / "y.png", np.zeros((10, 12)))
    with pytest.raises(DataError, match="no image .* has a mask of the same name"):
        pair_images_and_masks(tmp_path / "images", tmp_path / "masks")
    with pytest.raises(DataError, match="not a folder of masks"):
        pair_images_and_masks(tmp_path / "images", tmp_path / "missing")


@pytest.mark.parametrize("values", [[[0, 255], [255, 0]], [[0, 1], [1, 0]]])
def test_binary_masks_read_as_zero_and_one(tmp_path, values):
    mask = load_mask(_mask(tmp_path / "m.png", values))
    assert mask.dtype == np.uint8 and mask.tolist() == [[0, 1], [1, 0]]


def test_all_background_mask_is_allowed(tmp_path):
    assert load_mask(_mask(tmp_path / "m.png", np.zeros((4, 5)))).sum() == 0


def test_values_outside_the_declared_classes_are_one_line_errors(tmp_path):
    grey = _mask(tmp_path / "grey.png", [[0, 128], [255, 0]])
    with pytest.raises(DataError, match=r"mask values 128 are not 0 and 255") as caught:
        load_mask(grey)
    assert "\n" not in str(caught.value) and "--classes" in str(caught.value)
    indices = _mask(tmp_path / "idx.png", [[0, 1], [2, 3]])
    assert load_mask(indices, n_classes=4).tolist() == [[0, 1], [2, 3]]
    with pytest.raises(DataError, match=r"mask values 3 are not class indices 0\.\.2"):
        load_mask(indices, n_classes=3)


def test_jpeg_and_colour_masks_are_refused_with_the_reason(tmp_path):
    ramp = np.tile(np.linspace(0, 255, 16).astype(np.uint8), (16, 1))
    jpeg = tmp_path / "m.jpg"
    Image.fromarray(ramp).save(jpeg, quality=70)
    with pytest.raises(DataError, match="save masks as PNG"):
        load_mask(jpeg)
    colour = tmp_path / "c.png"
    Image.fromarray(np.dstack([ramp, ramp * 0, ramp * 0])).save(colour)
    with pytest.raises(DataError, match="a colour mask"):
        load_mask(colour)
    grey_rgb = tmp_path / "g.png"
    Image.fromarray(np.dstack([ramp > 100] * 3).astype(np.uint8) * 255).save(grey_rgb)
    assert load_mask(grey_rgb).max() == 1  # a grey mask saved as RGB is fine


def test_palette_and_bilevel_masks(tmp_path):
    palette = Image.fromarray(np.array([[0, 2], [1, 0]], np.uint8)).convert("P")
    palette.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * 759)
    palette.save(tmp_path / "p.png")
    assert load_mask(tmp_path / "p.png", n_classes=3).tolist() == [[0, 2], [1, 0]]
    Image.fromarray(np.array([[0, 255], [255, 255]], np.uint8)).convert("1").save(tmp_path / "b.png")
    assert load_mask(tmp_path / "b.png").tolist() == [[0, 1], [1, 1]]


def test_unreadable_mask_and_size_mismatch(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="cannot be read as a mask"):
        load_mask(tmp_path / "bad.png")
    mask = np.zeros((10, 12), np.uint8)
    check_same_size((12, 10), mask, "i.png", "m.png")
    with pytest.raises(DataError, match=r"m\.png: the mask is 12×10 pixels but its image i\.png "
                                        r"is 10×12"):
        check_same_size((10, 12), mask, "i.png", "m.png")
