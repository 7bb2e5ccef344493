"""CORING for any CNN: torchvision models and user modules pruned through Torch-Pruning's dependency graph.

    python main/prune.py --model torchvision:resnet18 --flops_target 0.5 --criterion VBD_dis \
        --pretrain_dir resnet18_cifar.pth.tar --dataset cifar10 --job_dir runs/r18
    python main/prune.py --model path/to/net.py:MyNet --params_target 0.4 --dataset digits --job_dir runs/mynet
    python main/finetune.py --pretrained runs/r18/pruned.pth.tar --dataset cifar10 --job_dir runs/r18_ft

* :func:`load_user_model` builds ``torchvision:NAME`` (``weights=None``) or ``path/to/file.py:ClassName``.
* :func:`prune_generic` ranks every channel group with :class:`coring.coring_importance.CoringImportance` and
  prunes with ``torch_pruning.pruner.BasePruner``: **uniform (local) pruning**, every group loses the same
  fraction ``r`` of its channels (CORING saliencies are removal orders inside a group, not comparable across
  groups, and the paper prunes per layer). For a FLOP or parameter target, ``r`` is the smallest multiple of
  ``search_resolution`` whose widths meet it, found by stepping a scratch copy through the pruner's iterative
  steps (widths depend on ``r`` only, so the scratch copy uses a free importance); the real model is then
  pruned once at ``r`` (one shot: all groups ranked on the original weights before any is pruned) or in
  ``iterative_steps`` shots at ``r/K, r/(K-1), ..., r`` (each ranked on the partly pruned weights).
  Layers whose output channels feed no other layer (the classifier head) are never pruned.
* :func:`save_generic` writes the pruned weights plus the Torch-Pruning history (layer name, out/in, removed
  indices), plain values only; :func:`rebuild_from_checkpoint` rebuilds the unpruned source model, replays the
  history on a freshly traced dependency graph and loads the weights strictly. ``torch.load(weights_only=True)``
  reads the file. A checkpoint never names code to run: ``torchvision:NAME`` sources are rebuilt as recorded,
  a user module only from the ``--model path/to/file.py:ClassName`` the user passes (which executes that file).
"""
from __future__ import annotations

import copy
import importlib.util
import inspect
import math
import re
import sys
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch_pruning as tp
from torch import Tensor, nn

from coring.checkpoint import STATE_DICT_KEYS, extract_state_dict, save_checkpoint
from coring.coring_importance import CoringImportance, is_depthwise
from coring.feature_criteria import Batch

__all__ = [
    "GenericModelError",
    "NOT_CNN_PREFIXES",
    "check_forward",
    "count_ops",
    "load_state_strict",
    "load_user_model",
    "model_label",
    "output_layers",
    "prune_generic",
    "rebuild_from_checkpoint",
    "generic_checkpoint", "save_generic",
]

TORCHVISION_PREFIX = "torchvision:"
#: torchvision classification families that are transformers, not CNNs: CORING ranks conv filters, and
#: Torch-Pruning needs per-model attention-head settings for them.
NOT_CNN_PREFIXES: tuple[str, ...] = ("vit_", "swin_", "maxvit_")
#: torchvision models built without their training-only auxiliary heads (fine-tuning uses one output).
_NO_AUX = ("googlenet", "inception_v3")
_ROOT_TYPES = (nn.modules.conv._ConvNd, nn.Linear)
_FORMAT = 1  # version of the 'generic' checkpoint entry


