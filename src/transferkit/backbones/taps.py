"""Layer taps: read any set of layers of a backbone in one forward pass.

The lectures' point (Yosinski et al. 2014): lower layers hold generic features (edges,
colours, textures), higher ones task-specific ones, so the last layer is not always the
best to transfer. A tap names a module of the timm network; its output is pooled to a
vector inside the network (so the exported ONNX graph returns vectors, and the cache
stores one pooled vector per layer and image).

Tappable names:

* ``stem``: output of the stem (``bn1`` when the model has one);
* each stage, ``blocks.0`` … (or timm's ``feature_info`` modules for other families);
* ``features``: the output of ``forward_features`` (before global pooling);
* ``pre_logits``: the pooled vector that feeds the classifier;
* any other name from ``model.named_modules()``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from transferkit.errors import TransferkitError

if TYPE_CHECKING:
    from torch import nn

POOLINGS = ("avg", "max", "avgmax", "gem")
SPECIAL_LAYERS = ("features", "pre_logits")


@dataclass
class LayerInfo:
    name: str
    channels: int       # length of the pooled vector with "avg" pooling
    spatial: tuple      # (H, W) for maps, (tokens,) for sequences, () for vectors
    depth: int          # order in the forward pass (0 = nearest the input)


def default_layers(model: "nn.Module") -> list[str]:
    """The stage-level taps of ``model``, input to output, then ``features`` and ``pre_logits``."""
    names = []
    modules = dict(model.named_modules())
    if "bn1" in modules and "conv_stem" in modules:
        names.append("bn1")
    blocks = modules.get("blocks") or modules.get("stages") or modules.get("layers")
    if blocks is not None and len(list(blocks.children())) > 1:
        prefix = next(name for name, module in modules.items() if module is blocks)
        names += [f"{prefix}.{child}" for child, _ in blocks.named_children()]
    else:
        names += [info["module"] for info in getattr(model, "feature_info", [])
                  if info.get("module") in modules]
    return names + list(SPECIAL_LAYERS)


def stage_layers(model: "nn.Module") -> list[str]:
    """The convolutional stage outputs (no ``pre_logits``): what FNE pools and fuses."""
    return [name for name in default_layers(model) if name != "pre_logits"]


def resolve_layers(model: "nn.Module", layers) -> list[str]:
    """Expand ``"stages"``, ``"all"``, ``"fne"`` or comma-separated names into module names."""
    if isinstance(layers, str):
        layers = [part.strip() for part in layers.split(",") if part.strip()]
    known = dict(model.named_modules())
    resolved: list[str] = []
    for name in layers:
        if name in ("all", "stages", "fne"):
            # FNE pools every convolutional stage and the final feature map (Garcia-Gasulla
            # et al. 2018): the stages; "all" adds the pre-logits vector.
            resolved += default_layers(model) if name == "all" else stage_layers(model)
        elif name == "stem":
            resolved.append(default_layers(model)[0])
        elif name in SPECIAL_LAYERS or name in known:
            resolved.append(name)
        else:
            raise TransferkitError(
                f"unknown layer {name!r}. List the tappable layers with "
                "`transferkit backbones --layers BACKBONE`.")
    return list(dict.fromkeys(resolved))  # keep order, drop repeats


def pool(output, pooling: str, p: float = 3.0):
    """Map a module output to one vector per image."""
    import torch

    if isinstance(output, (tuple, list)):
        output = output[0]
    if output.ndim == 2:
        return output
    if output.ndim == 4:    # (B, C, H, W) feature map
        dims = (2, 3)
    elif output.ndim == 3:  # (B, N, C) token sequence (transformers)
        dims = (1,)
    else:
        raise TransferkitError(f"cannot pool an output of shape {tuple(output.shape)}")
    if pooling == "avg":
        return output.mean(dim=dims)
    if pooling == "max":
        return output.amax(dim=dims)
    if pooling == "avgmax":
        return torch.cat([output.mean(dim=dims), output.amax(dim=dims)], dim=1)
    if pooling == "gem":  # generalised mean (Radenović et al. 2018)
        return output.clamp(min=1e-6).pow(p).mean(dim=dims).pow(1.0 / p)
    raise TransferkitError(f"unknown pooling {pooling!r}; choose one of {', '.join(POOLINGS)}.")


def make_tap_module(model: "nn.Module", layers: list[str], pooling: str = "avg"):
    """An ``nn.Module``: images → tuple of pooled vectors, one per layer, one forward pass."""
    import torch
    from torch import nn

    class LayerTaps(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model
            self.layers = list(layers)
            self.pooling = pooling
            self._captured: dict[str, torch.Tensor] = {}
            modules = dict(model.named_modules())
            for name in self.layers:
                if name not in SPECIAL_LAYERS:
                    modules[name].register_forward_hook(self._hook(name))

        def _hook(self, name):
            def capture(module, inputs, output):
                self._captured[name] = output
            return capture

        def forward(self, images):
            self._captured = {}
            maps = self.model.forward_features(images)
            outputs = []
            for name in self.layers:
                if name == "pre_logits":
                    outputs.append(self.model.forward_head(maps, pre_logits=True))
                elif name == "features":
                    outputs.append(pool(maps, self.pooling))
                else:
                    outputs.append(pool(self._captured[name], self.pooling))
            self._captured = {}
            return tuple(outputs)

    return LayerTaps()


def list_layers(model: "nn.Module", input_size, layers="all") -> list[LayerInfo]:
    """Tappable layers with their channels and spatial size at ``input_size`` (C, H, W)."""
    import copy

    import torch

    names = resolve_layers(model, layers)
    probe = copy.deepcopy(model).eval()
    shapes: dict[str, tuple] = {}
    modules = dict(probe.named_modules())
    handles = [modules[name].register_forward_hook(
        lambda module, inputs, output, name=name: shapes.__setitem__(
            name, tuple((output[0] if isinstance(output, (tuple, list)) else output).shape)))
        for name in names if name not in SPECIAL_LAYERS]
    with torch.inference_mode():
        maps = probe.forward_features(torch.zeros((1, *input_size)))
        shapes["features"] = tuple(maps.shape)
        shapes["pre_logits"] = tuple(probe.forward_head(maps, pre_logits=True).shape)
    for handle in handles:
        handle.remove()
    infos = []
    for depth, name in enumerate(names):
        shape = shapes[name]
        if len(shape) == 4:
            channels, spatial = shape[1], shape[2:]
        elif len(shape) == 3:
            channels, spatial = shape[2], shape[1:2]
        else:
            channels, spatial = shape[-1], ()
        infos.append(LayerInfo(name, int(channels), tuple(int(s) for s in spatial), depth))
    return infos
