"""DAN-style multi-kernel MMD: match the domains' feature distributions in an RKHS.

Long, Cao, Wang & Jordan 2015, "Learning Transferable Features with Deep Adaptation
Networks" (ICML). The squared maximum mean discrepancy between source and target
features under a sum of Gaussian kernels k(a, b) = Σ_i exp(−‖a − b‖² / (2σ_i²)),

    MMD² = E[k(s, s')] + E[k(t, t')] − 2 E[k(s, t)],

with bandwidths σ_i spread around the batch's median distance (the paper's kernel
family), added to the classification loss with weight ``adaptation_weight``.
"""

from __future__ import annotations

from transferkit.methods.domain._deep_base import DeepSourceOnly

BANDWIDTH_FACTORS = (0.25, 0.5, 1.0, 2.0, 4.0)


def multi_kernel_mmd(source, target, factors=BANDWIDTH_FACTORS):
    """Biased estimate of MMD² with Gaussian kernels at ``factors`` × the median distance²."""
    import torch

    joint = torch.cat([source, target])
    distances = torch.cdist(joint, joint).pow(2)
    # The median pairwise squared distance sets the scale; detached, as in DAN.
    scale = distances.detach()[distances.detach() > 0].median() if (distances > 0).any() \
        else torch.tensor(1.0, device=joint.device)
    kernel = sum(torch.exp(-distances / (2 * factor * scale)) for factor in factors)
    n = len(source)
    return kernel[:n, :n].mean() + kernel[n:, n:].mean() - 2 * kernel[:n, n:].mean()


class DAN(DeepSourceOnly):
    """The network trained with CE on the source + λ · MK-MMD² between the domains."""

    def _adaptation_loss(self, model, batch):
        return multi_kernel_mmd(batch.source_features, batch.target_features)