def _tp_version() -> str:
    """The installed torch-pruning distribution's version (its ``__version__`` string lags behind)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("torch-pruning")
    except PackageNotFoundError:  # pragma: no cover - a source checkout
        return str(getattr(tp, "__version__", "unknown"))


class GenericModelError(ValueError):
    """A bad ``--model`` spec, a model that cannot be built, traced or rebuilt (one-line message)."""


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    line = text.splitlines()[0].strip() if text else ""
    return f"{type(exc).__name__}: {line}" if line else type(exc).__name__


# ---------------------------------------------------------------------------------------------- models
def _torchvision_names() -> list[str]:
    import torchvision

    return list(torchvision.models.list_models(module=torchvision.models))


def model_label(spec: str) -> str:
    """A short file-name-safe label of a spec: ``generic_resnet18``, ``generic_MyNet``."""
    name = spec[len(TORCHVISION_PREFIX):] if spec.startswith(TORCHVISION_PREFIX) else spec.rsplit(":", 1)[-1]
    return "generic_" + re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def _split_spec(spec: str) -> tuple[str, str]:
    if not isinstance(spec, str) or ":" not in spec or spec.startswith(":") or spec.endswith(":"):
        raise GenericModelError(f"bad --model {spec!r}: expected 'torchvision:NAME' or 'path/to/file.py:ClassName'")
    source, name = spec.rsplit(":", 1)
    return source, name


def _build_torchvision(name: str, num_classes: int | None) -> nn.Module:
    import torchvision

    names = _torchvision_names()
    if name not in names:
        close = [n for n in names if n.startswith(name[:4])][:6]
        hint = f" (close: {', '.join(close)})" if close else ""
        raise GenericModelError(f"unknown torchvision classification model {name!r}{hint}; "
                                f"see torchvision.models.list_models()")
    kwargs: dict[str, Any] = {"weights": None}
    if num_classes is not None:
        kwargs["num_classes"] = int(num_classes)
    if name in _NO_AUX:
        kwargs.update(aux_logits=False, init_weights=True)
    try:
        return torchvision.models.get_model(name, **kwargs)
    except Exception as exc:  # noqa: BLE001 - one line for the command line
        raise GenericModelError(f"cannot build torchvision:{name}: {_first_line(exc)}") from None


def _import_file(path: Path) -> Any:
    key = "coring_user_model_" + re.sub(r"\W", "_", str(path.resolve()))
    spec = importlib.util.spec_from_file_location(key, path)
    if spec is None or spec.loader is None:
        raise GenericModelError(f"cannot import {str(path)!r}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[key] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # noqa: BLE001
        sys.modules.pop(key, None)
        raise GenericModelError(f"cannot import {str(path)!r}: {_first_line(exc)}") from None
    return module


def _build_user_class(path_text: str, class_name: str, num_classes: int | None) -> nn.Module:
    path = Path(path_text)
    if not path.is_file():
        raise GenericModelError(f"model file not found: {path_text!r}")
    if path.suffix != ".py":
        raise GenericModelError(f"model file {path_text!r} is not a .py file")
    module = _import_file(path)
    cls = getattr(module, class_name, None)
    if cls is None:
        found = sorted(n for n, v in vars(module).items()
                       if inspect.isclass(v) and issubclass(v, nn.Module) and v.__module__ == module.__name__)
        hint = f" (nn.Module classes there: {', '.join(found)})" if found else " (it defines no nn.Module class)"
        raise GenericModelError(f"{path_text!r} has no class {class_name!r}{hint}")
    if not (inspect.isclass(cls) and issubclass(cls, nn.Module)):
        raise GenericModelError(f"{path_text}:{class_name} is not an nn.Module subclass")
    try:
        params = inspect.signature(cls).parameters
    except (TypeError, ValueError):
        params = {}
    takes_classes = "num_classes" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())
    try:
        return cls(num_classes=int(num_classes)) if num_classes is not None and takes_classes else cls()
    except Exception as exc:  # noqa: BLE001
        raise GenericModelError(f"cannot instantiate {path_text}:{class_name}: {_first_line(exc)}") from None


def load_user_model(spec: str, num_classes: int | None = None) -> nn.Module:
    """Build ``torchvision:NAME`` (random weights) or ``path/to/file.py:ClassName``.

    A file spec imports, and so executes, that file (relative paths resolve against the working directory): pass
    only specs the user gave. A user class is called with ``num_classes=`` when it accepts that argument and
    ``num_classes`` is given, else with no arguments. googlenet and inception_v3 are built without their
    auxiliary heads. Errors are one-line :class:`GenericModelError`.
    """
    source, name = _split_spec(spec)
    if source == TORCHVISION_PREFIX[:-1]:
        return _build_torchvision(name, num_classes)
    return _build_user_class(source, name, num_classes)


# ---------------------------------------------------------------------------------------------- pruning
def count_ops(model: nn.Module, example_inputs: Tensor) -> tuple[int, int]:
    """(MACs, params) by ``torch_pruning.utils.count_ops_and_params`` (the counter the targets use).

    A model that no longer runs (a forward that hard-codes channel counts, once pruned) is a one-line
    `GenericModelError` naming the layer where it fails (:func:`check_forward`).
    """
    try:
        flops, params = tp.utils.count_ops_and_params(model, example_inputs)
    except Exception as exc:  # noqa: BLE001 - located and re-raised in one line
        check_forward(model, example_inputs)
        raise GenericModelError(f"cannot count the operations of the model: {_first_line(exc)}") from None
    return int(flops), int(params)


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
            f"the model does not run on a {list(example_inputs.shape)} input: {place}: {_first_line(exc)}; a forward "
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
        raise GenericModelError(f"torch-pruning {_tp_version()} cannot trace the model on a "
                                f"{list(example_inputs.shape)} input: {_first_line(exc)}") from None
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
                  batches: Sequence[Batch] | None = None) -> tuple[nn.Module, dict]:
    """Prune a copy of ``model`` with CORING to a target; returns ``(pruned_model, record)``.

    ``batches`` of ``(images, labels)`` feed the data-driven criteria (``hrank``, ``chip``, ``taylor``).

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
    importance = CoringImportance(criterion, strategy, seed=seed, batches=batches)  # validates the names first
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
        "torch_pruning": _tp_version(),
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


