"""Knowledge distillation: a cheap student learns from a teacher's softened outputs.

Hinton, Vinyals & Dean 2015, "Distilling the Knowledge in a Neural Network". With
``p_T = softmax(z_teacher / T)`` and ``q_T = softmax(z_student / T)`` the student
minimises, per image,

    L = α · T² · KL(p_T ‖ q_T) + (1 − α) · CE(softmax(z_student), y)

The T² factor keeps the soft term's gradients the same size whatever T (they scale as
1/T²). An image without a label (``y`` = ``None`` or ``-1``) has only the soft term:
a transfer set may hold unlabelled images. A batch's loss is
``α · T² · mean_all KL + (1 − α) · mean_labelled CE``.

The teacher is anything that gives logits for the transfer set (computed once, by the
caller: e.g. the log-probabilities of a saved transferkit bundle, which for a
multinomial logistic regression equal its logits up to a per-row constant, and softmax
ignores that). The student is a small CNN on ``image_size``×``image_size`` RGB images
(:data:`transferkit.nets.students.STUDENTS`), trained from scratch in the project's one loop
(:func:`transferkit.train.fit_loop`) with light augmentation (flip, scale, shift).
Fitted without ``teacher_logits`` it is the same student trained alone (cross-entropy
only): the baseline distillation has to beat.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.validation import check_is_fitted

from transferkit.data.validation import UNLABELLED
from transferkit.errors import BundleError, DataError

WEIGHTS_FILE = "student.safetensors"
# Machine-local options a saved model leaves out (run_dir: a config must never set it).
_NOT_SAVED = ("run_dir", "progress")
_MEAN, _STD = 0.45, 0.25  # rough per-pixel normalisation; BatchNorm does the rest


# -- the loss ------------------------------------------------------------------------

def soften(logits, temperature: float = 1.0) -> np.ndarray:
    """``softmax(logits / T)`` row-wise: higher T gives flatter (higher-entropy)
    distributions with the classes in the same order."""
    if not temperature > 0:
        raise DataError(f"temperature must be positive, got {temperature}.")
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def distillation_loss(student_logits, teacher_logits, labels=None, temperature: float = 4.0,
                      alpha: float = 0.9):
    """Hinton et al.'s loss of one batch (a scalar tensor).

    ``α · T² · mean_rows KL(softmax(t/T) ‖ softmax(s/T)) + (1 − α) · mean_labelled CE(s, y)``.
    ``labels``: class indices, ``-1`` for unlabelled rows (KD term only), or ``None``
    (no row labelled). ``alpha=0`` is plain cross-entropy on the labelled rows.
    """
    import torch
    import torch.nn.functional as F

    student_logits = torch.as_tensor(student_logits)
    teacher_logits = torch.as_tensor(teacher_logits, dtype=student_logits.dtype,
                                     device=student_logits.device)
    if student_logits.shape != teacher_logits.shape:
        raise DataError(f"student logits {tuple(student_logits.shape)} and teacher logits "
                        f"{tuple(teacher_logits.shape)} differ in shape.")
    if not temperature > 0:
        raise DataError(f"temperature must be positive, got {temperature}.")
    if not 0.0 <= alpha <= 1.0:
        raise DataError(f"alpha must lie in [0, 1], got {alpha}.")
    T = float(temperature)
    loss = student_logits.new_zeros(())
    if alpha > 0:
        log_p = F.log_softmax(teacher_logits / T, dim=1)
        log_q = F.log_softmax(student_logits / T, dim=1)
        kl = (log_p.exp() * (log_p - log_q)).sum(dim=1)
        loss = loss + alpha * T * T * kl.mean()
    if alpha < 1 and labels is not None:
        labels = torch.as_tensor(labels, device=student_logits.device).long()
        known = labels != UNLABELLED
        if bool(known.any()):
            loss = loss + (1.0 - alpha) * F.cross_entropy(student_logits[known], labels[known])
    return loss


# -- the student's inputs (the network: transferkit.nets.students) ------------------

def _augment(images):
    """Random horizontal flip, scale 0.85–1.15 and shift ±10 % per image (one grid_sample)."""
    import torch
    import torch.nn.functional as F

    n = len(images)
    scale = torch.empty(n).uniform_(0.85, 1.15)
    flip = torch.where(torch.rand(n) < 0.5, -1.0, 1.0)
    shift = torch.empty(n, 2).uniform_(-0.1, 0.1)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = flip / scale
    theta[:, 1, 1] = 1.0 / scale
    theta[:, :, 2] = shift
    grid = F.affine_grid(theta.to(images.device), list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, padding_mode="reflection", align_corners=False)


def normalise_images(images):
    """uint8 ``(N, 3, H, W)`` → normalised float32."""
    return (images.float() / 255.0 - _MEAN) / _STD


# -- the estimator -----------------------------------------------------------------------

def _is_unlabelled(value) -> bool:
    if value is None:
        return True
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return int(value) == UNLABELLED
    return False


class DistilledStudent(ClassifierMixin, BaseEstimator):
    """A small CNN trained on images with a teacher's soft targets (and hard labels).

    ``fit(X, y=None, teacher_logits=None, classes=None)``: ``X`` images — an array
    ``(N, S, S, 3)`` (uint8 or floats in [0, 1], ``S = image_size``) or a list of image
    paths (decoded and resized; unreadable ones are skipped with their labels and
    teacher rows, see ``skipped_``). ``y``: labels; ``None`` or ``-1`` entries (or
    ``y=None``) mark unlabelled images. ``teacher_logits``: ``(N, C)``, columns in the
    order of ``classes`` (the teacher's classes; by default the sorted labels). Without
    ``teacher_logits`` the student is trained alone on the labelled rows (cross-entropy).

    ``temperature`` T and ``alpha`` α as in the module's loss; ``epochs`` of AdamW
    (``lr``, ``weight_decay``) with warm-up + cosine; ``augment``: random flip/scale/shift.
    """

    def __init__(self, student: str = "small-cnn", temperature: float = 4.0, alpha: float = 0.9,
                 image_size: int = 32, epochs: int = 40, batch_size: int = 64, lr: float = 3e-3,
                 weight_decay: float = 5e-4, augment: bool = True, dropout: float = 0.3,
                 device: str = "auto", random_state: int = 0, progress: bool = False,
                 run_dir: str | None = None):
        self.student = student
        self.temperature = temperature
        self.alpha = alpha
        self.image_size = image_size
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.weight_decay = weight_decay
        self.augment = augment
        self.dropout = dropout
        self.device = device
        self.random_state = random_state
        self.progress = progress
        self.run_dir = run_dir

    # -- inputs ------------------------------------------------------------------------
    def _check_params(self) -> None:
        from transferkit.nets.students import STUDENTS

        if self.student not in STUDENTS:
            raise DataError(f"unknown student {self.student!r}; choose one of {sorted(STUDENTS)}.")
        if not self.temperature > 0:
            raise DataError(f"temperature must be positive, got {self.temperature}.")
        if not 0.0 <= self.alpha <= 1.0:
            raise DataError(f"alpha must lie in [0, 1], got {self.alpha}.")
        if int(self.image_size) < 16:
            raise DataError(f"image_size must be at least 16, got {self.image_size}.")

    def read_images(self, X) -> tuple["torch.Tensor", np.ndarray, list]:
        """uint8 tensor ``(n_ok, 3, S, S)``, the ok mask over ``X``, skipped files."""
        import torch

        size = int(self.image_size)
        if isinstance(X, (str, os.PathLike)):
            raise DataError("X must be images or a list of image paths, not a single path; "
                            "wrap it in a list.")
        if isinstance(X, np.ndarray) and X.dtype.kind in "uif":
            array = X
            if array.ndim == 3:
                array = np.repeat(array[..., None], 3, axis=3)
            if array.ndim != 4 or array.shape[3] != 3:
                raise DataError(f"images must be an (N, H, W) or (N, H, W, 3) array, got "
                                f"shape {X.shape}.")
            if array.shape[1:3] != (size, size):
                raise DataError(f"images must be {size}×{size} (image_size), got "
                                f"{array.shape[1]}×{array.shape[2]}; give image paths to have "
                                "them resized, or set image_size.")
            if array.dtype.kind == "f" and len(array) and float(array.max()) <= 1.0:
                array = array * 255.0
            array = np.clip(np.rint(array), 0, 255).astype(np.uint8)
            ok, skipped = np.ones(len(array), dtype=bool), []
        else:
            from transferkit.data.images import load_small_images

            array, ok, skipped = load_small_images([str(p) for p in X], size)
        tensor = torch.from_numpy(np.ascontiguousarray(array)).permute(0, 3, 1, 2).contiguous()
        return tensor, ok, skipped

    def _targets(self, n: int, y, teacher_logits, classes):
        """classes, encoded labels (-1 unlabelled), teacher logits (or None)."""
        labelled = np.zeros(n, dtype=bool)
        values = None
        if y is not None:
            values = np.asarray(y, dtype=object) if not isinstance(y, np.ndarray) else y
            if values.ndim != 1 or len(values) != n:
                raise DataError(f"{n} images but labels of shape {np.shape(y)}.")
            labelled = ~np.array([_is_unlabelled(v) for v in values.tolist()], dtype=bool)
        if teacher_logits is not None:
            teacher_logits = np.asarray(teacher_logits, dtype=np.float32)
            if teacher_logits.ndim != 2 or len(teacher_logits) != n:
                raise DataError(f"{n} images but teacher logits of shape {teacher_logits.shape}; "
                                "give one row of logits per image.")
            if not np.isfinite(teacher_logits).all():
                raise DataError("teacher logits hold NaN or infinite values (log of a zero "
                                "probability?); clip probabilities before taking logs.")
        if classes is not None:
            classes = np.asarray(classes)
        elif labelled.any():
            classes = np.unique(np.asarray(values[labelled].tolist()))
        elif teacher_logits is not None:
            classes = np.arange(teacher_logits.shape[1])
        else:
            raise DataError("no labels and no teacher logits: nothing to learn from.")
        if teacher_logits is not None and teacher_logits.shape[1] != len(classes):
            raise DataError(f"the teacher gives {teacher_logits.shape[1]} logits per image but "
                            f"there are {len(classes)} classes {list(classes)[:10]}; the "
                            "teacher's columns must be these classes, in this order.")
        if len(classes) < 2:
            raise DataError(f"need at least two classes, got {list(classes)}.")
        encoded = np.full(n, UNLABELLED, dtype=np.int64)
        if labelled.any():
            lookup = {c.item() if hasattr(c, "item") else c: i for i, c in enumerate(classes)}
            wanted = [v.item() if hasattr(v, "item") else v for v in values[labelled].tolist()]
            unknown = sorted({str(v) for v in wanted if v not in lookup})
            if unknown:
                raise DataError(f"labels {unknown[:10]} are not among the teacher's classes "
                                f"{[str(c) for c in classes][:20]}; the teacher must know "
                                "every class of the data.")
            encoded[labelled] = [lookup[v] for v in wanted]
        if teacher_logits is None:
            if not labelled.any():
                raise DataError("no labelled image and no teacher: nothing to learn from.")
        elif self.alpha == 0 and not labelled.any():
            raise DataError("alpha=0 ignores the teacher, and no image is labelled.")
        return classes, encoded, teacher_logits

    # -- fitting -----------------------------------------------------------------------
    def fit(self, X, y=None, teacher_logits=None, classes=None):
        import torch
        from torch.utils.data import DataLoader, TensorDataset

        from transferkit.nets.students import StudentCNN
        from transferkit.train.loop import TrainConfig, fit_loop

        self._check_params()
        images, ok, self.skipped_ = self.read_images(X)
        n = len(ok)
        keep = np.flatnonzero(ok)
        if y is not None:
            y = np.asarray(y, dtype=object) if not isinstance(y, np.ndarray) else y
            if len(y) != n:
                raise DataError(f"{n} images but {len(y)} labels.")
            y = y[keep]
        if teacher_logits is not None:
            teacher_logits = np.asarray(teacher_logits)
            if len(teacher_logits) != n:
                raise DataError(f"{n} images but {len(teacher_logits)} rows of teacher logits.")
            teacher_logits = teacher_logits[keep]
        if len(images) == 0:
            raise DataError("none of the images could be read.")
        self.classes_, encoded, teacher_logits = self._targets(len(images), y, teacher_logits,
                                                               classes)
        self.distilled_ = teacher_logits is not None
        labels = torch.as_tensor(encoded)
        if self.distilled_:
            soft = torch.from_numpy(teacher_logits)
        else:
            known = labels != UNLABELLED
            images, labels = images[known], labels[known]
            soft = torch.zeros(len(images), len(self.classes_))
        self.n_labelled_ = int((labels != UNLABELLED).sum())
        self.n_unlabelled_ = int((labels == UNLABELLED).sum())

        torch.manual_seed(int(self.random_state))
        model = StudentCNN(self.student, len(self.classes_), self.dropout)
        batch_size = int(self.batch_size)
        loader = DataLoader(TensorDataset(images, labels, soft), batch_size=batch_size,
                            shuffle=True, drop_last=len(images) > batch_size)
        T, alpha, distilled, augment = float(self.temperature), float(self.alpha), \
            self.distilled_, bool(self.augment)

        def step(net, batch):
            pixels, targets, teacher = batch
            x = normalise_images(pixels)
            if augment and net.training:
                x = _augment(x)
            logits = net(x.contiguous(memory_format=torch.channels_last))
            if distilled:
                loss = distillation_loss(logits, teacher, targets, T, alpha)
            else:
                loss = torch.nn.functional.cross_entropy(logits, targets)
            known = targets != UNLABELLED
            correct = (logits.argmax(1)[known] == targets[known]).sum()
            return loss, correct, len(targets)

        config = TrainConfig(epochs=int(self.epochs), patience=None, restore_best=False,
                             device=self.device, seed=int(self.random_state),
                             progress=self.progress, channels_last=True,
                             desc=f"{self.student} ({'distilled' if distilled else 'alone'})")
        groups = [{"params": list(model.parameters()), "lr": float(self.lr),
                   "weight_decay": float(self.weight_decay)}]
        result = fit_loop(model, groups, loader, None, step, config, self.run_dir)
        self.model_ = result.model.cpu().eval()
        self.history_ = result.history
        self.n_features_in_ = 3 * int(self.image_size) ** 2
        return self

    # -- prediction --------------------------------------------------------------------
    def _check_fitted(self) -> None:
        check_is_fitted(self, "model_")

    def _logits(self, images, batch_size: int = 256) -> np.ndarray:
        import torch

        self._check_fitted()
        rows = []
        with torch.inference_mode():
            for start in range(0, len(images), batch_size):
                rows.append(self.model_(normalise_images(images[start:start + batch_size])))
        if not rows:
            return np.zeros((0, len(self.classes_)))
        return torch.cat(rows).numpy().astype(np.float64)

    def decision_function(self, X) -> np.ndarray:
        """The student's logits (temperature 1)."""
        images, ok, skipped = self.read_images(X)
        if skipped:
            raise DataError(f"{len(skipped)} image(s) could not be read: "
                            + "; ".join(reason for _, reason in skipped[:5]))
        return self._logits(images)

    def predict_proba(self, X) -> np.ndarray:
        return soften(self.decision_function(X), 1.0)

    def predict(self, X) -> np.ndarray:
        return self.classes_[self.decision_function(X).argmax(axis=1)]

    def predict_paths(self, X):
        """(probabilities of the readable images, ok mask, skipped ``(path, reason)``)."""
        self._check_fitted()
        images, ok, skipped = self.read_images(list(X))
        return soften(self._logits(images), 1.0), ok, skipped

    # -- saving: a transferkit bundle (config.json + student.safetensors) ----------------
    def _save_artifacts(self, folder: Path) -> dict:
        from transferkit.bundle import saved_params
        from transferkit.train.checkpoint import save_tensors

        self._check_fitted()
        save_tensors(Path(folder) / WEIGHTS_FILE, self.model_.state_dict())
        return {"student": self.student, "image_size": int(self.image_size),
                "classes": [c.item() if hasattr(c, "item") else c for c in self.classes_],
                "distilled": bool(self.distilled_),
                "params": saved_params(self, _NOT_SAVED),
                "history": self.history_}

    @classmethod
    def _load_artifacts(cls, folder: Path, config: dict) -> "DistilledStudent":
        from transferkit.bundle import (
            CLASS_NAMES,
            REDO_HINT,
            check_classes,
            check_config,
            check_own_params,
            check_param_values,
            load_weights,
            read_tensors,
        )
        from transferkit.train.loop import DEVICES
        from transferkit.nets.students import StudentCNN

        schema = {"student": "string", "image_size": "integer", "classes": CLASS_NAMES,
                  "distilled?": "boolean", "history?": ["object"]}
        check_config(folder, config, schema, cls, not_saved=_NOT_SAVED)
        check_param_values(folder, config["params"], {"device": DEVICES},
                           positive=("batch_size", "epochs", "image_size"))
        estimator = cls(**config["params"])
        check_own_params(folder, estimator._check_params)
        if config["student"] != estimator.student or config["image_size"] != estimator.image_size:
            raise BundleError(f"{folder}/config.json: student and image_size disagree with its "
                              f"params; the file was edited. {REDO_HINT}")
        classes = config["classes"]
        check_classes(folder, classes)  # their number is checked by the head's shape below
        state = read_tensors(folder, WEIGHTS_FILE)
        model = StudentCNN(config["student"], len(classes), estimator.dropout)
        load_weights(folder, WEIGHTS_FILE, model, state,
                     f"the {config['student']!r} student for {len(classes)} classes")
        estimator.classes_ = np.asarray(classes)
        estimator.model_ = model.eval()
        estimator.distilled_ = bool(config.get("distilled", True))
        estimator.history_ = config.get("history", [])
        estimator.skipped_ = []
        estimator.n_features_in_ = 3 * int(estimator.image_size) ** 2
        return estimator

    @classmethod
    def load(cls, folder: str | os.PathLike) -> "DistilledStudent":
        """Load a student saved with :func:`transferkit.bundle.save_bundle` (safetensors
        weights + JSON; nothing is unpickled)."""
        from transferkit.bundle import load_bundle

        return load_bundle(folder, method="distill")
