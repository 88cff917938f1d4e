"""DRCN (methods/domain/drcn.py): the decoder learns to rebuild the target images."""

from __future__ import annotations

import numpy as np
import pytest

from domain_problems import bars
from transferkit.methods.domain.drcn import ReconstructionDA

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_reconstruction_da_learns_to_rebuild_the_target():
    X, y = bars(120, 0)
    Xt, _ = bars(120, 1, colour_shift=True)
    model = ReconstructionDA(epochs=10, batch_size=16, lr=3e-3).fit(X, y, Xt)
    rebuilt = model.reconstruct(Xt)
    assert rebuilt.shape == Xt.shape and rebuilt.min() >= 0 and rebuilt.max() <= 1
    # Better than the best constant answer, the mean target image.
    mean_image_error = float(np.mean((Xt.mean(0) - Xt) ** 2))
    assert float(np.mean((rebuilt - Xt) ** 2)) < 0.75 * mean_image_error
