"""A pretrained registry backbone as the feature extractor of deep domain adaptation.

The network of Long et al. (DAN 2015, CDAN 2018) and of the Transfer-Learning-Library's
Office-31 benchmarks: the pretrained backbone → global pooling → a *bottleneck* (linear
→ BatchNorm → ReLU, 256-d) → a linear classifier. The alignment terms (a domain
discriminator, MMD, CORAL, ...) act on the bottleneck's output.

Fine-tuning the whole backbone at 224 px takes hours on a CPU, and most of it is spent
running early layers whose weights barely move. Here only the last ``trainable`` layer
groups (:func:`transferkit.train.groups.layer_groups`) train, at a tenth of the head's
learning rate as in the reference protocol; the frozen prefix before them runs once per
image and *view* (the centre crop and ``views`` augmented training crops) through the
fast extraction path, and its outputs are cached on disk (:mod:`transferkit.train.
frozen_prefix`), so every method, seed and adaptation weight of a pair reuses them. The
augmented views are drawn with a fixed seed, not the run's: seeds then differ in the
network's initial weights, batches and the view drawn each time, and share the cache.
``trainable=0`` trains the bottleneck and heads on the pooled features alone.
"""

from __future__ import annotations

import copy
import os
from collections import OrderedDict

import numpy as np
import torch
from torch import nn

from transferkit.errors import DataError, TransferkitError

# The backbone's trainable groups learn at this fraction of the head's rate (the reference
# implementations' 0.1: the pretrained weights are a good start, the heads are random).
BACKBONE_LR_FACTOR = 0.1
# Augmented views share one seed across runs, so every run reads the same cache entries.
VIEW_SEED = 0
# Activation sets kept in memory between fits of one process: source only, the method
# and each adaptation weight of ``adapt`` read the same images' activations.
_MEMORY: "OrderedDict[tuple, object]" = OrderedDict()
MEMORY_ENTRIES = 4


def is_image_files(X) -> bool:
    """Whether ``X`` names image files (a folder path or a sequence of paths) rather than
    holding pixels."""
    if isinstance(X, (str, os.PathLike)):
        return True
    if isinstance(X, np.ndarray):
        return X.dtype.kind in "OUS"
    if isinstance(X, (list, tuple)) and len(X):
        return isinstance(X[0], (str, os.PathLike))
    return False


class _BackboneTail(nn.Module):
    """The backbone from the cut on, up to its pooled features.

    Its BatchNorm layers stay in inference mode while the rest trains: they keep the
    pretrained (ImageNet) statistics, and only their affine weights learn. With the batch
    statistics of 32 augmented crops instead, fine-tuning the whole of EfficientNet-Lite0
    on Office-31 lost 5–13 points of target accuracy against the frozen backbone (source
    only, H100; benchmarks/RESULTS.md, domain-office31-gpu); with the statistics kept it
    came within 2.6 points of it on A→D and above it on D→W and D→A. The adapting methods' per-domain statistics (AdaBN) then apply to
    the bottleneck's BatchNorm alone.
    """

    def __init__(self, steps: list[nn.Module], pool: nn.Module | None):
        super().__init__()
        self.steps = nn.ModuleList(steps)
        self.pool = pool

    def train(self, mode: bool = True):
        super().train(mode)
        for module in self.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()
        return self

    def forward(self, x):
        for step in self.steps:
            x = step(x)
        return self.pool(x) if self.pool is not None else x


