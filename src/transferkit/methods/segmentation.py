"""Segmentation transfer: a pretrained classification network becomes the encoder of a
pixel labeller.

Long, Shelhamer & Darrell 2015 ("Fully convolutional networks for semantic
segmentation"): a network trained for image classification, fine-tuned to label every
pixel; Ronneberger et al. 2015 (U-Net) for the decoder's skip connections (see
:mod:`transferkit.nets.segmentation`). Loss: per-pixel cross-entropy plus
``dice_weight`` × the soft Dice loss ``1 - mean_c 2·Σ p_c y_c / (Σ p_c + Σ y_c)`` over the
foreground classes c ≥ 1 of the batch (Milletari et al. 2016, V-Net), which keeps a small
object from being outvoted by the background. Trained on the one loop
(:func:`transferkit.train.loop.fit_loop`) with the strategies of classification
fine-tuning (:class:`transferkit.methods.finetune.FineTuner`): the decoder is the new
head, the encoder's layer groups come from timm's ``group_matcher``.
"""

from __future__ import annotations

import hashlib
import math
import warnings
from pathlib import Path

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted

from transferkit.backbones import DEFAULT_BACKBONE
from transferkit.errors import BundleError, DataError, ImageDecodeError, TransferkitError
from transferkit.train.loop import DEVICES, PRECISIONS, TrainConfigError, check_device_and_precision

STRATEGIES = ("gradual", "head", "last-k", "full")
WEIGHTS_FILE = "segmenter.safetensors"
_NOT_SAVED = ("run_dir", "progress")


def read_pairs(image_paths, mask_paths, size: int, n_classes: int):
    """Decode image/mask pairs resized to ``size``×``size`` (image bilinear, mask nearest).

    Returns ``(images (n, size, size, 3) uint8, masks (n, size, size) uint8, ok (n_input,)
    bool, skipped [(path, reason)])``. An unreadable image is skipped; a mask with values
    outside the classes, or of another size than its image, is a :class:`DataError`.
    """
    from PIL import Image

    from transferkit.data.images import load_image
    from transferkit.data.masks import check_same_size, load_mask

    images, masks, skipped = [], [], []
    ok = np.zeros(len(image_paths), dtype=bool)
    for i, (image_path, mask_path) in enumerate(zip(image_paths, mask_paths, strict=True)):
        try:
            picture = load_image(image_path)
        except ImageDecodeError as exc:
            skipped.append((str(image_path), str(exc)))
            continue
        mask = load_mask(mask_path, n_classes)
        check_same_size(picture.size, mask, image_path, mask_path)
        images.append(np.asarray(picture.resize((size, size), Image.BILINEAR), dtype=np.uint8))
        masks.append(np.asarray(Image.fromarray(mask).resize((size, size), Image.NEAREST)))
        ok[i] = True
    if not images:
        return (np.zeros((0, size, size, 3), np.uint8), np.zeros((0, size, size), np.uint8),
                ok, skipped)
    return np.stack(images), np.stack(masks), ok, skipped


class PairedAugmentation:
    """Random flips, 90° rotations and a resized crop applied identically to an image and
    its mask (the mask with nearest-neighbour sampling, so it keeps class indices), plus
    a brightness/contrast jitter on the image alone. Draws from torch's global generator,
    which the training loop seeds."""

    def __init__(self, min_scale: float = 0.5):
        self.min_scale = min_scale

    def __call__(self, image, mask):
        import torch
        from torch.nn import functional as F

        if torch.rand(()) < 0.5:
            image, mask = image.flip(-1), mask.flip(-1)
        if torch.rand(()) < 0.5:
            image, mask = image.flip(-2), mask.flip(-2)
        turns = int(torch.randint(0, 4, ()))
        if turns:
            image, mask = image.rot90(turns, (-2, -1)), mask.rot90(turns, (-2, -1))
        size = image.shape[-1]
        scale = float(torch.empty(()).uniform_(self.min_scale, 1.0))
        side = max(8, int(round(size * math.sqrt(scale))))
        if side < size:
            top, left = (int(torch.randint(0, size - side + 1, ())) for _ in range(2))
            image = F.interpolate(image[None, :, top:top + side, left:left + side], size=(size, size),
                                  mode="bilinear", align_corners=False)[0]
            mask = F.interpolate(mask[None, None, top:top + side, left:left + side].float(),
                                 size=(size, size), mode="nearest")[0, 0].long()
        contrast = float(torch.empty(()).uniform_(0.8, 1.2))
        brightness = float(torch.empty(()).uniform_(-0.1, 0.1))
        mean = image.mean()
        image = ((image - mean) * contrast + mean + brightness).clamp(0, 1)
        return image, mask


