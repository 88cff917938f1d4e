"""The single training loop shared by every deep method, and its parts.

The names below load on first use (PEP 562), so that importing a torch-free part such
as :mod:`transferkit.train.distributed` (asked by every job whether it runs under a
launcher) does not import torch.
"""

import importlib

_EXPORTS = {
    "LayerGroup": "groups", "describe_groups": "groups", "discriminative_param_groups": "groups",
    "keep_frozen_batchnorm_eval": "groups", "last_groups": "groups", "layer_groups": "groups",
    "set_trainable": "groups",
    "TrainConfig": "loop", "TrainConfigError": "loop", "TrainResult": "loop", "fit_loop": "loop",
    "make_accelerator": "loop",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"transferkit.train.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'transferkit.train' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
