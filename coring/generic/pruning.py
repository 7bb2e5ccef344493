"""Prune any CNN with CORING through Torch-Pruning's dependency graph (``prune_generic``)."""
from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch_pruning as tp
from torch import Tensor, nn

from coring.checkpoint import first_line
from coring.coring_importance import CoringImportance, is_depthwise
from coring.counting import torch_pruning_ops
from coring.feature_criteria import Batch
from coring.generic.common import _FORMAT, _ROOT_TYPES, GenericModelError, tp_version
from coring.rank_cache import RankCache

__all__ = ['check_forward', 'count_ops', 'output_layers', 'prune_generic']


def count_ops(model: nn.Module, example_inputs: Tensor) -> tuple[int, int]:
    """(MACs, params) by ``coring.counting.torch_pruning_ops`` (the counter the targets use).

    A model that no longer runs (a forward that hard-codes channel counts, once pruned) is a one-line
    `GenericModelError` naming the layer where it fails (:func:`check_forward`).
    """
    try:
        return torch_pruning_ops(model, example_inputs)
    except Exception as exc:  # noqa: BLE001 - located and re-raised in one line
        check_forward(model, example_inputs)
        raise GenericModelError(f"cannot count the operations of the model: {first_line(exc)}") from None


def _shape_of(value: Any) -> str:
    if isinstance(value, Tensor):
        return str(list(value.shape))
    if isinstance(value, (list, tuple)) and value and isinstance(value[0], Tensor):
        return str(list(value[0].shape))
    return type(value).__name__


def check_forward(model: nn.Module, example_inputs: Tensor) -> None:
    """Run ``model`` once on ``example_inputs``; a failure is a one-line `GenericModelError` naming the layer.

    Hooks follow which module is running: the error names the innermost layer that failed on its input, or,
    when a module's own ``forward`` code failed (a ``view(-1, 1024)`` written for the unpruned widths), that
    module and the last layer that ran before it, with its output shape.
    """
    names = {m: n for n, m in model.named_modules()}
    running: list[tuple[nn.Module, str]] = []
    last: list[tuple[str, str]] = []

    def enter(module: nn.Module, inputs: tuple) -> None:
        running.append((module, _shape_of(inputs[0]) if inputs else "no input"))

    def leave(module: nn.Module, _inputs: tuple, output: Any) -> None:
        running.pop()
        if not any(True for _ in module.children()):
            last[:] = [(names[module], _shape_of(output))]

    handles = [h for m in names for h in (m.register_forward_pre_hook(enter), m.register_forward_hook(leave))]
    try:
        with torch.no_grad():
            model(example_inputs)
    except Exception as exc:  # noqa: BLE001 - one line naming the layer
        module, shape = running[-1] if running else (model, "?")
        name = names.get(module, "")
        if any(True for _ in module.children()) or module is model:
            where = f"{type(module).__name__}.forward" + (f" (module '{name}')" if name else "")
            after = f" after layer '{last[0][0]}' (output {last[0][1]})" if last else ""
            place = f"{where} fails{after}"
        else:
            place = f"layer '{name}' ({type(module).__name__}) fails on its input of shape {shape}"
        raise GenericModelError(
            f"the model does not run on a {list(example_inputs.shape)} input: {place}: {first_line(exc)}; a forward "
            f"that hard-codes channel counts or shapes breaks once pruned (derive them from the tensor: "
            f"torch.flatten, adaptive pooling; or keep that layer with ignored_layers)") from None
    finally:
        for handle in handles:
            handle.remove()


def output_layers(dg: tp.DependencyGraph, ignored: Sequence[nn.Module] = ()) -> list[nn.Module]:
    """Conv/linear layers whose output channels reach no other conv or linear layer: the model's outputs.

    Walks the traced graph forward from each layer through parameter-free ops, norms and depthwise convs (which
    keep the channels); a layer that never meets another conv or linear layer is an output (a classifier
    ``Linear``, SqueezeNet's final conv, a detection head). Its channels must keep their number.
    """
    skip = {id(m) for m in ignored}
    sinks: list[nn.Module] = []
    for module, node in dg.module2node.items():
        if not isinstance(module, _ROOT_TYPES) or id(module) in skip:
            continue
        stack, seen, consumed = list(node.outputs), set(), False
        while stack and not consumed:
            nxt = stack.pop()
            if id(nxt) in seen:
                continue
            seen.add(id(nxt))
            consumed = isinstance(nxt.module, _ROOT_TYPES) and not is_depthwise(nxt.module)
            stack.extend(nxt.outputs)
        if not consumed:
            sinks.append(module)
    return sinks


