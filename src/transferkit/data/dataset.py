"""Find labelled images on disk and split them.

Two layouts are read:

* the torchvision ImageFolder layout, ``root/<class>/<image>``, optionally with
  ``train/``, ``val/`` (or ``valid/``, ``validation/``) and ``test/`` sub-folders;
* a CSV file with a header naming the columns ``path`` and ``label`` (paths relative to
  the CSV's folder, or absolute).

Only file names are collected here; decoding happens later, in the extraction workers,
where unreadable files are skipped and reported (see :mod:`transferkit.data.images`).
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from transferkit.data.images import IMAGE_SUFFIXES
from transferkit.errors import DataError

VAL_FOLDER_NAMES = ("val", "valid", "validation")
TEST_FOLDER_NAMES = ("test",)


@dataclass
class LabelledImages:
    """Image files with integer labels indexing ``classes``."""

    paths: list[Path]
    labels: np.ndarray
    classes: list[str]

    def __len__(self) -> int:
        return len(self.paths)

    def counts(self) -> dict[str, int]:
        return {name: int((self.labels == i).sum()) for i, name in enumerate(self.classes)}

    def subset(self, index) -> "LabelledImages":
        index = np.asarray(index, dtype=int)
        return LabelledImages([self.paths[i] for i in index], self.labels[index], self.classes)


@dataclass
class DatasetSplits:
    """Train / validation / test images of one labelled data set."""

    train: LabelledImages
    val: LabelledImages | None
    test: LabelledImages | None
    classes: list[str]
    validation_source: str = "given"  # "given" or a description of the split made here
    notes: list[str] = field(default_factory=list)


def is_visible(path: Path) -> bool:
    return not path.name.startswith(".") and path.name not in ("Thumbs.db", "desktop.ini")


def list_image_files(folder: Path, recursive: bool = True) -> list[Path]:
    """Every visible entry under ``folder`` that is not a folder (sorted), whatever its
    suffix or kind.

    Non-image suffixes, FIFOs, devices and broken or looping symbolic links are kept on
    purpose: the decoder reports each as skipped with its reason, so a user sees that
    ``notes.txt`` sat among the images instead of it vanishing silently. ``**`` does not
    follow links to folders, so a link back to a parent folder does not loop.
    """
    pattern = "**/*" if recursive else "*"
    files = [p for p in folder.glob(pattern) if not p.is_dir() and is_visible(p)
             and not any(part.startswith(".") for part in p.relative_to(folder).parts)]
    return sorted(files)


def read_image_folder(root: str | os.PathLike, classes: list[str] | None = None) -> LabelledImages:
    """Read ``root/<class>/<files>``; ``classes`` fixes the label order (e.g. from train)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: not a folder. Give a folder with one sub-folder per class.")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and is_visible(p))
    if not class_dirs:
        raise DataError(
            f"{root}: no class sub-folders found. Expected the layout {root}/<class>/<image>, "
            "e.g. data/ants/1.jpg and data/bees/2.jpg."
        )
    found = [d.name for d in class_dirs]
    if classes is None:
        classes = found
    else:
        unknown = sorted(set(found) - set(classes))
        if unknown:
            raise DataError(
                f"{root}: classes {unknown} do not exist in the training data {classes}."
            )
    paths: list[Path] = []
    labels: list[int] = []
    empty = []
    for class_dir in class_dirs:
        files = list_image_files(class_dir)
        if not files:
            empty.append(class_dir.name)
        paths.extend(files)
        labels.extend([classes.index(class_dir.name)] * len(files))
    if empty:
        raise DataError(
            f"{root}: class folder(s) {empty} contain no files. Remove them or add images."
        )
    return LabelledImages(paths, np.asarray(labels, dtype=int), list(classes))


def _read_csv_table(csv_path: Path) -> tuple[list[str] | None, list[tuple[int, list[str]]]]:
    """The header (None if the file is empty) and the non-blank rows of a UTF-8 CSV, each
    with its line number."""
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            header = next(reader, None)
            rows = [(reader.line_num, fields) for fields in reader
                    if any(field.strip() for field in fields)]
    except UnicodeDecodeError as exc:
        raise DataError(f"{csv_path}: not a UTF-8 text CSV file ({exc}).") from exc
    except csv.Error as exc:
        raise DataError(f"{csv_path}: not a readable CSV file ({exc}).") from exc
    return header, rows


