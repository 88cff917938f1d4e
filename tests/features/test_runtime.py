"""The ONNX path: TF-"same" padding exported as Conv pads, the eager check run once per file."""

import json

import numpy as np
import onnx
import pytest
import torch
from timm.layers.conv2d_same import Conv2dSame
from torch import nn

import transferkit.features.runtime as runtime_module
from transferkit.features.runtime import (
    EagerRuntime,
    OnnxRuntime,
    export_onnx,
    make_runtime,
    static_same_padding,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SHAPE = (3, 31, 36)  # odd and even sides: TF-"same" pads them differently


def same_padded_network(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(Conv2dSame(3, 8, 3, stride=2), nn.ReLU6(),
                         Conv2dSame(8, 8, 5, stride=2, groups=8), nn.ReLU6(),
                         Conv2dSame(8, 4, 4, stride=1), nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()


def test_same_padding_exports_as_conv_pads_and_matches_eager(tmp_path):
    network = same_padded_network()
    export_onnx(network, SHAPE, tmp_path / "net.onnx")
    operators = {node.op_type for node in onnx.load(tmp_path / "net.onnx").graph.node}
    assert "Conv" in operators and "Pad" not in operators
    fast = OnnxRuntime(network, SHAPE, tmp_path / "net.onnx", threads=1)
    images = torch.randn(3, *SHAPE)
    with torch.inference_mode():
        eager = network(images).numpy()
    assert np.abs(fast(images)[0] - eager).max() < 1e-5
    # The network itself is untouched: other sizes still get their own padding.
    assert all("forward" not in layer.__dict__ for layer in network.modules())
    with torch.inference_mode():
        assert network[0](torch.zeros(1, 3, 41, 41)).shape[-2:] == (21, 21)


def test_static_padding_applies_only_inside_the_block():
    network = same_padded_network()
    with static_same_padding(network, SHAPE):
        assert "forward" in network[0].__dict__
    assert "forward" not in network[0].__dict__


def test_the_eager_check_runs_once_per_exported_file(tmp_path, monkeypatch):
    calls = []
    real_check = runtime_module.max_deviation

    def counted(*args, **kwargs):
        calls.append(1)
        return real_check(*args, **kwargs)

    monkeypatch.setattr(runtime_module, "max_deviation", counted)
    network, path = same_padded_network(), tmp_path / "onnx" / "net.onnx"
    assert make_runtime(network, SHAPE, "onnx", path).name == "onnx" and len(calls) == 1
    assert make_runtime(network, SHAPE, "onnx", path).name == "onnx" and len(calls) == 1
    stamp = path.with_name(path.name + ".verified.json")
    saved = json.loads(stamp.read_text())
    saved["stamp"]["onnxruntime"] = "0.0.0"  # another ONNX Runtime: check again
    stamp.write_text(json.dumps(saved))
    make_runtime(network, SHAPE, "onnx", path)
    assert len(calls) == 2


def test_a_swapped_export_is_checked_again_and_refused(tmp_path):
    network, path = same_padded_network(seed=0), tmp_path / "onnx" / "net.onnx"
    make_runtime(network, SHAPE, "auto", path)
    export_onnx(same_padded_network(seed=1), SHAPE, path)  # other weights, same file name
    fallback = make_runtime(network, SHAPE, "auto", path)
    assert isinstance(fallback, EagerRuntime) and not path.exists()


def test_one_thread_session_gives_the_same_features_from_several_threads(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    network = same_padded_network()
    fast = make_runtime(network, SHAPE, "onnx", tmp_path / "net.onnx", threads=1)
    assert fast.threads == 1
    batches = [torch.randn(2, *SHAPE, generator=torch.Generator().manual_seed(i)) for i in range(8)]
    alone = [fast(batch)[0] for batch in batches]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(lambda batch: fast(batch)[0], batches))
    for a, b in zip(alone, together):
        np.testing.assert_array_equal(a, b)
