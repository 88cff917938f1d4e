"""The single training loop shared by every deep method, and its parts."""

from transferkit.train.groups import (
    LayerGroup,
    describe_groups,
    discriminative_param_groups,
    keep_frozen_batchnorm_eval,
    last_groups,
    layer_groups,
    set_trainable,
)
from transferkit.train.loop import TrainConfig, TrainConfigError, TrainResult, fit_loop, make_accelerator

__all__ = ["LayerGroup", "TrainConfig", "TrainConfigError", "TrainResult", "describe_groups",
           "discriminative_param_groups", "fit_loop", "keep_frozen_batchnorm_eval", "last_groups",
           "layer_groups", "make_accelerator", "set_trainable"]
