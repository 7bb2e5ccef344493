"""Copy the kept channels of a model into its slim twin, for any architecture described by a layout.

Producers are sliced on their output channels (conv weight dim 0 and bias, all BatchNorm tensors,
a depthwise conv's filters); consumers on their input channels (conv/linear weight dim 1, a BatchNorm
that reads a concatenation; a linear layer after a channel-major flatten of C x H x W, such as a detector's
box head after RoIAlign, keeps the H*W columns of each kept channel); everything else is copied unchanged.
Every tensor's final shape is checked against the slim model, so a layout error cannot load silently.
"""
from __future__ import annotations

from typing import Mapping

import torch
from torch import nn

from models.layout import ChannelLayout

__all__ = ["SurgeryError", "input_index", "transfer_weights"]


class SurgeryError(RuntimeError):
    """The sliced weights do not fit the slim model."""


def input_index(layout: ChannelLayout, module: str, src_widths: Mapping[str, int],
                keep: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Kept input channels of ``module``: each input group's kept indices at its offset in the concatenation."""
    parts, offset = [], 0
    for group in layout.inputs[module]:
        parts.append(keep[group] + offset)
        offset += src_widths[group]
    return torch.cat(parts)


def _flattened_index(module: nn.Module, index: torch.Tensor, channels: int) -> torch.Tensor:
    """Input columns of a linear layer that reads ``channels`` maps flattened channel-major (``C x H x W``)."""
    if not isinstance(module, nn.Linear) or module.in_features == channels:
        return index
    positions, rest = divmod(module.in_features, channels)
    if rest:
        raise SurgeryError(f"linear layer with {module.in_features} inputs cannot read {channels} flattened channels")
    return (index[:, None] * positions + torch.arange(positions)).reshape(-1)


def _is_depthwise(module: nn.Module) -> bool:
    return isinstance(module, nn.Conv2d) and module.groups > 1 and module.groups == module.in_channels


def _slice(module: nn.Module, tensor_name: str, tensor: torch.Tensor, out_idx: torch.Tensor | None,
           in_idx: torch.Tensor | None) -> torch.Tensor:
    if tensor.dim() == 0:  # num_batches_tracked
        return tensor
    if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
        index = out_idx if out_idx is not None else in_idx
        return tensor if index is None else tensor.index_select(0, index.to(tensor.device))
    if isinstance(module, (nn.Conv2d, nn.Linear)):
        if isinstance(module, nn.Conv2d) and module.groups > 1 and not _is_depthwise(module):
            raise SurgeryError(f"grouped conv {tensor_name!r} (groups={module.groups}) is not supported by the layouts")
        if out_idx is not None:
            tensor = tensor.index_select(0, out_idx.to(tensor.device))
        if in_idx is not None and tensor.dim() > 1 and not _is_depthwise(module):
            tensor = tensor.index_select(1, in_idx.to(tensor.device))
        return tensor
    if out_idx is not None or in_idx is not None:
        raise SurgeryError(f"layout slices {tensor_name!r}, a {type(module).__name__}, which surgery cannot slice")
    return tensor


@torch.no_grad()
def transfer_weights(src: nn.Module, dst: nn.Module, layout: ChannelLayout,
                     keep: Mapping[str, torch.Tensor]) -> None:
    """Fill ``dst`` (the slim model) with the kept channels of ``src``; ``layout`` describes ``src``."""
    src_widths = layout.widths(src)
    producer = layout.producer_of()
    src_modules = dict(src.named_modules())
    for name, dst_module in dst.named_modules():
        tensors = list(dst_module.named_parameters(recurse=False)) + list(dst_module.named_buffers(recurse=False))
        if not tensors:
            continue
        if name not in src_modules:
            raise SurgeryError(f"slim model has module {name!r} that the original lacks")
        src_module = src_modules[name]
        out_idx = keep[producer[name]] if name in producer else None
        in_idx = None
        if name in layout.inputs:
            channels = sum(src_widths[group] for group in layout.inputs[name])
            in_idx = _flattened_index(src_module, input_index(layout, name, src_widths, keep), channels)
        for tensor_name, dst_tensor in tensors:
            full_name = f"{name}.{tensor_name}" if name else tensor_name
            src_tensor = getattr(src_module, tensor_name)
            sliced = _slice(src_module, full_name, src_tensor, out_idx, in_idx)
            if sliced.shape != dst_tensor.shape:
                raise SurgeryError(f"{full_name!r}: kept channels give shape {list(sliced.shape)} but the slim "
                                   f"model has {list(dst_tensor.shape)}")
            dst_tensor.copy_(sliced)