class _PairDataset:
    """In-memory uint8 pairs → (normalised float image, long mask), augmented in training."""

    def __init__(self, images: np.ndarray, masks: np.ndarray, mean, std, augment=None):
        import torch

        self.images = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
        self.masks = torch.from_numpy(masks.astype(np.int64))
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
        self.augment = augment

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index):
        image = self.images[index].float() / 255.0
        mask = self.masks[index]
        if self.augment is not None:
            image, mask = self.augment(image, mask)
        return (image - self.mean) / self.std, mask


def soft_dice_loss(logits, masks, n_classes: int, eps: float = 1.0):
    """1 − mean over foreground classes of the batch's soft Dice (see the module docstring)."""
    import torch
    from torch.nn import functional as F

    probabilities = torch.softmax(logits, 1)[:, 1:]
    truth = F.one_hot(masks, n_classes).permute(0, 3, 1, 2).to(probabilities.dtype)[:, 1:]
    overlap = (probabilities * truth).sum(dim=(0, 2, 3))
    total = probabilities.sum(dim=(0, 2, 3)) + truth.sum(dim=(0, 2, 3))
    return 1.0 - ((2 * overlap + eps) / (total + eps)).mean()


def segmentation_step(n_classes: int, dice_weight: float):
    """``step_fn`` for the loop: cross-entropy + Dice; "correct" is the summed per-image
    pixel accuracy, so the loop's accuracy column is the mean pixel accuracy."""
    from torch.nn import functional as F

    def step(model, batch):
        images, masks = batch
        logits = model(images).float()
        loss = F.cross_entropy(logits, masks)
        if dice_weight:
            loss = loss + dice_weight * soft_dice_loss(logits, masks, n_classes)
        correct = (logits.argmax(1) == masks).float().mean(dim=(1, 2)).sum()
        return loss, correct, len(images)

    return step


