"""ADDA: adversarial discriminative domain adaptation.

Tzeng, Hoffman, Saenko & Darrell 2017, "Adversarial Discriminative Domain Adaptation"
(CVPR). Three steps, each a stage in the shared training loop:

1. **Pre-train** a source encoder M_s and classifier C on the labelled source (CE).
2. **Adapt** a target encoder M_t, initialised from M_s, against a discriminator D that
   tells M_s(x_s) (label 1) from M_t(x_t) (label 0); M_t is trained with the GAN's
   inverted-label loss, BCE(D(M_t(x_t)), 1), while M_s and C stay frozen:

       min_D  BCE(D(M_s(x_s)), 1) + BCE(D(M_t(x_t)), 0)      min_{M_t}  BCE(D(M_t(x_t)), 1)

3. **Classify** target images with C(M_t(x)).

The encoder M is the convolutional feature extractor *and* the first hidden layer of the
classifier (a 100-d code), as in the paper, where M ends in LeNet's 500-d fully connected
layer and C is the last layer. Aligning the 1200-d convolutional maps instead failed: their
sparse, post-ReLU codes let the discriminator tell the domains apart within a few
adversarial epochs, and the target encoder, chasing it, drifted until nearly every target
image fell in one class, far below source only; with the 100-d code the discriminator stays
near chance and ADDA beats source only. Figures: ``benchmarks/RESULTS.md``, sections
``adda-encoder`` (this ablation) and ``domain-deep``.

Unlike DANN the two domains get *untied* encoders, so the target encoder may move away
from the source one; Adam with β₁ = 0.5 (the paper's setting for the adversarial stage)
keeps the two-player game from oscillating. Both players step on every batch: the
discriminator's loss sees the target features detached and the encoder's loss sees the
discriminator's weights detached, so one backward pass gives each player only its own
gradient (simultaneous rather than alternating updates).
"""

from __future__ import annotations

import copy

import numpy as np

from transferkit.methods.domain._deep_base import DeepSourceOnly, DomainTensors


def _adversarial_module(source_encoder, target_encoder, n_features: int, hidden: int):
    import torch
    from torch import nn

    class ADDAModule(nn.Module):
        def __init__(self):
            super().__init__()
            self.source_encoder = source_encoder.requires_grad_(False)
            self.target_encoder = target_encoder
            # The paper's discriminator for digits: 500 → 500 → 1.
            self.discriminator = nn.Sequential(nn.Linear(n_features, hidden), nn.ReLU(),
                                               nn.Linear(hidden, hidden), nn.ReLU(),
                                               nn.Linear(hidden, 1))
            self.register_buffer("steps_done", torch.zeros((), dtype=torch.long))

        def train(self, mode: bool = True):
            super().train(mode)
            self.source_encoder.eval()  # frozen: no dropout, BatchNorm statistics kept
            return self

    return ADDAModule()


HIDDEN_LAYERS = 3  # Linear, BatchNorm1d, ReLU: the classifier's first hidden layer joins M


def split_encoder(network):
    """``(M, C)``: the features plus the first hidden layer, and the rest of the classifier."""
    from torch import nn

    layers = list(network.classifier)
    return (nn.Sequential(network.features, *layers[:HIDDEN_LAYERS]),
            nn.Sequential(*layers[HIDDEN_LAYERS:]))


