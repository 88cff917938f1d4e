"""SHOT: source hypothesis transfer, information maximisation + clustered pseudo-labels.

Liang, Hu & Feng 2020, "Do We Really Need to Access the Source Data? Source Hypothesis
Transfer for Unsupervised Domain Adaptation" (ICML). Two stages:

1. the network trained on the labelled source alone (exactly the source-only row);
2. the classifier -- the source *hypothesis* -- frozen, the feature extractor (bottleneck,
   and the backbone's trainable groups) trained on the unlabelled target alone with

       L = mean_i H(p_i) − H(mean_i p_i) + β · CE(p_i, ŷ_i)

   information maximisation (each prediction confident, the batch's predictions spread
   over the classes, so that confidence does not collapse onto a few of them) and
   self-supervised pseudo-labels ŷ: at the start of every epoch all target features
   are clustered (:func:`cluster_pseudo_labels`, the official code's ``obtain_label``),
   which corrects the source classifier's mistakes wherever the target's own feature
   clusters disagree with it.

β = ``adaptation_weight`` = 0.3, the paper's value for Office-31 (and its entropy weight
1); learning rate, schedule and epochs as the other deep methods (stage 2's epochs are
passes over the target). The source data is not needed by stage 2's loss; here it still
serves the label-free criterion (DEV weighs held-out source errors), when one is chosen,
which keeps an epoch of each stage: stage 2's among its own epochs (stage 1's best is the
source-only model, another method's row).

Where this differs from the paper: stage 1 is the shared source-only training (plain
cross-entropy, no label smoothing) and network (bottleneck linear → BatchNorm → ReLU,
plain linear classifier; the paper's bottleneck has no ReLU and its classifier is
weight-normalised), so the clusters are of post-ReLU bottleneck features. On the digit
network the frozen hypothesis is its whole label predictor (three layers, BatchNorm
statistics included) and the features are its convolutions.

The diversity term assumes the target's classes are roughly balanced: a target of one
class (or very few) is pushed to spread over all of them -- a two-class source and a
one-class target lost ~30 points to source only. Such label shift is a known limit of
SHOT, as of the distribution-alignment methods.

Figures: ``benchmarks/RESULTS.md``, sections ``domain-office31-*`` (frozen Lite0: 87.1%
against source only's 80.5%, the best method there, so ``adapt``'s default on a pretrained
backbone). It relies on the target's feature clusters following its classes: where they
follow something else it follows them -- on MNIST → MNIST-M (the digit network, whose
whole label predictor is the frozen hypothesis) 0.328 against source only's 0.336 (seed 0;
section ``domain-deep``), and on the tests' coloured bars, whose features cluster by
background colour, 0.55 against 0.71. The digit network's default stays DANN.
"""

from __future__ import annotations

import numpy as np

from transferkit.errors import TransferkitError
from transferkit.methods.domain._deep_base import (DeepSourceOnly, DomainTensors,
                                                   _validation_step, chunks)