def _digest(*arrays: np.ndarray) -> str:
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(f"{array.dtype} {array.shape}".encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


class SegmentationTransfer(BaseEstimator):
    """Train a pretrained encoder + U-Net decoder on image/mask files (``fit(X, masks)``:
    lists of image paths and of their mask paths; see :mod:`transferkit.data.masks`).

    Strategies (``strategy``), as for :class:`~transferkit.methods.finetune.FineTuner`:
    ``"head"`` trains the decoder alone on the frozen encoder (BatchNorm statistics
    included); ``"last-k"`` the decoder and the encoder's last ``k`` layer groups;
    ``"full"`` everything, encoder group ``i`` of ``N`` at ``lr * lr_factor**(N-1-i)``;
    ``"gradual"`` (default) the decoder first until the validation Dice stalls, then one
    more group per stage down to the last ``k``. ``pretrained=False``: the same network
    with a randomly initialised encoder (seeded), the baseline of the transfer question.

    Images are resized to ``image_size``×``image_size`` for the network (masks with
    nearest-neighbour sampling); predictions are resized back to each image's size.
    A seeded ``val_fraction`` of the pairs is held out for early stopping on the
    validation Dice (mean over images) and for the report; ``val_fraction=0``: none.
    """

    def __init__(self, backbone: str = DEFAULT_BACKBONE, weights: str | None = None,
                 arch: str | None = None, pretrained: bool = True, n_classes: int = 2,
                 strategy: str = "gradual", k: int = 2, epochs: int = 20, lr: float = 1e-3,
                 lr_factor: float = 1 / 3, batch_size: int = 8, patience: int | None = 5,
                 weight_decay: float = 1e-4, dice_weight: float = 1.0, image_size: int = 256,
                 augment: bool = True, precision: str = "fp32", device: str = "auto",
                 val_fraction: float = 0.2, random_state: int = 0, progress: bool = True,
                 run_dir: str | None = None):
        self.backbone = backbone
        self.weights = weights
        self.arch = arch
        self.pretrained = pretrained
        self.n_classes = n_classes
        self.strategy = strategy
        self.k = k
        self.epochs = epochs
        self.lr = lr
        self.lr_factor = lr_factor
        self.batch_size = batch_size
        self.patience = patience
        self.weight_decay = weight_decay
        self.dice_weight = dice_weight
        self.image_size = image_size
        self.augment = augment
        self.precision = precision
        self.device = device
        self.val_fraction = val_fraction
        self.random_state = random_state
        self.progress = progress
        self.run_dir = run_dir

    # -- checks -----------------------------------------------------------------------
    def _check_params(self, here: bool = True) -> None:
        def bad(message):
            raise TrainConfigError(message)

        def positive_int(name, value):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                bad(f"{name} must be a positive integer, got {value!r}.")

        if self.strategy not in STRATEGIES:
            bad(f"unknown strategy {self.strategy!r}; choose one of {STRATEGIES}.")
        if isinstance(self.k, bool) or not isinstance(self.k, (int, np.integer)) or self.k < 0:
            bad(f"k must be a non-negative integer, got {self.k!r}.")
        for name in ("epochs", "batch_size", "image_size"):
            positive_int(name, getattr(self, name))
        if isinstance(self.n_classes, bool) or not isinstance(self.n_classes, (int, np.integer)) \
                or not 2 <= self.n_classes <= 255:
            bad(f"the number of classes must be an integer from 2 to 255 (background "
                f"included), got {self.n_classes!r}.")
        if self.image_size < 32:  # the encoder's deepest map is 1/32 of the input
            bad(f"image_size must be at least 32 pixels, got {self.image_size!r}.")
        if not self.lr > 0:
            bad(f"lr must be positive, got {self.lr!r}.")
        if not 0 < self.lr_factor <= 1:
            bad(f"lr_factor must lie in (0, 1], got {self.lr_factor!r}.")
        if not self.dice_weight >= 0:
            bad(f"dice_weight must be non-negative, got {self.dice_weight!r}.")
        if not 0 <= self.val_fraction < 1:
            bad(f"val_fraction must lie in [0, 1), got {self.val_fraction!r}.")
        if here:
            check_device_and_precision(self.device, self.precision)
        elif self.device not in DEVICES or self.precision not in PRECISIONS:
            bad(f"device {self.device!r} or precision {self.precision!r} is unknown; choose "
                f"from {DEVICES} and {tuple(PRECISIONS)}.")

    # -- the network ------------------------------------------------------------------
    def _build(self):
        """(SegmentationNet, backbone identity, data config, arch)."""
        import timm
        import torch

        from transferkit.backbones import create_backbone
        from transferkit.nets.segmentation import SegmentationNet

        backbone = create_backbone(self.backbone, self.weights, self.arch)
        encoder = backbone.model
        identity = backbone.identity()
        if not self.pretrained:
            # The same architecture and preprocessing, timm's own random initialisation.
            with torch.random.fork_rng():
                torch.manual_seed(int(self.random_state))
                encoder = timm.create_model(backbone.arch, pretrained=False)
            identity = {**identity, "weights_digest": "random-init"}
        with torch.random.fork_rng():
            torch.manual_seed(int(self.random_state) + 1)
            net = SegmentationNet(encoder, int(self.n_classes))
        return net, identity, backbone.data_config, backbone.arch

    def _groups(self, net):
        """Encoder layer groups (input to output) and the decoder as the head group."""
        from transferkit.train.groups import LayerGroup, layer_groups

        groups = [LayerGroup(g.index, f"encoder.{g.name}", [f"encoder.{n}" for n in g.param_names])
                  for g in layer_groups(net.encoder) if not g.is_head]
        decoder = [f"decoder.{n}" for n, _ in net.decoder.named_parameters()]
        groups.append(LayerGroup(len(groups), "decoder", decoder, is_head=True))
        return groups

    def _stages(self, groups):
        from transferkit.train.groups import last_groups

        n_encoder = sum(not g.is_head for g in groups)
        if self.strategy == "head":
            return [("head", last_groups(groups, 0), True)]
        if self.strategy == "last-k":
            return [(f"last-{self.k}", last_groups(groups, min(int(self.k), n_encoder)), True)]
        if self.strategy == "full":
            return [("full", last_groups(groups, n_encoder), True)]
        depth = min(int(self.k), n_encoder)
        return [(f"unfreeze-{n}", last_groups(groups, n), n == depth) for n in range(depth + 1)]

    def _stage_budget(self, remaining: int, last: bool, has_val: bool):
        if last or self.strategy != "gradual":
            return remaining, self.patience
        cap = max(2, int(self.epochs) // 4) if has_val else max(1, int(self.epochs) // 4)
        return min(remaining, cap), 1

    # -- fitting ----------------------------------------------------------------------
    def fit(self, X, masks, X_val=None, masks_val=None):
        """Train on image paths ``X`` with mask paths ``masks`` (same order). ``X_val`` /
        ``masks_val``: held-out pairs for early stopping; else a seeded ``val_fraction``."""
        import torch
        from torch.utils.data import DataLoader

        from transferkit.train.groups import (
            describe_groups,
            discriminative_param_groups,
            set_trainable,
        )
        from transferkit.train.loop import TrainConfig, fit_loop

        self._check_params()
        X, masks = [str(p) for p in X], [str(p) for p in masks]
        if len(X) != len(masks):
            raise DataError(f"{len(X)} images but {len(masks)} masks.")
        if not X:
            raise DataError("no image/mask pairs given.")
        size, n_classes = int(self.image_size), int(self.n_classes)
        images, labels, ok, skipped = read_pairs(X, masks, size, n_classes)
        if skipped:
            warnings.warn(f"skipped {len(skipped)} unreadable image(s): "
                          f"{', '.join(p for p, _ in skipped)}", stacklevel=2)
        if not len(images):
            raise DataError("none of the training images could be read.")
        if X_val is not None:
            val_images, val_labels, _, val_skipped = read_pairs([str(p) for p in X_val],
                                                                [str(p) for p in masks_val],
                                                                size, n_classes)
            skipped += val_skipped
            validation = "given"
        elif self.val_fraction > 0 and len(images) >= 2:
            order = np.random.default_rng(int(self.random_state)).permutation(len(images))
            n_val = max(1, int(round(self.val_fraction * len(images))))
            val_index, train_index = np.sort(order[:n_val]), np.sort(order[n_val:])
            val_images, val_labels = images[val_index], labels[val_index]
            images, labels = images[train_index], labels[train_index]
            validation = f"random split: {self.val_fraction:.0%} of the pairs, seed {self.random_state}"
        else:
            val_images = val_labels = None
            validation = None
        net, identity, data_config, arch = self._build()
        mean, std = tuple(data_config["mean"]), tuple(data_config["std"])
        train_set = _PairDataset(images, labels, mean, std,
                                 PairedAugmentation() if self.augment else None)
        generator = torch.Generator().manual_seed(int(self.random_state))
        train_loader = DataLoader(train_set, batch_size=int(self.batch_size), shuffle=True,
                                  generator=generator, drop_last=len(train_set) > int(self.batch_size))
        has_val = val_images is not None and len(val_images) > 0
        val_loader = DataLoader(_PairDataset(val_images, val_labels, mean, std),
                                batch_size=int(self.batch_size)) if has_val else None

        def evaluate(model):
            from transferkit.evaluate.segmentation import mean_dice_iou

            predicted = []
            for batch, _ in val_loader:
                predicted.append(model(batch.to(next(model.parameters()).device)).argmax(1).cpu())
            dice, iou = mean_dice_iou(val_labels, torch.cat(predicted).numpy(), n_classes)
            return {"val_dice": dice, "val_iou": iou}

        groups = self._groups(net)
        stages = self._stages(groups)
        step = segmentation_step(n_classes, float(self.dice_weight))
        data_digest = _digest(images, labels, *((val_images, val_labels) if has_val else ()))
        settings = {"identity": identity, "n_classes": n_classes, "size": size}
        history, best_value, best_state, best_epoch = [], -math.inf, None, None
        stopped_early, remaining = False, int(self.epochs)
        for stage, (name, trainable, last) in enumerate(stages):
            if remaining <= 0:
                break
            epochs, patience = self._stage_budget(remaining, last, has_val)
            set_trainable(net, groups, trainable)
            param_groups = discriminative_param_groups(net, groups, float(self.lr),
                                                       float(self.lr_factor), float(self.weight_decay))
            config = TrainConfig(epochs=epochs, patience=patience if has_val else None,
                                 monitor="val_dice" if has_val else "val_loss",
                                 monitor_mode="max" if has_val else "min", device=self.device,
                                 precision=self.precision, seed=int(self.random_state) + stage,
                                 progress=self.progress, desc=f"segment {name}")
            stage_dir = Path(self.run_dir) / f"stage-{stage}-{name}" if self.run_dir else None
            result = fit_loop(net, param_groups, train_loader, val_loader, step, config, stage_dir,
                              data_digest=data_digest, settings=settings,
                              evaluate=evaluate if has_val else None)
            net = result.model
            offset = len(history)
            for row in result.history:
                history.append({**row, "epoch": offset + row["epoch"], "stage": name,
                                "stage_epoch": row["epoch"]})
            stopped_early = result.stopped_early
            remaining -= result.epochs_run
            if result.best_epoch is None:
                continue
            kept = result.history[result.best_epoch - 1]
            value = kept.get("val_dice")
            if value is None:
                best_epoch = offset + result.best_epoch
            elif value > best_value:
                best_value, best_epoch = value, offset + result.best_epoch
                best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
        if best_state is not None:  # a later stage that made things worse is undone
            net.load_state_dict(best_state)
        self.groups_ = describe_groups(net, groups)
        for parameter in net.parameters():
            parameter.requires_grad_(False)
        self.model_ = net.cpu().eval()
        self.classes_ = np.arange(n_classes)  # the pixel classes: mask values 0 … n_classes-1
        self.history_ = history
        self.best_epoch_ = best_epoch
        self.epochs_run_ = len(history)
        self.stopped_early_ = stopped_early
        self.data_config_ = {"mean": list(mean), "std": list(std)}
        self.backbone_identity_ = identity
        self.arch_ = arch
        self.validation_ = validation
        self.skipped_ = skipped
        return self

    # -- prediction -------------------------------------------------------------------
    def _device(self):
        import torch

        if self.device == "cuda" or (self.device == "auto" and torch.cuda.is_available()):
            return torch.device("cuda")
        return torch.device("cpu")

    def predict_proba_paths(self, paths):
        """(per-pixel class probabilities (n_classes, H, W) float32 for each readable image
        at its own size, ok mask, skipped [(path, reason)])."""
        import torch
        from PIL import Image
        from torch.nn import functional as F

        from transferkit.data.images import readable_images

        check_is_fitted(self, "model_")
        size = int(self.image_size)
        mean = torch.tensor(self.data_config_["mean"], dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(self.data_config_["std"], dtype=torch.float32).view(1, 3, 1, 1)
        device = self._device()
        model = self.model_.to(device).eval()
        results, ok, skipped = [], np.zeros(len(paths), dtype=bool), []
        try:
            with torch.inference_mode():
                for _, picture in readable_images(paths, ok, skipped):
                    width, height = picture.size
                    pixels = np.array(picture.resize((size, size), Image.BILINEAR), dtype=np.uint8)
                    batch = torch.from_numpy(pixels).permute(2, 0, 1)[None].float() / 255.0
                    logits = model(((batch - mean) / std).to(device)).float()
                    logits = F.interpolate(logits, size=(height, width), mode="bilinear",
                                           align_corners=False)
                    results.append(torch.softmax(logits, 1)[0].cpu().numpy())
        finally:
            self.model_ = model.cpu()
        return results, ok, skipped

    def predict_paths_masks(self, paths):
        """(class-index masks (H, W) uint8 of the readable images, ok mask, skipped)."""
        probabilities, ok, skipped = self.predict_proba_paths(paths)
        return [p.argmax(0).astype(np.uint8) for p in probabilities], ok, skipped

    def predict(self, X) -> list[np.ndarray]:
        """Class-index masks of the images ``X``, each at its image's size."""
        paths = [str(p) for p in X]
        masks, ok, skipped = self.predict_paths_masks(paths)
        if skipped:
            raise DataError(f"cannot segment {len(skipped)} unreadable image(s): "
                            f"{', '.join(p for p, _ in skipped)}")
        return masks

    def predict_paths(self, X):
        # `transferkit predict` / `evaluate` call this on classifiers.
        raise TransferkitError("this is a segmentation model: use `transferkit segment predict` "
                               "or `transferkit segment evaluate`.")

    # -- bundle -----------------------------------------------------------------------
    def _write_run_reports(self, folder: Path) -> None:
        from transferkit.report.curves import plot_learning_curves
        from transferkit.train.checkpoint import write_metrics_csv

        folder.mkdir(parents=True, exist_ok=True)
        write_metrics_csv(folder / "metrics.csv", self.history_)
        if self.history_:
            plot_learning_curves(self.history_, folder / "learning_curves.png")

    def _save_artifacts(self, folder: Path) -> dict:
        from transferkit.bundle import saved_params
        from transferkit.nets.segmentation import DECODER_CHANNELS
        from transferkit.train.checkpoint import save_tensors

        check_is_fitted(self, "model_")
        save_tensors(Path(folder) / WEIGHTS_FILE, self.model_.state_dict())
        self._write_run_reports(Path(folder))
        return {
            "backbone": self.backbone_identity_,
            "arch": self.arch_,
            "n_classes": int(self.n_classes),
            "encoder_channels": [int(c) for c in self.model_.encoder_channels],
            "decoder_channels": list(DECODER_CHANNELS),
            "data_config": self.data_config_,
            "params": saved_params(self, _NOT_SAVED),
            "training": {"best_epoch": self.best_epoch_, "epochs_run": self.epochs_run_,
                         "stopped_early": self.stopped_early_, "validation": self.validation_,
                         "groups": self.groups_, "history": self.history_},
        }

    @classmethod
    def _load_artifacts(cls, folder: Path, config: dict) -> "SegmentationTransfer":
        import timm

        from transferkit.bundle import (
            BACKBONE_IDENTITY,
            REDO_HINT,
            check_backbone_names,
            check_config,
            check_own_params,
            load_weights,
            read_tensors,
        )
        from transferkit.nets.segmentation import DECODER_CHANNELS, SegmentationNet

        schema = {
            "arch": "string", "n_classes": "integer", "encoder_channels": ["integer"],
            "decoder_channels": ["integer"],
            "data_config": {"mean": ["number"], "std": ["number"]},
            "backbone": BACKBONE_IDENTITY,
            "training?": {"best_epoch?": "integer|null", "epochs_run?": "integer",
                          "stopped_early?": "boolean", "validation?": "string|null",
                          "groups?": ["object"], "history?": ["object"]},
        }
        check_config(folder, config, schema, cls, not_saved=_NOT_SAVED)
        params, arch = config["params"], config["arch"]
        check_backbone_names(folder, [("backbone", params.get("backbone")),
                                      ("arch", params.get("arch"))])
        estimator = cls(**params)
        check_own_params(folder, lambda: estimator._check_params(here=False))

        def edited(what: str):
            return BundleError(f"{folder}/config.json: {what}; the file was edited. {REDO_HINT}")

        if config["n_classes"] != estimator.n_classes:
            raise edited(f"n_classes {config['n_classes']} disagrees with params.n_classes "
                         f"{estimator.n_classes}")
        if config["decoder_channels"] != list(DECODER_CHANNELS):
            raise edited(f"decoder_channels {config['decoder_channels']} are not this "
                         f"transferkit's {list(DECODER_CHANNELS)}")
        if len(config["data_config"]["mean"]) != 3 or len(config["data_config"]["std"]) != 3 \
                or not all(s > 0 for s in config["data_config"]["std"]):
            raise edited("data_config needs three means and three positive standard deviations")
        check_backbone_names(folder, [("arch", arch)], where="config")
        if not timm.is_model(arch):
            raise edited(f"arch {arch!r} is not a timm architecture")
        state = read_tensors(folder, WEIGHTS_FILE)
        # Every weight is in the bundle: the bare architecture, no pretrained download.
        net = SegmentationNet(timm.create_model(arch, pretrained=False), int(config["n_classes"]))
        if net.encoder_channels != config["encoder_channels"]:
            raise edited(f"encoder_channels {config['encoder_channels']} are not {arch}'s "
                         f"{net.encoder_channels}")
        load_weights(folder, WEIGHTS_FILE, net, state,
                     f"a {arch} segmenter for {config['n_classes']} classes")
        for parameter in net.parameters():
            parameter.requires_grad_(False)
        training = config.get("training", {})
        estimator.model_ = net.eval()
        estimator.classes_ = np.arange(int(config["n_classes"]))
        estimator.data_config_ = config["data_config"]
        estimator.backbone_identity_ = config["backbone"]
        estimator.arch_ = arch
        estimator.history_ = training.get("history", [])
        estimator.best_epoch_ = training.get("best_epoch")
        estimator.epochs_run_ = training.get("epochs_run", len(estimator.history_))
        estimator.stopped_early_ = training.get("stopped_early", False)
        estimator.groups_ = training.get("groups", [])
        estimator.validation_ = training.get("validation")
        estimator.skipped_ = []
        return estimator
