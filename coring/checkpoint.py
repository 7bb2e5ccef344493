"""Checkpoint reading and writing (docs/design.md, "Checkpoints and job directories").

Reads every format the paper's code wrote: ``{'state_dict', 'epoch', 'best_top1_acc', 'optimizer'}`` dicts (with
``best_top1_acc`` a tensor or a numpy scalar, ImageNet runs adding ``best_top5_acc``), bare state dicts,
torchvision-reference dicts with a ``'model'`` key, ``module.`` prefixes of DataParallel/DDP and the
``total_ops``/``total_params`` buffers thop leaves on a model.

* Loading always uses ``torch.load(weights_only=True)``; the numpy scalar, array and dtype constructors that old
  checkpoints hold (under numpy 1's ``numpy.core`` names and numpy 2's ``numpy._core``) and ``argparse.Namespace``
  are allowed explicitly. Anything else is refused with a one-line `CheckpointError`; there is no fallback to
  ``weights_only=False``.
* `load_weights` is strict: it checks every key and shape before copying anything, so a checkpoint that does not
  fit leaves the model untouched and the error names the first bad key and both shapes. The one tolerance is a
  missing BatchNorm ``num_batches_tracked`` (absent from pre-0.4.1 files; it does not affect the output).
* `save_checkpoint` writes a temporary file in the target's directory, fsyncs it and renames it over the target,
  so a crash never leaves a truncated ``checkpoint.pth.tar``.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import pickle
import pickletools
import re
import shutil
import tempfile
import warnings
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
from torch import Tensor, nn

THOP_BUFFERS = ("total_ops", "total_params")
WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DataParallel / DDP, torch.compile
STATE_DICT_KEYS = ("state_dict", "model")
_HEAVY_KEYS = frozenset({"state_dict", "model", "optimizer", "lr_scheduler", "scheduler", "scaler", "model_ema"})


class CheckpointError(RuntimeError):
    """A checkpoint cannot be read or does not fit the model (one-line message)."""


class CheckpointWriteError(CheckpointError, OSError):
    """A file could not be written (full disk, read-only directory): one line naming it; still an ``OSError``."""


def _os_error_in(error: BaseException) -> OSError | None:
    """``error`` or the OSError behind it (``torch.save`` reports a failed write as a RuntimeError)."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, OSError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def _write_error(path: Path, error: OSError, *, earlier: bool) -> CheckpointWriteError:
    reason = error.strerror or str(error) or type(error).__name__
    tail = "; the earlier file is left as it was" if earlier else ""
    out = CheckpointWriteError(f"cannot write '{path}': {reason}{tail}")
    out.errno = error.errno
    return out


def _numpy_safe_globals() -> list[Any]:
    """The numpy (and argparse) objects a checkpoint may hold, under their numpy 1 and numpy 2 names."""
    from numpy._core import multiarray

    allowed: list[Any] = [np.dtype, np.ndarray, multiarray.scalar, multiarray._reconstruct, argparse.Namespace]
    allowed += [(multiarray.scalar, "numpy.core.multiarray.scalar")]
    allowed += [(multiarray._reconstruct, "numpy.core.multiarray._reconstruct")]
    allowed += [getattr(np.dtypes, name) for name in dir(np.dtypes) if name.endswith("DType")]
    return allowed


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, without terminal colour codes, prefixed by its type."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip()
    line = text.splitlines()[0].strip() if text else ""
    return f"{type(exc).__name__}: {line}" if line else type(exc).__name__


_GLOBAL_REFUSED = re.compile(r"GLOBAL [\w.]+|Unsupported class [\w.]+")


def _is_pickle_stream(path: Path) -> bool:
    """Whether ``path`` opens with a well-formed pickle (opcodes parsed, nothing executed): a plain pickle the
    weights-only unpickler refuses, rather than damaged bytes."""
    if zipfile.is_zipfile(path):
        return True  # torch's format; its data.pkl was refused, not damaged
    try:
        with open(path, "rb") as f:
            for _ in pickletools.genops(f):
                pass
    except Exception:  # noqa: BLE001 - any parse failure means damaged bytes
        return False
    return True