class ADDA(DeepSourceOnly):
    """ADDA (see the module docstring). ``pretrain_epochs`` (default ``epochs``) train the
    source encoder and classifier; ``epochs`` adapt the target encoder at ``adversarial_lr``.
    The fitted network is ``features`` = M_t and ``classifier`` = C, so ``transform`` gives
    the aligned code; ``transform_source`` encodes with M_s."""

    digit_only = True  # built on the digit network's layers
    backbone = "digit-cnn"

    def __init__(self, epochs: int = 20, batch_size: int = 64, lr: float = 1e-3,
                 adaptation_weight: float = 1.0, width: int = 1, val_fraction: float = 0.1,
                 device: str = "auto", random_state: int = 0, progress: bool = False,
                 run_dir: str | None = None, pretrain_epochs: int | None = None,
                 adversarial_lr: float = 2e-4, discriminator_width: int = 500):
        # Only the parameters of this signature (DeepSourceOnly.__init__ sets the
        # pretrained-backbone ones too, which this digit-only method does not take).
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
        self.pretrain_epochs = pretrain_epochs
        self.adversarial_lr = adversarial_lr
        self.discriminator_width = discriminator_width

    def _train(self, data: DomainTensors):
        import torch

        self.__dict__.pop("source_encoder_", None)  # from an earlier fit
        # Step 1: the source encoder and classifier (labelled target rows, if any, join in).
        source, labels = data.pooled_labelled()
        train_loader, val_loader = self._loaders(source, labels)
        network = self._new_network()
        pretrain_epochs = self.pretrain_epochs or self.epochs
        pretrain = self._run(network, [{"params": list(network.parameters()), "lr": self.lr,
                                        "weight_decay": 1e-4}], train_loader, val_loader,
                             self._step_fn(False, 1), pretrain_epochs, stage="source")
        network = pretrain.model.cpu()
        history = [dict(row, stage="source") for row in pretrain.history]
        if len(data.target) == 0:
            return network, history

        # Step 2: the target encoder against the discriminator.
        torch.manual_seed(int(self.random_state) + 1)
        source_encoder, classifier = split_encoder(network)
        code_size = source_encoder[-HIDDEN_LAYERS].out_features if HIDDEN_LAYERS else network.n_features
        module = _adversarial_module(source_encoder, copy.deepcopy(source_encoder), code_size,
                                     self.discriminator_width)
        adversarial_loader, _ = self._loaders(data.source, data.labels, data.target)
        trainable = [p for p in module.parameters() if p.requires_grad]
        adapt = self._run(module, [{"params": trainable, "lr": self.adversarial_lr,
                                    "betas": (0.5, 0.999), "weight_decay": 0.0}],
                          adversarial_loader, None, self._adversarial_step(), self.epochs,
                          stage="adapt")
        history += [dict(row, stage="adapt") for row in adapt.history]

        # Step 3: classify with C(M_t(x)).
        adapted = adapt.model.cpu()
        self.source_encoder_ = adapted.source_encoder.eval()
        network.features, network.classifier = adapted.target_encoder, classifier
        network.n_features = code_size
        return network, history

    def transform_source(self, X) -> np.ndarray:
        """Source images encoded by M_s: ADDA's encoders are untied, so the aligned pair is
        ``(transform_source(X_s), transform(X_t))``."""
        if not hasattr(self, "source_encoder_"):  # fitted without target images
            return self.transform(X)
        return self._forward(X, features_only=True, encoder=self.source_encoder_)

    def _adversarial_step(self):
        import torch
        import torch.nn.functional as F
        from torch.func import functional_call

        def step(model, batch):
            source, _, target = batch
            with torch.no_grad():
                source_features = model.source_encoder(source)
            target_features = model.target_encoder(target)
            real = model.discriminator(source_features).squeeze(1)
            fake = model.discriminator(target_features.detach()).squeeze(1)
            discriminator_loss = (F.binary_cross_entropy_with_logits(real, torch.ones_like(real))
                                  + F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake)))
            frozen = {name: p.detach() for name, p in model.discriminator.named_parameters()}
            fooled = functional_call(model.discriminator, frozen, (target_features,)).squeeze(1)
            encoder_loss = F.binary_cross_entropy_with_logits(fooled, torch.ones_like(fooled))
            model.steps_done += 1
            # "Accuracy" of this stage is the discriminator's: near 0.5 once it is fooled.
            correct = (real > 0).sum() + (fake <= 0).sum()
            return (discriminator_loss + self.adaptation_weight * encoder_loss, correct,
                    len(real) + len(fake))

        return step
