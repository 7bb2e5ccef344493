"""CORING on a detector's FPN: choose the kept FPN and RPN channels of a trained detector and copy them over.

Pruning the ResNet-50 alone leaves most of a detector's cost in place: at 800x800 the FPN, the RPN head and the
box head make about 60 % of Faster R-CNN's multiply-accumulates, so backbone pruning caps the whole-detector
FLOPs ratio near 1.5x. This module prunes the three channel spaces that follow the backbone, in the layout
language of ``models.layout`` so that the generic ranking (``coring.selection``) and surgery (``coring.surgery``) do
the work:

* ``fpn.inner``: the lateral 1x1 convs' outputs, one space for all levels (the top-down path adds them);
  read by the 3x3 output convs;
* ``fpn.out``: the 3x3 output convs' outputs, one space for all levels (the RPN head and RoIAlign read any level);
  read by the RPN conv, the box head's first linear layer (``C x 7 x 7`` flattened), the first mask / keypoint
  head conv;
* ``rpn.conv``: the RPN's 3x3 conv outputs, read by its objectness and box-delta convs.

Each space is ranked from the filters of all its convs together (the pairwise matrices are averaged). The slim
detector is built by ``detection.detectors`` with the same ``fpn_rate``; its width sets how many channels stay.
"""
from __future__ import annotations

from torch import nn

from coring.selection import select_channels
from coring.surgery import transfer_weights
from models.layout import ChannelLayout, LayoutBuilder

__all__ = ["fpn_layout", "prune_fpn"]

_LEVELS = 4


def fpn_layout(detector: nn.Module) -> ChannelLayout:
    """The channel groups of ``detector``'s FPN and RPN and the head modules that read them."""
    modules = dict(detector.named_modules())
    b = LayoutBuilder()
    inner = [f"backbone.fpn.inner_blocks.{i}.0" for i in range(_LEVELS)]
    outer = [f"backbone.fpn.layer_blocks.{i}.0" for i in range(_LEVELS)]
    b.group("fpn.inner", inner, scored=inner)
    b.group("fpn.out", outer, scored=outer)
    b.group("rpn.conv", ["rpn.head.conv.0.0"])
    for name in outer:
        b.feed(name, "fpn.inner")
    b.feed("rpn.head.conv.0.0", "fpn.out")
    b.feed("rpn.head.cls_logits", "rpn.conv")
    b.feed("rpn.head.bbox_pred", "rpn.conv")
    for reader in ("roi_heads.box_head.fc6", "roi_heads.mask_head.0.0", "roi_heads.keypoint_head.0"):
        if reader in modules:
            b.feed(reader, "fpn.out")
    layout = b.build()
    missing = [m for g in layout.groups for m in g.producers if m not in modules]
    if missing:
        raise ValueError(f"not a torchvision FPN detector: it has no module {missing[0]!r}")
    return layout


def prune_fpn(full: nn.Module, slim: nn.Module, criterion: str = "VBD_dis", strategy: str = "min_sum") -> dict:
    """Fill ``slim`` (a narrower FPN, same detector otherwise) with the CORING-selected channels of ``full``.

    Returns the kept channel indices of every group. Widths come from ``slim``; a detector whose other parts
    differ from ``full`` is a ``SurgeryError`` naming the first tensor that does not fit.
    """

    layout = fpn_layout(full)
    keep, _ = select_channels(full, layout, layout.widths(slim), criterion, strategy)
    transfer_weights(full, slim, layout, keep)
    return keep