def _refused(exc: pickle.UnpicklingError) -> str:
    """What the weights-only unpickler refused, e.g. ``GLOBAL posix.system`` or ``pickle opcode 149``."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    found = re.search(r"GLOBAL ([\w.]+)", text) or re.search(r"Unsupported class ([\w.]+)", text)
    if found:
        return f"GLOBAL {found.group(1)}"
    operand = re.search(r"Unsupported operand (\d+)", text)
    return f"pickle opcode {operand.group(1)}" if operand else "a pickle instruction torch.load refuses"


def load_checkpoint(path: str | Path, map_location: Any = "cpu") -> dict:
    """``torch.load(path, weights_only=True)`` with numpy scalars allowed; errors are one-line `CheckpointError`s."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"'{path}' is a directory, not a checkpoint file")
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: '{path}'")
    try:
        with torch.serialization.safe_globals(_numpy_safe_globals()), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. torch's multi-line note on a pickle protocol: errors say it all
            obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:  # the weights-only unpickler met something it does not allow
        if not _GLOBAL_REFUSED.search(str(exc)) and not _is_pickle_stream(path):
            raise CheckpointError(f"'{path}' is not a readable checkpoint: damaged data (not a pickle stream)"
                                  ) from None
        raise CheckpointError(
            f"'{path}' holds objects that are not allowed for safe loading (torch.load(weights_only=True) refused "
            f"{_refused(exc)}); it was not loaded: re-save it as a dict of tensors and plain values"
        ) from None
    except Exception as exc:  # noqa: BLE001 - any failure to read is one error type for the caller
        raise CheckpointError(f"'{path}' is not a readable checkpoint: {first_line(exc)}") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"'{path}' holds a {type(obj).__name__}, not a dict or a state dict")
    return obj


def _is_tensor_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and all(isinstance(v, Tensor) for v in obj.values())


def _state_dict_of(obj: Any) -> Mapping[str, Any]:
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"expected a checkpoint dict or a state dict, got {type(obj).__name__}")
    for key in STATE_DICT_KEYS:
        if key in obj and isinstance(obj[key], Mapping):
            return obj[key]
    if _is_tensor_dict(obj):
        return obj
    raise CheckpointError(
        f"the checkpoint has no state dict: no 'state_dict' or 'model' entry among keys {sorted(map(str, obj))}"
    )


def extract_state_dict(obj: Any) -> dict[str, Tensor]:
    """The state dict of a checkpoint: ``obj['state_dict']``, ``obj['model']`` or ``obj`` itself.

    thop's ``total_ops``/``total_params`` buffers are dropped; a ``module.`` (or ``_orig_mod.``) prefix is
    stripped when every key carries it (so a real submodule called ``module`` is never mangled).
    """
    raw = _state_dict_of(obj)
    state: dict[str, Tensor] = {}
    for key, value in raw.items():
        if not isinstance(value, Tensor):
            raise CheckpointError(f"state dict entry '{key}' is a {type(value).__name__}, not a tensor")
        if str(key).rsplit(".", 1)[-1] in THOP_BUFFERS:
            continue
        state[str(key)] = value
    stripped = True
    while stripped and state:
        stripped = False
        for prefix in WRAPPER_PREFIXES:
            if all(k.startswith(prefix) for k in state):
                state = {k[len(prefix) :]: v for k, v in state.items()}
                stripped = True
    return state


def _to_plain(value: Any) -> Any:
    if isinstance(value, Tensor) and value.numel() == 1:
        return value.item()
    if isinstance(value, np.generic) or (isinstance(value, np.ndarray) and value.size == 1):
        return value.item()
    return value


def checkpoint_metadata(obj: Any) -> dict:
    """The non-weight entries of a checkpoint dict (``epoch``, ``best_top1_acc``, ...) as plain Python values.

    One-element tensors and numpy scalars become Python numbers; the optimizer, scheduler and scaler states are
    left out. A bare state dict has no metadata: ``{}``.
    """
    if not isinstance(obj, Mapping) or not any(k in obj and isinstance(obj[k], Mapping) for k in STATE_DICT_KEYS):
        return {}
    return {str(k): _to_plain(v) for k, v in obj.items() if k not in _HEAVY_KEYS}


def _shape(t: Tensor) -> str:
    return str(list(t.shape))


def _check_fits(model_state: Mapping[str, Tensor], state: Mapping[str, Tensor]) -> None:
    """Raise `CheckpointError` on the first missing key or shape mismatch (model order), then unexpected keys."""
    missing = [k for k in model_state if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in model_state]
    counts = f"({len(missing)} missing, {len(unexpected)} unexpected keys)"
    for key, target in model_state.items():
        if key in state:
            if state[key].shape != target.shape:
                raise CheckpointError(
                    f"checkpoint does not fit the model: '{key}' has shape {_shape(state[key])} in the checkpoint "
                    f"but {_shape(target)} in the model (is --compress_rate right?)"
                )
        elif key in missing:
            hint = f"; the checkpoint's first key is '{next(iter(state))}'" if state else ""
            raise CheckpointError(
                f"checkpoint does not fit the model: '{key}' (shape {_shape(target)} in the model) is missing from "
                f"the checkpoint {counts}{hint}"
            )
    if unexpected:
        key = unexpected[0]
        raise CheckpointError(
            f"checkpoint does not fit the model: '{key}' (shape {_shape(state[key])} in the checkpoint) is not in "
            f"the model {counts}"
        )


