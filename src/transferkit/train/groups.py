"""Layer groups of a network: freezing, frozen BatchNorm, discriminative learning rates.

A timm model describes its own depth order through ``group_matcher`` (stem, stages,
final conv; the classifier is whatever matches nothing). We use that coarse, stage-level
grouping so that "unfreeze one more group" and "lower learning rates for earlier
layers" mean the same thing for EfficientNet, ResNet, ConvNeXt or ViT, and we split the
classifier (the NEW head of a fine-tuned model) off as the last group.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

# Container names under which timm numbers its stages: "blocks.3.1.conv" belongs to
# "blocks.3"; used only to give groups readable names.
_STAGE_CONTAINERS = ("blocks", "stages", "layers", "features", "levels")


@dataclass
class LayerGroup:
    """Parameters that are frozen, unfrozen and given a learning rate together."""

    index: int
    name: str
    param_names: list[str]
    is_head: bool = False

    def parameters(self, model: nn.Module) -> list[nn.Parameter]:
        named = dict(model.named_parameters())
        return [named[name] for name in self.param_names]


def classifier_name(model: nn.Module) -> str | None:
    """Attribute path of the model's classifier module (``classifier``, ``fc``, ``head.fc``)."""
    get_classifier = getattr(model, "get_classifier", None)
    if get_classifier is None:
        return None
    head = get_classifier()
    for name, module in model.named_modules():
        if module is head and name:
            return name
    return None


def _readable_name(param_names: list[str]) -> str:
    prefixes: list[str] = []
    for name in param_names:
        parts = name.split(".")
        prefix = parts[0]
        if parts[0] in _STAGE_CONTAINERS and len(parts) > 1 and parts[1].isdigit():
            prefix = f"{parts[0]}.{parts[1]}"
        if prefix not in prefixes:
            prefixes.append(prefix)
    if len(prefixes) > 4:  # a long list of block names reads worse than a range
        return f"{prefixes[0]}..{prefixes[-1]}"
    return "+".join(prefixes)


def _top_level_matcher(model: nn.Module):
    # Models without a group_matcher: each top-level child with parameters is a group,
    # in definition order (the order of forward for nearly every CNN).
    order = {name: i for i, (name, _) in enumerate(model.named_children())}

    def match(param_name: str):
        return order.get(param_name.split(".")[0], len(order))

    return match


def layer_groups(model: nn.Module) -> list[LayerGroup]:
    """Ordered groups from input to output: stem, stage 1..N (+ final conv), head.

    Uses timm's coarse ``group_matcher`` (``timm.models.group_parameters``); the
    classifier module found by ``get_classifier()`` becomes the last group
    (``is_head=True``) even where timm lumps it with a final norm.
    """
    from timm.models import group_parameters

    head_prefix = classifier_name(model)
    names = [name for name, _ in model.named_parameters()]
    head_names = [n for n in names if head_prefix and (n == head_prefix or n.startswith(head_prefix + "."))]
    matcher = model.group_matcher(coarse=True) if hasattr(model, "group_matcher") else _top_level_matcher(model)
    grouped = group_parameters(model, matcher)
    groups: list[LayerGroup] = []
    for group_id in sorted(grouped):
        members = [n for n in grouped[group_id] if n not in head_names]
        if members:
            groups.append(LayerGroup(len(groups), _readable_name(members), members))
    if head_names:
        groups.append(LayerGroup(len(groups), _readable_name(head_names), head_names, is_head=True))
    return groups


def set_trainable(model: nn.Module, groups: list[LayerGroup], trainable: set[int]) -> None:
    """Unfreeze the groups whose index is in ``trainable``; freeze every other parameter."""
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    named = dict(model.named_parameters())
    for group in groups:
        if group.index in trainable:
            for name in group.param_names:
                named[name].requires_grad_(True)


def last_groups(groups: list[LayerGroup], k: int) -> set[int]:
    """Indices of the head plus the last ``k`` backbone groups."""
    backbone = [g.index for g in groups if not g.is_head]
    chosen = set(backbone[len(backbone) - k:]) if k > 0 else set()
    return chosen | {g.index for g in groups if g.is_head}


def keep_frozen_batchnorm_eval(model: nn.Module) -> int:
    """Put every BatchNorm whose affine parameters are all frozen into eval mode.

    Call right after ``model.train()``. A frozen layer must not change at all, and in
    train mode BatchNorm would both update its running statistics and normalise with
    batch statistics (noisy for small batches) even though its weights do not move.
    Returns how many BatchNorm modules were switched.
    """
    switched = 0
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            params = list(module.parameters(recurse=False))
            if params and not any(p.requires_grad for p in params):
                module.eval()
                switched += 1
    return switched


def discriminative_param_groups(model: nn.Module, groups: list[LayerGroup], lr: float,
                                factor: float = 1 / 3, weight_decay: float = 0.0) -> list[dict]:
    """Optimiser param groups: group ``i`` of ``N`` (0-based) gets ``lr * factor**(N-1-i)``.

    The head (last group) trains at ``lr``, each earlier group ``factor`` times slower
    (Howard & Ruder 2018). Only parameters with ``requires_grad`` are included, so frozen
    groups get no optimiser state and cannot move. Biases and norm weights (1-D tensors)
    go in a twin group without weight decay, the usual AdamW practice.
    """
    n_groups = len(groups)
    named = dict(model.named_parameters())
    param_groups: list[dict] = []
    for group in groups:
        group_lr = lr * factor ** (n_groups - 1 - group.index)
        params = [named[n] for n in group.param_names if named[n].requires_grad]
        decay = [p for p in params if p.ndim > 1]
        no_decay = [p for p in params if p.ndim <= 1]
        for members, wd, suffix in ((decay, weight_decay, ""), (no_decay, 0.0, "/no_decay")):
            if members:
                param_groups.append({"params": members, "lr": group_lr, "weight_decay": wd,
                                     "name": group.name + suffix, "group_index": group.index})
    return param_groups


def describe_groups(model: nn.Module, groups: list[LayerGroup]) -> list[dict]:
    """One JSON-able row per group: index, name, parameter count, trainable or not."""
    named = dict(model.named_parameters())
    return [{"index": g.index, "name": g.name, "head": g.is_head,
             "parameters": int(sum(named[n].numel() for n in g.param_names)),
             "trainable": all(named[n].requires_grad for n in g.param_names)} for g in groups]

