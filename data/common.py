"""What every data module shares: the missing-data error, a data set's description, a pair of loaders."""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

__all__ = ["DataNotFoundError", "DatasetInfo", "Loaders", "spread_indices"]


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
