"""Turn a ``--device`` value into a torch.device."""
from __future__ import annotations

import torch

__all__ = ["resolve_device"]


def resolve_device(name: str | None = "auto") -> torch.device:
    """'auto' (or None) picks CUDA when available; 'cpu', 'cuda', 'cuda:N' as given.

    An unknown name, CUDA asked for where there is none, or a CUDA index past the visible devices is a
    ValueError naming the value.
    """
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ValueError(f"--device {name!r} is not a device; expected 'auto', 'cpu', 'cuda' or 'cuda:N'") from None
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"--device {name!r} is not supported; expected 'auto', 'cpu', 'cuda' or 'cuda:N'")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name!r} asked for CUDA but no CUDA device is available")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"--device {name!r}: there is no CUDA device {device.index} "
                         f"({torch.cuda.device_count()} visible: cuda:0 to cuda:{torch.cuda.device_count() - 1})")
    return device