class _OrderImportance(tp.importance.Importance):
    """Free importance for the width search (widths do not depend on which channels go)."""

    def __call__(self, group: tp.dependency.Group, **_: object) -> Tensor:
        return torch.arange(len(group[0].idxs), 0, -1, dtype=torch.float64)


def _shot_schedule(steps: int) -> Callable[[float, int], list[float]]:
    """Torch-Pruning scheduler of K-shot pruning: ratios ``0, r/K, r/(K-1), ..., r`` (``main.prune.shot_rates``)."""
    def schedule(ratio: float, _steps: int) -> list[float]:
        return [0.0] + [ratio / (steps - s) for s in range(steps)]
    return schedule


def _resolve_modules(model: nn.Module, layers: Sequence[nn.Module | str] | None) -> list[nn.Module]:
    if not layers:
        return []
    named = dict(model.named_modules())
    out = []
    for layer in layers:
        if isinstance(layer, str):
            if layer not in named:
                raise GenericModelError(f"no layer named {layer!r} in the model")
            out.append(named[layer])
        else:
            out.append(layer)
    return out


def _tiny_layer_ratios(model: nn.Module, ratio: float, ignored: Sequence[nn.Module]) -> dict[nn.Module, float]:
    """Ratios that keep >= 1 channel in layers where ``int(N * (1 - ratio))`` would be 0."""
    out: dict[nn.Module, float] = {}
    for m in model.modules():
        if isinstance(m, _ROOT_TYPES) and m not in ignored:
            n = m.out_channels if isinstance(m, nn.modules.conv._ConvNd) else m.out_features
            if n > 1 and int(n * (1 - ratio)) < 1:
                out[m] = 1.0 - 1.5 / n
    return out


def _make_pruner(model: nn.Module, example_inputs: Tensor, importance: tp.importance.Importance, *,
                 ratio: float, ratio_dict: Mapping[nn.Module, float] | None, steps: int,
                 schedule: Callable[[float, int], list[float]], ignored: Sequence[nn.Module],
                 only_listed: bool = False) -> tuple[tp.pruner.BasePruner, list[nn.Module]]:
    """A local BasePruner that never prunes the model's output layers (they are added to its ignored layers).

    ``only_listed``: prune only the groups holding a layer of ``ratio_dict`` with a ratio > 0.
    """
    try:
        pruner = tp.pruner.BasePruner(
            model, example_inputs, importance=importance, global_pruning=False, pruning_ratio=ratio,
            pruning_ratio_dict=dict(ratio_dict) if ratio_dict else None, iterative_steps=steps,
            iterative_pruning_ratio_scheduler=schedule, ignored_layers=list(ignored))
    except Exception as exc:  # noqa: BLE001 - tracing failures are one line
        raise GenericModelError(f"torch-pruning {tp_version()} cannot trace the model on a "
                                f"{list(example_inputs.shape)} input: {first_line(exc)}") from None
    sinks = output_layers(pruner.DG, ignored)
    # BasePruner keeps its ignored modules in a plain list read at every step; the output layers can only be
    # found once its graph exists, so they join the list here (before the first step).
    pruner.ignored_layers.extend(m for s in sinks for m in s.modules())
    if only_listed:  # per-layer ratios: groups without a listed layer are neither ranked nor pruned
        listed = {m for m, r in (ratio_dict or {}).items() if r > 0}
        for group in pruner.DG.get_all_groups(ignored_layers=pruner.ignored_layers, root_module_types=_ROOT_TYPES):
            outs = [dep.target.module for dep, _ in group if pruner.DG.is_out_channel_pruning_fn(dep.handler)]
            if not listed.intersection(outs):
                pruner.ignored_layers.extend(m for m in outs if isinstance(m, _ROOT_TYPES))
    return pruner, sinks


