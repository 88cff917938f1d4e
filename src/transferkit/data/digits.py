"""Digit domains for domain adaptation: MNIST, MNIST-M, USPS, and rendered printed digits.

Readers for the shared copies (``<datasets>/mnist_t10k``, ``mnist_m``, ``usps``) return a
:class:`DigitDomain`: images ``(N, H, W)`` (grey) or ``(N, H, W, 3)`` (RGB) as uint8,
integer labels 0–9, and ``index``, the row of each image in its source file (for MNIST
and MNIST-M the MNIST t10k index: MNIST-M's file ``00001234.png`` is MNIST test digit
1234 blended over a colour patch, its labels agree with MNIST's on all 9,001 images).

:func:`mnist_to_mnist_m` implements the protocol of the shared datasets README: source =
MNIST t10k images 0–4999 (labelled), target = MNIST-M images whose index is ≥ 5000, cut
into an unlabelled part for adaptation and a labelled held-out part for scoring, so no
underlying handwritten digit is in both domains.

:func:`render_printed_digits` makes the "SYN NUMBERS"-like printed domain from the
TrueType fonts on the machine (matplotlib's bundled DejaVu fonts at least), and
:func:`write_image_folder` writes any domain as ``root/<digit>/<index>.png`` for the
extractors and the command line.

Two domains need no download at all: :func:`sklearn_handwritten_digits` (the UCI digits
bundled with scikit-learn) and :func:`blend_over_photos`, which puts any digit domain over
colour patches of the photos bundled with scikit-image, the recipe of MNIST-M;
:func:`handwritten_to_photo_blended` pairs them as a source and a target with no
handwritten digit in both.
"""

from __future__ import annotations

import functools
import gzip
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from transferkit.data.dataset import LabelledImages
from transferkit.errors import DataError

DIGIT_CLASSES = [str(d) for d in range(10)]
MNIST_SOURCE_END = 5000  # source: MNIST t10k 0..4999; target: MNIST-M index >= 5000


@dataclass
class DigitDomain:
    """Images of one digit domain with their labels and underlying indices."""

    name: str
    images: np.ndarray   # (N, H, W) or (N, H, W, 3) uint8
    labels: np.ndarray   # (N,) int64, 0..9
    index: np.ndarray    # (N,) int64: row in the source file (MNIST index where meaningful)

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, rows, name: str | None = None) -> "DigitDomain":
        rows = np.asarray(rows, dtype=int)
        return DigitDomain(name or self.name, self.images[rows], self.labels[rows],
                           self.index[rows])

    def counts(self) -> dict[int, int]:
        return {d: int((self.labels == d).sum()) for d in range(10)}


@dataclass
class DomainSplit:
    """Labelled source, target for adaptation (labels kept, for oracles), held-out target."""

    source: DigitDomain
    target_adapt: DigitDomain
    target_test: DigitDomain


def _folder(root, name: str) -> Path:
    """``root`` is the shared datasets folder or the data set's own folder."""
    root = Path(root)
    if (root / name).is_dir():
        return root / name
    if root.is_dir() and root.name == name:
        return root
    raise DataError(f"{root}: no {name}/ folder here. Give the datasets folder that holds "
                    f"{name}/ (e.g. ../shared/datasets).")


