"""What every data module shares: the missing-data error, a data set's description, a pair of loaders."""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

__all__ = ["DataNotFoundError", "DatasetInfo", "Loaders", "at_epoch", "spread_indices"]


class DataNotFoundError(FileNotFoundError):
    """A data set's files are missing; the one-line message says what to put where."""


@dataclass(frozen=True)
class DatasetInfo:
    """What a model and a loader need to know about a data set (mean/std for images in [0, 1])."""

    name: str
    num_classes: int
    image_size: int
    mean: tuple
    std: tuple


@dataclass
class Loaders:
    """Train and test loaders of one data set, with its info."""

    train: Iterable
    test: Iterable | None  # None: a training-only use (K-shot calibration)
    info: DatasetInfo


def spread_indices(n: int, limit: int) -> np.ndarray:
    """``limit`` indices spread evenly over ``0..n-1`` (a fixed subset that spans every class of a sorted set)."""
    if limit <= 0:
        raise ValueError(f"a limit must be positive, got {limit}")
    if limit >= n:
        return np.arange(n)
    return np.floor(np.arange(limit) * (n / limit)).astype(np.int64)


@contextmanager
def at_epoch(loader: Iterable, epoch: int) -> Iterator[Iterable]:
    """Iterate ``loader`` at ``epoch``'s order and augmentation inside the block, then put its epoch counter back.

    For loaders with ``set_epoch`` (ours, ``DistributedSampler``-style): what is drawn inside does not depend on how
    often the loader was iterated before, and the training that follows is not shifted. Others pass through.
    """
    saved = getattr(loader, "epoch", None)
    has_epochs = hasattr(loader, "set_epoch")
    if has_epochs:
        loader.set_epoch(epoch)  # type: ignore[attr-defined]
    try:
        yield loader
    finally:
        if has_epochs and saved is not None:
            loader.set_epoch(saved)  # type: ignore[attr-defined]
