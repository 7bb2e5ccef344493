"""How many CPU threads torch uses: chosen for speed on a shared machine, always stated.

On a loaded machine torch's default (one thread per core) oversubscribes the cores and can run several times
slower than one thread. ``auto`` takes the cores that are idle now (CPU count minus the 1-minute load average),
divided among the processes torchrun starts on this node, and at least one.
"""
from __future__ import annotations

import os

import torch

__all__ = ["auto_threads", "configure_threads", "describe_threads", "parse_threads"]


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def auto_threads() -> int:
    """Idle cores per local process: ``(cpus - load average) / LOCAL_WORLD_SIZE``, at least 1."""
    cpus = _cpu_count()
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        load = 0.0
    local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
    return max(1, int((cpus - load) // local))


def parse_threads(text: str | int) -> int | str:
    """``--threads`` value: 'auto' or a whole number >= 1 (a ValueError names anything else)."""
    if isinstance(text, int) or str(text).strip().isdigit():
        value = int(text)
        if value >= 1:
            return value
    elif str(text).strip() == "auto":
        return "auto"
    raise ValueError(f"{text!r} is not a thread count; expected 'auto' or a whole number >= 1")


def configure_threads(value: int | str = "auto") -> int:
    """Set torch's intra-op thread count from ``--threads`` and return it."""
    count = auto_threads() if value == "auto" else int(parse_threads(value))
    torch.set_num_threads(count)
    return count


def describe_threads() -> str:
    """One phrase for the logs: the thread count in use and the cores there are."""
    return f"{torch.get_num_threads()} CPU thread(s) of {_cpu_count()} cores"
