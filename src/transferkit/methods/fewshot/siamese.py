"""A similarity function learned on pairs: a Siamese head on frozen pretrained features.

Bromley et al. 1993 / Koch et al. 2015 ("Siamese Neural Networks for One-shot Image
Recognition"): the same network ``f`` embeds both images of a pair and their distance
says "same or different". Loss (Hadsell, Chopra & LeCun 2006, contrastive):
``L = y d² / 2 + (1 - y) max(0, m - d)² / 2`` with ``d = ||f(a) - f(b)||`` and ``y = 1``
for a same-class pair; or (optional, Schroff et al. 2015, triplet)
``L = max(0, d(a, p) - d(a, n) + m)``. Here ``f`` is a small MLP (standardise →
Linear → ReLU → Linear → L2-normalise) on *frozen* backbone features, so training
runs on features extracted once and cached on disk: minutes on a CPU, no image is
decoded twice. It trains in the project's loop (:func:`transferkit.train.fit_loop`).

Each epoch pairs every training image (the anchor) with a fresh same-class image (one
positive pair per anchor, drawn from the loop's seeded RNG) and one negative pair: of
``negatives`` random other-class images of the batch, the one nearest the anchor in
the current embedding (hard-negative mining in the spirit of Hermans et al. 2017;
``negatives=1`` gives random negatives). Random other-class pairs are mostly easy;
one-shot runs compare characters of one alphabet, and on Omniglot the mined negatives
were what made the head beat plain features (benchmarks/RESULTS.md). Validation pairs
come from *held-out classes* (the task is to compare classes never seen in
training); they drive early stopping, and the
verification threshold ``λ`` (``threshold_``) is the equal-error point on them: the
similarity at which the false-accept and false-reject rates are equal
(:func:`transferkit.evaluate.metrics.equal_error_rate`). ``similarity(a, b)`` is the
cosine of the two embeddings; ``verify(a, b)`` is ``similarity >= threshold_``.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted

from transferkit.backbones import DEFAULT_BACKBONE
from transferkit.data.dataset import as_paths
from transferkit.errors import DataError
from transferkit.features.extract import FrozenExtractor

LOSSES = ("contrastive", "triplet")
# Machine-local options a saved model leaves out (run_dir: a config must never set it).
_NOT_SAVED = ("cache_dir", "progress", "num_workers", "run_dir")
WEIGHTS_FILE = "embedding.safetensors"


def contrastive_loss(distance, same, margin: float = 1.0):
    """Hadsell et al. 2006: ``mean(y d² + (1 - y) max(0, m - d)²) / 2`` (torch tensors)."""
    same = same.to(distance.dtype)
    hinge = (margin - distance).clamp(min=0.0)
    return 0.5 * (same * distance.pow(2) + (1.0 - same) * hinge.pow(2)).mean()


def triplet_loss(d_positive, d_negative, margin: float = 1.0):
    """Schroff et al. 2015: ``mean(max(0, d(a, p) - d(a, n) + m))`` (torch tensors)."""
    return (d_positive - d_negative + margin).clamp(min=0.0).mean()


class _Anchors:
    """Item ``i`` = training image ``i``; the collate function draws its partners."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> int:
        return index


def _pair_collate(features, labels):
    """Anchors → ``(anchor, positive, labels)``: each anchor with a same-class image other
    than itself, drawn with the torch RNG (seeded and checkpointed by the loop). The
    negatives come from the other pairs of the batch (see ``negatives``)."""
    import torch

    by_class = [torch.nonzero(labels == k).flatten() for k in range(int(labels.max()) + 1)]

    def collate(indices):
        anchor = torch.as_tensor(indices, dtype=torch.long)
        positive = torch.empty_like(anchor)
        for j, i in enumerate(anchor.tolist()):
            members = by_class[int(labels[i])]
            pick = members[torch.randint(len(members) - 1, (1,))]
            positive[j] = pick if pick != i else members[-1]  # any member but the anchor
        return features[anchor], features[positive], labels[anchor]

    return collate


