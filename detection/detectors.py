"""Faster R-CNN, Mask R-CNN and Keypoint R-CNN on a pruned ResNet-50 with an FPN (detection/README.md).

The backbone is ``models.build_model('resnet_50', compress_rate)`` seen through `ResNet50Body`, whose children
are what torchvision's ``IntermediateLayerGetter`` expects (``conv1, bn1, relu, maxpool, layer1..layer4``, the
stages as ``nn.Sequential``). The state-dict keys are therefore exactly those of torchvision's
``fasterrcnn_resnet50_fpn``::
    backbone.body.conv1.weight, backbone.body.bn1.*, backbone.body.layer{1-4}.{i}.{conv,bn}{1-3}.*,
    backbone.body.layer{1-4}.0.downsample.{0,1}.*, backbone.fpn.inner_blocks.*, backbone.fpn.layer_blocks.*,
    rpn.*, roi_heads.*

The FPN's input widths are the pruned stage outputs (``layer{s}[-1].conv3.out_channels``); it returns the four
stages plus a max-pooled level (``LastLevelMaxPool``), 256 channels each. ``fpn_rate`` (default 0, the paper's
detector) narrows the FPN to ``int(256 * (1 - fpn_rate))`` channels; torchvision's heads follow the FPN width (RPN
conv, box head input, mask and keypoint head inputs). ``detection.fpn_pruning`` fills such a detector with the
CORING-selected channels of a trained full-width one.

Normalisation (``norm_layer``): ``"frozen"`` turns every BatchNorm of the backbone into torchvision's
``FrozenBatchNorm2d`` (fixed statistics and affine, what torchvision does with pretrained backbones); ``"bn"`` keeps
plain ``BatchNorm2d`` (what the paper's code does); ``"auto"`` (default) is ``"frozen"`` when backbone weights are
loaded and ``"bn"`` otherwise, as torchvision chooses. Stages outside the last ``trainable_layers`` are frozen
(``requires_grad=False``); ``trainable_layers=None`` means 3 with backbone weights and 5 (everything) without.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from torchvision.models.detection import FasterRCNN, KeypointRCNN, MaskRCNN
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.ops import FrozenBatchNorm2d
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from coring.checkpoint import extract_state_dict, load_checkpoint, load_weights
from models import build_model
from models.compress import kept_width

__all__ = ["ResNet50Body", "fpn_width", "resnet50_fpn_backbone", "load_backbone_weights", "fasterrcnn", "maskrcnn",
           "keypointrcnn", "build_detector", "DETECTORS", "DEFAULT_COMPRESS_RATE", "NORM_LAYERS"]

DEFAULT_COMPRESS_RATE = "[0.]+[0.1]*3+[0.35]*16"  # the paper's detection command lines
FPN_CHANNELS = 256
NORM_LAYERS = ("auto", "frozen", "bn")
_TRAINABLE_ORDER = ("layer4", "layer3", "layer2", "layer1", "conv1")

WeightsSource = str | Path | Mapping[str, Any] | None


class ResNet50Body(nn.Module):
    """The convolutional part of a (pruned) ``ResNet50`` with ``IntermediateLayerGetter``-compatible children.

    Shares the modules of ``net`` (no copy): ``conv1, bn1, relu, maxpool`` and ``layer1..layer4`` turned from
    ``nn.ModuleList`` into ``nn.Sequential`` with the same indices, so the keys stay ``layer1.0.conv1.weight``,
    ... and a classification state dict without ``fc.*`` loads as it is. ``stage_channels`` lists each stage's
    output width.
    """

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        for stage in range(1, 5):
            setattr(self, f"layer{stage}", nn.Sequential(*getattr(net, f"layer{stage}")))
        self.stage_channels: list[int] = [getattr(self, f"layer{s}")[-1].conv3.out_channels for s in range(1, 5)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


def fpn_width(fpn_rate: float) -> int:
    """Channels of an FPN with ``fpn_rate`` of torchvision's 256 removed."""
    if not 0.0 <= fpn_rate < 1.0:
        raise ValueError(f"fpn_rate must be in [0, 1) (the fraction of the {FPN_CHANNELS} FPN channels removed), "
                         f"got {fpn_rate}")
    return max(1, kept_width(FPN_CHANNELS, fpn_rate))


def load_backbone_weights(body: nn.Module, source: str | Path | Mapping[str, Any]) -> None:
    """Load a ResNet-50 checkpoint of this toolkit into ``body`` strictly, ignoring its classifier (``fc.*``).

    ``source`` is a path or a loaded checkpoint: ``{'state_dict': ...}``, ``{'model': ...}`` or a bare state dict,
    with or without a ``module.`` prefix. A width mismatch (wrong ``--compress_rate``) is a one-line
    ``CheckpointError`` naming the key and both shapes.
    """
    obj = load_checkpoint(source) if isinstance(source, (str, Path)) else source
    state = {k: v for k, v in extract_state_dict(obj).items() if not k.startswith("fc.")}
    load_weights(body, state)


def _to_frozen_bn(module: nn.Module) -> nn.Module:
    """Replace every ``BatchNorm2d`` below ``module`` by a ``FrozenBatchNorm2d`` holding the same statistics."""
    if isinstance(module, nn.BatchNorm2d):
        frozen = FrozenBatchNorm2d(module.num_features, eps=module.eps)
        with torch.no_grad():
            frozen.weight.copy_(module.weight)
            frozen.bias.copy_(module.bias)
            frozen.running_mean.copy_(module.running_mean)
            frozen.running_var.copy_(module.running_var)
        return frozen
    for name, child in module.named_children():
        setattr(module, name, _to_frozen_bn(child))
    return module


