"""`transferkit adapt --demo`: digits over photo patches (the MNIST-M recipe), the demos.

The claim that adaptation beats source only on the default demo is measured, with its
run time, by ``benchmarks/bench_adapt_demo.py`` (section ``adapt-demo`` of
benchmarks/RESULTS.md): three full trainings are too slow for a test.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from transferkit.cli import main
from transferkit.data.digits import (
    BUNDLED_PHOTOS,
    DigitDomain,
    blend_over_photos,
    bundled_photos,
    handwritten_to_photo_blended,
)
from transferkit.errors import DataError
from transferkit.jobs.adapt import DEFAULT_DEMO, DEMOS, run_demo

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_blending_is_the_absolute_difference_of_patch_and_digit():
    digit = np.array([[0, 255, 0], [0, 255, 0], [0, 128, 0]], np.uint8)
    photo = np.array([[[10, 200, 30], [40, 50, 60], [70, 80, 90]],
                      [[255, 0, 100], [1, 2, 3], [200, 100, 0]],
                      [[9, 8, 7], [250, 250, 250], [0, 0, 0]]], np.uint8)
    domain = DigitDomain("toy", digit[None], np.array([7]), np.array([42]))
    blended = blend_over_photos(domain, photos=[photo])  # the patch can only be the photo
    # By hand: background pixels keep the photo, stroke pixels become |photo − 255|,
    # the half-tone one |photo − 128|.
    expected = photo.astype(int).copy()
    expected[0, 1] = [215, 205, 195]
    expected[1, 1] = [254, 253, 252]
    expected[2, 1] = [122, 122, 122]
    np.testing.assert_array_equal(blended.images[0], expected)
    assert blended.images.dtype == np.uint8 and blended.images.shape == (1, 3, 3, 3)
    assert blended.labels.tolist() == [7] and blended.index.tolist() == [42]


def test_each_blended_digit_sits_on_a_patch_of_the_photo_and_the_seed_fixes_it():
    rng = np.random.default_rng(0)
    digits = DigitDomain("toy", rng.integers(0, 256, (12, 4, 4), dtype=np.uint8),
                         np.arange(12) % 10, np.arange(12))
    photo = rng.integers(0, 256, (9, 11, 3), dtype=np.uint8)
    blended = blend_over_photos(digits, random_state=3, photos=[photo])
    places = set()
    for image, digit in zip(blended.images, digits.images):
        grey = np.repeat(digit[..., None].astype(int), 3, axis=2)
        matches = [(top, left) for top in range(9 - 4 + 1) for left in range(11 - 4 + 1)
                   if np.array_equal(np.abs(photo[top:top + 4, left:left + 4].astype(int) - grey),
                                     image)]
        assert matches  # |patch − digit| for a patch inside the photo
        places.add(matches[0])
    assert len(places) > 3  # patches from different places
    again = blend_over_photos(digits, random_state=3, photos=[photo])
    np.testing.assert_array_equal(again.images, blended.images)
    other = blend_over_photos(digits, random_state=4, photos=[photo])
    assert not np.array_equal(other.images, blended.images)


def test_blending_refuses_photos_smaller_than_the_digits_and_odd_images():
    digits = DigitDomain("toy", np.zeros((2, 8, 8), np.uint8), np.array([0, 1]), np.array([0, 1]))
    with pytest.raises(DataError, match="cannot give 8×8"):
        blend_over_photos(digits, photos=[np.zeros((6, 20, 3), np.uint8)])
    with pytest.raises(DataError, match="no photos"):
        blend_over_photos(digits, photos=[])
    odd = DigitDomain("odd", np.zeros((2, 8, 8, 4), np.uint8), np.array([0, 1]), np.array([0, 1]))
    with pytest.raises(DataError, match=r"\(N, H, W\)"):
        blend_over_photos(odd, photos=[np.zeros((20, 20, 3), np.uint8)])


def test_the_photos_come_with_scikit_image():
    photos = bundled_photos()
    assert len(photos) == len(BUNDLED_PHOTOS) >= 4
    for photo in photos:
        assert photo.dtype == np.uint8 and photo.ndim == 3 and photo.shape[2] == 3
        assert min(photo.shape[:2]) >= 256
        assert photo.std() > 30  # real pictures, not blank
        assert np.abs(photo[..., 0].astype(int) - photo[..., 2]).mean() > 5  # in colour


def test_the_default_demo_pair_keeps_each_handwritten_digit_in_one_domain():
    split = handwritten_to_photo_blended(size=32, random_state=0)
    source, pool, test = split.source, split.target_adapt, split.target_test
    assert (len(source), len(pool), len(test)) == (899, 448, 450)
    indices = [set(domain.index.tolist()) for domain in (source, pool, test)]
    assert not (indices[0] & indices[1] or indices[0] & indices[2] or indices[1] & indices[2])
    assert set.union(*indices) == set(range(1797))
    assert source.images.shape[1:] == (32, 32)  # plain grey digits
    assert pool.images.shape[1:] == test.images.shape[1:] == (32, 32, 3)
    for domain in (source, pool, test):  # stratified: every class in its share
        counts = np.array(list(domain.counts().values()))
        assert counts.min() >= 0.85 * len(domain) / 10 and counts.max() <= 1.15 * len(domain) / 10
    # The target is in colour and its backgrounds are photos, not black.
    assert np.abs(pool.images[..., 0].astype(int) - pool.images[..., 2]).mean() > 5
    assert np.median(pool.images[:, 0, 0]) > 20 and np.median(source.images[:, 0, 0]) < 5
    again = handwritten_to_photo_blended(size=32, random_state=0)
    np.testing.assert_array_equal(again.target_test.images, test.images)
    assert not np.array_equal(handwritten_to_photo_blended(32, random_state=1).target_test.index,
                              test.index)


def test_adapt_demo_alone_runs_the_photo_demo(tmp_path, capsys):
    assert main(["adapt", "--demo", "--epochs", "1", "--out", str(tmp_path / "demo"),
                 "--json", "--quiet"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["demo_name"] == DEFAULT_DEMO == "handwritten-to-photos"
    assert summary["demo"] == DEMOS[DEFAULT_DEMO] and "MNIST-M" in summary["demo"]
    assert (summary["n_source"], summary["n_target"], summary["n_target_test"]) == (899, 448, 450)
    assert summary["method"] == "dann" and summary["family"] == "deep"
    for key in ("source_only_accuracy", "adapted_accuracy", "oracle_accuracy"):
        assert 0.0 <= summary[key] <= 1.0
    run = tmp_path / "demo" / "run"
    assert json.loads((run / "summary.json").read_text())["demo_name"] == DEFAULT_DEMO
    assert "photos" in (run / "report.html").read_text(encoding="utf-8")
    written = {p.name for p in (tmp_path / "demo" / "data").iterdir()}
    assert written == {"handwritten", "photo_digits_pool", "photo_digits_test"}


def test_an_unknown_demo_is_a_one_line_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["adapt", "--demo", "mnist-to-svhn"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'mnist-to-svhn'" in err and "Traceback" not in err
    with pytest.raises(DataError, match="unknown demo 'mnist-to-svhn'"):
        run_demo(tmp_path / "demo", name="mnist-to-svhn")
    assert not (tmp_path / "demo").exists()
