"""Deep CORAL: correlation alignment as a loss inside the network.

Sun & Saenko 2016, "Deep CORAL: Correlation Alignment for Deep Domain Adaptation"
(ECCV workshops). With C_S, C_T the covariance matrices of a batch's source and target
features (d dimensions),

    L_CORAL = ‖C_S − C_T‖²_F / (4 d²),

added to the classification loss with weight ``adaptation_weight`` (the paper's λ).
The shallow, closed-form version is :class:`transferkit.methods.domain.coral.CORAL`.
"""

from __future__ import annotations

from transferkit.methods.domain._deep_base import DeepSourceOnly


def coral_loss(source, target):
    """‖Cov(source) − Cov(target)‖²_F / (4 d²) for two (n, d) feature batches."""
    d = source.shape[1]

    def covariance(x):
        centred = x - x.mean(0, keepdim=True)
        return centred.T @ centred / max(1, len(x) - 1)

    return ((covariance(source) - covariance(target)) ** 2).sum() / (4 * d * d)


class DeepCORAL(DeepSourceOnly):
    """The network trained with CE on the source + λ · L_CORAL between the domains."""

    def _adaptation_loss(self, model, batch):
        return coral_loss(batch.source_features, batch.target_features)
