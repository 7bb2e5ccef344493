"""What rebuilds a pruned CNN: the checkpoint record, the strict loader, the rebuild (history replayed)."""
from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch_pruning as tp
from torch import Tensor, nn

from coring.checkpoint import (
    CheckpointError,
    first_line,
    load_weights,
    save_checkpoint,
)
from coring.generic.common import TORCHVISION_PREFIX, GenericModelError, tp_version
from coring.generic.models import _split_spec, load_user_model, model_label
from coring.generic.pruning import _layer_widths, _plain_history, check_forward

__all__ = ['generic_checkpoint', 'load_state_strict', 'rebuild_from_checkpoint', 'save_generic']


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
    """``coring.checkpoint.load_weights`` (strict, checks before copying, keeps the state dict's ``_metadata``), its
    errors raised as the generic engine's one-line `GenericModelError`."""
    try:
        load_weights(model, checkpoint)
    except CheckpointError as error:
        raise GenericModelError(str(error)) from None


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
                                f"{generic.get('torch_pruning')}, running {tp_version()}): {first_line(exc)}"
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
