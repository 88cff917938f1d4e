"""Finding labelled images: folder layouts, CSV, seeded stratified split, clear errors."""

import numpy as np
import pytest

from builders import write_class_folder
from transferkit.data import load_dataset, stratified_split
from transferkit.errors import DataError


def test_class_folders_get_a_seeded_stratified_split(tmp_path):
    write_class_folder(tmp_path, per_class=10, classes=("red", "blue", "green"))
    splits = load_dataset(tmp_path, val_fraction=0.2, random_state=3)
    assert splits.classes == ["blue", "green", "red"]
    assert splits.train.counts() == {"blue": 8, "green": 8, "red": 8}
    assert splits.val.counts() == {"blue": 2, "green": 2, "red": 2}
    assert not set(splits.train.paths) & set(splits.val.paths)
    again = load_dataset(tmp_path, val_fraction=0.2, random_state=3)
    assert again.val.paths == splits.val.paths
    other = load_dataset(tmp_path, val_fraction=0.2, random_state=4)
    assert other.val.paths != splits.val.paths
    assert "seed 3" in splits.validation_source


def test_train_val_test_subfolders_are_used_as_given(tmp_path):
    for part in ("train", "val", "test"):
        write_class_folder(tmp_path / part, per_class=3)
    splits = load_dataset(tmp_path)
    assert splits.validation_source == "given"
    assert len(splits.train) == len(splits.val) == len(splits.test) == 6


def test_csv_with_relative_paths(tmp_path):
    write_class_folder(tmp_path / "img", per_class=4)
    rows = ["path,label"] + [f"img/{c}/{i}.png,{c}" for c in ("red", "blue") for i in range(4)]
    (tmp_path / "labels.csv").write_text("\n".join(rows))
    splits = load_dataset(tmp_path / "labels.csv", val_fraction=0.25)
    assert len(splits.train) == 6 and len(splits.val) == 2
    assert all(p.exists() for p in splits.train.paths)


def test_bad_csv_header_is_explained(tmp_path):
    (tmp_path / "bad.csv").write_text("file,class\na.png,x\n")
    with pytest.raises(DataError, match="'path' and 'label'"):
        load_dataset(tmp_path / "bad.csv")


@pytest.mark.parametrize("layout, message", [
    ({"red": 3}, "only one class"),
    ({"red": 3, "blue": 0}, "contain no files"),
    ({}, "no class sub-folders"),
])
def test_unusable_folders_raise_clear_errors(tmp_path, layout, message):
    tmp_path.joinpath("data").mkdir()
    for name, count in layout.items():
        (tmp_path / "data" / name).mkdir()
        if count:
            write_class_folder(tmp_path / "data", per_class=count, classes=(name,))
    with pytest.raises(DataError, match=message):
        load_dataset(tmp_path / "data")


def test_validation_class_unknown_to_training_is_an_error(tmp_path):
    write_class_folder(tmp_path / "train", per_class=2)
    write_class_folder(tmp_path / "val", per_class=2, classes=("red", "green"))
    with pytest.raises(DataError, match="green"):
        load_dataset(tmp_path)


def test_split_keeps_single_image_classes_in_training(tmp_path):
    write_class_folder(tmp_path, per_class=5, classes=("red", "blue"))
    write_class_folder(tmp_path, per_class=1, classes=("green",))
    splits = load_dataset(tmp_path, val_fraction=0.4)
    assert splits.train.counts()["green"] == 1 and splits.val.counts()["green"] == 0
    assert splits.val.counts()["red"] == 2


def test_stratified_split_rejects_bad_fraction(tmp_path):
    write_class_folder(tmp_path, per_class=2)
    images = load_dataset(tmp_path, val_fraction=0.5).train
    with pytest.raises(DataError):
        stratified_split(images, val_fraction=1.0)
    assert np.all(images.labels >= 0)