def _search_ratio(model: nn.Module, example_inputs: Tensor, metric: str, target: float,
                  ignored: Sequence[nn.Module], resolution: float, max_ratio: float,
                  base: tuple[int, int]) -> float:
    """Smallest multiple of ``resolution`` (<= max_ratio) whose uniform widths remove ``target`` of the metric."""
    scratch = copy.deepcopy(model)
    scratch_ignored = _resolve_modules(scratch, [_name_of(model, m) for m in ignored])
    steps = math.ceil(max_ratio / resolution - 1e-9)
    grid = [0.0] + [min(max_ratio, round(resolution * k, 10)) for k in range(1, steps + 1)]
    pruner, _ = _make_pruner(scratch, example_inputs, _OrderImportance(), ratio=max_ratio, ratio_dict=None,
                             steps=len(grid) - 1, schedule=lambda r, s: grid, ignored=scratch_ignored)
    index = 0 if metric == "flops" else 1
    reduction = 0.0
    for step in range(1, len(grid)):
        pruner.step()
        reduction = 1.0 - count_ops(scratch, example_inputs)[index] / base[index]
        if reduction >= target - 1e-12:
            return grid[step]
    raise GenericModelError(f"a {target:.1%} {metric} reduction is out of reach: removing {max_ratio:.0%} of every "
                            f"prunable group's channels removes {reduction:.1%}")


def _name_of(model: nn.Module, module: nn.Module) -> str:
    for name, m in model.named_modules():
        if m is module:
            return name
    raise GenericModelError(f"{type(module).__name__} is not a submodule of the model")


def _layer_widths(model: nn.Module) -> dict[str, int]:
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.conv._ConvNd):
            out[name] = int(m.out_channels)
        elif isinstance(m, nn.Linear):
            out[name] = int(m.out_features)
    return out


def _plain_history(history: Sequence[Sequence[Any]]) -> list[list[Any]]:
    return [[str(name), bool(is_out), [int(i) for i in idxs]] for name, is_out, idxs in history]


def _track_kept(group: tp.dependency.Group, kept: dict[str, list[int]], names: Mapping[nn.Module, str]) -> None:
    """Drop the channels a group is about to remove from ``kept`` (original out-channel indices per layer)."""
    for dep, idxs in group:
        module = dep.target.module
        if isinstance(module, _ROOT_TYPES) and group._DG.is_out_channel_pruning_fn(dep.handler):
            name = names[module]
            gone = set(int(i) for i in idxs)
            kept[name] = [c for p, c in enumerate(kept[name]) if p not in gone]