def _read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (gzipped or not): the MNIST container format."""
    if not path.is_file():
        raise DataError(f"{path}: file not found.")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        data = handle.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DataError(f"{path}: not an unsigned-byte IDX file.")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    array = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if array.size != int(np.prod(shape)):
        raise DataError(f"{path}: truncated IDX file ({array.size} values for shape {shape}).")
    return array.reshape(shape)


def read_mnist_t10k(root) -> DigitDomain:
    """MNIST test set: (10000, 28, 28) grey uint8, white digit on black; index 0..9999."""
    folder = _folder(root, "mnist_t10k")
    images = _read_idx(folder / "t10k-images-idx3-ubyte.gz")
    labels = _read_idx(folder / "t10k-labels-idx1-ubyte.gz").astype(np.int64)
    if len(images) != len(labels):
        raise DataError(f"{folder}: {len(images)} images but {len(labels)} labels.")
    return DigitDomain("mnist", np.ascontiguousarray(images), labels,
                       np.arange(len(labels), dtype=np.int64))


def read_mnist_m(root, min_index: int = 0) -> DigitDomain:
    """MNIST-M test set: (9001, 32, 32, 3) RGB uint8; index = MNIST t10k index (0..9000).

    The file name is the index (``test/<digit>/00001234.png``), the label comes from
    ``mnist_m_test_labels.txt`` and names the class folder. Only images whose index is
    ``min_index`` or above are decoded.
    """
    folder = _folder(root, "mnist_m")
    labels_file = folder / "mnist_m_test_labels.txt"
    if not labels_file.is_file():
        raise DataError(f"{labels_file}: file not found.")
    entries = []
    for line in labels_file.read_text().split("\n"):
        parts = line.split()
        if len(parts) == 2:
            entries.append((parts[0], int(parts[1])))
    images, labels, index = [], [], []
    for name, label in entries:
        if int(Path(name).stem) < min_index:
            continue
        path = folder / "test" / str(label) / name
        if not path.is_file():
            raise DataError(f"{path}: listed in {labels_file.name} with label {label} but missing.")
        with Image.open(path) as opened:
            images.append(np.asarray(opened.convert("RGB")))
        labels.append(label)
        index.append(int(Path(name).stem))
    order = np.argsort(index)
    return DigitDomain("mnist_m", np.stack(images)[order], np.asarray(labels, np.int64)[order],
                       np.asarray(index, np.int64)[order])


def read_usps(root, split: str = "train") -> DigitDomain:
    """USPS from ``usps.h5``: (7291 train | 2007 test, 16, 16) grey uint8; index = row.

    Needs ``h5py``. The floats in [0, 1] are scaled to 0..255 (white digit on black,
    like MNIST).
    """
    if split not in ("train", "test"):
        raise DataError(f"USPS split must be 'train' or 'test', got {split!r}.")
    try:
        import h5py
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise DataError("reading USPS needs h5py: pip install h5py") from exc
    path = _folder(root, "usps") / "usps.h5"
    if not path.is_file():
        raise DataError(f"{path}: file not found.")
    with h5py.File(path, "r") as handle:
        data = np.asarray(handle[f"{split}/data"], dtype=np.float64)
        labels = np.asarray(handle[f"{split}/target"], dtype=np.int64)
    images = np.clip(np.rint(data * 255.0), 0, 255).astype(np.uint8).reshape(-1, 16, 16)
    return DigitDomain(f"usps_{split}", images, labels, np.arange(len(labels), dtype=np.int64))


def split_labelled(domain: DigitDomain, test_fraction: float = 0.5,
                   random_state=0) -> tuple[DigitDomain, DigitDomain]:
    """Stratified split of a domain into (adapt, test) parts, seeded."""
    if not 0.0 < test_fraction < 1.0:
        raise DataError(f"test_fraction must lie strictly between 0 and 1, got {test_fraction}.")
    rng = np.random.default_rng(random_state)
    adapt, test = [], []
    for digit in np.unique(domain.labels):
        rows = np.flatnonzero(domain.labels == digit)
        rows = rows[rng.permutation(len(rows))]
        n_test = int(round(len(rows) * test_fraction))
        test.extend(rows[:n_test])
        adapt.extend(rows[n_test:])
    return domain.subset(np.sort(adapt)), domain.subset(np.sort(test))


def mnist_to_mnist_m(root, test_fraction: float = 0.5, random_state=0) -> DomainSplit:
    """The README protocol: MNIST t10k 0–4999 → MNIST-M index ≥ 5000 (disjoint digits).

    ``target_adapt`` is for adaptation (use its images unlabelled; its labels are there
    for the target oracle), ``target_test`` a stratified held-out part for scoring.
    """
    mnist = read_mnist_t10k(root)
    source = mnist.subset(np.flatnonzero(mnist.index < MNIST_SOURCE_END))
    mnist_m = read_mnist_m(root, min_index=MNIST_SOURCE_END)
    target = mnist_m.subset(np.flatnonzero(mnist_m.index >= MNIST_SOURCE_END))
    adapt, test = split_labelled(target, test_fraction, random_state)
    return DomainSplit(source, adapt, test)


def resize_domain(domain: DigitDomain, size: int, rgb: bool = False) -> DigitDomain:
    """Every image resized to ``size``×``size`` (bilinear), optionally as RGB."""
    out = []
    for image in domain.images:
        picture = Image.fromarray(image)
        if rgb:
            picture = picture.convert("RGB")
        if picture.size != (size, size):
            picture = picture.resize((size, size), Image.BILINEAR)
        out.append(np.asarray(picture))
    return DigitDomain(domain.name, np.stack(out), domain.labels.copy(), domain.index.copy())


def write_image_folder(domain: DigitDomain, root: str | os.PathLike,
                       size: int | None = None) -> LabelledImages:
    """Write ``root/<digit>/<index>.png`` (RGB, resized to ``size`` if given).

    Returns the written files as :class:`LabelledImages` in the domain's row order
    (classes ``"0"``..``"9"``, label d ↔ class ``str(d)``). Existing files are overwritten.
    """
    root = Path(root)
    if len(set(domain.index.tolist())) != len(domain):
        raise DataError(f"{domain.name}: indices are not unique, file names would collide.")
    width = max(5, len(str(int(domain.index.max())))) if len(domain) else 5
    paths = []
    for image, label, index in zip(domain.images, domain.labels, domain.index):
        folder = root / str(int(label))
        folder.mkdir(parents=True, exist_ok=True)
        picture = Image.fromarray(image).convert("RGB")
        if size is not None and picture.size != (size, size):
            picture = picture.resize((size, size), Image.BILINEAR)
        path = folder / f"{int(index):0{width}d}.png"
        picture.save(path)
        paths.append(path)
    return LabelledImages(paths, domain.labels.astype(int).copy(), list(DIGIT_CLASSES))


# -- printed digits ------------------------------------------------------------------------

_NOT_TEXT_FONTS = ("cmex", "cmsy", "stixsiz", "stixnonuni", "lastresort", "math", "symbol",
                   "dingbat", "emoji", "wingding")


def _font_files() -> list[Path]:
    import matplotlib

    places = [Path("/usr/share/fonts"), Path("/usr/local/share/fonts"),
              Path.home() / ".fonts", Path(matplotlib.get_data_path()) / "fonts" / "ttf"]
    found: dict[str, Path] = {}  # by file name: the system's and matplotlib's DejaVu once
    for place in places:
        if place.is_dir():
            for path in sorted(place.rglob("*")):
                if path.suffix.lower() in (".ttf", ".otf"):
                    found.setdefault(path.name.lower(), path)
    return sorted(found.values(), key=lambda p: p.name.lower())


def _renders_digits(path: Path) -> bool:
    """True when the font draws ten distinct, non-empty digit glyphs."""
    try:
        font = ImageFont.truetype(str(path), 24)
    except OSError:
        return False
    glyphs = set()
    for digit in DIGIT_CLASSES:
        canvas = Image.new("L", (40, 40), 0)
        ImageDraw.Draw(canvas).text((20, 20), digit, fill=255, font=font, anchor="mm")
        pixels = np.asarray(canvas)
        if pixels.max() < 128:
            return False
        glyphs.add((pixels > 127).tobytes())
    return len(glyphs) == 10


@functools.lru_cache(maxsize=1)
def digit_fonts() -> tuple[Path, ...]:
    """TrueType/OpenType fonts on this machine that draw the ten digits (sorted)."""
    fonts = [p for p in _font_files()
             if not any(bad in p.name.lower() for bad in _NOT_TEXT_FONTS) and _renders_digits(p)]
    if not fonts:  # pragma: no cover - matplotlib always ships DejaVu Sans
        raise DataError("no TrueType font that draws digits was found (looked in /usr/share/fonts "
                        "and matplotlib's fonts).")
    return tuple(fonts)


def _luminance(colour) -> float:
    return 0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2]


def render_printed_digits(n: int, random_state=0, size: int = 32) -> DigitDomain:
    """``n`` printed digits, (n, size, size, 3) uint8, balanced labels, index 0..n−1.

    Each image draws one digit with a random font among :func:`digit_fonts`, a font
    size of 60–100% of the image, rotation ±15°, translation ±10%, random foreground
    and background colours at least 80 grey levels apart in luminance, and a Gaussian
    blur of radius 0–1 pixel (rendered at 4× and downsampled).
    """
    if n < 0:
        raise DataError(f"n must be non-negative, got {n}.")
    rng = np.random.default_rng(random_state)
    fonts = digit_fonts()
    labels = np.arange(n, dtype=np.int64) % 10
    labels = labels[rng.permutation(n)]
    scale = 4
    big = size * scale
    images = np.zeros((n, size, size, 3), dtype=np.uint8)
    for i, digit in enumerate(labels):
        font_path = fonts[int(rng.integers(len(fonts)))]
        height = int(big * rng.uniform(0.6, 1.0))
        font = ImageFont.truetype(str(font_path), height)
        while True:
            fg = tuple(int(v) for v in rng.integers(0, 256, 3))
            bg = tuple(int(v) for v in rng.integers(0, 256, 3))
            if abs(_luminance(fg) - _luminance(bg)) >= 80:
                break
        mask = Image.new("L", (big, big), 0)
        dx, dy = rng.uniform(-0.1, 0.1, 2) * big
        ImageDraw.Draw(mask).text((big / 2 + dx, big / 2 + dy), str(digit), fill=255,
                                  font=font, anchor="mm")
        mask = mask.rotate(float(rng.uniform(-15, 15)), resample=Image.BILINEAR,
                           center=(big / 2 + dx, big / 2 + dy))
        picture = Image.composite(Image.new("RGB", (big, big), fg),
                                  Image.new("RGB", (big, big), bg), mask)
        radius = float(rng.uniform(0.0, 1.0)) * scale
        if radius > 0:
            picture = picture.filter(ImageFilter.GaussianBlur(radius))
        images[i] = np.asarray(picture.resize((size, size), Image.LANCZOS))
    return DigitDomain("printed", images, labels, np.arange(n, dtype=np.int64))


# -- domains bundled with scikit-learn and scikit-image ------------------------------------

# Colour photographs inside scikit-image's wheel, by their skimage.data loader (read from
# the installed package: no download): an astronaut, a cat, a cup of coffee, a rocket
# launch, a motorcycle (left stereo view). Varied colours and textures, like the BSDS500
# photos behind MNIST-M.
BUNDLED_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "stereo_motorcycle")


def sklearn_handwritten_digits() -> DigitDomain:
    """scikit-learn's bundled handwritten digits (UCI, 1797 images of 8×8, grey levels
    0–16 scaled to 0–255, white digit on black); index = row 0..1796."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
    return DigitDomain("handwritten (UCI, scikit-learn)", images,
                       digits.target.astype(np.int64), np.arange(len(images), dtype=np.int64))