def _refuse_ragged_rows(csv_path: Path, header: list[str],
                        rows: list[tuple[int, list[str]]]) -> None:
    # A row with an extra field (an unquoted comma in a label) would be cut short or
    # shifted into the wrong column without a word, so it is refused instead.
    for line, fields in rows:
        if len(fields) != len(header):
            raise DataError(
                f"{csv_path}: line {line} has {len(fields)} field{'s' * (len(fields) != 1)} "
                f"but the header has {len(header)} ({', '.join(header)}); quote a value that "
                "holds a comma, e.g. \"Smith, John\"."
            )


def read_csv(csv_path: str | os.PathLike, classes: list[str] | None = None) -> LabelledImages:
    """Read a CSV with columns ``path`` and ``label`` (header required)."""
    csv_path = Path(csv_path)
    header, table = _read_csv_table(csv_path)
    if header is None or not {"path", "label"} <= set(header):
        raise DataError(
            f"{csv_path}: the CSV needs a header with the columns 'path' and 'label' "
            f"(found {header})."
        )
    _refuse_ragged_rows(csv_path, header, table)
    records = [dict(zip(header, fields)) for _, fields in table]
    rows = [(record["path"].strip(), record["label"].strip()) for record in records
            if record["path"].strip()]
    if not rows:
        raise DataError(f"{csv_path}: the CSV lists no images.")
    missing_label = [p for p, label in rows if not label]
    if missing_label:
        raise DataError(f"{csv_path}: {len(missing_label)} rows have no label, e.g. {missing_label[0]}.")
    if classes is None:
        classes = sorted({label for _, label in rows})
    unknown = sorted({label for _, label in rows} - set(classes))
    if unknown:
        raise DataError(f"{csv_path}: labels {unknown} do not exist in the training data.")
    base = csv_path.parent
    paths = [Path(p) if Path(p).is_absolute() else base / p for p, _ in rows]
    # lexists: a broken link is there, and the decoder reports it as one.
    if not any(os.path.lexists(path) for path in paths):
        examples = ", ".join(p for p, _ in rows[:3])
        raise DataError(
            f"{csv_path}: none of the {len(paths)} files it lists exist (e.g. {examples}); "
            f"relative paths are resolved against the CSV's folder {base.resolve()}."
        )
    labels = np.asarray([classes.index(label) for _, label in rows], dtype=int)
    return LabelledImages(paths, labels, list(classes))


def stratified_split(images: LabelledImages, val_fraction: float = 0.2,
                     random_state: int = 0) -> tuple[LabelledImages, LabelledImages]:
    """Split each class into train and validation parts, seeded.

    Every class with at least two images keeps at least one of them for validation and
    one for training; a class with a single image stays in training.
    """
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"val_fraction must lie strictly between 0 and 1, got {val_fraction}.")
    rng = np.random.default_rng(random_state)
    train_index: list[int] = []
    val_index: list[int] = []
    for label in range(len(images.classes)):
        members = np.flatnonzero(images.labels == label)
        members = members[rng.permutation(len(members))]
        n_val = int(round(len(members) * val_fraction)) if len(members) >= 2 else 0
        n_val = min(max(n_val, 1 if len(members) >= 2 else 0), len(members) - 1)
        val_index.extend(members[:n_val].tolist())
        train_index.extend(members[n_val:].tolist())
    return images.subset(sorted(train_index)), images.subset(sorted(val_index))


def _check_classes(images: LabelledImages, where: str) -> None:
    present = sorted({images.classes[i] for i in np.unique(images.labels)})
    if len(images) == 0:
        raise DataError(f"{where}: no images found.")
    if len(present) < 2:
        raise DataError(
            f"{where}: only one class ({present[0]!r}) has images; a classifier needs at "
            "least two classes. Add a folder per class."
        )


def _find_child(root: Path, names) -> Path | None:
    for name in names:
        if (root / name).is_dir():
            return root / name
    return None