# ---------------------------------------------------------------------------------------------- saving
def _plain(value: Any) -> Any:
    """Check that ``value`` holds only what ``torch.load(weights_only=True)`` reads back as plain Python."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"cannot store a {type(value).__name__} in a generic checkpoint record")


def generic_checkpoint(model: nn.Module, record: Mapping[str, Any], meta: Mapping[str, Any]) -> dict:
    """``{'state_dict', 'generic': record + source, 'arch', 'num_classes', **meta}``: what rebuilds a pruned CNN.

    ``meta`` (or ``record``) must give ``source`` (the ``--model`` spec) and ``num_classes``; a user file's
    absolute path is kept too, as a hint for the error that asks for ``--model`` when the checkpoint is loaded
    (a user module is never imported from a checkpoint). No object is pickled: the dict saves and loads with
    ``torch.load(weights_only=True)``.
    """
    meta = dict(meta)
    source = meta.pop("source", None) or record.get("source")
    if source is None:
        raise GenericModelError("a generic checkpoint needs the model's 'source' spec in meta")
    num_classes = meta.pop("num_classes", None) or record.get("num_classes")
    generic = dict(record, source=str(source), num_classes=None if num_classes is None else int(num_classes))
    src, _ = _split_spec(str(source))
    if src != TORCHVISION_PREFIX[:-1]:
        generic["source_path"] = str(Path(src).resolve())
    return {"state_dict": _cpu_state_dict(model), "generic": _plain(generic), "arch": model_label(str(source)),
            "num_classes": generic["num_classes"], "compress_rate": None, **_plain(meta)}


def save_generic(path: str | Path, model: nn.Module, record: Mapping[str, Any], meta: Mapping[str, Any]) -> dict:
    """Write :func:`generic_checkpoint` atomically to ``path``; returns the saved dict."""
    checkpoint = generic_checkpoint(model, record, meta)
    save_checkpoint(checkpoint, path)
    return checkpoint


def _cpu_state_dict(model: nn.Module) -> OrderedDict[str, Tensor]:
    """The state dict on the CPU, with its per-module ``_metadata`` (versions: MNASNet refuses to load without)."""
    source = model.state_dict()
    state = OrderedDict((k, v.detach().to("cpu").contiguous()) for k, v in source.items())
    state._metadata = copy.deepcopy(getattr(source, "_metadata", OrderedDict()))  # type: ignore[attr-defined]
    return state


def load_state_strict(model: nn.Module, checkpoint: Mapping[str, Any]) -> None:
    """Load a checkpoint's weights strictly, keeping the state dict's ``_metadata``.

    Keys and shapes are checked first (one-line `GenericModelError` naming the first bad key and both shapes);
    a state dict without metadata gets the model's own (``coring.checkpoint.load_weights`` drops it, which
    torchvision's MNASNet refuses).
    """

    state = OrderedDict(extract_state_dict(checkpoint))
    raw = next((checkpoint[k] for k in STATE_DICT_KEYS if isinstance(checkpoint.get(k), Mapping)), checkpoint)
    target = model.state_dict()
    for key, value in target.items():
        if key not in state and not key.endswith("num_batches_tracked"):
            raise GenericModelError(f"checkpoint does not fit the model: '{key}' (shape {list(value.shape)}) is "
                                    f"missing from the checkpoint")
        if key in state and state[key].shape != value.shape:
            raise GenericModelError(f"checkpoint does not fit the model: '{key}' has shape {list(state[key].shape)} "
                                    f"in the checkpoint but {list(value.shape)} in the model")
    extra = [k for k in state if k not in target]
    if extra:
        raise GenericModelError(f"checkpoint does not fit the model: '{extra[0]}' is not in the model")
    metadata = getattr(raw, "_metadata", None) or getattr(target, "_metadata", None)
    if metadata is not None:
        state._metadata = metadata  # type: ignore[attr-defined]
    result = model.load_state_dict(state, strict=False)
    bad = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")] + list(result.unexpected_keys)
    if bad:  # unreachable after the checks above; a guard against a custom _load_from_state_dict
        raise GenericModelError(f"checkpoint does not fit the model: '{bad[0]}' was not loaded")


def _model_source(generic: Mapping[str, Any], model_spec: str | None) -> str:
    """The ``--model`` spec that rebuilds a generic checkpoint's unpruned model.

    ``torchvision:NAME`` sources are rebuilt as recorded. A user module is rebuilt only from ``model_spec`` (the
    user's ``--model path/to/file.py:ClassName``, whose class must be the recorded one): a checkpoint is data, and
    loading it never imports a file it names. The recorded path only appears in the error message, as a hint.
    """
    recorded = str(generic["source"])
    src, name = _split_spec(recorded)
    if src == TORCHVISION_PREFIX[:-1]:
        if model_spec is not None and model_spec != recorded:
            raise GenericModelError(f"--model {model_spec!r} does not match the checkpoint, which was pruned from "
                                    f"{recorded} (leave --model out: torchvision models are rebuilt as recorded)")
        return recorded
    hint = str(generic.get("source_path") or src)
    if model_spec is None:
        raise GenericModelError(
            f"the checkpoint holds a network pruned from the user class {name!r} (saved from {hint!r}); loading a "
            f"checkpoint never imports a file it names: pass --model path/to/file.py:{name} to rebuild it, e.g. "
            f"--model {hint}:{name} if you trust that file (it is executed)")
    given_src, given_name = _split_spec(model_spec)
    if given_src == TORCHVISION_PREFIX[:-1] or given_name != name:
        raise GenericModelError(f"--model {model_spec!r} does not match the checkpoint: it was pruned from the "
                                f"user class {name!r} (saved from {hint!r}); pass --model path/to/file.py:{name}")
    return model_spec


def rebuild_from_checkpoint(checkpoint: Mapping[str, Any], model_spec: str | None = None) -> nn.Module:
    """The pruned model of a :func:`save_generic` checkpoint, weights loaded strictly.

    Builds the unpruned source model (``torchvision:NAME`` as recorded; a user module only from ``model_spec``,
    the ``--model path/to/file.py:ClassName`` the user passes, which executes that file: the file may have moved,
    the class name must match), traces it on the recorded input shape, replays the Torch-Pruning history
    (``DependencyGraph.load_pruning_history``), loads the state dict strictly (:func:`load_state_strict`) and runs
    it once (:func:`check_forward`). Every failure is a one-line :class:`GenericModelError`.
    """
    generic = checkpoint.get("generic") if isinstance(checkpoint, Mapping) else None
    if not isinstance(generic, Mapping):
        raise GenericModelError("the checkpoint has no 'generic' entry (it was not written by save_generic)")
    missing = [key for key in ("source", "input_shape", "history") if key not in generic]
    if missing:
        raise GenericModelError(f"the checkpoint's 'generic' record lacks {', '.join(map(repr, missing))}")
    source = _model_source(generic, model_spec)
    model = load_user_model(source, generic.get("num_classes"))
    model.eval()
    example = torch.randn(*generic["input_shape"], generator=torch.Generator().manual_seed(0))
    try:
        dg = tp.DependencyGraph().build_dependency(model, example_inputs=example, verbose=False)
        dg.load_pruning_history(_plain_history(generic["history"]))
    except Exception as exc:  # noqa: BLE001
        raise GenericModelError(f"cannot replay the pruning of {source} (saved with torch-pruning "
                                f"{generic.get('torch_pruning')}, running {_tp_version()}): {_first_line(exc)}"
                                ) from None
    widths = _layer_widths(model)
    for layer, width in generic.get("widths", {}).items():
        if widths.get(layer) != width:
            raise GenericModelError(f"replayed pruning gives {layer!r} {widths.get(layer)} channels, the checkpoint "
                                    f"recorded {width}")
    if "state_dict" in checkpoint or "model" in checkpoint:
        load_state_strict(model, checkpoint)
    check_forward(model, example)
    if not hasattr(model, "arch"):
        model.arch = model_label(str(generic["source"]))
    return model