@functools.lru_cache(maxsize=1)
def bundled_photos() -> tuple[np.ndarray, ...]:
    """The :data:`BUNDLED_PHOTOS`, each ``(H, W, 3)`` uint8 (decoded once per process)."""
    try:
        from skimage import data
    except ImportError as exc:  # pragma: no cover - scikit-image is a dependency
        raise DataError("blending digits over photos needs scikit-image: "
                        "pip install scikit-image") from exc
    photos = []
    for loader in BUNDLED_PHOTOS:
        try:
            photo = getattr(data, loader)()
        except Exception as exc:  # pragma: no cover - a broken scikit-image install
            raise DataError(f"scikit-image's bundled photo {loader!r} could not be read "
                            f"({exc}); reinstall scikit-image.") from exc
        photo = photo[0] if isinstance(photo, tuple) else photo  # stereo pair: left view
        photos.append(np.ascontiguousarray(photo[..., :3], dtype=np.uint8))
    return tuple(photos)


def blend_over_photos(domain: DigitDomain, random_state=0, photos=None,
                      name: str | None = None) -> DigitDomain:
    """Every digit blended over a colour patch of a photo: the MNIST-M recipe.

    Ganin & Lempitsky 2015, §5 (Ganin et al. 2016, JMLR, §5.2): MNIST-M blends MNIST
    digits over patches cut at random from colour photos (BSDS500) as ``|patch − digit|``
    per channel, so a stroke shows the patch's colours inverted and the background the
    patch itself. Each image gets a patch of its own size at a random place in a random
    photo (``photos``: ``(H, W, 3)`` uint8 arrays, default :func:`bundled_photos`), at the
    photo's own scale. Grey digits are repeated to three channels; the labels and indices
    stay those of ``domain``.
    """
    photos = bundled_photos() if photos is None else tuple(photos)
    if not photos:
        raise DataError("no photos to blend the digits over.")
    images = np.asarray(domain.images)
    if images.ndim == 3:
        images = np.repeat(images[..., None], 3, axis=3)
    if images.ndim != 4 or images.shape[3] != 3:
        raise DataError(f"{domain.name}: digit images must be (N, H, W) or (N, H, W, 3), got "
                        f"shape {images.shape}.")
    height, width = images.shape[1:3]
    for photo in photos:
        if photo.ndim != 3 or photo.shape[0] < height or photo.shape[1] < width:
            raise DataError(f"a photo of shape {photo.shape} cannot give {height}×{width} "
                            "colour patches.")
    rng = np.random.default_rng(random_state)
    blended = np.empty(images.shape, dtype=np.uint8)
    for i, digit in enumerate(images):
        photo = photos[int(rng.integers(len(photos)))]
        top = int(rng.integers(photo.shape[0] - height + 1))
        left = int(rng.integers(photo.shape[1] - width + 1))
        patch = photo[top:top + height, left:left + width, :3].astype(np.int16)
        blended[i] = np.abs(patch - digit.astype(np.int16)).astype(np.uint8)
    return DigitDomain(name or f"{domain.name} over photos", blended, domain.labels.copy(),
                       domain.index.copy())


def handwritten_to_photo_blended(size: int = 32, random_state=0,
                                 target_fraction: float = 0.5) -> DomainSplit:
    """scikit-learn's handwritten digits → the *other* handwritten digits over photos.

    The 1797 digits are resized to ``size``×``size`` (bilinear) and split, stratified and
    seeded: ``1 − target_fraction`` stay plain (white on black) as the labelled source;
    the rest are blended over patches of :func:`bundled_photos` (:func:`blend_over_photos`)
    and cut in halves, ``target_adapt`` (for adaptation; its labels only for an oracle) and
    ``target_test`` (for scoring). No handwritten digit is in both domains. Nothing to
    download: the shift of MNIST → MNIST-M at the size of a demo.
    """
    digits = resize_domain(sklearn_handwritten_digits(), size)
    source, target = split_labelled(digits, target_fraction, random_state)
    target = blend_over_photos(target, random_state=random_state,
                               name="handwritten over photos (scikit-image)")
    adapt, test = split_labelled(target, 0.5, random_state)
    return DomainSplit(source, adapt, test)
