"""Autoencoder pretraining: learn an encoder from unlabelled images, then transfer it.

The lectures' idea: an encoder ``E`` maps an image to a code and a decoder ``D`` maps the
code back; both are trained on *unlabelled* images to reconstruct their input,

    L_rec = mean ‖D(E(x̃)) − t(x)‖²

(``x̃ = x``, or ``x`` plus Gaussian noise: a denoising AE; ``t(x) = x``, or with
``contrast_normalise`` each image less its channel means, over twice its standard
deviation: the loss then weighs shapes and edges rather than overall colour, the
normalisation Coates, Lee & Ng 2011 found crucial for unsupervised feature learning; the
encoder's input stays the raw image)

and the encoder is then reused where labels are few: (a) frozen, its features feed a
shallow classifier (:meth:`ConvAutoencoder.transform` + logistic regression), or (b) as
the initial weights of a supervised network that is fine-tuned with cross-entropy on the
labelled images (:class:`AutoencoderInitialisedClassifier`). Hinton & Salakhutdinov 2006,
"Reducing the dimensionality of data with neural networks" (Science); Erhan et al. 2010,
"Why does unsupervised pre-training help deep learning?" (JMLR); convolutional: Masci et
al. 2011, "Stacked convolutional auto-encoders for hierarchical feature extraction";
denoising: Vincent et al. 2008.

``E`` is the feature extractor of Ganin & Lempitsky's digit network
(:func:`~transferkit.nets.digits.digit_encoder`, 1200-d at width 1) and ``D`` the mirrored
decoder of DRCN (:func:`~transferkit.nets.digits.digit_decoder`), together
:class:`~transferkit.nets.digits.DigitAutoencoder`,
so the encoder's weights drop unchanged into the classifier's ``features``, and the
randomly initialised baseline (:class:`~transferkit.methods.domain._deep_base.DeepSourceOnly`)
is the very same network. Both stages train in the project's one loop
(:func:`transferkit.train.fit_loop`). Inputs are 32×32 image arrays ``(N, 32, 32[, 3])``,
uint8 0–255 or floats in [0, 1]; the loss is measured on the network's [−1, 1] scale.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin, clone
from sklearn.utils.validation import check_is_fitted

from transferkit.errors import DataError
from transferkit.methods.domain._deep_base import DeepSourceOnly, images_to_tensor


def _config(estimator, epochs: int, desc: str):
    from transferkit.train.loop import TrainConfig

    return TrainConfig(epochs=int(epochs), patience=None, restore_best=False, grad_clip=None,
                       device=estimator.device, seed=int(estimator.random_state),
                       progress=estimator.progress, channels_last=False, desc=desc)


class ConvAutoencoder(TransformerMixin, BaseEstimator):
    """Convolutional autoencoder on unlabelled 32×32 images (module docstring).

    ``fit(X)`` trains ``E`` and ``D`` with the mean squared reconstruction error; ``noise``
    > 0 adds Gaussian noise of that standard deviation (on the [−1, 1] scale) to the
    training inputs only (denoising); ``contrast_normalise`` makes the decoder rebuild
    ``(x − mean_c) / (2·std)`` (per image: channel means, one standard deviation; clipped
    to [−1, 1]) instead of ``x``. ``val_fraction`` of the images is held out to
    monitor the reconstruction loss in ``history_``. After fitting: ``transform(X)`` gives
    the encoder's features, ``reconstruct(X)`` the decoded images, ``encoder_state_dict()``
    the weights to initialise a classifier, ``save_reconstructions(X, path)`` a PNG grid
    of inputs above their reconstructions.
    """

    def __init__(self, epochs: int = 20, batch_size: int = 64, lr: float = 1e-3,
                 width: int = 1, noise: float = 0.0, contrast_normalise: bool = False,
                 val_fraction: float = 0.1, device: str = "auto", random_state: int = 0,
                 progress: bool = False, run_dir: str | None = None):
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.width = width
        self.noise = noise
        self.contrast_normalise = contrast_normalise
        self.val_fraction = val_fraction
        self.device = device
        self.random_state = random_state
        self.progress = progress
        self.run_dir = run_dir

    def fit(self, X, y=None):
        """Train on images ``X`` (labels ``y`` are ignored: the training is unsupervised)."""
        import torch
        from torch.utils.data import DataLoader, TensorDataset

        from transferkit.nets.digits import DigitAutoencoder
        from transferkit.train.loop import fit_loop

        images = images_to_tensor(X)
        if len(images) < 2:
            raise DataError(f"the autoencoder needs at least two images, got {len(images)}.")
        if self.noise < 0:
            raise DataError(f"noise must be non-negative, got {self.noise}.")
        order = np.random.default_rng(self.random_state).permutation(len(images))
        n_val = int(round(len(images) * self.val_fraction)) if self.val_fraction else 0
        n_val = min(n_val, len(images) - 1)
        val_rows, train_rows = order[:n_val], order[n_val:]
        torch.manual_seed(int(self.random_state))  # initial weights and batch order
        model = DigitAutoencoder(self.width)
        train_loader = DataLoader(TensorDataset(images[train_rows]), batch_size=self.batch_size,
                                  shuffle=True, drop_last=len(train_rows) > self.batch_size)
        val_loader = None
        if n_val:
            val_loader = DataLoader(TensorDataset(images[val_rows]), batch_size=256)
        noise = float(self.noise)

        def step(model, batch):
            import torch.nn.functional as F

            (clean,) = batch
            inputs = clean + noise * torch.randn_like(clean) if noise and model.training else clean
            return F.mse_loss(model(inputs), self._target(clean)), 0, len(clean)

        result = fit_loop(model, [{"params": list(model.parameters()), "lr": self.lr,
                                   "weight_decay": 1e-4}],
                          train_loader, val_loader, step, _config(self, self.epochs, "autoencoder"),
                          self.run_dir)
        self.model_ = result.model.cpu().eval()
        self.history_ = result.history
        self.n_features_ = int(self.model_.n_features)
        return self

    def _target(self, images):
        """What the decoder must produce: the images, or their contrast-normalised version."""
        if not self.contrast_normalise:
            return images
        centred = images - images.mean(dim=(2, 3), keepdim=True)  # colour cast removed
        std = centred.pow(2).mean(dim=(1, 2, 3), keepdim=True).sqrt()  # contrast left
        return (centred / (2.0 * std + 1e-3)).clamp(-1.0, 1.0)

    # -- using the trained network ---------------------------------------------------------
    def _batched(self, X, part: str | None = None) -> "torch.Tensor":
        """The network (or its ``part``, e.g. ``"encoder"``) applied to ``X`` in chunks."""
        import torch

        check_is_fitted(self, "model_")
        function = self.model_ if part is None else getattr(self.model_, part)
        images = images_to_tensor(X)
        with torch.inference_mode():
            return torch.cat([function(images[i:i + 512]) for i in range(0, len(images), 512)])

    def transform(self, X) -> np.ndarray:
        """The encoder's features ``E(x)`` of images ``X``: ``(N, 1200 · width)`` floats."""
        return self._batched(X, "encoder").numpy().astype(np.float64)

    def reconstruct(self, X) -> np.ndarray:
        """``D(E(x))`` of images ``X`` as ``(N, 32, 32, 3)`` floats in [0, 1]."""
        out = self._batched(X)
        return ((out.permute(0, 2, 3, 1).numpy() + 1.0) / 2.0).clip(0, 1)

    def reconstruction_error(self, X) -> float:
        """Mean squared error of the reconstructions of ``X`` to their targets (the training
        loss: on the [−1, 1] scale, to the contrast-normalised images if so trained)."""
        import torch.nn.functional as F

        return float(F.mse_loss(self._batched(X), self._target(images_to_tensor(X))))

    def score(self, X, y=None) -> float:
        """Minus the reconstruction error (greater is better, as scikit-learn expects)."""
        return -self.reconstruction_error(X)

    def encoder_state_dict(self) -> dict:
        """A copy of ``E``'s weights; loads into a digit network's ``features``."""
        check_is_fitted(self, "model_")
        return {k: v.detach().clone() for k, v in self.model_.encoder.state_dict().items()}

    def save_reconstructions(self, X, path: str | os.PathLike, n: int = 16,
                             title: str | None = None) -> Path:
        """Write a PNG grid: the first ``n`` images of ``X`` above their reconstructions."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        from transferkit.outputs import save_figure_atomic

        if n < 1:
            raise DataError(f"n must be at least 1, got {n}.")
        X = np.asarray(X)[:n]
        inputs = ((images_to_tensor(X).permute(0, 2, 3, 1).numpy() + 1.0) / 2.0).clip(0, 1)
        outputs = self.reconstruct(X)
        count = len(inputs)
        figure = Figure(figsize=(max(4.0, 0.8 * count), 2.1), dpi=100)
        FigureCanvasAgg(figure)
        axes = figure.subplots(2, count, squeeze=False)
        for column in range(count):
            for row, picture in ((0, inputs[column]), (1, outputs[column])):
                ax = axes[row][column]
                ax.imshow(picture, interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
        axes[0][0].set_ylabel("input", fontsize=8)
        axes[1][0].set_ylabel("output*" if self.contrast_normalise else "output", fontsize=8)
        error = self.reconstruction_error(X)
        note = "; output*: of the contrast-normalised image" if self.contrast_normalise else ""
        figure.suptitle(title or f"autoencoder reconstructions (MSE {error:.4f} on "
                                 f"[−1, 1]{note})", fontsize=9)
        figure.tight_layout()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        return save_figure_atomic(figure, path)


class AutoencoderInitialisedClassifier(DeepSourceOnly):
    """Digit network whose ``features`` start as a trained autoencoder's encoder.

    ``fit(X, y, X_unlabelled=None)``: ``autoencoder`` is a :class:`ConvAutoencoder`; if it
    is not fitted yet, a copy is fitted first on ``X_unlabelled`` together with ``X``
    (labelled images are unlabelled data too) and kept as ``autoencoder_``. Its encoder's
    weights are then copied into the network's ``features`` and the whole network is
    trained with cross-entropy on ``X, y``, the encoder at ``lr · encoder_lr_factor``
    (1: plain fine-tuning as in Erhan et al.; 0 keeps the encoder frozen). The head is
    initialised at random (seeded by ``random_state``), exactly as in
    :class:`DeepSourceOnly`, which is therefore the random-initialisation baseline.

    ``head_first_epochs`` > 0 trains in two stages ("linear probe, then fine-tune", LP-FT;
    Kumar et al. 2022, "Fine-tuning can distort pretrained features and underperform
    out-of-distribution"): first only the head, for that many epochs, the encoder frozen
    (its BatchNorm statistics too), so that the randomly initialised head does not send
    large gradients into the pretrained encoder; then the whole network as above for the
    remaining ``epochs − head_first_epochs`` epochs (a fresh optimiser and learning-rate
    schedule; ``history_`` holds both stages' rows). The total number of epochs is
    ``epochs`` either way, as for the baseline.
    """

    def __init__(self, autoencoder: ConvAutoencoder | None = None, epochs: int = 20,
                 batch_size: int = 64, lr: float = 1e-3, encoder_lr_factor: float = 1.0,
                 head_first_epochs: int = 0, width: int = 1, val_fraction: float = 0.1,
                 device: str = "auto", random_state: int = 0, progress: bool = False,
                 run_dir: str | None = None):
        self.autoencoder = autoencoder
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.encoder_lr_factor = encoder_lr_factor
        self.head_first_epochs = head_first_epochs
        self.width = width
        self.val_fraction = val_fraction
        self.device = device
        self.random_state = random_state
        self.progress = progress
        self.run_dir = run_dir

    adaptation_weight = 0.0  # DeepSourceOnly's attribute; nothing is adapted here
    backbone = "digit-cnn"  # the autoencoder's encoder is the digit network's

    def fit(self, X, y, X_unlabelled=None):
        if self.encoder_lr_factor < 0:
            raise DataError("encoder_lr_factor must be non-negative, got "
                            f"{self.encoder_lr_factor}.")
        if not 0 <= self.head_first_epochs <= self.epochs:
            raise DataError("head_first_epochs must be between 0 and epochs "
                            f"({self.epochs}), got {self.head_first_epochs}.")
        data = self._domain_tensors(X, y, None, None)  # checks X, y before any pretraining
        self.autoencoder_ = self._pretrained(X, X_unlabelled)
        if self.autoencoder_.width != self.width:
            raise DataError(f"the autoencoder has width {self.autoencoder_.width} but the "
                            f"classifier width {self.width}; give both the same width.")
        model, self.history_ = self._train(data)
        self.model_ = model.cpu().eval()
        self.n_features_ = int(self.model_.n_features)
        return self

    def _pretrained(self, X, X_unlabelled) -> ConvAutoencoder:
        autoencoder = self.autoencoder
        if autoencoder is None:
            autoencoder = ConvAutoencoder(width=self.width, device=self.device,
                                          random_state=self.random_state, progress=self.progress)
        if not isinstance(autoencoder, ConvAutoencoder):
            raise DataError("autoencoder must be a ConvAutoencoder, got "
                            f"{type(autoencoder).__name__}.")
        if hasattr(autoencoder, "model_"):
            return autoencoder
        autoencoder = clone(autoencoder)
        if self.run_dir is not None:
            autoencoder.set_params(run_dir=os.path.join(self.run_dir, "pretrain"))
        pool = X if X_unlabelled is None else np.concatenate([np.asarray(X_unlabelled),
                                                              np.asarray(X)])
        return autoencoder.fit(pool)

    def _new_network(self):
        model = super()._new_network()  # seeded random head (and encoder, overwritten next)
        model.features.load_state_dict(self.autoencoder_.encoder_state_dict())
        return model

    def _train(self, data):
        source, labels = data.pooled_labelled()
        train_loader, val_loader = self._loaders(source, labels)
        model = self._new_network()
        encoder = list(model.features.parameters())
        rest = [p for name, p in model.named_parameters() if not name.startswith("features.")]
        step_fn = self._step_fn(False, max(1, self.epochs * len(train_loader)))
        staged = self.run_dir is not None
        history = []
        head_epochs = int(self.head_first_epochs)
        if head_epochs:  # stage 1: the head alone, the encoder (and its BatchNorm) frozen
            for parameter in encoder:
                parameter.requires_grad_(False)
            result = self._run(model, [{"params": rest, "lr": self.lr, "weight_decay": 1e-4}],
                               train_loader, val_loader, step_fn, head_epochs,
                               "head" if staged else None)
            model, history = result.model, list(result.history)
            encoder = list(model.features.parameters())
            rest = [p for name, p in model.named_parameters() if not name.startswith("features.")]
            for parameter in encoder:
                parameter.requires_grad_(True)
        if head_epochs == self.epochs:
            return model, history
        if self.encoder_lr_factor == 0:
            for parameter in encoder:
                parameter.requires_grad_(False)
        groups = [{"params": rest, "lr": self.lr, "weight_decay": 1e-4}]
        if self.encoder_lr_factor > 0:
            groups.insert(0, {"params": encoder, "lr": self.lr * self.encoder_lr_factor,
                              "weight_decay": 1e-4})
        result = self._run(model, groups, train_loader, val_loader, step_fn,
                           self.epochs - head_epochs, "finetune" if staged else None)
        return result.model, history + [{**row, "epoch": row["epoch"] + head_epochs}
                                        for row in result.history]