def prune_generic(model: nn.Module, example_inputs: Tensor, *, criterion: str = "VBD_dis",
                  strategy: str = "min_sum", flops_target: float | None = None, params_target: float | None = None,
                  channel_ratio: float | Mapping[str, float] | None = None,
                  ignored_layers: Sequence[nn.Module | str] | None = None, iterative_steps: int = 1, seed: int = 0,
                  search_resolution: float = 0.01, max_ratio: float = 0.9,
                  batches: Sequence[Batch] | None = None, cache: RankCache | None = None) -> tuple[nn.Module, dict]:
    """Prune a copy of ``model`` with CORING to a target; returns ``(pruned_model, record)``.

    ``batches`` of ``(images, labels)`` feed the data-driven criteria (``hrank``, ``chip``, ``taylor``); ``cache``
    (a ``RankCache``) answers and stores the weight-based ranks of every group.

    Exactly one of: ``flops_target`` / ``params_target`` (fraction of MACs / parameters to remove, counted by
    :func:`count_ops` on ``example_inputs``), ``channel_ratio`` (fraction of channels removed from every
    prunable group, or a ``{layer name: fraction}`` mapping that prunes only the named layers' groups). The
    model's output layers and ``ignored_layers`` (modules or names) keep their output channels.
    ``iterative_steps`` K > 1 prunes in K shots at ``r/K, r/(K-1), ..., r`` of the original widths, re-ranking
    each time; K = 1 ranks every group on the original weights. The record holds plain values only (pruning
    history, widths, the original out-channel indices each pruned conv/linear layer ``kept``, counts) for
    :func:`save_generic`. ``model`` itself is not modified.
    """
    given = [x is not None for x in (flops_target, params_target, channel_ratio)]
    if sum(given) != 1:
        raise GenericModelError("give exactly one of flops_target, params_target, channel_ratio")
    for value, what in ((flops_target, "flops_target"), (params_target, "params_target")):
        if value is not None and not 0.0 < float(value) < 1.0:
            raise GenericModelError(f"{what} must be a fraction in (0, 1), got {value}")
    if iterative_steps < 1:
        raise GenericModelError(f"iterative_steps must be >= 1, got {iterative_steps}")
    importance = CoringImportance(criterion, strategy, seed=seed, batches=batches, cache=cache)  # validates names
    was_training = model.training
    work = copy.deepcopy(model).eval()
    device = next(work.parameters()).device
    example_inputs = example_inputs.to(device)
    ignored = _resolve_modules(work, [(_name_of(model, m) if isinstance(m, nn.Module) else m)
                                      for m in (ignored_layers or [])])
    start = time.perf_counter()
    with torch.no_grad():
        base = count_ops(work, example_inputs)

    ratio_dict: dict[nn.Module, float] = {}
    if isinstance(channel_ratio, Mapping):
        named = dict(work.named_modules())
        for name, value in channel_ratio.items():
            if name not in named:
                raise GenericModelError(f"no layer named {name!r} in the model")
            if not 0.0 <= float(value) < 1.0:
                raise GenericModelError(f"channel ratio of {name!r} must be in [0, 1), got {value}")
            ratio_dict[named[name]] = float(value)
        ratio = 0.0
    elif channel_ratio is not None:
        ratio = float(channel_ratio)
        if not 0.0 <= ratio < 1.0:
            raise GenericModelError(f"channel_ratio must be in [0, 1), got {channel_ratio}")
    else:
        metric, target = ("flops", flops_target) if flops_target is not None else ("params", params_target)
        ratio = _search_ratio(work, example_inputs, metric, float(target), ignored, search_resolution, max_ratio,
                              base)
    if not ratio_dict:
        ratio_dict = _tiny_layer_ratios(work, ratio, ignored)

    original_widths = _layer_widths(work)
    pruner, sinks = _make_pruner(work, example_inputs, importance, ratio=ratio, ratio_dict=ratio_dict,
                                 steps=iterative_steps, schedule=_shot_schedule(iterative_steps), ignored=ignored,
                                 only_listed=isinstance(channel_ratio, Mapping))
    names = {m: n for n, m in work.named_modules()}
    kept = {name: list(range(width)) for name, width in original_widths.items()}
    with torch.no_grad():
        for _ in range(iterative_steps):
            for group in pruner.step(interactive=True):
                _track_kept(group, kept, names)
                group.prune()
        after = count_ops(work, example_inputs)
        work(example_inputs)  # the pruned model must still run
    work.train(was_training)
    widths = _layer_widths(work)
    record = {
        "format": _FORMAT,
        "torch_pruning": tp_version(),
        "input_shape": [int(s) for s in example_inputs.shape],
        "criterion": importance.criterion,
        "strategy": importance.strategy,
        "seed": int(seed),
        "iterative_steps": int(iterative_steps),
        "channel_ratio": float(ratio) if not isinstance(channel_ratio, Mapping)
        else {str(k): float(v) for k, v in channel_ratio.items()},
        "flops_target": None if flops_target is None else float(flops_target),
        "params_target": None if params_target is None else float(params_target),
        "ignored_layers": [names[m] for m in ignored],
        "output_layers": [names[m] for m in sinks],
        "history": _plain_history(pruner.pruning_history()),
        "original_widths": original_widths,
        "widths": widths,
        "kept": {name: idx for name, idx in kept.items() if len(idx) != original_widths[name]
                 and len(idx) == widths.get(name)},
        "flops_before": base[0], "params_before": base[1], "flops_after": after[0], "params_after": after[1],
        "seconds": time.perf_counter() - start,
    }
    return work, record