class PretrainedNetwork(nn.Module):
    """``features`` = backbone tail → bottleneck; ``classifier`` linear; a method's
    ``extra`` modules (built on the bottleneck width); ``steps_done`` as in
    :class:`transferkit.nets.digits.DigitNetwork`, whose interface this shares."""

    def __init__(self, tail: _BackboneTail, in_features: int, n_classes: int, bottleneck: int,
                 extra_modules=None):
        super().__init__()
        self.features = nn.Sequential(tail, nn.Linear(in_features, bottleneck),
                                      nn.BatchNorm1d(bottleneck), nn.ReLU())
        self.classifier = nn.Linear(bottleneck, n_classes)
        self.n_features = int(bottleneck)
        self.extra = nn.ModuleDict(extra_modules(self.n_features) if extra_modules else {})
        self.register_buffer("steps_done", torch.zeros((), dtype=torch.long))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.classifier(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class PretrainedInputs:
    """A registry backbone split at its last ``trainable`` groups: cached activations of the
    frozen prefix for fitting and prediction, and new networks from the cut on."""

    pretrained = True

    def __init__(self, name: str | None = None, trainable: int = 0, views: int = 4,
                 cache_dir=None, use_cache: bool = True, device: str = "auto",
                 progress: bool = False):
        from transferkit.backbones import create_backbone
        from transferkit.backbones.registry import DEFAULT_BACKBONE
        from transferkit.train.frozen_prefix import NetworkChain
        from transferkit.train.groups import last_groups, layer_groups

        if not isinstance(trainable, (int, np.integer)) or trainable < 0:
            raise DataError(f"trainable must be a non-negative number of layer groups, got "
                            f"{trainable!r}.")
        if not isinstance(views, (int, np.integer)) or views < 0:
            raise DataError(f"views must be a non-negative integer, got {views!r}.")
        self.name = name or DEFAULT_BACKBONE
        try:
            self.backbone = create_backbone(self.name)
        except TransferkitError:
            raise
        except Exception as exc:  # a hub name that cannot be fetched, an unknown architecture
            raise DataError(f"cannot load the backbone {self.name!r}: {exc}") from exc
        model = self.backbone.model.eval()
        self.input_shape = tuple(int(v) for v in self.backbone.data_config["input_size"])
        self.chain = NetworkChain.of(model, self.input_shape)
        if self.chain is None:
            raise DataError(f"the backbone {self.name!r} is not a chain of stages with global "
                            "pooling (a CNN such as efficientnet_lite0 or a ResNet is), so it "
                            "cannot be split into a cached frozen part and a trained part.")
        groups = layer_groups(model)
        n_backbone = sum(not group.is_head for group in groups)
        self.trainable = min(int(trainable), n_backbone)
        trained = [name for index in last_groups(groups, self.trainable)
                   if not groups[index].is_head for name in groups[index].param_names]
        self.cut = self.chain.cut_for(trained) if trained else self.chain.pooled
        self.views = int(views)
        self.cache_dir, self.use_cache = cache_dir, use_cache
        from transferkit.train.loop import resolves_to_cpu

        self.device = "cpu" if resolves_to_cpu(device) else "cuda"
        self.progress = progress

    # -- activations --------------------------------------------------------------------
    def _policy(self, augmented: bool):
        from transferkit.train.frozen_prefix import ViewPolicy

        if not augmented:
            return ViewPolicy(self.backbone.eval_transform())
        return ViewPolicy(self.backbone.eval_transform(), self.backbone.train_transform(),
                          self.views, VIEW_SEED)

    def activations(self, paths, augmented: bool):
        """:class:`~transferkit.train.frozen_prefix.PrefixActivations` of ``paths`` at the cut."""
        from transferkit.features.cache import file_digest
        from transferkit.train.frozen_prefix import prefix_activations

        paths = [str(p) for p in paths]
        key = None
        if self.use_cache:
            # Keyed by the files' contents (as the disk cache is), never by names alone.
            try:
                digests = tuple(file_digest(p) for p in paths)
            except Exception:  # an unreadable file: prefix_activations reports it
                digests = None
            if digests is not None:
                key = (self.chain.prefix_digest(self.cut), self.cut, self.views if augmented
                       else 0, repr(self._policy(augmented).identity(1 if augmented else 0)),
                       digests)
                if key in _MEMORY:
                    _MEMORY.move_to_end(key)
                    return _MEMORY[key]
        result = prefix_activations(self.chain, [self.cut], paths, self._policy(augmented),
                                    self.backbone.identity(), cache_dir=self.cache_dir,
                                    use_cache=self.use_cache, device=self.device,
                                    progress=self.progress)
        if key is not None:
            _MEMORY[key] = result
            while len(_MEMORY) > MEMORY_ENTRIES:
                _MEMORY.popitem(last=False)
        return result

    def readable(self, paths) -> tuple[list[str], np.ndarray, list[tuple[str, str]]]:
        """(readable paths, their mask, skipped (path, reason)) — computing and caching the
        centre view of each on the way, so later fits and predictions read it back."""
        result = self.activations(paths, augmented=False)
        kept = [str(p) for p, ok in zip(paths, result.ok) if ok]
        return kept, result.ok, result.skipped

    def fit_arrays(self, X, y, Xt, yt):
        """``(source, y, target, yt)``: activations as ``(n, views, ...)`` tensors, the labels
        of the readable rows. Unreadable images are left out and listed in ``skipped``."""
        from transferkit.data import as_paths

        source_paths = as_paths(X, allow_single=False)
        y = np.asarray(y)
        if y.ndim != 1 or len(y) != len(source_paths):
            raise DataError(f"{len(source_paths)} source images but labels of shape {y.shape}.")
        source = self.activations(source_paths, augmented=True)
        self.skipped = list(source.skipped)
        y = y[source.ok]
        if not len(y):
            raise DataError("none of the source images could be read.")
        target_array = source.arrays[self.cut][:0]
        if Xt is not None:
            target_paths = as_paths(Xt, allow_single=False)
            target = self.activations(target_paths, augmented=True)
            self.skipped += target.skipped
            if yt is not None:
                yt = np.asarray(yt)
                if len(yt) != len(target_paths):
                    raise DataError(f"{len(target_paths)} target images but {len(yt)} target "
                                    "labels.")
                yt = yt[target.ok]
            target_array = target.arrays[self.cut]
            if not len(target_array):
                raise DataError("none of the target images could be read.")
        return (torch.from_numpy(source.arrays[self.cut]), y, torch.from_numpy(target_array), yt)

    def predict_array(self, X) -> torch.Tensor:
        """Centre-crop activations of images ``X``, one row per image, in order."""
        from transferkit.data import as_paths

        paths = as_paths(X)
        result = self.activations(paths, augmented=False)
        if not result.ok.all():
            path, reason = result.skipped[0]
            raise DataError(f"cannot predict {len(result.skipped)} unreadable image(s), e.g. "
                            f"{reason}")
        return torch.from_numpy(result.arrays[self.cut][:, 0])

    # -- networks -----------------------------------------------------------------------
    def network(self, n_classes: int, bottleneck: int, extra_modules=None) -> PretrainedNetwork:
        """A new network from the cut on: copies of the backbone's trainable steps (so fits
        never share weights), a new bottleneck and classifier."""
        chain = self.chain
        steps = [copy.deepcopy(step) for step in chain.steps[self.cut:]]
        pool = copy.deepcopy(chain.model.global_pool) if self.cut <= chain.n_steps else None
        tail = _BackboneTail(steps, pool)
        tail.requires_grad_(True)  # the backbone was loaded frozen, for extraction
        return PretrainedNetwork(tail, int(chain.shapes[chain.pooled][0]), n_classes,
                                 bottleneck, extra_modules)

    @staticmethod
    def param_groups(model: PretrainedNetwork, lr: float, weight_decay: float) -> list[dict]:
        """The backbone's steps at ``lr`` × :data:`BACKBONE_LR_FACTOR`, the rest at ``lr``."""
        backbone = [p for p in model.features[0].parameters()]
        ids = {id(p) for p in backbone}
        rest = [p for p in model.parameters() if id(p) not in ids]
        groups = [{"params": rest, "lr": lr, "weight_decay": weight_decay}]
        if backbone:
            groups.insert(0, {"params": backbone, "lr": lr * BACKBONE_LR_FACTOR,
                              "weight_decay": weight_decay})
        return groups
