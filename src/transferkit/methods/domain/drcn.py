"""Reconstruction-based domain adaptation (DRCN).

Ghifary, Kleijn, Zhang, Balduzzi & Li 2016, "Deep Reconstruction-Classification Networks
for Unsupervised Domain Adaptation" (ECCV). One encoder is shared by two pathways: a
label predictor trained on the labelled source, and a convolutional decoder that
reconstructs *target* images from their features. Learning to rebuild the target forces
the shared features to represent the target domain's images, not only what separates the
source's classes:

    L = CE(C(f(x_s)), y_s) + w · ‖D(f(x_t)) − x_t‖²

(the paper weighs the two as λ and 1 − λ with λ = 0.7 and alternates them; here both
terms enter each step's loss, ``adaptation_weight`` is w). The decoder mirrors Ganin's
digit encoder (:func:`transferkit.nets.digits.digit_decoder`): 48×5×5 → upsample →
transposed 5×5 conv (32) → upsample → transposed 5×5 conv (3) → tanh, giving 32×32 images
in the encoder's [−1, 1] range.
"""

from __future__ import annotations

from transferkit.methods.domain._deep_base import DeepSourceOnly, images_to_tensor


class ReconstructionDA(DeepSourceOnly):
    """DRCN (module docstring): source classification + target reconstruction."""

    def _extra_modules(self, n_features: int) -> dict:
        from transferkit.nets.digits import digit_decoder

        return {"decoder": digit_decoder(self.width)}

    digit_only = True  # the decoder rebuilds 32×32 images
    backbone = "digit-cnn"

    def _adaptation_loss(self, model, batch):
        import torch.nn.functional as F

        return F.mse_loss(model.extra["decoder"](batch.target_features), batch.target_inputs)

    def reconstruct(self, X):
        """Reconstructions of images ``X`` as ``(N, 32, 32, 3)`` floats in [0, 1]."""
        import torch
        from sklearn.utils.validation import check_is_fitted

        check_is_fitted(self, "model_")
        with torch.inference_mode():
            out = self.model_.extra["decoder"](self.model_.features(images_to_tensor(X)))
        return ((out.permute(0, 2, 3, 1).numpy() + 1.0) / 2.0).clip(0, 1)
