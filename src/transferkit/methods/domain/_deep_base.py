"""Deep domain adaptation: the shared network, data pairing and estimator of DANN, DAN, Deep CORAL.

Every deep domain-adaptation method here trains one network on batches that hold a
labelled *source* half and an unlabelled *target* half, minimising

    L = CE(classifier(f(x_s)), y_s) + L_adapt(f(x_s), f(x_t), p)

where ``f`` is the feature extractor, ``p ∈ [0, 1]`` the training progress and
``L_adapt`` the method's alignment term (zero for :class:`DeepSourceOnly`). Training
runs in the project's one loop (:func:`transferkit.train.fit_loop`): device, precision,
schedules, checkpoints and ``metrics.csv`` come from there.

The network depends on ``backbone``:

* ``"digit-cnn"`` (:data:`DIGIT_BACKBONE`): the "MNIST architecture" of Ganin & Lempitsky
  (2015, Fig. 4 / supplementary), :class:`transferkit.nets.digits.DigitNetwork`: conv 5×5
  (32) → max-pool → ReLU → conv 5×5 (48) → max-pool → ReLU as the feature extractor;
  label predictor FC 100 → FC 100 → classes, trained from scratch. Inputs are image
  arrays ``(N, H, W)`` or ``(N, H, W, 3)`` (uint8 0–255 or float 0–1) of 32×32 pixels
  (grey ones are repeated to three channels); :mod:`transferkit.data.digits` and
  ``transferkit adapt`` provide them. Minutes on a CPU.
* a registry backbone (``"efficientnet_lite0"``, a timm name, ...): the pretrained network
  → a bottleneck → the classifier, on image *files*; the early layer groups stay frozen
  and run once per image and view through the activation cache (see
  :mod:`transferkit.methods.domain._pretrained`).

``backbone=None`` picks the digit network for image arrays and the default registry
backbone for image files. The methods' alignment terms see a :class:`DomainBatch`:
features (the bottleneck's output for a pretrained backbone) and logits of both domains.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.validation import check_is_fitted

from transferkit.data.validation import UNLABELLED
from transferkit.errors import DataError

if TYPE_CHECKING:
    import torch
from transferkit.backbones.registry import DIGIT_BACKBONE

INPUT_SIZE = 32
# Label-free criteria that pick the epoch (``criterion``), and whether higher or lower is
# better: soft neighbourhood density and deep embedded validation
# (:mod:`transferkit.evaluate.selection`).
CRITERIA = {"snd": "max", "dev": "min"}
CRITERION_SAMPLE = 500  # source-train (and target) rows DEV's domain classifier sees per epoch
# Optimisers and learning-rate schedules of the deep methods (``schedule``):
# "adamw": AdamW with linear warm-up and cosine decay; "sgd-annealed": Ganin & Lempitsky
# 2015's protocol, SGD with momentum 0.9 and the rate annealed as 1 / (1 + 10 p)^0.75
# (also the Transfer-Learning-Library's for pretrained backbones).
SCHEDULES = {"adamw": {"optimizer": "adamw", "schedule": "cosine"},
             "sgd-annealed": {"optimizer": "sgd", "schedule": "annealed", "momentum": 0.9}}


@dataclass
class DomainBatch:
    """What an alignment term sees of one training batch: the features and logits of the
    source and target halves (one forward pass per domain), the training progress
    ``p ∈ [0, 1]`` and the target inputs themselves (for a reconstruction loss)."""

    source_features: "torch.Tensor"
    target_features: "torch.Tensor"
    source_logits: "torch.Tensor"
    target_logits: "torch.Tensor"
    progress: float
    target_inputs: "torch.Tensor"


def images_to_tensor(images) -> "torch.Tensor":
    """``(N, H, W[, 3])`` uint8 or [0, 1] floats → ``(N, 3, H, W)`` float32 in [-1, 1]."""
    import torch
    from scipy import sparse

    if sparse.issparse(images):
        # np.asarray would wrap the matrix in a 0-d object array and fail on its shape.
        raise DataError(f"images must be a dense (N, H, W) or (N, H, W, 3) array, got a sparse "
                        f"{type(images).__name__}; convert it with .toarray() and reshape.")
    array = np.asarray(images)
    if array.ndim == 3:
        array = np.repeat(array[..., None], 3, axis=3)
    if array.ndim != 4 or array.shape[3] != 3:
        raise DataError(f"images must be an (N, H, W) or (N, H, W, 3) array, got shape {array.shape}.")
    if len(array) == 0:
        raise DataError("no images given.")
    if array.shape[1:3] != (INPUT_SIZE, INPUT_SIZE):
        raise DataError(f"images must be {INPUT_SIZE}×{INPUT_SIZE}, got {array.shape[1]}×"
                        f"{array.shape[2]}; resize them (transferkit.data.digits.resize_domain).")
    array = array.astype(np.float32)
    if array.max() > 1.0:
        array = array / 255.0
    tensor = torch.from_numpy(array).permute(0, 3, 1, 2).contiguous()
    return tensor * 2.0 - 1.0


class PairedDomains:
    """Dataset of ``(x_s, y_s, x_t)``: each source item with a random target item.

    One epoch visits every source item once, or ``length`` items (indices wrap around the
    source) when given. The target partner is drawn with torch's global RNG (seeded and
    checkpointed by the training loop). With ``views``, rows are ``(views, ...)`` stacks
    (cached activations of augmented crops) and each draw takes one view at random.
    ``rows`` / ``target_rows`` select the rows used (all by default) without copying the
    tensors: a whole backbone's cached views are gigabytes.
    """

    def __init__(self, source, labels, target, views: bool = False, length: int | None = None,
                 rows=None, target_rows=None):
        self.source, self.labels, self.target = source, labels, target
        self.rows = np.arange(len(source)) if rows is None else np.asarray(rows)
        self.target_rows = np.arange(len(target)) if target_rows is None else \
            np.asarray(target_rows)
        self.views = views
        self.length = len(self.rows) if length is None else int(length)

    def __len__(self) -> int:
        return self.length

    def fingerprint(self) -> str:
        """What a resumed run must find unchanged (checkpoints are matched on it): the
        source, its labels, the target (a different target folder is a different run),
        the rows used and the epoch's length."""
        from transferkit.train.checkpoint import tensors_fingerprint

        target = "the source" if self.target is self.source else self.target
        return tensors_fingerprint(self.source, self.labels, target, self.rows,
                                   self.target_rows, self.views, self.length)

    def __getitem__(self, index: int):
        import torch

        index = int(self.rows[index % len(self.rows)])
        partner = int(self.target_rows[int(torch.randint(len(self.target_rows), ()))])
        source, target = self.source[index], self.target[partner]
        if self.views:
            source = source[int(torch.randint(len(source), ()))]
            target = target[int(torch.randint(len(target), ()))]
        return source, self.labels[index], target


