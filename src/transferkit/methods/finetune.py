"""Fine-tuning: train a new head on a pretrained network and (some of) its layers.

Yosinski et al. 2014 ("How transferable are features in deep neural networks?"): early
layers are general, late layers task-specific, so they are worth retraining first.
Howard & Ruder 2018 (ULMFiT): gradual unfreezing (head first, then one more layer group
at a time) and discriminative learning rates (each group ``lr_factor`` times slower than
the one above it). Loss: cross-entropy (optional label smoothing) on the new head.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.validation import check_is_fitted

from transferkit.backbones import DEFAULT_BACKBONE
from transferkit.data.dataset import as_paths
from transferkit.errors import BundleError, DataError
from transferkit.train.distributed import is_main_process
from transferkit.train.groups import (
    classifier_name,
    describe_groups,
    discriminative_param_groups,
    last_groups,
    layer_groups,
    set_trainable,
)
from transferkit.train.loop import (
    DEVICES,
    PRECISIONS,
    TrainConfig,
    TrainConfigError,
    check_device_and_precision,
    fit_loop,
)

STRATEGIES = ("gradual", "head", "last-k", "full")
HEADS = ("linear", "mlp")
MLP_HIDDEN = 256
WEIGHTS_FILE = "model.safetensors"
# Machine-local options a saved model leaves out (run_dir: a config must never set it).
_NOT_SAVED = ("run_dir", "progress", "num_workers", "cache_dir")


def build_head(kind: str, n_features: int, n_classes: int, dropout: float):
    """The new classifier. Always a ``Sequential`` so saved weights have one layout."""
    from torch import nn

    if kind == "mlp":
        return nn.Sequential(nn.Dropout(dropout), nn.Linear(n_features, MLP_HIDDEN), nn.ReLU(),
                             nn.Dropout(dropout), nn.Linear(MLP_HIDDEN, n_classes))
    return nn.Sequential(nn.Dropout(dropout), nn.Linear(n_features, n_classes))


def install_head(model, kind: str, n_classes: int, dropout: float) -> str:
    """Replace the model's classifier by a new head; returns the classifier's attribute path."""
    # reset_classifier first: timm then sets num_classes and the pooling it expects.
    model.reset_classifier(n_classes)
    name = classifier_name(model)
    if name is None:
        raise TrainConfigError(f"{type(model).__name__} has no classifier timm can reset.")
    parent = model
    *path, last = name.split(".")
    for part in path:
        parent = getattr(parent, part)
    setattr(parent, last, build_head(kind, int(model.num_features), n_classes, dropout))
    return name


def classification_step(label_smoothing: float, skipped: set):
    """``step_fn`` for the loop: cross-entropy of a batch from :mod:`transferkit.train.data`."""
    import torch.nn.functional as F

    def step(model, batch):
        images, labels, bad, _ = batch
        skipped.update(bad)
        if len(labels) == 0:
            return None, 0, 0
        logits = model(images).float()
        loss = F.cross_entropy(logits, labels, label_smoothing=label_smoothing)
        return loss, (logits.argmax(1) == labels).sum(), len(labels)

    return step


def _resolve_device(device: str):
    import torch

    if device == "cuda" or (device == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def _unreadable(path: str) -> str:
    """The ``(path, reason)`` reason used for a file the decoder rejected, as the linear probe."""
    return f"{path}: cannot be read as an image (corrupt, truncated or not an image)"


def _stage_cut(chain, groups, stage) -> int:
    """The cut before the first layer ``stage`` (``(name, trainable groups, last)``) trains."""
    return chain.cut_for([n for g in groups if g.index in stage[1] for n in g.param_names])


def _worth_caching(chain, cut: int) -> bool:
    """A prefix runs separately when it is not empty and its activations are no larger
    than the image (deeper in, they are larger than the image for many networks)."""
    image_floats = int(np.prod(chain.shapes[0]))
    return 0 < cut <= chain.pooled and int(np.prod(chain.shapes[cut])) <= image_floats


def _json_label(value):
    return value.item() if hasattr(value, "item") else value


class FineTuner(ClassifierMixin, BaseEstimator):
    """Fine-tune a pretrained timm network on image files (``X``: paths, ``y``: labels).

    Strategies (``strategy``):

    * ``"head"``: the pretrained network is frozen (BatchNorm statistics included); only
      the new head learns. Cheapest; right when the data are tiny or close to ImageNet.
    * ``"last-k"``: the head plus the last ``k`` layer groups learn.
    * ``"full"``: every group learns, group ``i`` of ``N`` at ``lr * lr_factor**(N-1-i)``.
    * ``"gradual"`` (default): ULMFiT gradual unfreezing. The head trains alone until the
      validation loss stalls, then one more group is unfrozen per stage (each stage with
      early stopping and its best weights kept) until the last ``k`` groups learn (where
      ``"last-k"`` starts) or the epoch budget ``epochs`` is spent. It is the default
      because on small data a randomly initialised head would otherwise send large
      gradients into pretrained layers and distort them (Yosinski et al. 2014; Howard &
      Ruder 2018; Kumar et al. 2022), while it still adapts the late, task-specific
      layers that ``"head"`` cannot.

    Frozen prefix (``views``): every stage that leaves the first layers frozen trains
    only the network after them, on their outputs computed once per image and view and
    cached on disk (``cache_dir``, as the feature cache; ``use_cache=False``: in memory
    only): the centre crop plus ``views`` (at most ``epochs - 1``) training-augmented
    crops per training image, seeded by the image's content, one view drawn at random
    per image and epoch; the validation images' centre crops. Predictions are the same
    network as without the cache (:mod:`transferkit.train.frozen_prefix`). When the
    final model's first layers are still the pretrained ones (any strategy but
    ``"full"``, with ``views > 0``; ``prediction_prefix_`` names the cut and is saved
    with the model), prediction runs them the same way, on the cached centre crops, and
    only the rest in PyTorch. ``views=0``: no cache, every epoch augments afresh and
    runs the whole network (the way ``"full"`` always trains).
    Defaults ``k=1``, ``views=8``: on hymenoptera (Lite0, 2-core CPU) unfreezing the
    second-last group (blocks.5) tripled the epoch time without lowering the validation
    loss, and 8 views reached 0.948 validation accuracy where 4 reached 0.941
    (``benchmarks/RESULTS_finetune.md``).

    Layer groups come from timm's ``group_matcher`` (stem, stages, head); see
    :func:`transferkit.train.groups.layer_groups`. Augmentation is timm's training
    transform for the backbone (random resized crop, flip, colour jitter; RandAugment
    ``rand-m9-mstd0.5`` when ``rand_augment``). When no ``X_val`` is given, a seeded
    stratified ``val_fraction`` of ``X`` serves for early stopping (``val_fraction=0``:
    no validation, no early stopping). Unreadable training images are skipped with a
    warning (``skipped_`` lists those of ``X``, never those of ``X_val``); ``predict``
    raises :class:`DataError` on them.
    ``run_dir`` keeps checkpoints, ``metrics.csv`` and ``learning_curves.png``; fitting
    again with the same ``run_dir`` resumes an interrupted run, and refuses
    (:class:`~transferkit.train.loop.RunMismatchError`) when the settings, the images'
    content, the labels or the class names differ from the run found there.
    ``precision="fp32"`` by default: the accuracy of whole bf16 training runs is not
    measured yet, so bf16 autocast is opt-in (``precision="bf16"``, ``--precision bf16``);
    ``"fp16"`` needs a GPU. Step times and bf16 inference agreement measured so far:
    ``benchmarks/RESULTS_finetune.md``, sections ``finetune`` and ``flowers``.
    """

    def __init__(self, backbone: str = DEFAULT_BACKBONE, weights: str | None = None,
                 arch: str | None = None, strategy: str = "gradual", k: int = 1, epochs: int = 15,
                 lr: float = 1e-3, lr_factor: float = 1 / 3, batch_size: int = 32,
                 patience: int | None = 3, optimizer: str = "adamw", schedule: str = "cosine",
                 weight_decay: float = 0.01, head: str = "linear", dropout: float = 0.2,
                 label_smoothing: float = 0.0, rand_augment: bool = False,
                 image_size: int | None = None, precision: str = "fp32", device: str = "auto",
                 val_fraction: float = 0.2, random_state: int = 0, num_workers: int | None = None,
                 progress: bool = True, run_dir: str | None = None, views: int = 8,
                 cache_dir: str | None = None, use_cache: bool = True):
        self.backbone = backbone
        self.weights = weights
        self.arch = arch
        self.strategy = strategy
        self.k = k
        self.epochs = epochs
        self.lr = lr
        self.lr_factor = lr_factor
        self.batch_size = batch_size
        self.patience = patience
        self.optimizer = optimizer
        self.schedule = schedule
        self.weight_decay = weight_decay
        self.head = head
        self.dropout = dropout
        self.label_smoothing = label_smoothing
        self.rand_augment = rand_augment
        self.image_size = image_size
        self.precision = precision
        self.device = device
        self.val_fraction = val_fraction
        self.random_state = random_state
        self.num_workers = num_workers
        self.progress = progress
        self.run_dir = run_dir
        self.views = views
        self.cache_dir = cache_dir
        self.use_cache = use_cache

    # -- checks -----------------------------------------------------------------------
    def _check_params(self, here: bool = True) -> None:
        """Refuse parameters fit cannot use; ``here=False`` leaves out whether this
        machine can train with the device and precision (a loaded model only predicts)."""
        def bad(message):
            raise TrainConfigError(message)

        if self.strategy not in STRATEGIES:
            bad(f"unknown strategy {self.strategy!r}; choose one of {STRATEGIES}.")
        if self.head not in HEADS:
            bad(f"unknown head {self.head!r}; choose one of {HEADS}.")
        if not isinstance(self.k, (int, np.integer)) or self.k < 0:
            bad(f"k must be a non-negative integer, got {self.k!r}.")
        if not isinstance(self.epochs, (int, np.integer)) or self.epochs < 1:
            bad(f"epochs must be a positive integer, got {self.epochs!r}.")
        if not self.lr > 0:
            bad(f"lr must be positive, got {self.lr!r}.")
        if not 0 < self.lr_factor <= 1:
            bad(f"lr_factor must lie in (0, 1], got {self.lr_factor!r}.")
        if not isinstance(self.batch_size, (int, np.integer)) or self.batch_size < 1:
            bad(f"batch_size must be a positive integer, got {self.batch_size!r}.")
        if not 0 <= self.dropout < 1:
            bad(f"dropout must lie in [0, 1), got {self.dropout!r}.")
        if not 0 <= self.label_smoothing < 1:
            bad(f"label_smoothing must lie in [0, 1), got {self.label_smoothing!r}.")
        if not 0 <= self.val_fraction < 1:
            bad(f"val_fraction must lie in [0, 1), got {self.val_fraction!r}.")
        if not isinstance(self.views, (int, np.integer)) or self.views < 0:
            bad(f"views must be a non-negative integer, got {self.views!r}.")
        if self.image_size is not None and int(self.image_size) < 16:
            bad(f"image_size must be at least 16 pixels, got {self.image_size!r}.")
        if here:
            check_device_and_precision(self.device, self.precision)
        elif self.device not in DEVICES or self.precision not in PRECISIONS:
            bad(f"device {self.device!r} or precision {self.precision!r} is unknown; choose "
                f"from {DEVICES} and {tuple(PRECISIONS)}.")

    def _check_fitted(self) -> None:
        check_is_fitted(self, "model_")

    def _encode(self, X, y, what: str) -> tuple[list[str], np.ndarray]:
        paths = [str(path) for path in as_paths(X, allow_single=False)]
        y = np.asarray(y)
        if y.ndim != 1:
            raise DataError(f"{what} labels must be one-dimensional, got shape {y.shape}.")
        if len(paths) != len(y):
            raise DataError(f"{what}: {len(paths)} images but {len(y)} labels.")
        if not paths:
            raise DataError(f"{what}: no images given.")
        return paths, y

    # -- fitting ----------------------------------------------------------------------
    def _train_config(self, epochs: int, patience, stage: int, desc: str) -> TrainConfig:
        return TrainConfig(epochs=epochs, optimizer=self.optimizer, schedule=self.schedule,
                           patience=patience, device=self.device, precision=self.precision,
                           seed=int(self.random_state) + stage, progress=self.progress, desc=desc)

    def _stages(self, groups) -> list[tuple[str, set[int], bool]]:
        """``(name, trainable group indices, is_last_stage)`` for each training stage."""
        n_backbone = sum(not g.is_head for g in groups)
        if self.strategy == "head":
            return [("head", last_groups(groups, 0), True)]
        if self.strategy == "last-k":
            return [(f"last-{self.k}", last_groups(groups, min(self.k, n_backbone)), True)]
        if self.strategy == "full":
            return [("full", last_groups(groups, n_backbone), True)]
        # Gradual unfreezing stops at the last k groups, where last-k trains from the start:
        # the early groups are the general ones (Yosinski et al. 2014), and on a CPU the
        # expensive ones, whose activations are too large to cache.
        depth = min(int(self.k), n_backbone)
        return [(f"unfreeze-{n}", last_groups(groups, n), n == depth) for n in range(depth + 1)]

    def _stage_budget(self, remaining: int, last: bool, has_val: bool) -> tuple[int, int | None]:
        """(max epochs, patience) of a stage given the epochs left in the budget."""
        if last or self.strategy != "gradual":
            return remaining, self.patience
        # Gradual, intermediate stage: stop at the first epoch without improvement ("until
        # the validation loss stalls"), capped so the budget reaches deeper groups. Without
        # validation, one epoch per stage as in ULMFiT.
        cap = max(2, self.epochs // 4) if has_val else 1
        return min(remaining, cap), 1

    def _cached_stages(self, model, groups, stages, backbone, train_paths, train_labels,
                       val_paths, val_labels, augment, skipped: set) -> tuple[dict, object]:
        """``({stage: (tail, train batches, val batches)}, chain)`` for the stages that train
        on cached activations of the frozen prefix (see :mod:`transferkit.train.frozen_prefix`);
        ``chain``: the network as a chain, None when no stage uses one.

        Every such stage's cut comes from one pass over the images, done now: the prefix
        of a later stage is frozen in every earlier one, so the pretrained weights still
        hold. Stages that train the first step (``full``) or whose activations would be
        larger than the images themselves train on images, as without a cache.
        """
        from transferkit.train.frozen_prefix import (
            NetworkChain,
            ViewPolicy,
            cached_loader,
            prefix_activations,
        )

        self.prefix_ = {"cuts": [], "cached": 0, "computed": 0, "seconds": 0.0}
        if self.views == 0:
            return {}, None
        input_shape = tuple(int(v) for v in backbone.data_config["input_size"])
        chain = NetworkChain.of(model, input_shape)
        if chain is None:
            return {}, None
        stage_cuts = {}
        for stage in range(len(stages)):
            cut = _stage_cut(chain, groups, stages[stage])
            if _worth_caching(chain, cut):
                stage_cuts[stage] = cut
        if not stage_cuts:
            return {}, None
        import time

        started = time.perf_counter()
        cuts = sorted(set(stage_cuts.values()))
        device = _resolve_device(self.device).type
        options = dict(backbone_identity=backbone.identity(), cache_dir=self.cache_dir,
                       use_cache=self.use_cache, batch_size=self.batch_size,
                       num_workers=self.num_workers, device=device, progress=self.progress)
        # Each epoch shows one view per image: views beyond the epoch budget would never be
        # needed, and computing them costs a forward pass each.
        augmented = min(int(self.views), int(self.epochs) - 1)
        train_policy = ViewPolicy(backbone.eval_transform(), backbone.train_transform(**augment),
                                  augmented, int(self.random_state))
        # Every process of a distributed run gets here: they split the images between them.
        options["split_between_processes"] = True
        train = prefix_activations(chain, cuts, train_paths, train_policy, **options)
        skipped.update(path for path, _ in train.skipped)
        val = None
        if val_paths:
            val = prefix_activations(chain, cuts, val_paths, ViewPolicy(backbone.eval_transform()),
                                     **options)
            skipped.update(path for path, _ in val.skipped)
        kept_train = np.asarray(train_labels)[train.ok]
        kept_val = np.asarray(val_labels)[val.ok] if val is not None else None
        if len(kept_train) == 0:
            raise DataError("none of the training images could be read.")
        self.prefix_ = {"cuts": [chain.cut_name(c) for c in cuts],
                        "cached": train.n_cached + (val.n_cached if val else 0),
                        "computed": train.n_computed + (val.n_computed if val else 0),
                        "seconds": time.perf_counter() - started}
        stages_data = {}
        for stage, cut in stage_cuts.items():
            val_batches = None
            if val is not None and len(kept_val):
                val_batches = cached_loader(val.arrays[cut], kept_val, self.batch_size, shuffle=False)
            stages_data[stage] = (chain.tail(cut),
                                  cached_loader(train.arrays[cut], kept_train, self.batch_size,
                                                shuffle=True),
                                  val_batches)
        return stages_data, chain

    def fit(self, X, y, X_val=None, y_val=None):
        """Fine-tune on image paths ``X`` with labels ``y``; returns ``self``."""
        import torch

        from transferkit.backbones import create_backbone
        from transferkit.data.dataset import LabelledImages, stratified_split
        from transferkit.train.data import image_loader

        self._check_params()
        paths, y = self._encode(X, y, "training data")
        classes, encoded = np.unique(y, return_inverse=True)
        if len(classes) < 2:
            raise DataError(f"need at least two classes to fine-tune a classifier, got {list(classes)}.")
        if X_val is not None:
            if y_val is None:
                raise DataError("X_val was given without y_val.")
            val_paths, y_val = self._encode(X_val, y_val, "validation data")
            unknown = sorted(set(np.unique(y_val).tolist()) - set(classes.tolist()))
            if unknown:
                raise DataError(f"validation labels {unknown} do not occur in the training labels.")
            val_labels = np.searchsorted(classes, y_val)
            train_paths, train_labels = paths, encoded
        elif self.val_fraction > 0:
            images = LabelledImages([Path(p) for p in paths], encoded, [str(c) for c in classes])
            train_part, val_part = stratified_split(images, self.val_fraction, self.random_state)
            train_paths, train_labels = [str(p) for p in train_part.paths], train_part.labels
            val_paths, val_labels = [str(p) for p in val_part.paths], val_part.labels
            if len(val_paths) == 0:
                val_paths = None
        else:
            train_paths, train_labels, val_paths, val_labels = paths, encoded, None, None

        backbone = create_backbone(self.backbone, self.weights, self.arch)
        data_config = dict(backbone.data_config)
        if self.image_size is not None:
            size = int(self.image_size)
            data_config["input_size"] = (3, size, size)
        backbone.data_config = data_config
        model = backbone.model
        torch.manual_seed(int(self.random_state))  # the new head's initial weights
        install_head(model, self.head, len(classes), self.dropout)
        groups = layer_groups(model)

        augment = {"auto_augment": "rand-m9-mstd0.5"} if self.rand_augment else {}
        train_loader = image_loader(train_paths, train_labels, backbone.train_transform(**augment),
                                    self.batch_size, shuffle=True, num_workers=self.num_workers)
        val_loader = None
        if val_paths:
            val_loader = image_loader(val_paths, val_labels, backbone.eval_transform(),
                                      self.batch_size, shuffle=False, num_workers=self.num_workers)
        skipped: set[str] = set()
        step_fn = classification_step(self.label_smoothing, skipped)
        data_digest = settings = None
        if self.run_dir is not None:
            from transferkit.train.checkpoint import data_fingerprint

            # Hashed once for all stages; the class names are what the integer labels mean.
            data_digest = data_fingerprint(train_loader, val_loader,
                                           extra={"classes": [_json_label(c) for c in classes]})
            settings = {"backbone": backbone.identity(), "head": self.head, "dropout": self.dropout,
                        "label_smoothing": self.label_smoothing, "rand_augment": self.rand_augment,
                        "strategy": self.strategy, "k": int(self.k), "epochs": int(self.epochs),
                        "views": int(self.views)}
        stages = self._stages(groups)
        cached, chain = self._cached_stages(model, groups, stages, backbone, train_paths,
                                            train_labels, val_paths, val_labels, augment, skipped)
        # The prefix's pretrained weights at each stage's cut, to prove after training that
        # predictions may run through the same prefix (and its cached activations).
        pretrained = {} if chain is None else {
            cut: chain.prefix_digest(cut)
            for cut in {_stage_cut(chain, groups, stage) for stage in stages}}
        ran: list[int] = []

        history: list[dict] = []
        best_epoch, stopped_early = None, False
        # Each stage keeps its own best weights; across stages keep the overall best, so
        # a gradual stage that only made things worse is undone.
        best_loss, best_state = math.inf, None
        remaining = int(self.epochs)
        for stage, (name, trainable, last) in enumerate(stages):
            if remaining <= 0:
                break
            epochs, patience = self._stage_budget(remaining, last, val_loader is not None)
            ran.append(stage)
            set_trainable(model, groups, trainable)
            param_groups = discriminative_param_groups(model, groups, self.lr, self.lr_factor,
                                                       self.weight_decay)
            stage_dir = Path(self.run_dir) / f"stage-{stage}-{name}" if self.run_dir else None
            # The tail shares the model's modules: training it trains the model in place.
            network, train_batches, val_batches = cached.get(stage, (model, train_loader, val_loader))
            result = fit_loop(network, param_groups, train_batches, val_batches, step_fn,
                              self._train_config(epochs, patience, stage, name), stage_dir,
                              data_digest=data_digest, settings=settings)
            if network is model:
                model = result.model
            offset = len(history)
            for row in result.history:
                history.append({**row, "epoch": offset + row["epoch"], "stage": name,
                                "stage_epoch": row["epoch"]})
            stopped_early = result.stopped_early
            remaining -= result.epochs_run
            if result.best_epoch is None:
                continue
            kept = result.history[result.best_epoch - 1]
            if kept["val_loss"] is None:
                best_epoch = offset + result.best_epoch
            elif kept["val_loss"] < best_loss:
                best_loss, best_epoch = kept["val_loss"], offset + result.best_epoch
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if best_state is not None:
            model.load_state_dict(best_state)

        self.groups_ = describe_groups(model, groups)  # "trainable": in the last stage
        self.prediction_prefix_ = None
        if chain is not None and ran:
            # The prefix no stage trained; the last stage's cut, whose activations are cached.
            cut = min(_stage_cut(chain, groups, stages[stage]) for stage in ran)
            if _worth_caching(chain, cut) and chain.prefix_digest(cut) == pretrained[cut]:
                self.prediction_prefix_ = {"cut": chain.cut_name(cut), "weights": pretrained[cut]}
        self._prefix_chain = (model, chain)
        for parameter in model.parameters():
            parameter.requires_grad_(False)
        self.model_ = model.cpu().eval()
        self.classes_ = classes
        self.history_ = history
        self.best_epoch_ = best_epoch
        self.epochs_run_ = len(history)
        self.stopped_early_ = stopped_early
        self.data_config_ = data_config
        self.backbone_identity_ = backbone.identity()
        self.arch_ = backbone.arch
        self.classifier_name_ = classifier_name(model)
        self.n_features_ = int(model.num_features)
        self.validation_ = "given" if X_val is not None else (
            f"stratified split: {self.val_fraction:.0%} of each class, seed {self.random_state}"
            if val_loader is not None else "none")
        # The validation loader reports its unreadable files too; only those of X are
        # training skips (a caller scores X_val itself and reports its skips).
        given = set(paths) | {str(Path(p)) for p in paths}
        training_skips = sorted(p for p in skipped if p in given)
        validation_skips = sorted(p for p in skipped if p not in given)
        self.skipped_ = [(path, _unreadable(path)) for path in training_skips]
        if training_skips:
            warnings.warn(f"skipped {len(training_skips)} unreadable image(s): "
                          f"{', '.join(training_skips)}", stacklevel=2)
        if validation_skips:
            warnings.warn(f"skipped {len(validation_skips)} unreadable validation image(s): "
                          f"{', '.join(validation_skips)}", stacklevel=2)
        if self.run_dir is not None and is_main_process():  # one writer under torchrun
            self._write_run_reports(Path(self.run_dir))
        return self

    def _write_run_reports(self, run_dir: Path) -> None:
        from transferkit.report.curves import plot_learning_curves
        from transferkit.train.checkpoint import write_metrics_csv

        run_dir.mkdir(parents=True, exist_ok=True)
        write_metrics_csv(run_dir / "metrics.csv", self.history_)
        if self.history_:
            plot_learning_curves(self.history_, run_dir / "learning_curves.png")

    # -- prediction -------------------------------------------------------------------
    def _eval_transform(self):
        import timm.data

        config = {k: tuple(v) if isinstance(v, list) else v for k, v in self.data_config_.items()}
        return timm.data.create_transform(**config, is_training=False)

    def _predict_files(self, paths: list[str], pre_logits: bool = False):
        """Probabilities of the readable files in ``paths`` and a mask of which were read;
        with ``pre_logits``, the features the head sees instead of probabilities.

        When fitting left the network's first layers pretrained and frozen
        (``prediction_prefix_``), they run through the fast runtime and their centre-crop
        activations come from (and go to) the cache fit filled; only the rest runs here.
        """
        if not paths:
            return (np.zeros((0, self.n_features_ if pre_logits else len(self.classes_))),
                    np.zeros(0, dtype=bool))
        prefix = self._frozen_prefix()
        if prefix is not None:
            return self._predict_files_from_prefix(paths, *prefix, pre_logits=pre_logits)
        return self._predict_files_eager(paths, pre_logits)

    def _frozen_prefix(self):
        """``(chain, cut)`` of ``prediction_prefix_`` when the model still holds those
        weights before the cut and splits into a chain; None otherwise (eager)."""
        saved = getattr(self, "prediction_prefix_", None)
        if not saved:
            return None
        model, chain = getattr(self, "_prefix_chain", (None, None))
        if model is not self.model_:
            from transferkit.train.frozen_prefix import NetworkChain

            input_shape = tuple(int(v) for v in self.data_config_["input_size"])
            chain = NetworkChain.of(self.model_, input_shape)
            self._prefix_chain = (self.model_, chain)
        cut = chain.cut_index(saved["cut"]) if chain is not None else None
        if not cut or chain.prefix_digest(cut) != saved["weights"]:
            return None
        return chain, cut

    def _predict_files_from_prefix(self, paths: list[str], chain, cut: int, pre_logits: bool):
        import torch

        from transferkit.train.frozen_prefix import ViewPolicy, prefix_activations

        device = _resolve_device(self.device)
        # The eager path's transform, so the centre view is the one fit cached.
        activations = prefix_activations(
            chain, [cut], paths, ViewPolicy(self._eval_transform()), self.backbone_identity_,
            cache_dir=self.cache_dir, use_cache=self.use_cache, batch_size=self.batch_size,
            num_workers=self.num_workers, device=device.type, progress=False)
        inputs = activations.arrays[cut][:, 0]
        model = self.model_.to(device).eval().to(memory_format=torch.channels_last)
        tail = chain.tail(cut).eval()
        rows = []
        try:
            with torch.inference_mode():
                for start in range(0, len(inputs), self.batch_size):
                    batch = torch.from_numpy(inputs[start:start + self.batch_size]).to(device)
                    if batch.ndim == 4:
                        batch = batch.contiguous(memory_format=torch.channels_last)
                    out = tail(batch, pre_logits=pre_logits).float()
                    rows.append((out if pre_logits else torch.softmax(out, 1)).cpu())
        finally:
            self.model_ = model.cpu().to(memory_format=torch.contiguous_format)
        if not rows:
            width = self.n_features_ if pre_logits else len(self.classes_)
            return np.zeros((0, width)), activations.ok
        return torch.cat(rows).numpy().astype(np.float64), activations.ok

    def _predict_files_eager(self, paths: list[str], pre_logits: bool = False):
        import torch

        from transferkit.train.data import image_loader

        ok = np.zeros(len(paths), dtype=bool)
        device = _resolve_device(self.device)
        model = self.model_.to(device).eval().to(memory_format=torch.channels_last)
        loader = image_loader(paths, None, self._eval_transform(), self.batch_size, shuffle=False,
                              num_workers=self.num_workers if len(paths) > self.batch_size else 0)
        probabilities, offset = [], 0
        try:
            with torch.inference_mode():
                for images, _, bad, positions in loader:
                    if len(images):
                        ok[offset + positions.numpy()] = True
                        images = images.to(device).contiguous(memory_format=torch.channels_last)
                        if pre_logits:
                            rows = model.forward_head(model.forward_features(images), pre_logits=True)
                        else:
                            rows = torch.softmax(model(images).float(), 1)
                        probabilities.append(rows.float().cpu())
                    offset += len(images) + len(bad)
        finally:
            self.model_ = model.cpu().to(memory_format=torch.contiguous_format)
        if not probabilities:
            return np.zeros((0, self.n_features_ if pre_logits else len(self.classes_))), ok
        return torch.cat(probabilities).numpy().astype(np.float64), ok

    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities, columns in the order of ``classes_``."""
        self._check_fitted()
        paths = [str(path) for path in as_paths(X, allow_single=False)]
        proba, ok = self._predict_files(paths)
        if not ok.all():
            unreadable = [p for p, readable in zip(paths, ok) if not readable]
            raise DataError(f"cannot predict {len(unreadable)} unreadable image(s): {', '.join(unreadable)}")
        return proba

    def embed_paths(self, X):
        """(pre-logits features of the fine-tuned network for the readable images, ok mask)."""
        self._check_fitted()
        return self._predict_files([str(path) for path in as_paths(X, allow_single=False)], pre_logits=True)

    def predict_paths(self, X):
        """(probabilities of the readable images, ok mask, skipped ``(path, reason)`` list):
        what ``transferkit predict/evaluate`` need, skipping bad files instead of failing."""
        self._check_fitted()
        paths = [str(path) for path in as_paths(X, allow_single=False)]
        proba, ok = self._predict_files(paths)
        skipped = [(p, _unreadable(p)) for p, readable in zip(paths, ok) if not readable]
        return proba, ok, skipped

    def predict(self, X) -> np.ndarray:
        self._check_fitted()
        return self.classes_[np.argmax(self.predict_proba(X), axis=1)]

    # -- bundle -----------------------------------------------------------------------
    def _save_artifacts(self, folder: Path) -> dict:
        from transferkit.bundle import saved_params
        from transferkit.train.checkpoint import save_tensors

        self._check_fitted()
        save_tensors(Path(folder) / WEIGHTS_FILE, self.model_.state_dict())
        # The bundle carries its own learning curves (metrics.csv + learning_curves.png).
        self._write_run_reports(Path(folder))
        return {
            "backbone": self.backbone_identity_,
            "arch": self.arch_,
            "classes": [_json_label(c) for c in self.classes_],
            "head": {"kind": self.head, "hidden": MLP_HIDDEN if self.head == "mlp" else None,
                     "dropout": self.dropout, "module": self.classifier_name_,
                     "n_features": self.n_features_},
            "strategy": self.strategy,
            **({"prefix": self.prediction_prefix_}
               if getattr(self, "prediction_prefix_", None) else {}),
            "params": saved_params(self, _NOT_SAVED),
            "data_config": {k: list(v) if isinstance(v, tuple) else v for k, v in self.data_config_.items()},
            "training": {"best_epoch": self.best_epoch_, "epochs_run": self.epochs_run_,
                         "stopped_early": self.stopped_early_, "validation": self.validation_,
                         "groups": self.groups_, "history": self.history_},
        }

    @classmethod
    def _load_artifacts(cls, folder: Path, config: dict) -> "FineTuner":
        import timm

        from transferkit.bundle import (
            BACKBONE_IDENTITY,
            CLASS_NAMES,
            REDO_HINT,
            check_backbone_names,
            check_classes,
            check_config,
            check_own_params,
            check_width,
            load_weights,
            read_tensors,
        )

        # config.json as _save_artifacts writes it (data_config goes to timm as keywords).
        schema = {
            "classes": CLASS_NAMES, "arch": "string", "strategy?": "string",
            "prefix?": {"cut": "string", "weights": "string"},
            "head": {"kind": "string", "hidden": "integer|null", "dropout": "number",
                     "module": "string", "n_features": "integer"},
            "data_config": {"input_size": ["integer"], "interpolation": "string",
                            "mean": ["number"], "std": ["number"], "crop_pct?": "number",
                            "crop_mode?": "string"},
            "backbone": BACKBONE_IDENTITY,
            "training?": {"best_epoch?": "integer|null", "epochs_run?": "integer",
                          "stopped_early?": "boolean", "validation?": "string|null",
                          "groups?": ["object"], "history?": ["object"]},
        }
        check_config(folder, config, schema, cls, not_saved=_NOT_SAVED)
        classes, head, arch = config["classes"], config["head"], config["arch"]
        params = config["params"]
        check_backbone_names(folder, [("backbone", params.get("backbone")),
                                      ("arch", params.get("arch"))])
        estimator = cls(**params)
        check_own_params(folder, lambda: estimator._check_params(here=False))
        if config.get("strategy", estimator.strategy) != estimator.strategy:
            raise BundleError(f"{folder}/config.json: strategy {config['strategy']!r} disagrees "
                              f"with params.strategy {estimator.strategy!r}; the file was edited. "
                              f"{REDO_HINT}")
        # The network is built from timm's own registry only: it has no bundled backbones,
        # and "hf-hub:" names would fetch a config from the internet.
        check_backbone_names(folder, [("arch", arch)], where="config")
        if not timm.is_model(arch):
            raise BundleError(f"{folder}/config.json: arch {arch!r} is not a timm architecture; "
                              f"the file was edited or comes from a newer timm. {REDO_HINT}")
        if head["kind"] not in HEADS:
            raise BundleError(f"{folder}/config.json: head kind {head['kind']!r} is not one of "
                              f"{', '.join(HEADS)}; the file was edited. {REDO_HINT}")
        if head["kind"] != estimator.head:
            raise BundleError(f"{folder}/config.json: head kind {head['kind']!r} disagrees with "
                              f"params.head {estimator.head!r}; the file was edited. {REDO_HINT}")
        state = read_tensors(folder, WEIGHTS_FILE)
        # The fine-tuned weights are all in the bundle: build the bare architecture, no
        # pretrained download or bundled-weights package needed.
        model = timm.create_model(arch, pretrained=False, num_classes=len(classes))
        module = install_head(model, head["kind"], len(classes), head["dropout"])
        if head["module"] != module:
            raise BundleError(f"{folder}/config.json: head module {head['module']!r} is not "
                              f"{arch}'s classifier {module!r}; the file was edited. {REDO_HINT}")
        check_width(folder, head["n_features"], int(model.num_features), f"the {arch} head")
        check_classes(folder, classes)  # their number is checked by the head's shape below
        load_weights(folder, WEIGHTS_FILE, model, state,
                     f"a {arch} with a {head['kind']} head for {len(classes)} classes")
        prediction_prefix = config.get("prefix")
        if prediction_prefix is not None:
            _check_saved_prefix(folder, model, arch, prediction_prefix)
        for parameter in model.parameters():
            parameter.requires_grad_(False)
        training = config.get("training", {})
        estimator.model_ = model.eval()
        estimator.classes_ = np.asarray(classes)
        estimator.data_config_ = config["data_config"]
        estimator.backbone_identity_ = config["backbone"]
        estimator.arch_ = arch
        estimator.classifier_name_ = module
        estimator.n_features_ = head["n_features"]
        estimator.history_ = training.get("history", [])
        estimator.best_epoch_ = training.get("best_epoch")
        estimator.epochs_run_ = training.get("epochs_run", len(estimator.history_))
        estimator.stopped_early_ = training.get("stopped_early", False)
        estimator.groups_ = training.get("groups", [])
        estimator.validation_ = training.get("validation")
        estimator.skipped_ = []
        estimator.prediction_prefix_ = prediction_prefix
        return estimator


def _check_saved_prefix(folder: Path, model, arch: str, saved: dict) -> None:
    """The frozen prefix config.json names ends at a layer boundary of ``model`` after at
    least one layer, and the weights before it are the ones fit recorded: predictions
    run it separately and share cached activations keyed by those weights."""
    from transferkit.bundle import REDO_HINT
    from transferkit.train.frozen_prefix import prefix_digest

    cut = saved["cut"]
    digest = prefix_digest(model, cut)
    if digest is None:
        raise BundleError(f"{folder}/config.json: prefix cut {cut!r} is not a layer boundary "
                          f"of {arch}; the file was edited. {REDO_HINT}")
    if digest != saved["weights"]:
        raise BundleError(f"{folder}/config.json: the weights before prefix cut {cut!r} are "
                          f"not the ones fit recorded; the file was edited. {REDO_HINT}")

