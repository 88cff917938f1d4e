"""MCC: minimum class confusion.

Jin, Wang, Long & Wang 2020, "Minimum Class Confusion for Versatile Domain Adaptation"
(ECCV). No discriminator and no distance between the domains: a loss on the *target*
predictions alone, which penalises a batch for spreading its probability mass over
pairs of classes at once (class confusion). With Ŷ = softmax(logits / T) for the target
batch (T = 2.5, the paper's temperature, softens over-confident predictions so that the
confusion is visible), example weights W = diag(w), w_i ∝ 1 + exp(−H(Ŷ_i)) scaled to sum
to the batch size (confident examples tell more about the confusion), and

    C = Ŷᵀ W Ŷ          (c × c, C_jk = how much the batch confuses class j with k)
    C̃_jk = C_jk / Σ_i C_ik   (category normalisation: each column sums to 1, so that
                               frequent classes do not dominate)
    L_MCC = (Σ_jk C̃_jk − Σ_j C̃_jj) / c,

added to the source cross-entropy with weight ``adaptation_weight`` (the paper's μ = 1).
The entropy weights are constants (detached), as in the Transfer-Learning-Library's
``tllib/self_training/mcc.py``; the gradient flows through Ŷ. Predictions that are
one-hot, each class taken by some example, have no confusion: L_MCC = 0.
"""

from __future__ import annotations

from transferkit.methods.domain._deep_base import DeepSourceOnly

MCC_TEMPERATURE = 2.5


def class_confusion_loss(logits, temperature: float = MCC_TEMPERATURE):
    """L_MCC of one batch of target ``logits`` ``(n, c)`` (see the module docstring)."""
    import torch

    n, n_classes = logits.shape
    probabilities = torch.softmax(logits.float() / temperature, 1)
    entropy = -(probabilities * torch.log(probabilities.clamp_min(1e-12))).sum(1).detach()
    weights = 1.0 + torch.exp(-entropy)
    weights = n * weights / weights.sum()
    confusion = (probabilities * weights[:, None]).T @ probabilities
    # A class whose probability underflows to 0 in every row would divide 0 by 0; the
    # smallest float keeps any column that is merely tiny exactly as the formula has it.
    column_sums = confusion.sum(0, keepdim=True).clamp_min(torch.finfo(confusion.dtype).tiny)
    confusion = confusion / column_sums
    return (confusion.sum() - confusion.trace()) / n_classes


class MCC(DeepSourceOnly):
    """The network trained with CE on the source + μ · L_MCC on the target batch."""

    def _adaptation_loss(self, model, batch):
        return class_confusion_loss(batch.target_logits)
