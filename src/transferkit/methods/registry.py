"""Transfer methods by name, in the style of timm's model registry.

A method is registered under a name with the family it belongs to (``classifier`` for
`fit`, ``domain-deep`` and ``domain-shallow`` for `adapt`, ``fewshot``, …) and the place
where it lives, ``"module.path:Attribute"`` (a class or a factory function). The registry
imports nothing it registers: a name is resolved only when :func:`create_method` or
:func:`method_class` asks for it, so building the command line, listing methods or
reading a bundle's config costs no torch import. Every option list (the CLI's choices,
`fit`'s methods, `adapt`'s deep and shallow lists, the negative-transfer check) is
derived from here.

The catalogue of transferkit's own methods is :mod:`transferkit.methods` (its
``__init__``). Another package registers a method the same way, or with the decorator::

    @register_method("my-method", family="domain-shallow")
    class MyMethod(DomainAdaptationClassifier): ...
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from transferkit.errors import TransferkitError

FAMILIES = ("classifier", "domain-deep", "domain-shallow", "fewshot", "distill", "zeroshot",
            "multitask", "autoencoder", "anomaly", "segmentation")


@dataclass(frozen=True)
class MethodSpec:
    """What the registry knows of one method without importing it."""

    name: str
    entry: str  # "module.path:Attribute", a class or a function returning an estimator
    family: str
    saves_bundle: bool = False  # its fitted estimator can be saved as a model folder
    baseline: bool = False  # a reference row (source only, oracle), not a user's choice
    semi_supervised: bool = False  # also learns from a few labelled target images
    refits_cheaply: bool = False  # frozen features: the negative-transfer check can refit it
    summary: str = ""  # one line for --help


_REGISTRY: dict[str, MethodSpec] = {}


def register_method(name: str, entry: str | None = None, *, family: str,
                    saves_bundle: bool = False, baseline: bool = False,
                    semi_supervised: bool = False, refits_cheaply: bool = False,
                    summary: str = ""):
    """Register ``name``: lazily with ``entry`` (``"module:Attribute"``), or as a class or
    function decorator when ``entry`` is left out."""
    if family not in FAMILIES:
        raise ValueError(f"unknown method family {family!r}; one of {', '.join(FAMILIES)}.")

    def add(target: str):
        _REGISTRY[name] = MethodSpec(name, target, family, saves_bundle, baseline,
                                     semi_supervised, refits_cheaply, summary)

    if entry is not None:
        add(entry)
        return None

    def decorate(obj):
        add(f"{obj.__module__}:{obj.__qualname__}")
        return obj

    return decorate


def _spec(name: str) -> MethodSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise TransferkitError(f"unknown method {name!r}; choose one of "
                               f"{', '.join(list_methods())}.") from None


def method_spec(name: str) -> MethodSpec:
    return _spec(name)


def list_methods(family: str | None = None, *, include_baselines: bool = False,
                 **flags) -> list[str]:
    """Registered names in registration order, optionally of one ``family`` and with the
    given flags (e.g. ``refits_cheaply=True``)."""
    return [spec.name for spec in _REGISTRY.values()
            if (family is None or spec.family == family)
            and (include_baselines or not spec.baseline)
            and all(getattr(spec, flag) == value for flag, value in flags.items())]


def _resolve(entry: str):
    module, _, attribute = entry.partition(":")
    obj = importlib.import_module(module)
    for part in attribute.split("."):
        obj = getattr(obj, part)
    return obj


def method_class(name: str):
    """The class or factory registered as ``name`` (imports its module)."""
    return _resolve(_spec(name).entry)


def create_method(name: str, **params):
    """A new, unfitted estimator of method ``name`` with ``params``."""
    return method_class(name)(**params)


def bundle_name_of(estimator) -> str | None:
    """The name a fitted ``estimator`` is saved under (``method`` in ``config.json``): the
    bundle-saving method whose entry is the estimator's class or one of its bases."""
    entries = {spec.entry: spec.name for spec in _REGISTRY.values() if spec.saves_bundle}
    for cls in type(estimator).__mro__:
        name = entries.get(f"{cls.__module__}:{cls.__qualname__}")
        if name is not None:
            return name
    return None


def bundle_class(name: str):
    """The class whose ``_load_artifacts`` reads a bundle saved as ``name``, or None."""
    spec = _REGISTRY.get(name)
    if spec is None or not spec.saves_bundle:
        return None
    target = _resolve(spec.entry)
    # A factory (fne) builds an estimator of a registered class, saved under that name.
    return target if isinstance(target, type) else None
