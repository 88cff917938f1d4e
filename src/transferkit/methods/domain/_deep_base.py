"""Deep domain adaptation: the shared network, data pairing and estimator of DANN, DAN, Deep CORAL.

Every deep domain-adaptation method here trains one network on batches that hold a
labelled *source* half and an unlabelled *target* half, minimising

    L = CE(classifier(f(x_s)), y_s) + L_adapt(f(x_s), f(x_t), p)

where ``f`` is the feature extractor, ``p ∈ [0, 1]`` the training progress and
``L_adapt`` the method's alignment term (zero for :class:`DeepSourceOnly`). Training
runs in the project's one loop (:func:`transferkit.train.fit_loop`): device, precision,
schedules, checkpoints and ``metrics.csv`` come from there.

The network is the "MNIST architecture" of Ganin & Lempitsky (2015, Fig. 4 /
supplementary), :class:`transferkit.nets.digits.DigitNetwork`: conv 5×5 (32) → max-pool
→ ReLU → conv 5×5 (48) → max-pool → ReLU as the feature extractor; label predictor FC
100 → FC 100 → classes. It takes 32×32 RGB images (grey ones are repeated to three
channels) and trains on a CPU in minutes.

Inputs are image arrays ``(N, H, W)`` or ``(N, H, W, 3)`` (uint8 0–255 or float 0–1) of
one size; :func:`transferkit.data.digits` and ``transferkit adapt`` provide them.
"""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.validation import check_is_fitted

from transferkit.data.validation import UNLABELLED
from transferkit.errors import DataError

INPUT_SIZE = 32


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
    """Dataset of ``(x_s, y_s, x_t)``: each source image with a random target image.

    One epoch visits every source image once; the target partner is drawn with torch's
    global RNG (seeded and checkpointed by the training loop).
    """

    def __init__(self, source, labels, target):
        self.source, self.labels, self.target = source, labels, target

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int):
        import torch

        partner = int(torch.randint(len(self.target), ()))
        return self.source[index], self.labels[index], self.target[partner]


def _validation_step(model, batch):
    """Loss, correct, items of the network on a labelled (source) validation batch."""
    import torch.nn.functional as F

    images, labels = batch
    logits = model(images)
    return F.cross_entropy(logits, labels), (logits.argmax(1) == labels).sum(), len(labels)


def target_batchnorm_statistics(model, target, batch_size: int = 1024) -> None:
    """Re-estimate every BatchNorm layer's statistics on the target images (AdaBN).

    Li, Wang, Shi, Liu & Hou 2016, "Revisiting Batch Normalization for Practical Domain
    Adaptation". The adapting methods normalise each domain with its own batch statistics
    while training, so the classifier learnt on features normalised *per domain*; the
    running averages, updated by both domains' passes, fit neither. Predicting the target
    with the target's own statistics keeps test time consistent with training. The
    statistics are averaged over batches of ``batch_size`` (exact for one batch).
    """
    import torch
    from torch import nn

    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    model.eval()
    momenta = [m.momentum for m in norms]
    for module in norms:
        module.reset_running_stats()
        module.momentum = None  # cumulative average over the target batches
        module.train()
    with torch.no_grad():
        for chunk in target.split(batch_size):
            model(chunk)
    for module, momentum in zip(norms, momenta):
        module.momentum = momentum
    model.eval()