def cluster_pseudo_labels(features: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    """SHOT's self-supervised pseudo-labels of target ``features`` ``(n, d)`` given the
    classifier's ``probabilities`` ``(n, c)``: features (with a constant 1 appended) are L2
    normalised; class centroids are the probability-weighted means; each image takes the
    class of the nearest centroid in cosine distance; centroids are recomputed from those
    hard labels and each image labelled again. Classes the classifier predicts for no
    image get no centroid (the official code's threshold 0)."""
    features = np.hstack([features, np.ones((len(features), 1))])
    features /= np.linalg.norm(features, axis=1, keepdims=True)
    n_classes = probabilities.shape[1]
    present = np.flatnonzero(np.bincount(probabilities.argmax(1), minlength=n_classes))
    weights = probabilities
    for _ in range(2):  # the soft centroids, then one round of hard ones
        centroids = weights.T @ features / (1e-8 + weights.sum(0)[:, None])
        centroids = centroids[present]
        centroids /= np.maximum(np.linalg.norm(centroids, axis=1, keepdims=True), 1e-12)
        labels = present[(features @ centroids.T).argmax(1)]
        weights = np.eye(n_classes)[labels]
    return labels


def information_maximisation_loss(logits):
    """Mean entropy of the predictions minus the entropy of their mean (lower is better)."""
    import torch

    probabilities = torch.softmax(logits.float(), 1)
    entropy = -(probabilities * torch.log(probabilities + 1e-5)).sum(1).mean()
    mean = probabilities.mean(0)
    diversity = -(mean * torch.log(mean + 1e-5)).sum()
    return entropy - diversity


class _TargetItems:
    """Dataset of ``(x_t, index)`` over the target rows (one random cached view each);
    ``length`` items an epoch, wrapping around a target smaller than one batch (so that
    every batch is full: BatchNorm cannot train on a single image)."""

    def __init__(self, target, views: bool, length: int):
        self.target, self.views, self.length = target, views, length

    def __len__(self) -> int:
        return self.length

    def fingerprint(self) -> str:
        """The target and the epoch's length (checkpoints are matched on it)."""
        from transferkit.train.checkpoint import tensors_fingerprint

        return tensors_fingerprint(self.target, self.views, self.length)

    def __getitem__(self, index: int):
        import torch

        index = index % len(self.target)
        item = self.target[index]
        if self.views:
            item = item[int(torch.randint(len(item), ()))]
        return item, index


class SHOT(DeepSourceOnly):
    """Source training, then the frozen source classifier's features adapted to the
    target (see the module docstring); ``adaptation_weight`` (default 0.3) is β."""

    starts_from_source_only = True  # fit takes a fitted source-only network as stage 1

    def __init__(self, epochs: int | None = None, batch_size: int | None = None,
                 lr: float | None = None,
                 adaptation_weight: float = 0.3, width: int = 1, val_fraction: float = 0.1,
                 device: str = "auto", random_state: int = 0, progress: bool = False,
                 run_dir: str | None = None, backbone: str | None = None,
                 schedule: str | None = None, trainable: int = 0, bottleneck: int = 256,
                 views: int = 4, criterion: str | None = None, cache_dir=None,
                 use_cache: bool = True):
        super().__init__(epochs=epochs, batch_size=batch_size, lr=lr,
                         adaptation_weight=adaptation_weight, width=width,
                         val_fraction=val_fraction, device=device, random_state=random_state,
                         progress=progress, run_dir=run_dir, backbone=backbone,
                         schedule=schedule, trainable=trainable, bottleneck=bottleneck,
                         views=views, criterion=criterion, cache_dir=cache_dir,
                         use_cache=use_cache)

    def _adapts(self) -> bool:
        return True  # stage 2 trains on the target alone: its statistics are the target's

    def fit(self, X, y, Xt=None, yt=None, source_only=None):
        """As the other deep methods; ``source_only``: a :class:`DeepSourceOnly` fitted on
        the same ``X, y, Xt, yt`` with the same settings (``adapt`` trains one as its
        baseline), whose network is stage 1 -- what stage 1 would train, bit for bit
        (tested) -- so that stage 1 is not trained twice. Other settings, data or classes
        are refused."""
        if source_only is not None:
            self._check_stage_one(source_only)
        self._stage_one = source_only
        try:
            return super().fit(X, y, Xt, yt)
        finally:
            del self._stage_one

    # Settings that do not change stage 1 (the source-only training).
    _STAGE_TWO_ONLY = ("adaptation_weight", "progress", "run_dir")

    def _check_stage_one(self, source_only) -> None:
        if type(source_only) is not DeepSourceOnly or not hasattr(source_only, "model_"):
            raise TransferkitError("SHOT's stage 1 can only be a fitted DeepSourceOnly.")
        mine = {k: v for k, v in self.get_params().items() if k not in self._STAGE_TWO_ONLY}
        theirs = {k: v for k, v in source_only.get_params().items()
                  if k not in self._STAGE_TWO_ONLY}
        if mine != theirs:
            differ = sorted(k for k in mine if mine[k] != theirs.get(k))
            raise TransferkitError(f"SHOT's stage 1 must be a source-only network trained "
                                   f"with its settings; these differ: {', '.join(differ)}.")

    def _stage_one_network(self, data: DomainTensors, evaluate):
        """(network, history) of stage 1: the given source-only network, else trained."""
        import copy

        given = getattr(self, "_stage_one", None)
        if given is not None:
            if (getattr(given, "data_fingerprint_", None) != data.fingerprint()
                    or not np.array_equal(given.classes_, self.classes_)):
                raise TransferkitError("SHOT's stage 1 must be a source-only network trained "
                                       "on the same images, labels and classes; this one was "
                                       "not.")
            # A copy: the baseline stays as it was; the loop places it on the device.
            return copy.deepcopy(given.model_), list(given.history_)
        # The source-only network: the base's loop without an adaptation term.
        source, labels = data.pooled_labelled()
        train_loader, val_loader = self._loaders(source, labels, None, data)
        model = self._new_network()
        first = self._run(model, self._param_groups(model), train_loader, val_loader,
                          self._step_fn(False, 1), self._settings()["epochs"], stage="source",
                          evaluate=evaluate)
        return first.model, first.history

    def _train(self, data: DomainTensors):
        import torch
        from torch.utils.data import DataLoader

        # Stage 1: the source-only network.
        evaluate = self._criterion_fn(data) if len(data.target) else None
        model, first = self._stage_one_network(data, evaluate)
        history = [dict(row, stage="source") for row in first]
        if len(data.target) == 0:
            return model, history
        source, labels = data.pooled_labelled()
        _, val_loader = self._loaders(source, labels, None, data)
        epochs = self._settings()["epochs"]

        # Stage 2: the hypothesis (classifier) frozen, the features trained on the target.
        for parameter in model.classifier.parameters():
            parameter.requires_grad_(False)
        frozen = {id(p) for p in model.classifier.parameters()}
        groups = [dict(group, params=[p for p in group["params"] if id(p) not in frozen])
                  for group in self._param_groups(model)]
        torch.manual_seed(int(self.random_state) + 1)
        batch_size = self._settings()["batch_size"]
        target_loader = DataLoader(
            _TargetItems(data.target, data.views, max(len(data.target), batch_size)),
            batch_size=batch_size, shuffle=True, drop_last=True)
        model.steps_done.zero_()
        second = self._run(model, [g for g in groups if g["params"]], target_loader, val_loader,
                           self._target_step(data, len(target_loader)), epochs, stage="target",
                           evaluate=evaluate)
        # The classifier stays frozen in the fitted model: AdaBN (in fit) leaves frozen
        # layers as they are, so the hypothesis keeps its source statistics too.
        return second.model, history + [dict(row, stage="target") for row in second.history]

    def _target_step(self, data: DomainTensors, steps_per_epoch: int):
        import torch
        import torch.nn.functional as F

        images = data.centre(data.target)
        pseudo = {}

        def relabel(model):
            """Cluster every target image's features (eval mode, as the official code)."""
            device = next(model.parameters()).device
            # Each module's own mode back afterwards: the loop keeps frozen BatchNorm layers
            # (the classifier's, on the digit network) in eval mode while the rest trains.
            modes = [(module, module.training) for module in model.modules()]
            model.eval()
            with torch.no_grad():
                features = torch.cat([model.forward_features(chunk.to(device))
                                      for chunk in chunks(images)])
                probabilities = torch.softmax(model.forward_head(features).float(), 1)
            for module, training in modes:
                module.training = training
            pseudo["labels"] = torch.as_tensor(cluster_pseudo_labels(
                features.double().cpu().numpy(), probabilities.double().cpu().numpy()))

        def step(model, batch):
            if not model.training:  # validation: labelled held-out source
                return _validation_step(model, batch)
            if "labels" not in pseudo or model.steps_done % steps_per_epoch == 0:
                relabel(model)
            target, index = batch
            logits = model.forward_head(model.forward_features(target))
            labels = pseudo["labels"][index.cpu()].to(logits.device)
            loss = information_maximisation_loss(logits) + \
                self.adaptation_weight * F.cross_entropy(logits, labels)
            model.steps_done += 1
            # The accuracy the loop reports is agreement with the pseudo-labels.
            return loss, (logits.argmax(1) == labels).sum(), len(labels)

        return step
