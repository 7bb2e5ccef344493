"""Build the network to prune: ``torchvision:NAME`` or a user's ``path/to/file.py:ClassName`` (executed)."""
from __future__ import annotations

import importlib.util
import inspect
import re
import sys
from pathlib import Path
from typing import Any

from torch import nn

from coring.checkpoint import first_line
from coring.generic.common import _NO_AUX, TORCHVISION_PREFIX, GenericModelError

__all__ = ['load_user_model', 'model_label']


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
        raise GenericModelError(f"cannot build torchvision:{name}: {first_line(exc)}") from None


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
        raise GenericModelError(f"cannot import {str(path)!r}: {first_line(exc)}") from None
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
        raise GenericModelError(f"cannot instantiate {path_text}:{class_name}: {first_line(exc)}") from None


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