class DomainTensors:
    """One fit's data as tensors: the labelled source, the target, the labelled target rows."""

    def __init__(self, source, labels, target, target_labelled, target_labels):
        self.source, self.labels, self.target = source, labels, target
        self.target_labelled, self.target_labels = target_labelled, target_labels

    def pooled_labelled(self):
        """Source and labelled target rows together (both join the classification loss)."""
        import torch

        return (torch.cat([self.source, self.target_labelled]),
                torch.cat([self.labels, self.target_labels]))


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
    """

    def __init__(self, epochs: int = 20, batch_size: int = 64, lr: float = 1e-3,
                 adaptation_weight: float = 1.0, width: int = 1, val_fraction: float = 0.1,
                 device: str = "auto", random_state: int = 0, progress: bool = False,
                 run_dir: str | None = None):
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

    # -- hooks for the methods ---------------------------------------------------------
    def _extra_modules(self, n_features: int) -> dict:
        """Modules the method trains beside the network (e.g. a domain classifier)."""
        return {}

    def _adaptation_loss(self, model, source_features, target_features, progress: float,
                         target_images):
        """The alignment term for one batch (a scalar tensor); none for source only."""
        return None

    # -- fitting -----------------------------------------------------------------------
    def fit(self, X, y, Xt=None, yt=None):
        data = self._domain_tensors(X, y, Xt, yt)
        model, self.history_ = self._train(data)
        self.model_ = model.cpu().eval()
        if len(data.target) and self._per_domain_batchnorm():
            target_batchnorm_statistics(self.model_, data.target)
        self.n_features_ = int(self.model_.n_features)
        return self

    def _domain_tensors(self, X, y, Xt, yt) -> DomainTensors:
        import torch

        source = images_to_tensor(X)
        y = np.asarray(y)
        if len(y) != len(source):
            raise DataError(f"{len(source)} source images but {len(y)} labels.")
        self.classes_, encoded = np.unique(y, return_inverse=True)
        if len(self.classes_) < 2:
            raise DataError(f"the source needs at least two classes, got {list(self.classes_)}.")
        target = images_to_tensor(Xt) if Xt is not None else source[:0]
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
        return DomainTensors(source, torch.as_tensor(encoded, dtype=torch.long), target,
                             target[torch.as_tensor(known)],
                             torch.as_tensor(target_encoded, dtype=torch.long))

    def _new_network(self):
        import torch

        from transferkit.nets.digits import DigitNetwork

        torch.manual_seed(int(self.random_state))  # initial weights
        return DigitNetwork(len(self.classes_), self.width, self._extra_modules)

    def _train(self, data: DomainTensors):
        """Train one network with the method's loss; return ``(model, history)``."""
        source, labels = data.pooled_labelled()
        adapting = len(data.target) > 0 and self._adapts()
        train_loader, val_loader = self._loaders(source, labels, data.target if adapting else None)
        model = self._new_network()
        step_fn = self._step_fn(adapting, max(1, self.epochs * len(train_loader)))
        result = self._run(model, [{"params": list(model.parameters()), "lr": self.lr,
                                    "weight_decay": 1e-4}],
                           train_loader, val_loader, step_fn, self.epochs)
        return result.model, result.history

    def _loaders(self, source, labels, target=None):
        """Batches of ``(x_s, y_s, x_t)`` (``x_t`` = a source image when ``target`` is None)
        and, if ``val_fraction``, a loader over the held-out source."""
        import torch
        from torch.utils.data import DataLoader, TensorDataset

        order = np.random.default_rng(self.random_state).permutation(len(source))
        n_val = int(round(len(source) * self.val_fraction)) if self.val_fraction else 0
        val_rows, train_rows = order[:n_val], order[n_val:]
        partner = target if target is not None else source[train_rows]
        torch.manual_seed(int(self.random_state))
        train_loader = DataLoader(PairedDomains(source[train_rows], labels[train_rows], partner),
                                  batch_size=self.batch_size, shuffle=True,
                                  drop_last=len(train_rows) > self.batch_size)
        val_loader = None
        if n_val:
            val_loader = DataLoader(TensorDataset(source[val_rows], labels[val_rows]),
                                    batch_size=256, shuffle=False)
        return train_loader, val_loader

    def _run(self, model, param_groups, train_loader, val_loader, step_fn, epochs: int,
             stage: str | None = None):
        """One stage in the shared loop; a staged method's stages get sub-folders of run_dir."""
        import os

        from transferkit.train.loop import TrainConfig, fit_loop

        config = TrainConfig(epochs=int(epochs), patience=None, restore_best=False, grad_clip=None,
                             device=self.device, seed=int(self.random_state),
                             progress=self.progress, channels_last=False,
                             desc=type(self).__name__ + (f" ({stage})" if stage else ""))
        run_dir = self.run_dir
        if run_dir is not None and stage is not None:
            run_dir = os.path.join(run_dir, stage)
        return fit_loop(model, param_groups, train_loader, val_loader, step_fn, config, run_dir)

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
                loss = F.cross_entropy(logits, labels) + self.adaptation_weight * \
                    self._adaptation_loss(model, source_features, target_features, progress, target)
            model.steps_done += 1
            return loss, (logits.argmax(1) == labels).sum(), len(labels)

        return step

    # -- prediction --------------------------------------------------------------------
    def _forward(self, X, features_only: bool = False, encoder=None) -> np.ndarray:
        import torch

        check_is_fitted(self, "model_")
        images = images_to_tensor(X)
        encoder = encoder if encoder is not None else self.model_.features
        outputs = []
        with torch.inference_mode():
            for start in range(0, len(images), 512):
                chunk = images[start:start + 512]
                out = encoder(chunk)
                if not features_only:
                    out = torch.softmax(self.model_.classifier(out), 1)
                outputs.append(out)
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

