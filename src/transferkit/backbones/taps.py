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
* ``all-conv``: the output of every convolutional layer (:func:`conv_layers`), the
  Full-Network Embedding's input as its paper defines it;
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
ALL_CONV = "all-conv"  # resolve_layers' keyword for conv_layers()
# A module of one of these kinds, fed a tensor a convolution made, belongs to that
# convolutional layer (conv → norm → activation); timm's BatchNormAct2d is a norm that
# applies its activation itself.
_NORM_MODULES = ("torch.nn.modules.batchnorm", "torch.nn.modules.normalization",
                 "timm.layers.norm_act", "timm.layers.norm")
_ACTIVATION_MODULES = ("torch.nn.modules.activation", "timm.layers.activations",
                       "timm.layers.activations_me", "timm.layers.activations_jit")
# Squeeze-and-excitation (and similar channel attention) convolutions run on a globally
# pooled 1×1 map: they compute per-channel gates, not feature maps of the image.
_ATTENTION_CLASS_PARTS = ("SqueezeExcite", "SEModule", "EcaModule", "CbamModule")


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


_CONV_LAYERS_MEMO = None  # a WeakKeyDictionary: model → conv_layers(model), made on first use


def conv_layers(model: "nn.Module", input_size=None) -> list[str]:
    """The module whose output is each convolutional layer's output, input to output.

    What "the output of every convolutional layer" means here. Garcia-Gasulla et al. 2018
    pool, in VGG-16, the output of each of the 13 convolutional layers, and a VGG layer is
    a convolution followed by its ReLU: the feature map the next layer reads. Modern
    networks put a normalisation between the two, so a convolutional layer is the unit
    convolution → normalisation → activation, and its output is taken after the last of
    these that the network applies (the activation; the normalisation when none follows,
    as after EfficientNet's linear projection convolutions, where the paper's rule "the
    layer's output" leaves no other choice). Not the raw convolution: on average-pooled
    features the eval-mode normalisation is a per-channel affine map that FNE's
    standardisation undoes anyway, while the activation is what the next layer sees and
    where FNE's discretisation reads "feature present / absent".

    In EfficientNet-Lite every convolution counts, the depthwise ones included: each
    MBConv block is three layers (1×1 expansion, 3×3 depthwise, 1×1 projection; the first
    stage's blocks two), and a depthwise convolution is as much a spatial filter bank of
    the network as VGG's 3×3 convolutions. So Lite0 gives 49 layers (stem, 2 + 15 × 3 in
    the blocks, head; 21,008 features, Lite2 64 layers and 29,048), where tapping MBConv
    block outputs would give 18 and its stages 9 (2,096 features). The paper's VGG-16 gives
    12,416: 4,224 from its 13 convolutional layers, the rest from its two FC layers, which
    EfficientNet does not have (its pooled head is the ``bn2`` layer here).
    Left out: the convolutions of squeeze-and-excitation modules, which run on a globally
    pooled 1×1 map and compute channel gates, not feature maps (Lite has none).

    Found from the data flow of one forward pass rather than from module names, so the
    rule holds for any timm CNN: each ``Conv2d`` call's output is followed to the module
    that takes it as input if that module is a normalisation, then to the activation that
    takes the normalised tensor. ``input_size`` (C, H, W) of that probe pass defaults to
    the model's pretrained configuration (224×224 otherwise).
    """
    import copy
    import weakref

    import torch
    from torch import nn

    global _CONV_LAYERS_MEMO
    if _CONV_LAYERS_MEMO is None:
        _CONV_LAYERS_MEMO = weakref.WeakKeyDictionary()
    if model in _CONV_LAYERS_MEMO:
        return list(_CONV_LAYERS_MEMO[model])
    if input_size is None:
        config = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
        input_size = tuple(config.get("input_size", (3, 224, 224)))
    probe = copy.deepcopy(model).eval()
    attention = {name for name, module in probe.named_modules()
                 if any(part in type(module).__name__ for part in _ATTENTION_CLASS_PARTS)}
    calls: list[tuple[str, nn.Module, object, object]] = []  # (name, module, input, output)

    def record(name):
        def hook(module, inputs, output):
            calls.append((name, module, inputs[0] if inputs else None, output))
        return hook

    handles = [module.register_forward_hook(record(name))
               for name, module in probe.named_modules() if name]
    try:
        with torch.inference_mode():
            probe.forward_features(torch.zeros((1, *input_size)))
    finally:
        for handle in handles:
            handle.remove()

    def kind(module) -> str:
        owner = type(module).__module__
        if isinstance(module, nn.Conv2d):
            return "conv"
        if owner.startswith(_NORM_MODULES):
            return "norm"
        if owner.startswith(_ACTIVATION_MODULES):
            return "act"
        if isinstance(module, nn.Identity) or "drop" in type(module).__name__.lower():
            return "pass"  # eval mode: hands its input on unchanged (Identity, dropout)
        return "other"

    def consumer(after: int, tensor, wanted: str):
        """The first module called after call ``after`` that takes ``tensor`` as input
        and is of kind ``wanted``; None if the first taker is of another kind. Identity
        and dropout modules are looked through."""
        for index in range(after + 1, len(calls)):
            name, module, given, output = calls[index]
            if given is tensor:
                if kind(module) == "pass":
                    tensor = output
                    continue
                return index if kind(module) == wanted else None
        return None

    names = []
    for index, (name, module, _, output) in enumerate(calls):
        if kind(module) != "conv" or any(name.startswith(prefix + ".") for prefix in attention):
            continue
        chosen = index
        norm = consumer(chosen, calls[chosen][3], "norm")
        if norm is not None:
            chosen = norm
        act = consumer(chosen, calls[chosen][3], "act")
        if act is not None:
            chosen = act
        names.append(calls[chosen][0])
    names = list(dict.fromkeys(names))  # a module called twice is tapped once
    if len(names) < 2:
        raise TransferkitError(f"{type(model).__name__} has {len(names)} convolutional layer(s); "
                               f"--layer {ALL_CONV} (the default of --method fne) needs a "
                               "convolutional network; use --layer stages (the stage outputs, "
                               "which --method fne also takes).")
    _CONV_LAYERS_MEMO[model] = list(names)
    return names


def resolve_layers(model: "nn.Module", layers) -> list[str]:
    """Expand ``"stages"``, ``"all"``, ``"fne"``, ``"all-conv"`` or comma-separated names
    into module names."""
    if isinstance(layers, str):
        layers = [part.strip() for part in layers.split(",") if part.strip()]
    known = dict(model.named_modules())
    resolved: list[str] = []
    for name in layers:
        if name in ("all", "stages", "fne"):
            # FNE pools every convolutional stage and the final feature map (Garcia-Gasulla
            # et al. 2018): the stages; "all" adds the pre-logits vector.
            resolved += default_layers(model) if name == "all" else stage_layers(model)
        elif name == ALL_CONV:
            resolved += conv_layers(model)
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
            # Pooled at once: a later in-place operation (a residual ``x += shortcut``)
            # cannot change what was tapped, and only vectors are held, not dozens of
            # full-resolution maps when every convolutional layer is tapped.
            def capture(module, inputs, output):
                self._captured[name] = pool(output, self.pooling)
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
                    outputs.append(self._captured[name])
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
