"""The package layout holds: measures and reports import no method, and the networks that
saved bundles hold keep their weight names."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_evaluate_and_report_import_no_method():
    code = ("import importlib, pkgutil, sys\n"
            "import transferkit.evaluate, transferkit.report\n"
            "for package in (transferkit.evaluate, transferkit.report):\n"
            "    for module in pkgutil.iter_modules(package.__path__):\n"
            "        importlib.import_module(f'{package.__name__}.{module.name}')\n"
            # negative_transfer's default baseline, imported when the check runs
            "import transferkit.features.raw_pixels\n"
            "print(sorted(m for m in sys.modules if m.startswith('transferkit.methods')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_saved_networks_keep_their_weight_names():
    # Bundles store state_dicts: a renamed layer would make every saved model unloadable.
    from transferkit.nets.pair_embedding import PairEmbedding
    from transferkit.nets.students import StudentCNN

    assert list(PairEmbedding(6, 4, 3, 0.1).state_dict()) == [
        "mean", "scale", "mlp.1.weight", "mlp.1.bias", "mlp.4.weight", "mlp.4.bias"]
    student = list(StudentCNN("tiny-cnn", 3).state_dict())
    assert student[:3] == ["0.weight", "1.weight", "1.bias"]
    assert student[-2:] == ["18.weight", "18.bias"]


def test_student_features_and_head_compose_to_the_network():
    import torch

    from transferkit.nets.students import StudentCNN

    torch.manual_seed(0)
    student = StudentCNN("tiny-cnn", 3).eval()
    images = torch.randn(2, 3, 32, 32)
    features = student.forward_features(images)
    assert features.shape == (2, 128)
    torch.testing.assert_close(student.forward_head(features), student(images))
