"""A segmentation network: a pretrained classification backbone as the encoder, a light
U-Net-style decoder on its multi-scale feature maps.

Long, Shelhamer & Darrell 2015 (FCN) and Ronneberger, Fischer & Brox 2015 (U-Net): a
network trained to classify is reused to label every pixel. The encoder's stage outputs
(strides 2, 4, 8, 16, 32) come from timm's ``forward_intermediates`` — the
``features_only`` taps of the same network, after ``prune_intermediate_layers`` drops the
final 1×1 conv and the classifier that no tap reads. The decoder, ours, is deliberately
small (``segmentation_models_pytorch`` is not a dependency, and its timm-universal
encoder would have to be re-fed our offline EfficientNet-Lite weights anyway): from the
deepest map up, each step upsamples ×2, concatenates the next shallower map and applies
two 3×3 conv-BN-ReLU; a 1×1 conv gives class logits at stride 2, upsampled bilinearly to
the input size. With EfficientNet-Lite0 the decoder has about 0.3 M parameters beside the
encoder's 3.4 M.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from transferkit.errors import BackboneError

DECODER_CHANNELS = (128, 64, 48, 32)  # after each upsampling step, deepest first


def _conv_bn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
                         nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))


def prepare_encoder(model: nn.Module) -> list[int]:
    """Cut ``model`` (a timm network) to its feature stages in place; returns the
    channels of each stage output, shallowest first. Refuses a network without
    ``forward_intermediates`` (timm's multi-scale interface)."""
    if not hasattr(model, "forward_intermediates") or not hasattr(model, "prune_intermediate_layers"):
        raise BackboneError(f"{type(model).__name__} has no multi-scale feature maps in timm "
                            "(forward_intermediates); choose a convolutional backbone such as "
                            "efficientnet_lite0 or a timm ResNet.")
    n_stages = len(model.feature_info)
    model.prune_intermediate_layers(list(range(n_stages)), prune_head=True)
    return [int(info["num_chs"]) for info in model.feature_info[:n_stages]]


class UNetDecoder(nn.Module):
    """Upsample the deepest map step by step, merging the shallower ones (U-Net skips)."""

    def __init__(self, encoder_channels: list[int], n_classes: int,
                 channels: tuple[int, ...] = DECODER_CHANNELS):
        super().__init__()
        deep_first = list(reversed(encoder_channels))
        steps = min(len(channels), len(deep_first) - 1)
        self.blocks = nn.ModuleList()
        current = deep_first[0]
        for i in range(steps):
            skip = deep_first[i + 1]
            self.blocks.append(nn.Sequential(_conv_bn_relu(current + skip, channels[i]),
                                             _conv_bn_relu(channels[i], channels[i])))
            current = channels[i]
        self.classifier = nn.Conv2d(current, n_classes, 1)

    def forward(self, maps: list[torch.Tensor]) -> torch.Tensor:
        deep_first = list(reversed(maps))
        x = deep_first[0]
        for block, skip in zip(self.blocks, deep_first[1:]):
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = block(torch.cat([x, skip], dim=1))
        return self.classifier(x)


class SegmentationNet(nn.Module):
    """Images (B, 3, H, W), normalised → class logits (B, n_classes, H, W)."""

    def __init__(self, encoder: nn.Module, n_classes: int):
        super().__init__()
        self.encoder_channels = prepare_encoder(encoder)
        self.encoder = encoder
        self.decoder = UNetDecoder(self.encoder_channels, n_classes)
        self.n_classes = n_classes

    def forward_features(self, images: torch.Tensor) -> list[torch.Tensor]:
        return self.encoder.forward_intermediates(images, intermediates_only=True)

    def forward_head(self, maps: list[torch.Tensor], size) -> torch.Tensor:
        logits = self.decoder(maps)
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(images), images.shape[-2:])