def _resolve(weights_backbone: WeightsSource, trainable_layers: int | None, norm_layer: str) -> tuple[int, str]:
    if norm_layer not in NORM_LAYERS:
        raise ValueError(f"norm_layer must be one of {NORM_LAYERS}, got {norm_layer!r}")
    pretrained = weights_backbone is not None
    if trainable_layers is None:
        trainable_layers = 3 if pretrained else 5
    if not 0 <= trainable_layers <= 5:
        raise ValueError(f"trainable_layers must be in [0, 5], got {trainable_layers}")
    if norm_layer == "auto":
        norm_layer = "frozen" if pretrained else "bn"
    return trainable_layers, norm_layer


def resnet50_fpn_backbone(compress_rate: str | list[float] | None = None, *, weights_backbone: WeightsSource = None,
                          trainable_layers: int | None = None, norm_layer: str = "auto",
                          fpn_rate: float = 0.0) -> BackboneWithFPN:
    """A ``BackboneWithFPN`` (layers 1-4 returned, ``fpn_width(fpn_rate)`` channels, max-pooled extra level) on a
    pruned ResNet-50.

    Weights are loaded before BatchNorms are frozen, then stages outside the last ``trainable_layers``
    (``layer4, layer3, layer2, layer1, conv1`` in that order; 5 also trains ``bn1``) stop requiring gradients.
    """
    trainable_layers, norm_layer = _resolve(weights_backbone, trainable_layers, norm_layer)
    body = ResNet50Body(build_model("resnet_50", compress_rate))
    if weights_backbone is not None:
        load_backbone_weights(body, weights_backbone)
    if norm_layer == "frozen":
        _to_frozen_bn(body)
    layers_to_train = list(_TRAINABLE_ORDER[:trainable_layers]) + (["bn1"] if trainable_layers == 5 else [])
    for name, parameter in body.named_parameters():
        if not any(name.startswith(layer) for layer in layers_to_train):
            parameter.requires_grad_(False)
    return_layers = {f"layer{s}": str(s - 1) for s in range(1, 5)}
    return BackboneWithFPN(body, return_layers, body.stage_channels, fpn_width(fpn_rate),
                           extra_blocks=LastLevelMaxPool())


def fasterrcnn(compress_rate: str | list[float] | None = None, num_classes: int = 91,
               trainable_layers: int | None = None, weights_backbone: WeightsSource = None,
               norm_layer: str = "auto", fpn_rate: float = 0.0, **kwargs: Any) -> FasterRCNN:
    """Faster R-CNN (torchvision's heads) on a pruned ResNet-50-FPN; ``kwargs`` go to ``FasterRCNN``."""
    backbone = resnet50_fpn_backbone(compress_rate, weights_backbone=weights_backbone,
                                     trainable_layers=trainable_layers, norm_layer=norm_layer, fpn_rate=fpn_rate)
    return FasterRCNN(backbone, num_classes=num_classes, **kwargs)


def maskrcnn(compress_rate: str | list[float] | None = None, num_classes: int = 91,
             trainable_layers: int | None = None, weights_backbone: WeightsSource = None,
             norm_layer: str = "auto", fpn_rate: float = 0.0, **kwargs: Any) -> MaskRCNN:
    """Mask R-CNN (torchvision's heads) on a pruned ResNet-50-FPN; ``kwargs`` go to ``MaskRCNN``."""
    backbone = resnet50_fpn_backbone(compress_rate, weights_backbone=weights_backbone,
                                     trainable_layers=trainable_layers, norm_layer=norm_layer, fpn_rate=fpn_rate)
    return MaskRCNN(backbone, num_classes=num_classes, **kwargs)


def keypointrcnn(compress_rate: str | list[float] | None = None, num_classes: int = 2, num_keypoints: int = 17,
                 trainable_layers: int | None = None, weights_backbone: WeightsSource = None,
                 norm_layer: str = "auto", fpn_rate: float = 0.0, **kwargs: Any) -> KeypointRCNN:
    """Keypoint R-CNN (torchvision's heads) on a pruned ResNet-50-FPN; ``kwargs`` go to ``KeypointRCNN``."""
    backbone = resnet50_fpn_backbone(compress_rate, weights_backbone=weights_backbone,
                                     trainable_layers=trainable_layers, norm_layer=norm_layer, fpn_rate=fpn_rate)
    return KeypointRCNN(backbone, num_classes=num_classes, num_keypoints=num_keypoints, **kwargs)


DETECTORS: dict[str, Callable[..., nn.Module]] = {
    "fasterrcnn": fasterrcnn, "maskrcnn": maskrcnn, "keypointrcnn": keypointrcnn,
}


def build_detector(name: str, compress_rate: str | list[float] | None = None, **kwargs: Any) -> nn.Module:
    """``DETECTORS[name](compress_rate, **kwargs)`` with a clear error for an unknown name."""
    if name not in DETECTORS:
        raise ValueError(f"unknown detector {name!r}; choose one of {sorted(DETECTORS)}")
    return DETECTORS[name](compress_rate, **kwargs)
