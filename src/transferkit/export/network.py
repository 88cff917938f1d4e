"""The network part of an exported model: torch modules that take uint8 NHWC images,
normalise them as the bundle's eval transform does, and run the bundle's network;
exported with ``torch.onnx`` (dynamic batch).

Normalisation replays torchvision's ``ToTensor`` + ``Normalize`` on the same float32
values in the same order (``x.float() / 255``, then ``(x - mean) / std``), so the graph
sees the tensors the bundle's network saw.
"""

from __future__ import annotations

import io
import warnings

import torch
from torch import nn

OPSET = 17


class NormaliseImages(nn.Module):
    """uint8 ``(N, H, W, 3)`` → float32 ``(N, 3, H, W)``: ``(x / 255 - mean) / std``."""

    def __init__(self, mean, std):
        super().__init__()
        for name, values in (("mean", mean), ("std", std)):
            self.register_buffer(name, torch.tensor(list(values), dtype=torch.float32)
                                 .view(1, -1, 1, 1))

    def forward(self, images):
        return (images.permute(0, 3, 1, 2).float().div(255) - self.mean) / self.std


class ImagesToFeatures(nn.Module):
    """The frozen extractors of a linear probe side by side: each backbone's layer taps
    (:func:`transferkit.backbones.taps.make_tap_module`) on its own normalisation of the
    graph input ``inputs[i]``; the pooled vectors concatenated as the bundle does."""

    def __init__(self, parts: list[tuple[int, nn.Module, nn.Module]]):
        super().__init__()
        self.input_of = [index for index, _, _ in parts]
        self.normalise = nn.ModuleList([normalise for _, normalise, _ in parts])
        self.taps = nn.ModuleList([taps for _, _, taps in parts])

    def forward(self, *images):
        vectors = []
        for index, normalise, taps in zip(self.input_of, self.normalise, self.taps):
            vectors.extend(taps(normalise(images[index])))
        return torch.cat([v.float() for v in vectors], dim=1)


class ImagesToProbabilities(nn.Module):
    """A whole classifier network (fine-tuned, or a distilled student): softmax of its
    logits over the normalised images."""

    def __init__(self, normalise: nn.Module, network: nn.Module):
        super().__init__()
        self.normalise = normalise
        self.network = network

    def forward(self, images):
        return torch.softmax(self.network(self.normalise(images)).float(), dim=1)


class ImagesToLogits(nn.Module):
    """A segmentation network: per-pixel class logits ``(N, C, H, W)`` of the normalised
    images (the softmax comes after the resize to each image's size, outside the graph)."""

    def __init__(self, normalise: nn.Module, network: nn.Module):
        super().__init__()
        self.normalise = normalise
        self.network = network

    def forward(self, images):
        return self.network(self.normalise(images)).float()


class StudentNormalise(nn.Module):
    """The distilled student's own normalisation (:func:`transferkit.methods.distill.
    normalise_images`) on NHWC input."""

    def forward(self, images):
        from transferkit.methods.distill import normalise_images

        return normalise_images(images.permute(0, 3, 1, 2))


def export_network(module: nn.Module, input_names: list[str], input_sizes: list[list[int]],
                   output_name: str):
    """``module`` as an ONNX ModelProto with uint8 ``(batch, H, W, 3)`` inputs."""
    import onnx

    dummies = tuple(torch.zeros((2, height, width, 3), dtype=torch.uint8)
                    for height, width in input_sizes)
    buffer = io.BytesIO()
    axes = {name: {0: "batch"} for name in [*input_names, output_name]}
    with warnings.catch_warnings(), torch.inference_mode():
        # The TorchScript exporter is deprecated for torch.export, but it handles timm's
        # TF-"same" padding and is the one features/runtime.py already relies on.
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), dummies, buffer, input_names=input_names,
                          output_names=[output_name], opset_version=OPSET, dynamo=False,
                          dynamic_axes=axes)
    return onnx.load_model_from_string(buffer.getvalue())
