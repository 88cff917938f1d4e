"""Digit domains: shared-data readers, the MNIST → MNIST-M protocol, printed digits."""

from __future__ import annotations

import numpy as np
import pytest

from transferkit.data import read_image_folder
from transferkit.data.digits import (
    DigitDomain,
    digit_fonts,
    mnist_to_mnist_m,
    read_mnist_m,
    read_mnist_t10k,
    read_usps,
    render_printed_digits,
    resize_domain,
    split_labelled,
    write_image_folder,
)
from transferkit.errors import DataError


def test_printed_digits_have_the_requested_count_size_and_labels():
    domain = render_printed_digits(30, random_state=0, size=24)
    assert domain.images.shape == (30, 24, 24, 3) and domain.images.dtype == np.uint8
    assert sorted(domain.counts().values()) == [3] * 10
    assert set(domain.labels.tolist()) == set(range(10))
    assert domain.images.std() > 20  # not blank: digits over coloured backgrounds
    again = render_printed_digits(30, random_state=0, size=24)
    np.testing.assert_array_equal(domain.images, again.images)
    other = render_printed_digits(30, random_state=1, size=24)
    assert not np.array_equal(domain.images, other.images)
    assert len(digit_fonts()) >= 1


def test_write_image_folder_round_trips(tmp_path):
    domain = render_printed_digits(20, random_state=3, size=16)
    images = write_image_folder(domain, tmp_path / "printed", size=32)
    assert len(images) == 20 and images.classes == [str(d) for d in range(10)]
    for path, label in zip(images.paths, images.labels):
        assert path.parent.name == str(label) and path.is_file()
    read = read_image_folder(tmp_path / "printed")
    assert sorted(map(str, read.paths)) == sorted(map(str, images.paths))
    from PIL import Image

    with Image.open(images.paths[0]) as first:
        assert first.size == (32, 32) and first.mode == "RGB"


def test_split_labelled_is_stratified_and_disjoint():
    domain = DigitDomain("toy", np.zeros((100, 4, 4), np.uint8), np.arange(100) % 10,
                         np.arange(100))
    adapt, test = split_labelled(domain, 0.3, random_state=0)
    assert len(adapt) + len(test) == 100
    assert not set(adapt.index) & set(test.index)
    assert all(count == 3 for count in test.counts().values())
    with pytest.raises(DataError):
        split_labelled(domain, 1.0)


def test_missing_dataset_folder_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="mnist_t10k"):
        read_mnist_t10k(tmp_path)


@pytest.fixture(scope="module")
def mnist_m(shared_datasets):
    return read_mnist_m(shared_datasets)  # 9,001 PNG files: read once for the module


def test_mnist_and_mnist_m_readers(shared_datasets, mnist_m):
    mnist = read_mnist_t10k(shared_datasets)
    assert mnist.images.shape == (10000, 28, 28) and mnist.images.dtype == np.uint8
    assert mnist.labels[:5].tolist() == [7, 2, 1, 0, 4]
    assert mnist_m.images.shape == (9001, 32, 32, 3) and mnist_m.images.dtype == np.uint8
    assert mnist_m.index.tolist() == list(range(9001))
    # MNIST-M image i is MNIST test digit i: the labels agree everywhere
    np.testing.assert_array_equal(mnist_m.labels, mnist.labels[mnist_m.index])


def test_usps_reader(shared_datasets):
    pytest.importorskip("h5py")
    train, test = read_usps(shared_datasets, "train"), read_usps(shared_datasets, "test")
    assert train.images.shape == (7291, 16, 16) and test.images.shape == (2007, 16, 16)
    assert train.images.dtype == np.uint8 and train.images.max() == 255
    assert set(np.unique(train.labels)) == set(range(10))
    assert resize_domain(test.subset(range(5)), 28, rgb=True).images.shape == (5, 28, 28, 3)


def test_mnist_to_mnist_m_protocol_keeps_the_digits_disjoint(shared_datasets):
    split = mnist_to_mnist_m(shared_datasets, test_fraction=0.5, random_state=0)
    assert len(split.source) == 5000 and split.source.index.max() == 4999
    target = np.r_[split.target_adapt.index, split.target_test.index]
    assert len(target) == 4001 and target.min() >= 5000
    assert not set(split.source.index) & set(target)
    assert not set(split.target_adapt.index) & set(split.target_test.index)
    assert abs(len(split.target_adapt) - len(split.target_test)) < 20