def _validation_step(model, batch):
    """Loss, correct, items of the network on a labelled (source) validation batch."""
    import torch.nn.functional as F

    images, labels = batch
    logits = model(images)
    return F.cross_entropy(logits, labels), (logits.argmax(1) == labels).sum(), len(labels)


# Inference runs in chunks of at most this many input values (64 MB of float32): 512
# pooled feature vectors at once, but ~100 whole images at 224 px, whose activations
# inside the backbone are ten times larger again (several such runs share one GPU).
CHUNK_VALUES = 2 ** 24


def chunks(rows, at_most: int = 512):
    """``rows`` split along the first axis into chunks of at most ``at_most`` rows and
    about :data:`CHUNK_VALUES` values."""
    per_row = max(1, int(np.prod(rows.shape[1:])))
    return rows.split(max(1, min(at_most, CHUNK_VALUES // per_row)))


def target_batchnorm_statistics(model, target, batch_size: int = 1024) -> None:
    """Re-estimate on the target images the statistics of every BatchNorm layer that
    normalises with batch statistics in training (AdaBN).

    Li, Wang, Shi, Liu & Hou 2016, "Revisiting Batch Normalization for Practical Domain
    Adaptation". The adapting methods normalise each domain with its own batch statistics
    while training, so the classifier learnt on features normalised *per domain*; the
    running averages, updated by both domains' passes, fit neither. Predicting the target
    with the target's own statistics keeps test time consistent with training. The
    statistics are averaged over batches of ``batch_size`` (fewer for large inputs, see
    :func:`chunks`; exact for one batch).
    """
    import torch
    from torch import nn

    # Only the layers that normalise with batch statistics in training: a module may keep
    # some in inference mode (a pretrained backbone's, see _pretrained._BackboneTail), and
    # those never saw per-domain statistics; nor a frozen layer (weights that do not learn,
    # e.g. SHOT's source classifier): a frozen layer does not change at all.
    model.train()
    norms = [m for m in model.modules()
             if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training
             and any(p.requires_grad for p in m.parameters(recurse=False))]
    model.eval()
    if not norms:
        return
    momenta = [m.momentum for m in norms]
    for module in norms:
        module.reset_running_stats()
        module.momentum = None  # cumulative average over the target batches
        module.train()
    device = next(model.parameters()).device
    with torch.no_grad():
        for chunk in chunks(target, batch_size):
            model(chunk.to(device))
    for module, momentum in zip(norms, momenta):
        module.momentum = momentum
    model.eval()


class DomainTensors:
    """One fit's data as tensors: the labelled source, the target, the labelled target rows.

    With ``views`` every row is a ``(views, ...)`` stack (view 0 the centre crop), as the
    pretrained backbones' cached activations are; ``length``: items per training epoch.
    """

    def __init__(self, source, labels, target, target_labelled, target_labels,
                 views: bool = False, length: int | None = None):
        self.source, self.labels, self.target = source, labels, target
        self.target_labelled, self.target_labels = target_labelled, target_labels
        self.views, self.length = views, length

    def fingerprint(self) -> str:
        """Every tensor of the fit (rows, labels, target) and the views/length settings."""
        from transferkit.train.checkpoint import tensors_fingerprint

        return tensors_fingerprint(self.source, self.labels, self.target, self.target_labelled,
                                   self.target_labels, self.views, self.length)

    def pooled_labelled(self):
        """Source and labelled target rows together (both join the classification loss)."""
        import torch

        if not len(self.target_labelled):
            return self.source, self.labels  # no copy
        return (torch.cat([self.source, self.target_labelled]),
                torch.cat([self.labels, self.target_labels]))

    def centre(self, rows, index=None):
        """``rows`` (those at ``index``, when given) as single inputs: the centre view of
        each when rows hold views. Indexes the centre view alone, never copying the others."""
        import torch

        if index is not None:
            index = torch.as_tensor(np.asarray(index), dtype=torch.long)
            return rows[index, 0] if self.views else rows[index]
        return rows[:, 0] if self.views else rows


class DeepSourceOnly(ClassifierMixin, BaseEstimator):
    """The network trained on the labelled source only (``L_adapt = 0``): the lower bound.

    Trained on the labelled *target* instead (``fit(Xt_labelled, yt)``) it is the target
    oracle. Subclasses add an alignment term by overriding :meth:`_adaptation_loss` and,
    if they need modules of their own (a domain classifier), :meth:`_extra_modules`;
    methods trained in stages (ADDA) override :meth:`_train`.

    ``fit(X, y, Xt=None, yt=None)``: ``X``/``y`` labelled source images, ``Xt`` target
    images; ``yt`` (optional, ``-1`` = unlabelled) adds the labelled target images to the
    classification loss (semi-supervised). ``val_fraction`` of the source is held out to
    monitor the source validation loss in ``history_`` (target labels are never used).
    A fitted adapting method is a model *of the target*: its BatchNorm statistics are
    re-estimated on ``Xt`` (AdaBN), as its training normalised each domain separately.

    ``backbone``: see the module docstring. For a pretrained backbone: ``trainable`` last
    layer groups train (0: only the bottleneck and heads; the rest is frozen and cached),
    at ``lr`` × :data:`BACKBONE_LR_FACTOR`; ``bottleneck`` its width; ``views`` augmented
    crops per image are cached besides the centre crop. ``criterion`` keeps the epoch
    with the best label-free score (:mod:`transferkit.evaluate.selection`): ``"dev"``,
    deep embedded validation (the held-out source risk re-weighted to the target), or
    ``"snd"``, the soft neighbourhood density of the target predictions; ``None`` keeps
    the last epoch. Both are recorded in ``history_`` whenever one is chosen.
    ``epochs``, ``lr``, ``batch_size``, ``schedule`` (``"adamw"`` or ``"sgd-annealed"``,
    see :data:`SCHEDULES`) default per backbone: 20 epochs of AdamW at 1e-3 on 64 images
    for the digit network; 10 epochs (of max(n_source, n_target) images) of SGD at 0.01 on
    32 + 32 images, annealed, for a pretrained backbone (the Transfer-Learning-Library's
    Office-31 protocol, shortened for a CPU).
    """

    # Methods made for the digit network only (they rebuild images or split its layers).
    digit_only = False
    # Defaults of the settings a subclass's own __init__ may leave out.
    backbone = None
    schedule = None
    trainable = 0
    bottleneck = 256
    views = 4
    criterion = None
    cache_dir = None
    use_cache = True

    def __init__(self, epochs: int | None = None, batch_size: int | None = None,
                 lr: float | None = None, adaptation_weight: float = 1.0, width: int = 1, val_fraction: float = 0.1,
                 device: str = "auto", random_state: int = 0, progress: bool = False,
                 run_dir: str | None = None, backbone: str | None = None,
                 schedule: str | None = None, trainable: int = 0, bottleneck: int = 256,
                 views: int = 4, criterion: str | None = None, cache_dir=None,
                 use_cache: bool = True):
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.adaptation_weight = adaptation_weight
        self.width = width
        self.val_fraction = val_fraction
        self.device = device
        self.random_state = random_state
        self.progress = progress
        self.run_dir = run_dir
        self.backbone = backbone
        self.schedule = schedule
        self.trainable = trainable
        self.bottleneck = bottleneck
        self.views = views
        self.criterion = criterion
        self.cache_dir = cache_dir
        self.use_cache = use_cache

    # -- hooks for the methods ---------------------------------------------------------
    def _extra_modules(self, n_features: int) -> dict:
        """Modules the method trains beside the network (e.g. a domain classifier)."""
        return {}

    def _adaptation_loss(self, model, batch: DomainBatch):
        """The alignment term for one batch (a scalar tensor); none for source only."""
        return None

    # -- settings that depend on the backbone ------------------------------------------
    def _uses_pretrained_backbone(self) -> bool:
        """Whether this fit adapts a pretrained registry backbone (set by :meth:`fit`)."""
        return getattr(self, "_inputs", None) is not None and self._inputs.pretrained

    def _settings(self) -> dict:
        """lr, batch size and optimiser for this fit, with the backbone's defaults filled in."""
        pretrained = self._uses_pretrained_backbone()
        schedule = self.schedule or ("sgd-annealed" if pretrained else "adamw")
        if schedule not in SCHEDULES:
            raise DataError(f"unknown schedule {schedule!r}; choose one of {list(SCHEDULES)}.")
        lr = self.lr if self.lr is not None else (0.01 if schedule == "sgd-annealed" else 1e-3)
        batch_size = self.batch_size if self.batch_size is not None else (32 if pretrained else 64)
        epochs = self.epochs if self.epochs is not None else (10 if pretrained else 20)
        return {"lr": float(lr), "batch_size": int(batch_size), "epochs": int(epochs),
                "weight_decay": 1e-3 if pretrained else 1e-4, **SCHEDULES[schedule]}

    # -- fitting -----------------------------------------------------------------------
    def fit(self, X, y, Xt=None, yt=None):
        data = self._domain_tensors(X, y, Xt, yt)
        if type(self) is DeepSourceOnly:  # a method starting from it checks it was this data
            self.data_fingerprint_ = data.fingerprint()
        model, self.history_ = self._train(data)
        if len(data.target) and self._per_domain_batchnorm():
            # On the device it trained on: a whole backbone's forward pass over the target
            # takes minutes on a CPU, seconds on a GPU.
            target_batchnorm_statistics(model, data.centre(data.target))
        self.fit_device_ = str(next(model.parameters()).device)
        self.model_ = model.cpu().eval()
        self.n_features_ = int(self.model_.n_features)
        return self

    def _choose_inputs(self, X):
        """The digit network's image arrays, or a pretrained backbone's cached activations."""
        from transferkit.methods.domain._pretrained import PretrainedInputs, is_image_files

        name = self.backbone
        if name is None:
            name = None if is_image_files(X) else DIGIT_BACKBONE
        if name == DIGIT_BACKBONE:
            if is_image_files(X):
                raise DataError(f"{type(self).__name__} on the {DIGIT_BACKBONE} network takes "
                                "32×32 image arrays, not image files: load them with "
                                "transferkit.data.images.load_small_images, or adapt a "
                                "pretrained backbone.")
            self._inputs = None
            return None
        if self.digit_only:
            raise DataError(f"{type(self).__name__} works on the {DIGIT_BACKBONE} network and "
                            f"32×32 image arrays only, not on the pretrained backbone "
                            f"{name or 'default'}.")
        reuse = getattr(self, "_inputs", None)
        settings = (name, self.trainable, self.views, self.cache_dir, self.use_cache, self.device)
        if reuse is not None and getattr(reuse, "settings", None) == settings:
            return reuse  # a refit with the same backbone: keep the loaded network
        self._inputs = PretrainedInputs(name, trainable=self.trainable, views=self.views,
                                        cache_dir=self.cache_dir, use_cache=self.use_cache,
                                        device=self.device, progress=self.progress)
        self._inputs.settings = settings
        return self._inputs

    def _domain_tensors(self, X, y, Xt, yt) -> DomainTensors:
        import torch

        inputs = self._choose_inputs(X)
        y = np.asarray(y)
        if inputs is None:
            source = images_to_tensor(X)
            target = images_to_tensor(Xt) if Xt is not None else source[:0]
        else:
            source, y, target, yt = inputs.fit_arrays(X, y, Xt, yt)
            self.skipped_ = list(inputs.skipped)
        if len(y) != len(source):
            raise DataError(f"{len(source)} source images but {len(y)} labels.")
        self.classes_, encoded = np.unique(y, return_inverse=True)
        if len(self.classes_) < 2:
            raise DataError(f"the source needs at least two classes, got {list(self.classes_)}.")
        known = np.zeros(len(target), dtype=bool)
        target_encoded = np.zeros(0, dtype=np.int64)
        if yt is not None:
            yt = np.asarray(yt)
            if len(yt) != len(target):
                raise DataError(f"{len(target)} target images but {len(yt)} target labels.")
            known = yt != UNLABELLED
            unknown = set(yt[known].tolist()) - set(self.classes_.tolist())
            if unknown:
                raise DataError(f"target labels {sorted(unknown)} do not occur in the source.")
            target_encoded = np.searchsorted(self.classes_, yt[known])
        pretrained = inputs is not None
        return DomainTensors(source, torch.as_tensor(encoded, dtype=torch.long), target,
                             target[torch.as_tensor(known)],
                             torch.as_tensor(target_encoded, dtype=torch.long),
                             views=pretrained,
                             # An epoch of a pretrained backbone's run sees each image of
                             # the larger domain once on average.
                             length=max(len(source), len(target)) if pretrained else None)

    def _new_network(self):
        import torch

        from transferkit.nets.digits import DigitNetwork

        torch.manual_seed(int(self.random_state))  # initial weights
        if self._uses_pretrained_backbone():
            return self._inputs.network(len(self.classes_), int(self.bottleneck),
                                        self._extra_modules)
        return DigitNetwork(len(self.classes_), self.width, self._extra_modules)

    def _param_groups(self, model) -> list[dict]:
        settings = self._settings()
        if self._uses_pretrained_backbone():
            return self._inputs.param_groups(model, settings["lr"], settings["weight_decay"])
        return [{"params": list(model.parameters()), "lr": settings["lr"],
                 "weight_decay": settings["weight_decay"]}]

    def _train(self, data: DomainTensors):
        """Train one network with the method's loss; return ``(model, history)``."""
        source, labels = data.pooled_labelled()
        adapting = len(data.target) > 0 and self._adapts()
        train_loader, val_loader = self._loaders(source, labels, data.target if adapting else None,
                                                 data)
        model = self._new_network()
        epochs = self._settings()["epochs"]
        step_fn = self._step_fn(adapting, max(1, epochs * len(train_loader)))
        evaluate = self._criterion_fn(data) if len(data.target) else None
        result = self._run(model, self._param_groups(model), train_loader, val_loader, step_fn,
                           epochs, evaluate=evaluate)
        return result.model, result.history

    def _loaders(self, source, labels, target=None, data: DomainTensors | None = None):
        """Batches of ``(x_s, y_s, x_t)`` (``x_t`` = a source image when ``target`` is None)
        and, if ``val_fraction``, a loader over the held-out source (centre views)."""
        import torch
        from torch.utils.data import DataLoader, TensorDataset

        views = data is not None and data.views
        val_rows, train_rows = self._validation_split(len(source))
        n_val = len(val_rows)
        # Rows are selected by index, never copied (see PairedDomains).
        partner, partner_rows = (target, None) if target is not None else (source, train_rows)
        length = None
        if data is not None and data.length is not None:
            length = max(len(train_rows), len(partner if partner_rows is None else partner_rows))
        torch.manual_seed(int(self.random_state))
        batch_size = self._settings()["batch_size"]
        train_loader = DataLoader(PairedDomains(source, labels, partner, views=views,
                                                length=length, rows=train_rows,
                                                target_rows=partner_rows),
                                  batch_size=batch_size, shuffle=True,
                                  drop_last=(length or len(train_rows)) > batch_size)
        val_loader = None
        if n_val:
            rows = torch.as_tensor(val_rows)
            val_images = source[rows, 0] if views else source[rows]
            val_loader = DataLoader(TensorDataset(val_images, labels[val_rows]),
                                    batch_size=256, shuffle=False)
        return train_loader, val_loader

    def _validation_split(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(held-out rows, training rows) of ``n`` labelled source rows: ``val_fraction`` of
        them, drawn with ``random_state`` (the same split every time)."""
        order = np.random.default_rng(self.random_state).permutation(n)
        n_val = int(round(n * self.val_fraction)) if self.val_fraction else 0
        return order[:n_val], order[n_val:]

    def _criterion_fn(self, data: DomainTensors):
        """The label-free criteria as ``fit_loop``'s ``evaluate`` (None without a criterion):
        each epoch's row gets ``snd`` (higher is better) and, with held-out source rows,
        ``dev`` (lower is better); ``criterion`` names the one that picks the epoch."""
        if self.criterion is None:
            return None
        if self.criterion not in CRITERIA:
            raise DataError(f"unknown criterion {self.criterion!r}; choose one of "
                            f"{list(CRITERIA)} or None.")
        import torch
        import torch.nn.functional as F

        from transferkit.evaluate.selection import dev_risk, snd

        source, labels = data.pooled_labelled()
        val_rows, train_rows = self._validation_split(len(source))
        if self.criterion == "dev" and len(val_rows) < 4:
            raise DataError("criterion 'dev' needs held-out source images: set val_fraction "
                            "so that at least 4 are held out.")
        rng = np.random.default_rng(self.random_state)
        # DEV's domain classifier learns source-train vs target features: a sample is enough.
        train_rows = rng.permutation(train_rows)[:CRITERION_SAMPLE]
        target = data.centre(data.target)
        val_images, val_labels = data.centre(source, val_rows), labels[val_rows]
        train_images = data.centre(source, train_rows)
        dev_target = np.sort(rng.permutation(len(data.target))[:CRITERION_SAMPLE])

        def evaluate(model):
            device = next(model.parameters()).device

            def features(images):
                return torch.cat([model.forward_features(chunk.to(device))
                                  for chunk in chunks(images)]) if len(images) else None

            target_features = features(target)
            probabilities = torch.softmax(model.forward_head(target_features).float(), 1)
            row = {"snd": snd(probabilities.cpu().numpy(), random_state=self.random_state)}
            if len(val_rows) >= 4:
                val_features = features(val_images)
                losses = F.cross_entropy(model.forward_head(val_features),
                                         val_labels.to(device), reduction="none")
                row["dev"] = dev_risk(val_features.cpu().numpy(), losses.cpu().numpy(),
                                      target_features[dev_target].cpu().numpy(),
                                      features(train_images).cpu().numpy(),
                                      random_state=self.random_state)
            return row

        return evaluate

    def _run(self, model, param_groups, train_loader, val_loader, step_fn, epochs: int,
             stage: str | None = None, evaluate=None):
        """One stage in the shared loop; a staged method's stages get sub-folders of run_dir."""
        import os

        from transferkit.train.loop import TrainConfig, fit_loop

        settings = self._settings()
        monitor = evaluate is not None
        config = TrainConfig(epochs=int(epochs), patience=None, restore_best=monitor,
                             monitor=self.criterion if monitor else "val_loss",
                             monitor_mode=CRITERIA.get(self.criterion, "min"), grad_clip=None,
                             optimizer=settings["optimizer"], schedule=settings["schedule"],
                             momentum=settings.get("momentum", 0.9), warmup_fraction=0.1,
                             device=self.device, seed=int(self.random_state),
                             progress=self.progress, channels_last=False,
                             desc=type(self).__name__ + (f" ({stage})" if stage else ""))
        run_dir = self.run_dir
        if run_dir is not None and stage is not None:
            run_dir = os.path.join(run_dir, stage)
        return fit_loop(model, param_groups, train_loader, val_loader, step_fn, config, run_dir,
                        evaluate=evaluate)

    def _adapts(self) -> bool:
        return type(self)._adaptation_loss is not DeepSourceOnly._adaptation_loss

    def _per_domain_batchnorm(self) -> bool:
        """Whether training normalised each domain with its own batch statistics, so the
        fitted network predicts the target with target statistics (see
        :func:`target_batchnorm_statistics`)."""
        return self._adapts()

    def _step_fn(self, adapting: bool, total_steps: int):
        import torch.nn.functional as F

        def step(model, batch):
            if len(batch) == 2:  # validation: labelled source only
                return _validation_step(model, batch)
            source, labels, target = batch
            if not adapting:
                logits = model(source)
                loss = F.cross_entropy(logits, labels)
            else:
                # One forward pass per domain: BatchNorm normalises each domain with its
                # own batch statistics (as public DANN code does; cf. AdaBN, Li et al.
                # 2016). A joint pass over the mixed batch adapted markedly worse.
                source_features = model.forward_features(source)
                target_features = model.forward_features(target)
                logits = model.forward_head(source_features)
                progress = min(1.0, float(model.steps_done) / total_steps)
                batch = DomainBatch(source_features, target_features, logits,
                                    model.forward_head(target_features), progress, target)
                loss = F.cross_entropy(logits, labels) + self.adaptation_weight * \
                    self._adaptation_loss(model, batch)
            model.steps_done += 1
            return loss, (logits.argmax(1) == labels).sum(), len(labels)

        return step

    # -- prediction --------------------------------------------------------------------
    def _network_inputs(self, X):
        """What the fitted network takes for images ``X``: 32×32 tensors or the pretrained
        backbone's activations at the cut (centre crop)."""
        if getattr(self, "_inputs", None) is not None and self._inputs.pretrained:
            return self._inputs.predict_array(X)
        return images_to_tensor(X)

    def _forward(self, X, features_only: bool = False, encoder=None) -> np.ndarray:
        import torch

        check_is_fitted(self, "model_")
        images = self._network_inputs(X)
        encoder = encoder if encoder is not None else self.model_.features
        # The fitted network is kept on the CPU; it predicts on the device it trained on
        # (when that device is still there: an estimator may travel to another machine).
        device = torch.device(getattr(self, "fit_device_", "cpu"))
        if device.type == "cuda" and not torch.cuda.is_available():
            device = torch.device("cpu")
        modules = [encoder, self.model_.classifier]
        outputs = []
        try:
            for module in modules:
                module.to(device)
            with torch.inference_mode():
                for chunk in chunks(images):
                    out = encoder(chunk.to(device))
                    if not features_only:
                        out = torch.softmax(self.model_.classifier(out), 1)
                    outputs.append(out.float().cpu())
        finally:
            for module in modules:
                module.cpu()
        return torch.cat(outputs).numpy().astype(np.float64)

    def predict_proba(self, X) -> np.ndarray:
        return self._forward(X)

    def predict(self, X) -> np.ndarray:
        probabilities = self.predict_proba(X)  # raises NotFittedError before classes_ does
        return self.classes_[probabilities.argmax(axis=1)]

    def transform(self, X) -> np.ndarray:
        """The learned features of images ``X`` (for A-distance / MMD before and after)."""
        return self._forward(X, features_only=True)

    def transform_source(self, X) -> np.ndarray:
        """Features of *source* images: the same encoder here; methods with a separate
        source encoder (ADDA) override it."""
        return self.transform(X)

