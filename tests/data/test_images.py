"""Robust decoding: every PIL mode to RGB, EXIF orientation, bad files raise ImageDecodeError."""

import io

import numpy as np
import pytest
from PIL import Image

from transferkit.data import load_image
from transferkit.errors import ImageDecodeError


def test_rgba_is_composited_over_white(tmp_path):
    pixels = np.zeros((4, 4, 4), dtype=np.uint8)
    pixels[..., 0] = 255          # red ...
    pixels[:2, :, 3] = 255        # ... opaque on top, fully transparent below
    Image.fromarray(pixels, "RGBA").save(tmp_path / "a.png")
    image = load_image(tmp_path / "a.png")
    assert image.mode == "RGB"
    array = np.asarray(image)
    assert tuple(array[0, 0]) == (255, 0, 0)
    assert tuple(array[3, 3]) == (255, 255, 255)


def test_sixteen_bit_grey_keeps_its_range(tmp_path):
    ramp = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    array = np.asarray(load_image(tmp_path / "deep.png"))
    # A naive convert("RGB") clips everything above 255 to white; we scale instead.
    assert array[0, 0, 0] == 0 and array[-1, -1, 0] == 255
    assert 100 < array[32, 0, 0] < 155


def test_cmyk_palette_and_greyscale_become_rgb(tmp_path):
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(tmp_path / "c.jpg")
    Image.new("L", (8, 8), 77).save(tmp_path / "g.png")
    Image.new("RGB", (8, 8), (10, 200, 30)).convert("P").save(tmp_path / "p.gif")
    red = np.asarray(load_image(tmp_path / "c.jpg")).mean(axis=(0, 1))
    assert red[0] > 200 and red[1] < 60 and red[2] < 60
    assert tuple(np.asarray(load_image(tmp_path / "g.png"))[0, 0]) == (77, 77, 77)
    green = np.asarray(load_image(tmp_path / "p.gif"))[0, 0]
    assert green[1] > 150 and green[0] < 60


def test_exif_orientation_is_applied(tmp_path):
    image = Image.new("RGB", (40, 20), (0, 0, 0))
    image.paste((255, 0, 0), (0, 0, 10, 20))  # left quarter red
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    image.save(tmp_path / "rotated.jpg", exif=exif.tobytes(), quality=95)
    upright = load_image(tmp_path / "rotated.jpg")
    assert upright.size == (20, 40)
    top = np.asarray(upright)[:8].mean(axis=(0, 1))
    assert top[0] > 200  # the red band is now on top


def test_truncated_corrupt_and_non_image_files_raise(tmp_path):
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (1, 2, 3)).save(buffer, "JPEG")
    (tmp_path / "cut.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    (tmp_path / "junk.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    (tmp_path / "notes.txt").write_text("hello")
    for name in ("cut.jpg", "junk.png", "notes.txt", "missing.jpg"):
        with pytest.raises(ImageDecodeError) as info:
            load_image(tmp_path / name)
        assert name in str(info.value)


def test_jpeg_draft_decodes_no_smaller_than_asked(tmp_path):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (900, 1200, 3), dtype=np.uint8)).save(tmp_path / "big.jpg")
    Image.fromarray(rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)).save(tmp_path / "small.jpg")
    Image.fromarray(rng.integers(0, 256, (900, 1200, 3), dtype=np.uint8)).save(tmp_path / "big.png")
    assert load_image(tmp_path / "big.jpg", draft_size=(256, 256)).size == (600, 450)  # 1/2
    assert load_image(tmp_path / "big.jpg", draft_size=(100, 100)).size == (150, 113)  # 1/8
    for name in ("small.jpg", "big.png"):  # too small to reduce; not a JPEG
        np.testing.assert_array_equal(np.asarray(load_image(tmp_path / name, draft_size=(256, 256))),
                                      np.asarray(load_image(tmp_path / name)))


def test_jpeg_draft_keeps_the_orientation_and_the_size_limit(tmp_path, monkeypatch):
    image = Image.new("RGB", (1200, 600), (0, 0, 0))
    image.paste((255, 0, 0), (0, 0, 300, 600))  # left quarter red
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    image.save(tmp_path / "rotated.jpg", exif=exif.tobytes(), quality=95)
    upright = load_image(tmp_path / "rotated.jpg", draft_size=(256, 256))
    assert upright.size == (300, 600)
    assert np.asarray(upright)[:60].mean(axis=(0, 1))[0] > 200  # the red band is on top
    # The size check reads the declared size, before any reduced decode.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100_000)
    with pytest.raises(ImageDecodeError, match="decompression bomb"):
        load_image(tmp_path / "rotated.jpg", draft_size=(16, 16))


def test_decoding_in_threads_leaves_the_warning_filters_as_they_were(tmp_path):
    """Extraction lanes decode in threads: each one saving and restoring the process-wide
    warning filters left DecompressionBombWarning as an error (or ignored) for good."""
    import struct
    import threading
    import warnings
    import zlib

    def png_header_only(width: int, height: int) -> bytes:
        def chunk(kind: bytes, body: bytes) -> bytes:
            return (struct.pack(">I", len(body)) + kind + body
                    + struct.pack(">I", zlib.crc32(kind + body)))

        ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
        return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")

    good = tmp_path / "good.png"
    Image.fromarray(np.full((32, 32, 3), 90, np.uint8)).save(good)
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_header_only(10_000, 10_000))
    before = list(warnings.filters)
    messages = []

    def decode():
        for _ in range(200):
            load_image(good)
        try:
            load_image(bomb)
        except ImageDecodeError as exc:
            messages.append(str(exc))

    threads = [threading.Thread(target=decode) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert warnings.filters == before
    assert len(messages) == 4 and all("decompression bomb: 10000x10000" in m for m in messages)
