"""DANN (methods/domain/dann.py): the gradient-reversal layer and the λ_p schedule."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from transferkit.methods.domain.dann import dann_lambda, gradient_reversal

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_gradient_reversal_is_identity_forward_and_minus_lambda_backward():
    x = torch.randn(4, 3, requires_grad=True)
    upstream = torch.randn(4, 3)
    y = gradient_reversal(x, 0.7)
    assert torch.equal(y, x)
    y.backward(upstream)
    assert torch.allclose(x.grad, -0.7 * upstream)


def test_dann_lambda_schedule():
    assert dann_lambda(0.0) == 0.0
    assert dann_lambda(0.5) == pytest.approx(2 / (1 + math.exp(-5)) - 1)
    assert dann_lambda(1.0) == pytest.approx(0.99991, abs=1e-5)
    values = [dann_lambda(p) for p in np.linspace(0, 1, 11)]
    assert values == sorted(values)
