"""Multi-task learning: one shared network, one head per task, task losses weighted.

Hard parameter sharing (Caruana 1997, "Multitask Learning"): every task reads the same
representation, so what one task's labels teach the shared layers helps the others — the
lectures' plant-disease example, with shared layers followed by task-specific layers.
Uncertainty weighting: Kendall, Gal & Cipolla 2018, "Multi-Task Learning Using
Uncertainty to Weigh Losses for Scene Geometry and Semantics".

The network here is::

    frozen pretrained backbone (features cached) ─► shared layers ─┬─► head of task 1
                                                                   ├─► head of task 2 …

The backbone (EfficientNet-Lite0 by default) is **frozen**: its pooled pre-logits
features are extracted once (and cached), centred and divided by one global scale, and
the trainable part is the shared block ``Linear(d, hidden) → ReLU → Dropout`` plus one
task-specific head per task ``Linear(hidden, head_hidden) → ReLU → Linear(head_hidden,
n_classes_t)``. This is what makes it cheap: minutes on a CPU. The loss of a batch is

* ``task_weighting="fixed"``:        ``L = Σ_t w_t · L_t``  (``task_weights``, default all 1)
* ``task_weighting="uncertainty"``:  ``L = Σ_t exp(−s_t) · L_t + s_t``, with one learned
  ``s_t = log σ_t²`` per task (initialised at 0, no weight decay), so a task whose loss
  stays high is down-weighted, and the ``+ s_t`` term stops every weight from vanishing.
  ``s_t`` is learned on the *training* loss, whose optimum is ``s_t = log L_t``: with few
  images ``L_t → 0`` and the weights grow without bound if ``s_t`` may move fast. At the
  network's learning rate (``log_var_lr=None``) Adam moves ``s_t`` by about ``lr`` per
  step, so a few hundred steps keep the weights near 1 (measured on sign-language
  digits, with ``log_var_lr=0.1`` for contrast: ``benchmarks/RESULTS.md``, section
  ``multitask``).

``L_t`` is the cross-entropy of task ``t`` averaged over the batch rows that carry a
label for it: a row may lack a task's label (``-1``, ``None``, NaN or an empty string),
and a task with no labelled row in a batch adds nothing to that batch's loss. Each head
receives gradients from its own task's loss only; the shared layers from all of them.

Trained with one task (``Y`` with one column) the same estimator is the single-task
baseline: the same shared block and one head, the same optimiser and epochs.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted
from torch.nn import functional as F

from transferkit.backbones import DEFAULT_BACKBONE
from transferkit.errors import DataError
from transferkit.nets.multitask import MultiTaskNetwork

MISSING = -1  # an encoded label meaning "this row has no label for this task"
WEIGHTINGS = ("fixed", "uncertainty")


# -- the loss --------------------------------------------------------------------------
def task_losses(logits: Sequence[torch.Tensor], targets: torch.Tensor) -> list[torch.Tensor | None]:
    """Each task's mean cross-entropy over the rows labelled for it (``None``: no such row).

    ``targets``: ``(batch, n_tasks)`` long tensor, ``MISSING`` (-1) where a row has no label.
    """
    losses: list[torch.Tensor | None] = []
    for t, task_logits in enumerate(logits):
        known = targets[:, t] != MISSING
        losses.append(F.cross_entropy(task_logits[known], targets[known, t]) if known.any() else None)
    return losses


def combine_task_losses(losses: Sequence[torch.Tensor | None], weighting: str = "fixed",
                        weights: Sequence[float] | None = None,
                        log_vars: torch.Tensor | None = None) -> torch.Tensor:
    """``Σ_t w_t L_t`` (fixed) or ``Σ_t exp(−s_t) L_t + s_t`` (uncertainty) over present tasks."""
    if weighting not in WEIGHTINGS:
        raise ValueError(f"unknown task_weighting {weighting!r}; choose one of {WEIGHTINGS}.")
    if weighting == "uncertainty" and log_vars is None:
        raise ValueError("uncertainty weighting needs log_vars (one s_t per task).")
    total = None
    for t, loss in enumerate(losses):
        if loss is None:
            continue
        if weighting == "uncertainty":
            term = torch.exp(-log_vars[t]) * loss + log_vars[t]
        else:
            term = (1.0 if weights is None else float(weights[t])) * loss
        total = term if total is None else total + term
    if total is None:
        raise DataError("no row of the batch carries a label of any task.")
    return total


# -- labels ----------------------------------------------------------------------------
def is_missing(value) -> bool:
    """``None``, NaN, ``-1`` and empty strings mark a row without a label for a task."""
    if value is None:
        return True
    if isinstance(value, str):
        return value.strip() == ""
    if isinstance(value, (bool, np.bool_)):
        return False
    if isinstance(value, (int, np.integer)):
        return int(value) == MISSING
    if isinstance(value, (float, np.floating)):
        return bool(np.isnan(value)) or float(value) == MISSING
    return False


def label_columns(Y, tasks: Sequence[str] | None = None) -> tuple[list[str], list[np.ndarray]]:
    """``Y`` (a mapping task → labels, a DataFrame, an ``(n, n_tasks)`` array or one
    column) → (task names, one object array of labels per task)."""
    if hasattr(Y, "columns") and hasattr(Y, "__getitem__") and not isinstance(Y, np.ndarray):
        Y = {str(name): np.asarray(Y[name], dtype=object) for name in Y.columns}
    if isinstance(Y, Mapping):
        if not Y:
            raise DataError("Y names no task.")
        names = [str(name) for name in Y]
        if tasks is not None:
            unknown = [t for t in tasks if t not in names]
            if unknown:
                raise DataError(f"tasks {unknown} are not in Y (it has {names}).")
            names = list(tasks)
        columns = [np.asarray(list(Y[name]), dtype=object).reshape(-1) for name in names]
    else:
        array = np.asarray(Y, dtype=object)
        if array.ndim == 1:
            array = array[:, None]
        if array.ndim != 2 or array.shape[1] == 0:
            raise DataError(f"Y must be an (n_samples, n_tasks) array or a mapping task → labels, "
                            f"got shape {array.shape}.")
        names = list(tasks) if tasks is not None else [f"task{t}" for t in range(array.shape[1])]
        if len(names) != array.shape[1]:
            raise DataError(f"{len(names)} task names for {array.shape[1]} label columns.")
        columns = [array[:, t] for t in range(array.shape[1])]
    lengths = {len(c) for c in columns}
    if len(lengths) != 1:
        raise DataError(f"the tasks' label columns differ in length: {sorted(lengths)}.")
    if len(set(names)) != len(names):
        raise DataError(f"task names repeat: {names}.")
    return names, columns


def _encode(name: str, column: np.ndarray, classes: np.ndarray | None = None):
    known = np.array([not is_missing(v) for v in column], dtype=bool)
    if classes is None:
        if not known.any():
            raise DataError(f"task {name!r} has no labelled row (every label is missing).")
        classes = np.unique(np.asarray(column[known].tolist()))
        if len(classes) < 2:
            raise DataError(f"task {name!r} has only one class ({classes[0]!r}); a task needs "
                            "at least two classes.")
    encoded = np.full(len(column), MISSING, dtype=np.int64)
    if known.any():
        values = np.asarray(column[known].tolist())
        position = np.searchsorted(classes, values)
        position = np.clip(position, 0, len(classes) - 1)
        bad = classes[position] != values
        if bad.any():
            raise DataError(f"task {name!r}: labels {sorted(set(values[bad].tolist()))} were not "
                            f"seen in training (classes {classes.tolist()}).")
        encoded[known] = position
    return classes, encoded


# -- the estimator ---------------------------------------------------------------------
class MultiTaskClassifier(BaseEstimator):
    """Frozen backbone features → shared layers → one classification head per task.

    ``fit(X, Y)``: ``X`` is a feature matrix ``(n, d)`` or a sequence of image paths
    (features of the frozen ``backbone`` are then extracted, and cached); ``Y`` is a
    mapping task → labels, a DataFrame, or an ``(n, n_tasks)`` array (``tasks`` names
    its columns). ``-1`` / ``None`` / NaN / ``""`` mark a row's missing label of a task.
    ``predict`` returns ``{task: labels}``, ``predict_proba`` ``{task: probabilities}``,
    ``score_tasks`` ``{task: accuracy}`` over the rows labelled for each task, ``score``
    their mean.

    Learned: ``tasks_``, ``classes_`` (``{task: classes}``), ``model_``, ``history_``
    (one row per epoch from the shared loop), ``task_weights_`` (``w_t``, or
    ``exp(−s_t)`` under uncertainty weighting), ``log_vars_`` (``s_t``; uncertainty only).

    Hyper-parameters: ``hidden`` (shared width), ``head_hidden`` (0: linear heads),
    ``dropout``, ``epochs`` (no early stopping), ``batch_size``, ``lr``, ``weight_decay``
    (AdamW, cosine schedule), ``log_var_lr`` (learning rate of the ``s_t``; default
    ``lr``); ``backbone``/``weights``/``arch``/``cache_dir``/``use_cache`` for image
    paths; ``device``, ``random_state``, ``progress``, ``run_dir`` (checkpoints, resume)
    go to the shared training loop.
    """

    def __init__(self, tasks: Sequence[str] | None = None, task_weighting: str = "fixed",
                 task_weights=None, hidden: int = 128, head_hidden: int = 64,
                 dropout: float = 0.3, epochs: int = 60, batch_size: int = 32, lr: float = 1e-3,
                 weight_decay: float = 1e-2, log_var_lr: float | None = None,
                 backbone: str = DEFAULT_BACKBONE,
                 weights: str | None = None, arch: str | None = None,
                 cache_dir: str | None = None, use_cache: bool = True, device: str = "auto",
                 random_state: int = 0, progress: bool = False, run_dir: str | None = None):
        self.tasks = tasks
        self.task_weighting = task_weighting
        self.task_weights = task_weights
        self.hidden = hidden
        self.head_hidden = head_hidden
        self.dropout = dropout
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.weight_decay = weight_decay
        self.log_var_lr = log_var_lr
        self.backbone = backbone
        self.weights = weights
        self.arch = arch
        self.cache_dir = cache_dir
        self.use_cache = use_cache
        self.device = device
        self.random_state = random_state
        self.progress = progress
        self.run_dir = run_dir

    # -- features ------------------------------------------------------------------------
    def _features(self, X, training: bool) -> tuple[np.ndarray, np.ndarray]:
        """(feature rows, mask of the inputs they belong to): ``X`` as given if numeric,
        else frozen-backbone features of the image paths (unreadable ones dropped)."""
        array = X if isinstance(X, np.ndarray) else None
        if array is None and not isinstance(X, (str, bytes)):
            try:
                array = np.asarray(X)
            except (ValueError, TypeError):
                array = None
        if array is not None and array.ndim == 2 and array.dtype.kind in "fiub":
            return array.astype(np.float32), np.ones(len(array), dtype=bool)
        from transferkit.data.dataset import as_paths
        from transferkit.features.extract import FrozenExtractor

        if getattr(self, "extractor_", None) is None:
            self.extractor_ = FrozenExtractor.from_name(
                self.backbone or DEFAULT_BACKBONE, self.weights, self.arch,
                cache_dir=self.cache_dir, use_cache=self.use_cache)
        result = self.extractor_.extract(as_paths(X), progress=self.progress)
        if result.skipped:
            reasons = "; ".join(reason for _, reason in result.skipped[:5])
            if not training:
                raise DataError(f"{len(result.skipped)} image(s) could not be read: {reasons}")
            warnings.warn(f"skipped {len(result.skipped)} unreadable image(s): {reasons}")
        if training:
            self.skipped_ = result.skipped
        return result.features.astype(np.float32), result.ok

    def _scaled(self, features: np.ndarray) -> torch.Tensor:
        if features.shape[1] != self.n_features_in_:
            raise DataError(f"features have {features.shape[1]} columns; the model was trained "
                            f"on {self.n_features_in_}.")
        return torch.from_numpy(((features - self.feature_mean_) / self.feature_scale_)
                                .astype(np.float32))

    # -- fitting -------------------------------------------------------------------------
    def _weights_vector(self) -> list[float]:
        if self.task_weights is None:
            return [1.0] * len(self.tasks_)
        if isinstance(self.task_weights, Mapping):
            unknown = sorted(set(self.task_weights) - set(self.tasks_))
            if unknown:
                raise DataError(f"task_weights name unknown tasks {unknown} (tasks: {self.tasks_}).")
            weights = [float(self.task_weights.get(t, 1.0)) for t in self.tasks_]
        else:
            weights = [float(w) for w in np.atleast_1d(self.task_weights)]
            if len(weights) != len(self.tasks_):
                raise DataError(f"{len(weights)} task_weights for {len(self.tasks_)} tasks.")
        if any(w < 0 or not np.isfinite(w) for w in weights):
            raise DataError(f"task_weights must be finite and non-negative, got {weights}.")
        return weights

    def fit(self, X, Y):
        if self.task_weighting not in WEIGHTINGS:
            raise DataError(f"unknown task_weighting {self.task_weighting!r}; choose one of "
                            f"{WEIGHTINGS}.")
        self.tasks_, columns = label_columns(Y, self.tasks)
        features, ok = self._features(X, training=True)
        if len(ok) != len(columns[0]):
            raise DataError(f"{len(ok)} inputs but {len(columns[0])} rows of labels.")
        if len(features) == 0:
            raise DataError("no usable training rows.")
        columns = [column[ok] for column in columns]
        self.classes_, encoded = {}, []
        for name, column in zip(self.tasks_, columns):
            self.classes_[name], codes = _encode(name, column)
            encoded.append(codes)
        weights = self._weights_vector()
        self.n_features_in_ = features.shape[1]
        self.feature_mean_ = features.mean(axis=0)
        # Centre each feature, divide all by one scale (the RMS of the feature stds): per-
        # feature standardisation on ~100 images blows up features that happen to be
        # near-constant there (digit accuracy 0.70 vs 0.79 on a tuning split of 100 images).
        self.feature_scale_ = np.float32(np.sqrt(features.var(axis=0).mean()) + 1e-6)
        inputs = self._scaled(features)
        targets = torch.from_numpy(np.stack(encoded, axis=1))

        self.model_, self.history_ = self._train(inputs, targets, weights)
        if self.model_.log_vars is not None:
            log_vars = self.model_.log_vars.detach().cpu().numpy().astype(float)
            self.log_vars_ = dict(zip(self.tasks_, log_vars.tolist()))
            self.task_weights_ = dict(zip(self.tasks_, np.exp(-log_vars).tolist()))
        else:
            self.task_weights_ = dict(zip(self.tasks_, weights))
        return self

    def _train(self, inputs: torch.Tensor, targets: torch.Tensor, weights: list[float]):
        from torch.utils.data import DataLoader, TensorDataset

        from transferkit.train.loop import TrainConfig, fit_loop

        torch.manual_seed(int(self.random_state))  # initial weights
        model = MultiTaskNetwork(inputs.shape[1], [len(self.classes_[t]) for t in self.tasks_],
                                 self.hidden, self.head_hidden, self.dropout,
                                 uncertainty=self.task_weighting == "uncertainty")
        loader = DataLoader(TensorDataset(inputs, targets), batch_size=int(self.batch_size),
                            shuffle=True, drop_last=len(inputs) > 2 * int(self.batch_size))
        network = [p for name, p in model.named_parameters() if name != "log_vars"]
        groups = [{"params": network, "lr": self.lr, "weight_decay": self.weight_decay}]
        if model.log_vars is not None:  # no decay: it would pull every σ_t towards 1
            lr = self.lr if self.log_var_lr is None else self.log_var_lr
            groups.insert(0, {"params": [model.log_vars], "lr": lr, "weight_decay": 0.0})
        weighting = self.task_weighting

        def step(net, batch):
            x, y = batch
            logits = net(x)
            losses = task_losses(logits, y)
            if all(loss is None for loss in losses):
                return torch.zeros((), device=x.device), 0, 0  # skipped by the loop
            loss = combine_task_losses(losses, weighting, weights, net.log_vars)
            # "accuracy" in history_: the mean over tasks of each task's batch accuracy
            accuracies = [(lg.argmax(1)[y[:, t] != MISSING] == y[y[:, t] != MISSING, t]).float().mean()
                          for t, lg in enumerate(logits) if losses[t] is not None]
            return loss, float(torch.stack(accuracies).mean()) * len(x), len(x)

        config = TrainConfig(epochs=int(self.epochs), patience=None, restore_best=False,
                             device=self.device, seed=int(self.random_state),
                             progress=self.progress, channels_last=False,
                             desc=f"{type(self).__name__} ({', '.join(self.tasks_)})")
        on_cpu = self.device == "cpu" or (self.device == "auto" and not torch.cuda.is_available())
        threads = torch.get_num_threads()
        if on_cpu:  # batches of ~32 × 1280: threads only add overhead (10× slower on a busy
            torch.set_num_threads(1)  # 2-core machine), so train on one, then restore
        try:
            result = fit_loop(model, groups, loader, None, step, config, self.run_dir)
        finally:
            torch.set_num_threads(threads)
        return result.model.cpu().eval(), result.history

    # -- prediction ----------------------------------------------------------------------
    def predict_proba(self, X) -> dict[str, np.ndarray]:
        check_is_fitted(self, "model_")
        features, _ = self._features(X, training=False)
        inputs = self._scaled(features)
        outputs: list[list[torch.Tensor]] = [[] for _ in self.tasks_]
        with torch.inference_mode():
            for start in range(0, len(inputs), 1024):
                for t, logits in enumerate(self.model_(inputs[start:start + 1024])):
                    outputs[t].append(torch.softmax(logits, 1))
        return {task: torch.cat(outputs[t]).numpy().astype(np.float64)
                for t, task in enumerate(self.tasks_)}

    def predict(self, X) -> dict[str, np.ndarray]:
        return {task: self.classes_[task][p.argmax(axis=1)] for task, p in self.predict_proba(X).items()}

    def score_tasks(self, X, Y) -> dict[str, float | None]:
        """Accuracy of each task over the rows of ``Y`` labelled for it (``None``: no row)."""
        names, columns = label_columns(Y, self.tasks_ if not isinstance(Y, Mapping) else None)
        predictions = self.predict(X)
        scores = {}
        for name, column in zip(names, columns):
            if name not in self.classes_:
                raise DataError(f"task {name!r} was not trained (tasks: {self.tasks_}).")
            known = np.array([not is_missing(v) for v in column], dtype=bool)
            if not known.any():
                scores[name] = None
                continue
            truth = np.asarray(column[known].tolist())
            scores[name] = float(np.mean(predictions[name][known] == truth))
        return scores

    def score(self, X, Y) -> float:
        """Mean over tasks of :meth:`score_tasks`."""
        values = [v for v in self.score_tasks(X, Y).values() if v is not None]
        return float(np.mean(values)) if values else float("nan")
