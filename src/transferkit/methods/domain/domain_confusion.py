"""Domain confusion with soft labels: simultaneous transfer across domains and tasks.

Tzeng, Hoffman, Darrell & Saenko 2015, "Simultaneous Deep Transfer Across Domains and
Tasks" (ICCV). Semi-supervised: a few target images are labelled. The network is trained
with

    L = CE(labelled source + labelled target) + L_D + λ · L_conf + ν · L_soft

* **domain confusion**: a domain classifier D learns to tell source from target
  features (L_D, on detached features); the features are trained so that D's output is
  uniform, L_conf = BCE(D(f(x)), ½) with D's weights held (the paper alternates the two;
  here both step on each batch, each with only its own gradient);
* **soft labels**: a network first trained on the source gives, for each class y, the
  average of its softened outputs softmax(z / τ) over the source images of class y. Each
  labelled target image of class y is pulled towards that distribution,
  L_soft = −Σ_k l^(y)_k log softmax(z / τ)_k, which transfers how the classes relate
  (a "3" looks a bit like an "8") rather than only which one is right.

Without labelled target images L_soft drops out and the method is plain domain confusion.
"""

from __future__ import annotations

from transferkit.methods.domain._deep_base import DeepSourceOnly, DomainTensors


def class_soft_labels(logits, labels, n_classes: int, temperature: float):
    """Per class, the mean of softmax(logits / τ) over the rows of that class: (C, C)."""
    import torch

    probabilities = torch.softmax(logits / temperature, 1)
    soft = torch.zeros(n_classes, n_classes, dtype=probabilities.dtype)
    for label in range(n_classes):
        rows = labels == label
        # A class absent from the source keeps a one-hot row (no relation known).
        soft[label] = probabilities[rows].mean(0) if rows.any() else \
            torch.nn.functional.one_hot(torch.tensor(label), n_classes).to(soft.dtype)
    return soft


def soft_label_loss(logits, labels, soft_labels, temperature: float):
    """−Σ_k l^(y)_k log softmax(z / τ)_k, averaged over the rows."""
    import torch

    return -(soft_labels[labels] * torch.log_softmax(logits / temperature, 1)).sum(1).mean()


class DomainConfusionSoftLabels(DeepSourceOnly):
    """Tzeng et al. 2015 (module docstring). ``adaptation_weight`` is λ (confusion),
    ``soft_label_weight`` ν, ``temperature`` τ; ``pretrain_epochs`` (default half of
    ``epochs``) train the source network that gives the soft labels and the start weights.
    Labelled target images are given as ``yt`` (``-1`` for the unlabelled ones)."""

    digit_only = True  # built on the digit network's layers
    backbone = "digit-cnn"

    def __init__(self, epochs: int = 20, batch_size: int = 64, lr: float = 1e-3,
                 adaptation_weight: float = 1.0, width: int = 1, val_fraction: float = 0.1,
                 device: str = "auto", random_state: int = 0, progress: bool = False,
                 run_dir: str | None = None, pretrain_epochs: int | None = None,
                 soft_label_weight: float = 1.0, temperature: float = 2.0,
                 labelled_per_batch: int = 16):
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
        self.soft_label_weight = soft_label_weight
        self.temperature = temperature
        self.labelled_per_batch = labelled_per_batch

    def _per_domain_batchnorm(self) -> bool:
        return True  # the confusion step runs one forward pass per domain

    def _extra_modules(self, n_features: int) -> dict:
        from torch import nn

        hidden = 100 * self.width
        return {"domain": nn.Sequential(nn.Linear(n_features, hidden), nn.ReLU(),
                                        nn.Linear(hidden, 1))}

    def _train(self, data: DomainTensors):
        import torch

        # The source network: soft labels and the starting weights.
        train_loader, val_loader = self._loaders(data.source, data.labels)
        network = self._new_network()
        pretrain_epochs = self.pretrain_epochs or max(1, self.epochs // 2)
        pretrain = self._run(network, [{"params": list(network.parameters()), "lr": self.lr,
                                        "weight_decay": 1e-4}], train_loader, val_loader,
                             self._step_fn(False, 1), pretrain_epochs, stage="source")
        network = pretrain.model.cpu().eval()
        history = [dict(row, stage="source") for row in pretrain.history]
        with torch.inference_mode():
            logits = torch.cat([network(chunk) for chunk in data.source.split(512)])
        self.soft_labels_ = class_soft_labels(logits, data.labels, len(self.classes_),
                                              self.temperature).numpy()
        if len(data.target) == 0:
            return network, history

        train_loader, val_loader = self._loaders(data.source, data.labels, data.target)
        step_fn = self._confusion_step(data, torch.as_tensor(self.soft_labels_))
        network.steps_done.zero_()
        adapt = self._run(network, [{"params": list(network.parameters()), "lr": self.lr,
                                     "weight_decay": 1e-4}], train_loader, val_loader,
                          step_fn, self.epochs, stage="adapt")
        history += [dict(row, stage="adapt") for row in adapt.history]
        return adapt.model, history

    def _confusion_step(self, data: DomainTensors, soft_labels):
        import torch
        import torch.nn.functional as F
        from torch.func import functional_call

        from transferkit.methods.domain._deep_base import _validation_step

        labelled, labelled_y = data.target_labelled, data.target_labels

        def step(model, batch):
            if len(batch) == 2:
                return _validation_step(model, batch)
            source, labels, target = batch
            n_labelled = min(len(labelled), self.labelled_per_batch)
            if n_labelled:
                # A few labelled target images in every batch (drawn with the loop's RNG).
                rows = torch.randint(len(labelled), (n_labelled,))
                target = torch.cat([target, labelled[rows].to(source.device)])
                target_y = labelled_y[rows].to(source.device)
            # One forward pass per domain, as in DeepSourceOnly (per-domain BatchNorm).
            features = torch.cat([model.features(source), model.features(target)])
            n_source = len(source)
            logits = model.classifier(torch.cat([features[:n_source],
                                                 features[len(features) - n_labelled:]]))
            known = torch.cat([labels, target_y]) if n_labelled else labels
            loss = F.cross_entropy(logits, known)

            domain = torch.cat([torch.zeros(n_source, device=source.device),
                                torch.ones(len(features) - n_source, device=source.device)])
            domain_logits = model.extra["domain"](features.detach()).squeeze(1)
            loss = loss + F.binary_cross_entropy_with_logits(domain_logits, domain)
            frozen = {name: p.detach() for name, p in model.extra["domain"].named_parameters()}
            confused = functional_call(model.extra["domain"], frozen, (features,)).squeeze(1)
            loss = loss + self.adaptation_weight * F.binary_cross_entropy_with_logits(
                confused, torch.full_like(confused, 0.5))
            if n_labelled:
                loss = loss + self.soft_label_weight * soft_label_loss(
                    logits[n_source:], target_y, soft_labels.to(logits.device), self.temperature)
            model.steps_done += 1
            return loss, (logits[:n_source].argmax(1) == labels).sum(), n_source

        return step
