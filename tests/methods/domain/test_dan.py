"""DAN (methods/domain/dan.py): the multi-kernel MMD between source and target features."""

from __future__ import annotations

import pytest
import torch

from transferkit.methods.domain.dan import multi_kernel_mmd

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_multi_kernel_mmd_is_zero_for_one_sample_and_grows_with_a_shift():
    rng = torch.Generator().manual_seed(0)
    x = torch.randn(64, 5, generator=rng)
    assert float(multi_kernel_mmd(x, x)) == pytest.approx(0.0, abs=1e-6)
    y = torch.randn(64, 5, generator=rng)
    values = [float(multi_kernel_mmd(x, y + shift)) for shift in (0.0, 0.5, 1.0, 2.0)]
    assert values == sorted(values) and values[-1] > 10 * values[0]