def load_dataset(source: str | os.PathLike, val_fraction: float = 0.2,
                 random_state: int = 0) -> DatasetSplits:
    """Read a folder or CSV and return train / validation (/ test) images.

    When no validation set is given, a seeded stratified split of the training images
    (``val_fraction`` of each class) is made and recorded in ``validation_source``.
    """
    source = Path(source)
    if not source.exists():
        raise DataError(f"{source}: no such file or folder.")
    test = None
    if source.is_file():
        if source.suffix.lower() != ".csv":
            raise DataError(f"{source}: give a folder of class sub-folders or a .csv file.")
        train = read_csv(source)
        val = None
    else:
        train_dir = _find_child(source, ("train",))
        if train_dir is not None:
            train = read_image_folder(train_dir)
            val_dir = _find_child(source, VAL_FOLDER_NAMES)
            test_dir = _find_child(source, TEST_FOLDER_NAMES)
            val = read_image_folder(val_dir, train.classes) if val_dir else None
            test = read_image_folder(test_dir, train.classes) if test_dir else None
        else:
            train = read_image_folder(source)
            val = None
    _check_classes(train, str(source))
    validation_source = "given"
    if val is None:
        train, val = stratified_split(train, val_fraction, random_state)
        validation_source = (
            f"stratified split of the training images: {val_fraction:.0%} of each class, "
            f"seed {random_state}"
        )
    return DatasetSplits(train, val, test, train.classes, validation_source)


def as_paths(X, allow_single: bool = True) -> list[Path]:
    """Image paths from what an estimator's ``X`` may be: a sequence (list, array, pandas
    column) of paths, or (``allow_single``) a single path."""
    if isinstance(X, (str, os.PathLike)):
        if not allow_single:
            raise DataError("X must be a sequence of image paths, not a single path; wrap it "
                            "in a list.")
        X = [X]
    array = np.asarray(X, dtype=object).reshape(-1)
    if array.size == 0:
        raise DataError("no images given.")
    return [Path(str(p)) for p in array]


def collect_images(inputs) -> list[Path]:
    """Expand files and folders (searched recursively) into a list of files to predict."""
    paths: list[Path] = []
    for item in inputs:
        item = Path(item)
        if item.is_dir():
            paths.extend(list_image_files(item))
        elif os.path.lexists(item):  # a FIFO or a broken link is reported by the decoder
            paths.append(item)
        else:
            raise DataError(f"{item}: no such file or folder.")
    if not paths:
        raise DataError("no image files found in " + ", ".join(map(str, inputs)))
    return paths


def looks_like_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


@dataclass
class MultiTaskImages:
    """Image files with one label column per task (``None``: no label of that task)."""

    paths: list[Path]
    labels: dict[str, list[str | None]]

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def tasks(self) -> list[str]:
        return list(self.labels)


def read_multitask_csv(csv_path: str | os.PathLike, tasks: list[str] | None = None) -> MultiTaskImages:
    """Read a CSV with a ``path`` column and one label column per task (header required).

    ``tasks`` picks and orders the task columns (default: every column but ``path``).
    An empty cell (or ``-1``) means the row has no label for that task. Every task
    needs at least one labelled row and two classes.
    """
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise DataError(f"{csv_path}: no such CSV file.")
    header, table = _read_csv_table(csv_path)
    columns = [c.strip() for c in (header or [])]
    if "path" not in columns:
        raise DataError(f"{csv_path}: the CSV needs a header with a 'path' column and one label "
                        f"column per task, e.g. path,digit,high (found {columns}).")
    _refuse_ragged_rows(csv_path, columns, table)
    raw = [dict(zip(columns, fields)) for _, fields in table]
    available = [c for c in columns if c != "path"]
    if tasks is None:
        tasks = available
    tasks = [t.strip() for t in tasks if t.strip()]
    if not tasks:
        raise DataError(f"{csv_path}: no task columns: add one label column per task beside "
                        "'path'.")
    missing = [t for t in tasks if t not in available]
    if missing:
        raise DataError(f"{csv_path}: task column(s) {missing} are not in the CSV; its columns "
                        f"are {columns}.")
    if len(set(tasks)) != len(tasks):
        raise DataError(f"{csv_path}: a task is named twice in {tasks}.")
    raw = [row for row in raw if row.get("path", "").strip()]
    if not raw:
        raise DataError(f"{csv_path}: the CSV lists no images.")
    labels: dict[str, list[str | None]] = {}
    for task in tasks:
        column = [row.get(task, "").strip() for row in raw]
        column = [None if value in ("", "-1") else value for value in column]
        present = sorted({value for value in column if value is not None})
        if not present:
            raise DataError(f"{csv_path}: task column {task!r} is empty: no row has a label for it.")
        if len(present) < 2:
            raise DataError(f"{csv_path}: task {task!r} has only one class ({present[0]!r}); a "
                            "task needs at least two classes.")
        labels[task] = column
    base = csv_path.parent
    paths = [Path(p) if Path(p).is_absolute() else base / p
             for p in (row["path"].strip() for row in raw)]
    return MultiTaskImages(paths, labels)