def _unwrap(model: nn.Module) -> nn.Module:
    while isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        model = model.module
    return getattr(model, "_orig_mod", model)


def load_weights(model: nn.Module, source: str | Path | Mapping) -> dict:
    """Load a checkpoint (path or already-loaded dict) into ``model`` strictly; return its metadata.

    A DataParallel/DDP-wrapped model loads into its ``.module``. Every key and shape is checked first, so a
    checkpoint that does not fit raises `CheckpointError` (first bad key, both shapes) and changes nothing.
    """
    obj = load_checkpoint(source) if isinstance(source, (str, Path)) else source
    state = extract_state_dict(obj)
    target = _unwrap(model)
    model_state = target.state_dict()
    _check_fits(model_state, state)
    # Module versions (e.g. torchvision's MNASNet) are read from ``_metadata``: the checkpoint's own when it kept
    # them (a state dict saved by this toolkit does), else the model's.
    raw = next((obj[k] for k in STATE_DICT_KEYS if isinstance(obj, Mapping) and isinstance(obj.get(k), Mapping)), obj)
    metadata = getattr(raw, "_metadata", None) or getattr(model_state, "_metadata", None)
    state = collections.OrderedDict(state)
    state._metadata = metadata  # type: ignore[attr-defined]
    try:
        result = target.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # e.g. a dtype that cannot be copied
        raise CheckpointError(f"checkpoint does not fit the model: {first_line(exc)}") from None
    bad = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")] + list(result.unexpected_keys)
    if bad:  # unreachable after _check_fits, kept as a guard against a custom _load_from_state_dict
        raise CheckpointError(f"checkpoint does not fit the model: '{bad[0]}' was not loaded")
    return checkpoint_metadata(obj)


def _default_file_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


#: Suffix of ``atomic_write``'s temporary files (``.<name>.<random>.tmp`` beside the target).
TEMP_SUFFIX = ".tmp"


def remove_stale_temporaries(directory: str | Path) -> None:
    """Delete the temporary files a killed ``atomic_write`` left in ``directory``. Only for a directory no live
    writer uses (a locked job directory being resumed)."""
    for stale in Path(directory).glob(f".*{TEMP_SUFFIX}*"):
        stale.unlink(missing_ok=True)


def atomic_write(path: str | Path, write: Callable[[BinaryIO], None]) -> None:
    """Write a file atomically: ``write(f)`` into a temporary file in the same directory, fsync, ``os.replace``.

    The one writer behind checkpoints, copies of them and JSON records. If writing fails (a full disk, a
    read-only directory, an object that cannot be pickled), the temporary file is removed, an existing ``path``
    is left as it was, and an ``OSError`` (also one that ``torch.save`` wraps in a RuntimeError) comes back as a
    one-line ``CheckpointWriteError`` naming the path (a ``CheckpointError`` and an ``OSError``).
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    except OSError as error:
        raise _write_error(path, error, earlier=False) from None
    try:
        with os.fdopen(fd, "wb") as f:
            if hasattr(os, "fchmod"):  # mkstemp makes 0600 files; give the usual mode
                os.fchmod(f.fileno(), _default_file_mode())
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as error:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        os_error = _os_error_in(error) if isinstance(error, Exception) else None
        if os_error is not None:
            raise _write_error(path, os_error, earlier=path.exists()) from None
        raise
    with contextlib.suppress(OSError):  # make the rename durable (POSIX; not possible on every platform)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def save_checkpoint(obj: dict, path: str | Path) -> None:
    """``torch.save(obj, path)`` atomically (``atomic_write``)."""
    atomic_write(path, lambda f: torch.save(obj, f))


def atomic_copy(src: str | Path, dst: str | Path) -> None:
    """Copy ``src`` to ``dst`` atomically (``model_best.pth.tar`` from ``checkpoint.pth.tar``)."""

    def copy(f: BinaryIO) -> None:
        with open(src, "rb") as source:
            shutil.copyfileobj(source, f, 1 << 20)

    atomic_write(dst, copy)
