"""The Full-Network Embedding over every convolutional layer (``layer="all-conv"``).

The tiny test backbone (timm's ``test_efficientnet``), counted by hand from its printed
architecture: each convolution is followed by a BatchNormAct2d, whose output (after the
activation; none after the 1×1 projections) is the layer's output.

    conv_stem → bn1 24
    blocks.0.0 (ConvBnAct)        conv → bn1 16
    blocks.1.0 (EdgeResidual)     conv_exp → bn1 64, conv_pwl → bn2 24
    blocks.2.0 (EdgeResidual)     conv_exp → bn1 96, conv_pwl → bn2 32
    blocks.3.0 (InvertedResidual) conv_pw → bn1 128, conv_dw → bn2 128, conv_pwl → bn3 48
    blocks.4.0 (InvertedResidual) conv_pw → bn1 192, conv_dw → bn2 192, conv_pwl → bn3 64
    conv_head → bn2 256
    (the squeeze-excitation convolutions of blocks 3 and 4 are channel gates: left out)

13 layers, 1264 features; the stage form (``layer="fne"``) is bn1, the 5 stages and
``features``: 24 + 16 + 24 + 32 + 48 + 64 + 256 = 464.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from builders import write_class_folder
from transferkit import run
from transferkit.errors import TransferkitError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

HAND_COUNTED = {
    "bn1": 24, "blocks.0.0.bn1": 16, "blocks.1.0.bn1": 64, "blocks.1.0.bn2": 24,
    "blocks.2.0.bn1": 96, "blocks.2.0.bn2": 32, "blocks.3.0.bn1": 128, "blocks.3.0.bn2": 128,
    "blocks.3.0.bn3": 48, "blocks.4.0.bn1": 192, "blocks.4.0.bn2": 192, "blocks.4.0.bn3": 64,
    "bn2": 256,
}
STAGE_FORM_DIM = 464


def _extractor(tiny_checkpoint, layer, cache_dir):
    from transferkit.features import FrozenExtractor

    path, arch = tiny_checkpoint
    return FrozenExtractor.from_name(None, str(path), arch, layer=layer, cache_dir=cache_dir)


def test_every_convolutional_layer_is_tapped_as_hand_counted(tiny_checkpoint, tmp_path):
    extractor = _extractor(tiny_checkpoint, "all-conv", tmp_path / "cache")
    assert extractor.dims == HAND_COUNTED
    assert extractor.dim == sum(HAND_COUNTED.values()) == 1264
    assert _extractor(tiny_checkpoint, "fne", tmp_path / "cache").dim == STAGE_FORM_DIM
    paths = sorted(write_class_folder(tmp_path / "images", per_class=2).glob("*/*.png"))
    both = _extractor(tiny_checkpoint, "all-conv,features", tmp_path / "cache").extract(paths)
    assert both.features.shape == (4, 1264 + 256)
    # The head's conv layer (conv_head → bn2) is the final feature map: the same vector.
    np.testing.assert_allclose(both.layer("bn2"), both.layer("features"), rtol=1e-5, atol=1e-6)
    # Activated outputs: SiLU is above -0.28, so no pooled layer output may go far below.
    assert both.layer("blocks.3.0.bn2").min() > -0.3


def test_a_network_without_convolutions_is_refused_in_one_line():
    from torch import nn

    from transferkit.backbones.taps import conv_layers

    class Flat(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward_features(self, images):
            return self.fc(images.flatten(1)[:, :4])

    with pytest.raises(TransferkitError, match="needs a convolutional network") as caught:
        conv_layers(Flat(), input_size=(1, 2, 2))
    assert "\n" not in str(caught.value)


def test_the_two_forms_never_share_cached_features(tiny_checkpoint, tmp_path):
    paths = sorted(write_class_folder(tmp_path / "images", per_class=3).glob("*/*.png"))
    cache = tmp_path / "cache"
    stages = _extractor(tiny_checkpoint, "fne", cache)
    assert stages.extract(paths).features.shape == (6, STAGE_FORM_DIM)
    every = _extractor(tiny_checkpoint, "all-conv", cache)
    cold = every.extract(paths)
    # Only bn1 is common to both forms; the other 12 layers had to be computed.
    assert cold.features.shape == (6, 1264) and every.n_forward_images == 6
    warm = _extractor(tiny_checkpoint, "all-conv", cache)
    np.testing.assert_array_equal(warm.extract(paths).features, cold.features)
    assert warm.n_forward_images == 0
    # Each keyword has its own identity memo, so neither is read as the other.
    memos = sorted((cache / "identities").glob("*.json"))
    layers = sorted(len(json.loads(m.read_text())["identity"]["layers"]) for m in memos)
    assert layers == [7, 13]


def test_fne_over_every_layer_round_trips_through_export(tiny_checkpoint, tmp_path):
    from transferkit.bundle import load_bundle
    from transferkit.export import export_model
    from transferkit.runtime import load_predictor

    data = write_class_folder(tmp_path / "data", per_class=8, classes=("red", "blue", "green"))
    path, arch = tiny_checkpoint
    # Every convolutional layer is the default (the paper's definition).
    summary = run.fit(data, tmp_path / "model", method="fne", weights=str(path), arch=arch)
    assert summary["val_accuracy"] >= 0.8  # chance 1/3
    model = load_bundle(tmp_path / "model")
    assert model.layer == "all-conv" and model.n_features_in_ == 1264
    images = sorted(data.glob("*/*.png"))
    expected, ok, _ = model.predict_paths(images)
    assert ok.all() and (np.asarray(expected).argmax(axis=1) >= 0).all()
    export_model(tmp_path / "model", tmp_path / "model.onnx")
    got, got_ok, _ = load_predictor(tmp_path / "model.onnx").predict_paths(images)
    assert got_ok.all() and np.abs(got - expected).max() < 1e-4

    # The stage form is one option away; any other layer is refused in one line.
    stages = run.fit(data, tmp_path / "stages", method="fne", weights=str(path), arch=arch,
                     layer="fne")
    assert load_bundle(tmp_path / "stages").layer == "fne"
    assert load_bundle(tmp_path / "stages").n_features_in_ == STAGE_FORM_DIM
    assert stages["val_accuracy"] >= 0.8
    with pytest.raises(TransferkitError, match="all-conv .* or fne / stages") as caught:
        run.fit(data, tmp_path / "other", method="fne", weights=str(path), arch=arch,
                layer="pre_logits")
    assert "\n" not in str(caught.value)


_FIT_AND_LIST = """
import json, sys
from transferkit.cli import main
code = main(sys.argv[1:])
heavy = sorted({name.split('.')[0] for name in sys.modules} & {"torch", "timm", "torchvision"})
print(json.dumps({"code": code, "heavy": heavy}), file=sys.stderr)
"""


def test_a_warm_every_layer_fne_fit_imports_no_torch(tiny_checkpoint, tmp_path, isolated_cache):
    path, arch = tiny_checkpoint
    data = write_class_folder(tmp_path / "images", per_class=6)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFERKIT_CACHE_DIR": str(isolated_cache)}
    reports = []
    for out in ("cold", "warm"):
        done = subprocess.run([sys.executable, "-c", _FIT_AND_LIST, "fit", str(data), "--method",
                               "fne", "--layer", "all-conv", "--weights", str(path), "--arch",
                               arch, "--quiet", "--out", str(tmp_path / out)],
                              capture_output=True, text=True, env=env)
        reports.append(json.loads(done.stderr.strip().splitlines()[-1]))
        assert reports[-1]["code"] in (0, None), done.stderr
    assert "torch" in reports[0]["heavy"]  # the cold run did run the network
    assert reports[1]["heavy"] == []
