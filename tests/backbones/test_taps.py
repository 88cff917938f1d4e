"""Layer taps, pooling and fusion."""

import numpy as np
import pytest

from transferkit.backbones import create_backbone
from transferkit.backbones.taps import list_layers, resolve_layers
from transferkit.data.dataset import list_image_files
from transferkit.errors import TransferkitError
from transferkit.features import FrozenExtractor
from transferkit.features.extract import FusedExtractor
from transferkit.features.runtime import MATCH_TOLERANCE


@pytest.fixture(scope="module")
def lite0():
    return create_backbone("efficientnet_lite0")


def test_taps_have_the_shapes_feature_info_promises(lite0):
    size = lite0.data_config["input_size"]
    layers = {info.name: info for info in list_layers(lite0.model, size)}
    for stage in lite0.model.feature_info:
        tapped = layers[stage["module"]]
        assert tapped.channels == stage["num_chs"]
        assert tapped.spatial == (size[1] // stage["reduction"], size[2] // stage["reduction"])
    assert layers["pre_logits"].channels == lite0.num_features and layers["pre_logits"].spatial == ()
    assert [info.depth for info in layers.values()] == list(range(len(layers)))


def test_resolving_names(lite0):
    assert resolve_layers(lite0.model, "stem,blocks.3") == ["bn1", "blocks.3"]
    assert resolve_layers(lite0.model, "fne")[-1] == "features"
    assert "pre_logits" not in resolve_layers(lite0.model, "stages")
    with pytest.raises(TransferkitError, match="transferkit backbones --layers"):
        resolve_layers(lite0.model, "blocks.99")


def test_one_pass_for_several_layers_and_fusion_of_one_equals_it(lite0, image_folder, tmp_path):
    paths = list_image_files(image_folder)[:5]
    one = FrozenExtractor(lite0, layer="blocks.6", cache_dir=tmp_path / "a")
    single = one.extract(paths)
    both = FrozenExtractor(lite0, layer="blocks.2,blocks.6", cache_dir=tmp_path / "b")
    result = both.extract(paths)
    assert both.dims == {"blocks.2": 40, "blocks.6": 320}
    assert result.features.shape == (5, 360)
    # One forward pass gave both layers: as many batches as for one layer alone.
    assert both.runtime.n_batches == one.runtime.n_batches
    np.testing.assert_allclose(result.layer("blocks.6"), single.features, atol=MATCH_TOLERANCE)
    # Each layer is cached on its own: the single layer is now a cache hit.
    again = FrozenExtractor(lite0, layer="blocks.6", cache_dir=tmp_path / "b")
    np.testing.assert_array_equal(again.extract(paths).features, result.layer("blocks.6"))
    assert again.n_forward_images == 0


@pytest.mark.parametrize("pooling, factor", [("avg", 1), ("max", 1), ("gem", 1), ("avgmax", 2)])
def test_pooling_variants_match_eager(lite0, image_folder, tmp_path, pooling, factor):
    paths = list_image_files(image_folder)[:3]
    fast = FrozenExtractor(lite0, layer="blocks.4", pooling=pooling, runtime="onnx",
                           cache_dir=tmp_path / "f").extract(paths)
    eager = FrozenExtractor(lite0, layer="blocks.4", pooling=pooling, runtime="eager",
                            use_cache=False).extract(paths)
    assert fast.features.shape == (3, 112 * factor)
    assert np.abs(fast.features - eager.features).max() <= MATCH_TOLERANCE
    if pooling == "avgmax":
        assert (fast.features[:, 112:] >= fast.features[:, :112] - 1e-5).all()  # max ≥ mean


def test_multi_backbone_fusion_concatenates(tiny_checkpoint, image_folder, tmp_path):
    path, arch = tiny_checkpoint
    tiny = FrozenExtractor.from_name(weights=path, arch=arch, cache_dir=tmp_path / "c")
    tiny_stages = FrozenExtractor.from_name(weights=path, arch=arch, layer="blocks.1",
                                            cache_dir=tmp_path / "c")
    (image_folder / "red" / "bad.png").write_bytes(b"bad")
    paths = list_image_files(image_folder)
    fused = FusedExtractor([tiny, tiny_stages]).extract(paths)
    assert fused.features.shape[1] == tiny.dim + tiny_stages.dim
    assert len(fused.skipped) == 1 and fused.ok.sum() == len(paths) - 1
    np.testing.assert_array_equal(fused.features[:, :tiny.dim], tiny.extract(paths).features)
