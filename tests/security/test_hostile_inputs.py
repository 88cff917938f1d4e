"""Hostile input files: each gets a one-line reason, never a hang, a crash or a silent loss.

The corpus (FIFOs, device links, broken and looping symbolic links, ragged CSVs, a
decompression bomb, non-UTF-8 names, damaged cache entries) is made here, in tmp_path.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import struct
import subprocess
import sys
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from builders import write_class_folder
from transferkit import run
from transferkit.cli import main
from transferkit.jobs.fit import render as render_fit
from transferkit.data.dataset import (
    collect_images,
    list_image_files,
    load_dataset,
    read_csv,
    read_multitask_csv,
)
from transferkit.data.images import load_image
from transferkit.errors import DataError, ImageDecodeError
from transferkit.features.cache import FeatureCache

pytestmark = [
    pytest.mark.usefixtures("one_torch_thread"),
    pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="FIFOs and symbolic links need POSIX"),
]


class Hang(BaseException):
    """Not an Exception: the code under test must not be able to catch it and go on."""


@contextlib.contextmanager
def deadline(seconds: int = 60):
    """Turn a hang (reading a FIFO or /dev/zero forever) into a test failure."""
    def expire(signum, frame):
        raise Hang(f"still running after {seconds} s: a hostile file hung the reader")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture
def tiny(tiny_checkpoint) -> dict:
    path, arch = tiny_checkpoint
    return {"weights": str(path), "arch": arch}


def add_special_files(folder: Path) -> dict[str, str]:
    """A FIFO, a link to /dev/zero, a broken link and a link loop; name → expected reason."""
    os.mkfifo(folder / "pipe.png")
    (folder / "zero.png").symlink_to("/dev/zero")
    (folder / "dangling.png").symlink_to(folder / "no-such-target.png")
    (folder / "loop.png").symlink_to(folder / "loop.png")
    return {"pipe.png": "not a regular file (FIFO)",
            "zero.png": "not a regular file (character device)",
            "dangling.png": "broken symbolic link", "loop.png": "symbolic link loop"}


def reasons_by_name(result: dict) -> dict[str, str]:
    return {Path(item["path"]).name: item["reason"] for item in result["skipped"]}


# -- items 3 and 10: FIFOs, devices and odd links are skipped with a reason ----------------

def test_special_files_in_class_folders_are_skipped_by_fit_and_predict(tmp_path, tiny):
    data = write_class_folder(tmp_path / "data", per_class=4)
    expected = add_special_files(data / "red")
    with deadline():
        summary = run.fit(data, tmp_path / "model", report=False, **tiny)
    reasons = reasons_by_name(summary)
    for name, reason in expected.items():
        assert reason in reasons[name], (name, reasons.get(name))
    assert summary["classes"] == ["blue", "red"]

    with deadline():
        predicted = run.predict(tmp_path / "model", [data / "red", data / "red" / "pipe.png"])
    reasons = reasons_by_name(predicted)
    for name, reason in expected.items():
        assert reason in reasons[name], (name, reasons.get(name))
    assert len(predicted["predictions"]) == 4


def test_csv_rows_naming_dev_zero_and_a_fifo_are_skipped_without_the_cache(tmp_path, tiny):
    data = write_class_folder(tmp_path / "data", per_class=4)
    os.mkfifo(data / "pipe.png")
    rows = [f"{p.relative_to(data)},{p.parent.name}" for p in sorted(data.glob("*/*.png"))]
    rows += ["/dev/zero,red", "pipe.png,blue"]
    (data / "labels.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
    with deadline():
        summary = run.fit(data / "labels.csv", tmp_path / "model", report=False,
                          use_cache=False, **tiny)
    reasons = reasons_by_name(summary)
    assert "not a regular file (character device)" in reasons["zero"]
    assert "not a regular file (FIFO)" in reasons["pipe.png"]


def test_listing_keeps_special_entries_and_does_not_follow_a_directory_loop(tmp_path):
    folder = tmp_path / "images"
    (folder / "inner").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(folder / "inner" / "a.png")
    add_special_files(folder)
    (folder / "inner" / "up").symlink_to(folder)  # a loop through a directory link
    with deadline(20):
        names = [p.name for p in list_image_files(folder)]
    assert sorted(names) == ["a.png", "dangling.png", "loop.png", "pipe.png", "zero.png"]
    # A special file named on the command line is reported, not "no such file".
    assert collect_images([folder / "pipe.png"]) == [folder / "pipe.png"]
    with pytest.raises(DataError, match="no such file"):
        collect_images([folder / "absent.png"])


def test_load_image_names_the_kind_of_special_file(tmp_path):
    expected = add_special_files(tmp_path)
    for name, reason in expected.items():
        with deadline(20), pytest.raises(ImageDecodeError) as info:
            load_image(tmp_path / name)
        assert reason in str(info.value) and name in str(info.value)


# -- item 4: a class that loses every image is named, never silently dropped ------------

def make_unreadable(folder: Path) -> None:
    for i, path in enumerate(sorted(folder.iterdir())):
        path.unlink()
        if i == 0:
            os.mkfifo(path)
        else:
            path.write_bytes(b"\x89PNG\r\n\x1a\n damaged")


def test_a_class_with_only_unreadable_files_is_reported_as_dropped(tmp_path, tiny, capsys):
    data = write_class_folder(tmp_path / "data", per_class=4, classes=("red", "blue", "green"))
    make_unreadable(data / "green")
    with deadline():
        summary = run.fit(data, tmp_path / "model", report=True, **tiny)
    assert summary["classes"] == ["blue", "red"]
    assert summary["dropped_classes"] == ["green"]

    print(render_fit(summary))
    printed = capsys.readouterr().out
    warning = [line for line in printed.splitlines() if "green" in line and "warning" in line]
    assert warning, printed

    html = (tmp_path / "model" / "report.html").read_text()
    assert 'class="warn"' in html and "green" in html.split("<h2>Data</h2>")[1].split("<h2>")[0]


def test_fewer_than_two_readable_classes_is_an_error_naming_the_lost_class(tmp_path, tiny):
    data = write_class_folder(tmp_path / "data", per_class=4)
    make_unreadable(data / "blue")
    with deadline(), pytest.raises(DataError) as info:
        run.fit(data, tmp_path / "model", report=False, **tiny)
    message = str(info.value)
    assert "'blue'" in message and "unreadable" in message and "\n" not in message


# -- item 7: damaged cache entries are recomputed ------------------------------------------

def test_zero_byte_and_special_cache_entries_are_treated_as_unusable(tmp_path):
    cache = FeatureCache(tmp_path / "cache", {"backbone": "test"}, dim=3)
    for key, damage in (("a" * 64, "empty"), ("b" * 64, "fifo")):
        cache.put(key, np.ones(3))
        entry = cache._path(key)
        entry.unlink()
        if damage == "empty":
            entry.touch()
        else:
            os.mkfifo(entry)
        with deadline(20), warnings.catch_warnings(record=True):
            warnings.simplefilter("always")
            assert cache.get(key) is None
        cache.put(key, np.ones(3))  # the recomputed vector replaces the damaged entry
        assert np.array_equal(cache.get(key), np.ones(3))
    assert cache.n_invalid == 2


# -- item 8: non-UTF-8 file names under a strict-encoding stdout ----------------------------

def test_non_utf8_file_names_print_under_a_strict_stdout(tmp_path, tiny, capsys):
    data = write_class_folder(tmp_path / "data", per_class=4)
    run.fit(data, tmp_path / "model", report=False, **tiny)
    new = tmp_path / "new"
    new.mkdir()
    Image.new("RGB", (32, 32), (220, 30, 30)).save(os.path.join(os.fsencode(new), b"caf\xe9.png"),
                                                    format="PNG")
    with open(os.path.join(os.fsencode(new), b"d\xe9fect.png"), "wb") as handle:
        handle.write(b"not an image")
    env = dict(os.environ, PYTHONIOENCODING="utf-8:strict")
    command = [sys.executable, "-m", "transferkit", "predict", str(tmp_path / "model"), str(new),
               "--quiet"]
    text = subprocess.run(command, capture_output=True, env=env, timeout=120)
    assert text.returncode == 0, text.stderr.decode(errors="replace")[-2000:]
    assert b"caf\\udce9.png" in text.stdout and b"d\\udce9fect.png" in text.stdout

    # --json escapes every non-ASCII character, so no output encoding can fail on it.
    assert main(["predict", str(tmp_path / "model"), str(new), "--json"]) == 0
    printed = capsys.readouterr().out
    assert printed.isascii()
    result = json.loads(printed)
    assert [Path(p["path"]).name for p in result["predictions"]] == ["caf\udce9.png"]
    assert [Path(s["path"]).name for s in result["skipped"]] == ["d\udce9fect.png"]


# -- items 11 and 12: CSV shape and missing files -----------------------------------------

@pytest.mark.parametrize("bad_row", ["b.png,Smith, John", "b.png"])
def test_ragged_csv_rows_are_refused_with_their_line_number(tmp_path, bad_row):
    csv_path = tmp_path / "labels.csv"
    csv_path.write_text(f"path,label\na.png,cat\n{bad_row}\nc.png,dog\n")
    with pytest.raises(DataError, match=r"line 3\b.*2"):
        read_csv(csv_path)
    multitask = tmp_path / "tasks.csv"
    multitask.write_text(f"path,label\na.png,cat\n{bad_row}\nc.png,dog\n")
    with pytest.raises(DataError, match=r"line 3\b"):
        read_multitask_csv(multitask)


def test_a_csv_whose_files_are_all_missing_says_so(tmp_path):
    (tmp_path / "sub").mkdir()
    csv_path = tmp_path / "sub" / "labels.csv"
    csv_path.write_text("path,label\nx/1.png,cat\nx/2.png,dog\n")
    with pytest.raises(DataError) as info:
        load_dataset(csv_path)
    message = str(info.value)
    assert "none of the 2 files" in message and "x/1.png" in message
    assert str(tmp_path / "sub") in message


# -- item 13: decompression bombs are named -----------------------------------------------

def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares ``width``×``height`` pixels and holds none (a bomb's header)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        checksum = struct.pack(">I", zlib.crc32(kind + body))
        return struct.pack(">I", len(body)) + kind + body + checksum

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


@pytest.mark.parametrize("width, height", [(10_000, 10_000), (100_000, 100_000)])
def test_decompression_bomb_is_named(tmp_path, width, height):
    path = tmp_path / "bomb.png"
    path.write_bytes(png_header_only(width, height))
    with pytest.raises(ImageDecodeError) as info:
        load_image(path)
    message = str(info.value)
    assert "decompression bomb:" in message and "corrupt" not in message
    assert f"{width}x{height}" in message
