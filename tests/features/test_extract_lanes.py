"""The extraction engine's parallel paths: ONNX lanes and eager decode workers."""

import numpy as np
import pytest

from builders import colour_image, write_class_folder
from transferkit.backbones import create_backbone
from transferkit.data.dataset import list_image_files
from transferkit.features import FrozenExtractor
from transferkit.features.runtime import MATCH_TOLERANCE

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny_backbone(tiny_checkpoint):
    path, arch = tiny_checkpoint
    return create_backbone(weights=path, arch=arch)


@pytest.fixture
def mixed_folder(tmp_path):
    """Readable images with unreadable files between them."""
    root = write_class_folder(tmp_path / "images", per_class=7)
    (root / "red" / "3b.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    (root / "blue" / "0a.png").write_bytes(b"")
    return root


def test_lanes_match_eager_in_order_and_skip_bad_files(tiny_backbone, mixed_folder, tmp_path):
    paths = list_image_files(mixed_folder)
    eager = FrozenExtractor(tiny_backbone, runtime="eager", cache_dir=tmp_path / "e",
                            num_workers=0).extract(paths)
    for lanes in (1, 2, 3):
        fast = FrozenExtractor(tiny_backbone, runtime="onnx", cache_dir=tmp_path / f"o{lanes}",
                               num_workers=lanes, batch_size=4).extract(paths)
        assert fast.runtime == "onnx"
        np.testing.assert_array_equal(fast.ok, eager.ok)
        assert {p.split("/")[-1] for p, _ in fast.skipped} == {"3b.jpg", "0a.png"}
        assert np.abs(fast.features - eager.features).max() <= MATCH_TOLERANCE


def test_eager_decode_workers_keep_the_order(tiny_backbone, mixed_folder, tmp_path):
    paths = list_image_files(mixed_folder)
    inline = FrozenExtractor(tiny_backbone, runtime="eager", use_cache=False,
                             num_workers=0, batch_size=4).extract(paths)
    workers = FrozenExtractor(tiny_backbone, runtime="eager", use_cache=False,
                              num_workers=2, batch_size=4).extract(paths)
    np.testing.assert_array_equal(workers.ok, inline.ok)
    np.testing.assert_allclose(workers.features, inline.features, atol=1e-6)


def test_jpeg_draft_features_have_their_own_cache_namespace(tiny_backbone, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(3):
        colour_image((200, 40, 40), size=900, seed=i).save(folder / f"{i}.jpg", quality=90)
    paths = sorted(folder.glob("*.jpg"))
    exact = FrozenExtractor(tiny_backbone, cache_dir=tmp_path / "c")
    exact_features = exact.extract(paths).features
    draft = FrozenExtractor(tiny_backbone, cache_dir=tmp_path / "c", jpeg_draft=True)
    draft_features = draft.extract(paths).features
    assert draft.n_forward_images == 3  # nothing read from the exact namespace
    assert draft.cache.folder != exact.cache.folder
    assert np.abs(draft_features - exact_features).max() > 0
    again = FrozenExtractor(tiny_backbone, cache_dir=tmp_path / "c", jpeg_draft=True)
    np.testing.assert_array_equal(again.extract(paths).features, draft_features)
    assert again.n_forward_images == 0


def test_an_error_while_collecting_stops_the_lanes(tiny_backbone, tmp_path, monkeypatch):
    """A failing cache write (or an interrupt) in the collecting thread must not leave the
    lanes decoding and inferring the rest of the list in the background."""
    import threading
    import time

    from transferkit.errors import CacheError
    from transferkit.features.cache import FeatureCache

    root = write_class_folder(tmp_path / "images", per_class=30)
    paths = list_image_files(root)
    extractor = FrozenExtractor(tiny_backbone, runtime="onnx", cache_dir=tmp_path / "c",
                                num_workers=2, batch_size=1)
    extractor.runtime  # exported and checked before counting
    decoded = []
    preprocess = extractor.preprocess
    extractor._preprocess = lambda path: decoded.append(path) or preprocess(path)

    def full_disk(self, key, vector):
        raise CacheError("disk full")

    monkeypatch.setattr(FeatureCache, "put", full_disk)
    with pytest.raises(CacheError) as info:  # keeps the traceback, and so the frame, alive
        extractor.extract(paths)
    time.sleep(0.5)
    assert info.value is not None
    assert not [t for t in threading.enumerate() if t.name.startswith("transferkit-lane")]
    assert len(decoded) <= 2 * 2 + 2  # the batches in flight, not the other ~55 images
