"""Parameters and FLOPs (multiply-accumulates) by thop, by ptflops, by the conv + bias + linear rule, and by
Torch-Pruning (the counter of the generic engine's targets): every counter the toolkit uses lives here.

The paper's ``test.py`` prints ``min(thop, ptflops)``; its tables' baselines use conv + linear MACs with
conv biases (HRank's convention). All are reported, each named, so a number can be traced to its counter.
"""
from __future__ import annotations

import contextlib
import copy
import io
import warnings
from dataclasses import asdict, dataclass

import torch
import torch_pruning as tp
from torch import nn

__all__ = ["Complexity", "count_complexity", "count_conv_linear", "conv_linear_macs", "torch_pruning_ops"]


@dataclass(frozen=True)
class Complexity:
    """Parameter and MAC counts of one model at one input size, by counter."""

    params_thop: int
    flops_thop: int
    params_ptflops: int
    flops_ptflops: int
    params_conv_linear: int
    flops_conv_linear: int

    @property
    def params(self) -> int:
        """The smaller of thop and ptflops, as the paper's ``test.py`` prints."""
        return min(self.params_thop, self.params_ptflops)

    @property
    def flops(self) -> int:
        return min(self.flops_thop, self.flops_ptflops)

    def as_dict(self) -> dict[str, int]:
        return {"params": self.params, "flops": self.flops, **asdict(self)}

    def by_counter(self, counter: str) -> tuple[int, int]:
        """(params, flops) of ``counter`` in {'min', 'thop', 'ptflops', 'conv_linear'}."""
        if counter == "min":
            return self.params, self.flops
        return getattr(self, f"params_{counter}"), getattr(self, f"flops_{counter}")


def _dummy_input(model: nn.Module, input_size: int) -> torch.Tensor:
    parameter = next(model.parameters())
    return torch.randn(1, 3, input_size, input_size, device=parameter.device, dtype=parameter.dtype)


def conv_linear_macs(model: nn.Module, inputs: torch.Tensor, *, channel_block: int = 1) -> int:
    """Multiply-accumulates of the convs and linear layers in one call of ``model`` on ``inputs`` (the whole batch),
    bias additions included.

    ``channel_block`` > 1 rounds the input and output channels of every ungrouped conv (except a 3-channel image
    input) up to a multiple of it: what kernels that compute channels in SIMD-sized blocks actually do.
    """
    macs = 0

    def padded(channels: int) -> int:
        return channels if channels <= 3 else -(-channels // channel_block) * channel_block

    def conv_hook(module: nn.Conv2d, _inputs, output: torch.Tensor) -> None:
        nonlocal macs
        c_in, c_out = module.in_channels // module.groups, module.out_channels
        if module.groups == 1:
            c_in, c_out = padded(c_in), padded(c_out)
        positions = output.numel() // output.shape[1]
        macs += positions * c_out * c_in * module.kernel_size[0] * module.kernel_size[1]
        macs += output.numel() if module.bias is not None else 0

    def linear_hook(module: nn.Linear, _inputs, output: torch.Tensor) -> None:
        nonlocal macs
        macs += output.numel() * module.in_features + (output.numel() if module.bias is not None else 0)

    handles = [module.register_forward_hook(conv_hook if isinstance(module, nn.Conv2d) else linear_hook)
               for module in model.modules() if isinstance(module, (nn.Conv2d, nn.Linear))]
    was_training = model.training
    model.eval()  # one image through a BatchNorm1d in training mode is an error, and statistics must not move
    try:
        with torch.no_grad():
            model(inputs)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return macs


def count_conv_linear(model: nn.Module, input_size: int) -> tuple[int, int]:
    """Params and MACs (one image) of convs (bias included) and linear layers only."""
    params = sum(p.numel() for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))
                 for p in m.parameters(recurse=False))
    return params, conv_linear_macs(model, _dummy_input(model, input_size))


def _thop(model: nn.Module, input_size: int) -> tuple[int, int]:
    from thop import profile

    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        flops, params = profile(model, inputs=(_dummy_input(model, input_size),), verbose=False)
    return int(params), int(flops)


def _ptflops(model: nn.Module, input_size: int) -> tuple[int, int]:
    from ptflops import get_model_complexity_info

    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        flops, params = get_model_complexity_info(model, (3, input_size, input_size), as_strings=False,
                                                  print_per_layer_stat=False, verbose=False, backend="pytorch")
    return int(params), int(flops)


def count_complexity(model: nn.Module, input_size: int) -> Complexity:
    """Count ``model`` at a ``1 x 3 x input_size x input_size`` input with every counter.

    Works on a copy in eval mode, so thop's ``total_ops`` buffers never reach the caller's model.
    """
    probe = copy.deepcopy(model).eval()
    params_cl, flops_cl = count_conv_linear(probe, input_size)
    params_thop, flops_thop = _thop(copy.deepcopy(probe), input_size)
    params_pt, flops_pt = _ptflops(copy.deepcopy(probe), input_size)
    return Complexity(params_thop, flops_thop, params_pt, flops_pt, params_cl, flops_cl)


def torch_pruning_ops(model: nn.Module, example_inputs: torch.Tensor) -> tuple[int, int]:
    """(MACs, params) by Torch-Pruning's own counter (``count_ops_and_params``): what the generic engine's FLOP and
    parameter targets are measured with."""
    flops, params = tp.utils.count_ops_and_params(model, example_inputs)
    return int(flops), int(params)