def _fixed_pairs(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(anchor, same-class partner, other-class partner) index rows: one per image of a
    class with >= 2 images, in a random order."""
    rows = []
    members = {k: np.flatnonzero(labels == k) for k in np.unique(labels)}
    for i, label in enumerate(labels):
        same = members[label][members[label] != i]
        if len(same) == 0:
            continue
        others = np.flatnonzero(labels != label)
        rows.append((i, rng.choice(same), rng.choice(others)))
    rows = np.asarray(rows, dtype=np.int64).reshape(-1, 3)
    return rows[rng.permutation(len(rows))]


def _check_features(features, what: str) -> np.ndarray:
    try:
        features = np.asarray(features, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{what} must be a numeric array: {exc}") from exc
    if features.ndim != 2 or len(features) == 0:
        raise DataError(f"{what} must be a non-empty 2-D array (images × features), got shape "
                        f"{features.shape}.")
    if not np.isfinite(features).all():
        raise DataError(f"{what} hold NaN or infinite values.")
    return features


def _check_pairs_labels(labels: np.ndarray, what: str) -> None:
    """Same pairs need two images of one class, different pairs two classes."""
    classes, counts = np.unique(labels, return_counts=True)
    if len(classes) < 2:
        raise DataError(f"{what}: need images of at least two classes to form "
                        f"'different' pairs, got {list(classes)}.")
    if counts.max() < 2:
        raise DataError(f"{what}: every class has only one image, so there is no 'same' pair "
                        "to learn or verify with. Give at least two images of a class "
                        "(e.g. 20 drawings per Omniglot character).")


class SiameseSimilarity(BaseEstimator):
    """A learned similarity for one-shot verification and N-way K-shot classification.

    ``fit(paths, labels)`` (or ``fit_features(F, labels)``) learns the embedding on
    pairs of the labelled images; ``transform`` gives unit-length embeddings (feed them to
    :class:`~transferkit.methods.fewshot.prototypes.PrototypeClassifier`); ``similarity(a, b)``
    the cosine of aligned pairs; ``verify(a, b)`` "same" when it reaches ``threshold_``,
    chosen at the equal error rate (``eer_``) on validation pairs of held-out classes
    (``val_fraction`` of the classes, or ``X_val``/``y_val``). ``calibrate_features``
    re-chooses ``threshold_`` on any labelled pairs.

    Extraction options as in :class:`~transferkit.methods.linear_probe.LinearProbe`
    (``backbone``, ``weights``, ``arch``, ``layer``, ``pooling``, ``cache_dir``, …);
    training: ``loss`` (contrastive or triplet), ``margin``, ``hidden`` (0: one linear
    projection), ``embedding_dim``, ``dropout``, ``negatives`` (other-class candidates per
    anchor; the nearest makes the negative pair), ``epochs``, ``lr``, ``weight_decay``,
    ``batch_size`` (anchors per step), ``patience`` (early stopping on the validation
    loss), ``device``, ``random_state`` (class split, initial weights, pair draws),
    ``run_dir`` (checkpoints and metrics.csv of the loop).
    """

    def __init__(self, backbone: str = DEFAULT_BACKBONE, weights: str | None = None,
                 arch: str | None = None, layer: str = "pre_logits", pooling: str = "avg",
                 loss: str = "contrastive", margin: float = 1.0, hidden: int = 512,
                 embedding_dim: int = 128, dropout: float = 0.1, negatives: int = 16,
                 epochs: int = 30, lr: float = 1e-3, weight_decay: float = 1e-4, batch_size: int = 128,
                 val_fraction: float = 0.15, patience: int | None = 5, device: str = "auto",
                 random_state: int = 0, cache_dir: str | None = None, use_cache: bool = True,
                 runtime: str = "auto", num_workers: int | None = None,
                 progress: bool = False, run_dir: str | None = None):
        self.backbone = backbone
        self.weights = weights
        self.arch = arch
        self.layer = layer
        self.pooling = pooling
        self.loss = loss
        self.margin = margin
        self.hidden = hidden
        self.embedding_dim = embedding_dim
        self.dropout = dropout
        self.negatives = negatives
        self.epochs = epochs
        self.lr = lr
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.val_fraction = val_fraction
        self.patience = patience
        self.device = device
        self.random_state = random_state
        self.cache_dir = cache_dir
        self.use_cache = use_cache
        self.runtime = runtime
        self.num_workers = num_workers
        self.progress = progress
        self.run_dir = run_dir

    # -- features ---------------------------------------------------------------------
    def _extractor(self) -> FrozenExtractor:
        if getattr(self, "extractor_", None) is None:
            self.extractor_ = FrozenExtractor.from_name(
                self.backbone or DEFAULT_BACKBONE, self.weights, self.arch, layer=self.layer,
                pooling=self.pooling, cache_dir=self.cache_dir, use_cache=self.use_cache,
                runtime=self.runtime, num_workers=self.num_workers)
        return self.extractor_

    def extract(self, X):
        """Backbone features of the readable images of ``X`` (an ``ExtractionResult``)."""
        return self._extractor().extract(as_paths(X), progress=self.progress)

    def _features_of(self, X) -> np.ndarray:
        result = self.extract(X)
        if result.skipped:
            raise DataError(f"{len(result.skipped)} image(s) could not be read: "
                            + "; ".join(reason for _, reason in result.skipped[:5]))
        return result.features

    # -- fitting ----------------------------------------------------------------------
    def _check_params(self) -> None:
        if self.loss not in LOSSES:
            raise DataError(f"unknown loss {self.loss!r}; choose one of {', '.join(LOSSES)}.")
        if not float(self.margin) > 0:
            raise DataError(f"margin must be positive, got {self.margin}.")
        if int(self.negatives) < 1:
            raise DataError(f"negatives must be at least 1, got {self.negatives}.")
        if not 0.0 <= float(self.val_fraction) < 1.0:
            raise DataError(f"val_fraction must be in [0, 1), got {self.val_fraction}.")

    def fit(self, X, y, X_val=None, y_val=None):
        """Extract features of the images ``X`` (labels ``y``) and learn the similarity.
        Unreadable training images are skipped with a warning (``skipped_``)."""
        y = np.asarray(y)
        if len(y) != len(as_paths(X)):
            raise DataError(f"{len(as_paths(X))} images but {len(y)} labels.")
        result = self.extract(X)
        self.skipped_ = result.skipped
        if result.skipped:
            warnings.warn(f"skipped {len(result.skipped)} unreadable image(s): "
                          + "; ".join(reason for _, reason in result.skipped[:5]))
        features_val = None if X_val is None else self._features_of(X_val)
        return self.fit_features(result.features, y[result.ok], features_val, y_val)

    def _split_classes(self, labels: np.ndarray):
        """Hold out ``val_fraction`` of the classes (those with >= 2 images) for validation."""
        classes = np.unique(labels)
        n_val = int(round(len(classes) * float(self.val_fraction)))
        if n_val == 0:
            return np.ones(len(labels), dtype=bool)
        counts = {c: int((labels == c).sum()) for c in classes}
        candidates = np.array([c for c in classes if counts[c] >= 2])
        rng = np.random.default_rng(self.random_state)
        held = set(rng.permutation(candidates)[:min(n_val, len(candidates) - 2)].tolist())
        if len(held) < 2:
            return np.ones(len(labels), dtype=bool)
        return np.array([label not in held for label in labels])

    def fit_features(self, features, y, features_val=None, y_val=None):
        """Learn the embedding on precomputed features (rows aligned with ``y``)."""
        import torch
        from torch.utils.data import DataLoader

        from transferkit.nets.pair_embedding import PairEmbedding
        from transferkit.train.loop import TrainConfig, fit_loop

        self._check_params()
        features = _check_features(features, "training features")
        y = np.asarray(y)
        if len(features) != len(y):
            raise DataError(f"{len(features)} feature rows but {len(y)} labels.")
        _check_pairs_labels(y, "training images")
        if features_val is not None:
            if y_val is None:
                raise DataError("validation features were given without their labels.")
            features_val = _check_features(features_val, "validation features")
            y_val = np.asarray(y_val)
            _check_pairs_labels(y_val, "validation images")
            train_rows = np.ones(len(y), dtype=bool)
            self.validation_ = f"given: {len(np.unique(y_val))} classes"
        else:
            train_rows = self._split_classes(y)
            features_val, y_val = features[~train_rows], y[~train_rows]
            self.validation_ = (f"{len(np.unique(y_val))} held-out classes "
                                f"({self.val_fraction:.0%} of them, seed {self.random_state})"
                                if len(y_val) else "none: too few classes to hold any out")
        train_x, train_y = features[train_rows], y[train_rows]
        _check_pairs_labels(train_y, "training images after holding out validation classes")
        # Classes with one image can be a negative but never an anchor.
        _, encoded = np.unique(train_y, return_inverse=True)
        counts = np.bincount(encoded)
        anchors = np.flatnonzero(counts[encoded] >= 2)

        torch.manual_seed(int(self.random_state))  # initial weights
        model = PairEmbedding(features.shape[1], int(self.hidden), int(self.embedding_dim),
                                   float(self.dropout))
        mean = train_x.mean(axis=0)
        scale = train_x.std(axis=0)
        model.mean.copy_(torch.as_tensor(mean))
        model.scale.copy_(torch.as_tensor(np.where(scale > 1e-6, scale, 1.0)))

        x_train = torch.as_tensor(train_x)
        y_train = torch.as_tensor(encoded, dtype=torch.long)
        train_loader = DataLoader(_Anchors(len(anchors)), batch_size=int(self.batch_size),
                                  shuffle=True, drop_last=len(anchors) > int(self.batch_size),
                                  collate_fn=self._anchor_collate(x_train, y_train, anchors))
        val_loader = None
        if len(y_val) and len(np.unique(y_val)) >= 2:
            # Fixed validation pairs, mined the same way (within batches of this size).
            rows = _fixed_pairs(y_val, np.random.default_rng(self.random_state))
            x_val = torch.as_tensor(features_val)
            _, val_codes = np.unique(y_val, return_inverse=True)
            val_codes = torch.as_tensor(val_codes, dtype=torch.long)
            val_loader = DataLoader(torch.as_tensor(rows), batch_size=int(self.batch_size),
                                    collate_fn=lambda items: (x_val[torch.stack(items)[:, 0]],
                                                              x_val[torch.stack(items)[:, 1]],
                                                              val_codes[torch.stack(items)[:, 0]]))
        config = TrainConfig(epochs=int(self.epochs), patience=self.patience if val_loader else None,
                             restore_best=val_loader is not None, device=self.device,
                             seed=int(self.random_state), progress=self.progress,
                             channels_last=False, grad_clip=None, desc="SiameseSimilarity")
        result = fit_loop(model, [{"params": list(model.parameters()), "lr": float(self.lr),
                                   "weight_decay": float(self.weight_decay)}],
                          train_loader, val_loader, self._step_fn(), config, self.run_dir)
        self.model_ = result.model.cpu().eval()
        for parameter in self.model_.parameters():
            parameter.requires_grad_(False)
        self.n_features_in_ = int(features.shape[1])
        self.history_ = result.history
        self.best_epoch_ = result.best_epoch
        self.epochs_run_ = result.epochs_run
        # λ at the equal-error point of validation pairs (training pairs if none: optimistic).
        if val_loader is not None:
            pairs_x, pairs_y = features_val, y_val
        else:
            warnings.warn("no validation classes: the verification threshold is chosen on "
                          "training pairs and will be optimistic.")
            pairs_x, pairs_y = train_x, train_y
        # Verification pairs: one same-class and one random other-class partner per image.
        rows = _fixed_pairs(pairs_y, np.random.default_rng(self.random_state + 1))
        a = np.concatenate([rows[:, 0], rows[:, 0]])
        b = np.concatenate([rows[:, 1], rows[:, 2]])
        same = np.r_[np.ones(len(rows)), np.zeros(len(rows))]
        return self.calibrate_features(pairs_x[a], pairs_x[b], same)

    def _anchor_collate(self, x_train, y_train, anchors):
        import torch

        draw = _pair_collate(x_train, y_train)
        anchors = torch.as_tensor(anchors, dtype=torch.long)
        return lambda items: draw(anchors[torch.as_tensor(items, dtype=torch.long)].tolist())

    def _step_fn(self):
        import torch

        margin = float(self.margin)
        triplet = self.loss == "triplet"
        k = int(self.negatives)
        validation_rng = torch.Generator()

        def step(model, batch):
            anchor, positive, labels = batch
            n = len(anchor)
            embedded = model(torch.cat([anchor, positive]))
            ea = embedded[:n]
            d_pos = (ea - embedded[n:]).norm(dim=1)
            # Negatives: k random images of another class among the batch's 2n images; the
            # one nearest the anchor now makes its negative pair (hard-negative mining).
            # Validation batches draw theirs with a fixed seed, so epochs compare.
            other = labels[:, None] != torch.cat([labels, labels])[None, :]
            if model.training:
                draw = torch.rand(other.shape, device=other.device)
            else:
                draw = torch.rand(other.shape, generator=validation_rng.manual_seed(0))
                draw = draw.to(other.device)
            draw = draw.masked_fill(~other, -1.0)
            top, picked = draw.topk(min(k, 2 * n), dim=1)
            distances = torch.cdist(ea, embedded).gather(1, picked)
            d_neg = distances.masked_fill(top < 0, float("inf")).min(dim=1).values
            keep = other.any(dim=1)  # a batch of one class has no negatives
            d_neg = d_neg[keep]
            if triplet:
                loss = triplet_loss(d_pos[keep], d_neg, margin)
            else:
                same = torch.cat([torch.ones(n), torch.zeros(len(d_neg))]).to(d_pos.device)
                loss = contrastive_loss(torch.cat([d_pos, d_neg]), same, margin)
            # "correct": the same-class partner is nearer than the mined other-class one.
            return loss, (d_pos[keep] < d_neg).sum(), int(keep.sum())

        return step

    # -- embedding and similarity -----------------------------------------------------
    def transform_features(self, features) -> np.ndarray:
        """Unit-length embeddings of backbone features."""
        import torch

        check_is_fitted(self, "model_")
        features = _check_features(features, "features")
        if features.shape[1] != self.n_features_in_:
            raise DataError(f"features have {features.shape[1]} columns; this similarity was "
                            f"trained on {self.n_features_in_} ({self.layer} of {self.backbone}).")
        with torch.inference_mode():
            return np.concatenate([self.model_(torch.as_tensor(features[i:i + 4096])).numpy()
                                   for i in range(0, len(features), 4096)])

    def transform(self, X) -> np.ndarray:
        return self.transform_features(self._features_of(X))

    def similarity_features(self, features_a, features_b) -> np.ndarray:
        """Cosine similarity of the embeddings of aligned pairs (row i of a with row i of b)."""
        a, b = self.transform_features(features_a), self.transform_features(features_b)
        if a.shape != b.shape:
            raise DataError(f"pairs need as many first as second images ({len(a)} vs {len(b)}).")
        return (a * b).sum(axis=1)

    def similarity(self, X_a, X_b) -> np.ndarray:
        return self.similarity_features(self._features_of(X_a), self._features_of(X_b))

    def verify_features(self, features_a, features_b) -> np.ndarray:
        """True where a pair is judged "same": similarity >= ``threshold_``."""
        check_is_fitted(self, "threshold_")
        return self.similarity_features(features_a, features_b) >= self.threshold_

    def verify(self, X_a, X_b) -> np.ndarray:
        return self.verify_features(self._features_of(X_a), self._features_of(X_b))

    def calibrate_features(self, features_a, features_b, same):
        """Set ``threshold_`` (λ) at the equal error rate of these labelled pairs
        (``same`` 1 for same-class pairs) and ``eer_`` to that rate."""
        from transferkit.evaluate.metrics import equal_error_rate

        same = np.asarray(same).astype(int)
        if same.all() or not same.any():
            raise DataError("choosing a verification threshold needs both 'same' and "
                            "'different' pairs.")
        scores = self.similarity_features(features_a, features_b)
        if len(scores) != len(same):
            raise DataError(f"{len(scores)} pairs but {len(same)} same/different labels.")
        self.eer_, self.threshold_ = equal_error_rate(same, scores)
        self.n_calibration_pairs_ = int(len(same))
        return self

    # -- bundle -----------------------------------------------------------------------
    def _save_artifacts(self, folder: Path) -> dict:
        from safetensors.torch import save_file

        from transferkit.bundle import saved_params

        check_is_fitted(self, "model_")
        save_file({k: v.contiguous() for k, v in self.model_.state_dict().items()},
                  str(Path(folder) / WEIGHTS_FILE))
        extractor = self._extractor()
        return {
            "backbone": extractor.identity()["backbone"],
            "params": saved_params(self, _NOT_SAVED),
            "layers": extractor.layers,
            "n_features": int(self.n_features_in_),
            "threshold": float(self.threshold_), "eer": float(self.eer_),
            "validation": getattr(self, "validation_", None),
            "training": {"best_epoch": self.best_epoch_, "epochs_run": self.epochs_run_,
                         "history": self.history_},
        }

    @classmethod
    def _load_artifacts(cls, folder: Path, config: dict) -> "SiameseSimilarity":
        import torch

        from transferkit.backbones.taps import POOLINGS
        from transferkit.bundle import (
            BACKBONE_IDENTITY,
            check_backbone_names,
            check_config,
            check_own_params,
            check_param_values,
            check_same_features,
            check_weight_shapes,
            read_tensors,
        )
        from transferkit.features.extract import RUNTIMES
        from transferkit.nets.pair_embedding import PairEmbedding

        schema = {"n_features": "integer", "layers": ["string"], "threshold": "number",
                  "eer": "number", "validation?": "string|object|null",
                  "backbone": BACKBONE_IDENTITY,
                  "training?": {"best_epoch?": "integer|null", "epochs_run?": "integer|null",
                                "history?": ["object"]}}
        check_config(folder, config, schema, cls, not_saved=_NOT_SAVED)
        params = config["params"]
        check_param_values(folder, params, {"pooling": POOLINGS, "runtime": RUNTIMES},
                           positive=("batch_size", "embedding_dim", "epochs"))
        check_backbone_names(folder, [("backbone", params.get("backbone")),
                                      ("arch", params.get("arch"))])
        estimator = cls(**params)
        check_own_params(folder, estimator._check_params)
        state = read_tensors(folder, WEIGHTS_FILE)

        def network():
            return PairEmbedding(config["n_features"], int(estimator.hidden),
                                      int(estimator.embedding_dim), float(estimator.dropout))

        # Shapes first, on the meta device: widths from an edited config could otherwise
        # ask for gigabytes before the weights are even looked at.
        with torch.device("meta"):
            skeleton = network()
        what = (f"a {config['n_features']}-feature head (hidden {estimator.hidden}, "
                f"embedding {estimator.embedding_dim})")
        check_weight_shapes(folder, WEIGHTS_FILE, skeleton, state, what)
        model = network()
        model.load_state_dict(state, strict=True)
        for parameter in model.parameters():
            parameter.requires_grad_(False)
        estimator.model_ = model.eval()
        estimator.n_features_in_ = config["n_features"]
        estimator.threshold_ = float(config["threshold"])
        estimator.eer_ = float(config["eer"])
        estimator.validation_ = config.get("validation")
        training = config.get("training", {})
        estimator.best_epoch_ = training.get("best_epoch")
        estimator.epochs_run_ = training.get("epochs_run")
        estimator.history_ = training.get("history", [])
        check_same_features(folder, config, estimator._extractor(), "its head")
        return estimator
