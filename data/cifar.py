"""CIFAR-10 from torchvision's on-disk layout, read into uint8 tensors; nothing is ever downloaded.

Expected: ``<data_dir>/cifar-10-batches-py/{data_batch_1..5, test_batch}`` (the "python version" tarball
unpacked; ``<data_dir>`` may also be the ``cifar-10-batches-py`` folder itself). The pickles are read with an
unpickler that only accepts the numpy array constructors they hold, so a foreign file cannot run code.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from data.common import DataNotFoundError

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2023, 0.1994, 0.2010)
CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST_FILE = "test_batch"

_ALLOWED_GLOBALS = {
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickler limited to plain containers and numpy arrays."""

    def find_class(self, module: str, name: str) -> Any:
        if module.startswith("numpy.core"):  # written by numpy < 2
            module = "numpy._core" + module[len("numpy.core") :]
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"unexpected object {module}.{name} in a CIFAR-10 batch file")
        return super().find_class(module, name)


def _not_found(data_dir: str | Path, detail: str = "") -> DataNotFoundError:
    return DataNotFoundError(
        f"CIFAR-10 not found in '{data_dir}'{detail}: put the python version ({CIFAR10_FOLDER}/ with "
        f"data_batch_1..5 and {CIFAR10_TEST_FILE}) there; nothing is downloaded"
    )


def find_cifar10_dir(data_dir: str | Path, *, test_only: bool = False) -> Path:
    """The folder holding the batch files, or a one-line ``DataNotFoundError`` saying what to put where.

    ``test_only``: only ``test_batch`` is required (evaluation needs no training batches).
    """
    root = Path(data_dir)
    required = (CIFAR10_TEST_FILE,) if test_only else (*CIFAR10_TRAIN_FILES, CIFAR10_TEST_FILE)
    for candidate in (root / CIFAR10_FOLDER, root):
        if (candidate / CIFAR10_TEST_FILE).is_file() or (candidate / CIFAR10_TRAIN_FILES[0]).is_file():
            missing = [f for f in required if not (candidate / f).is_file()]
            if missing:
                raise _not_found(data_dir, f" (missing {', '.join(missing)} in '{candidate}')")
            return candidate
    raise _not_found(data_dir)


def read_cifar_batch(path: str | Path) -> tuple[Tensor, Tensor]:
    """One batch file as ``(images uint8 [N, 3, 32, 32], labels int64 [N])``."""
    try:
        with open(path, "rb") as f:
            entry = _ArrayUnpickler(f, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError) as exc:
        raise ValueError(f"'{path}' is not a CIFAR-10 batch file: {exc}") from None
    if not isinstance(entry, dict):
        raise ValueError(f"'{path}' is not a CIFAR-10 batch file: expected a dict, got {type(entry).__name__}")
    entry = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in entry.items()}
    if "data" not in entry or ("labels" not in entry and "fine_labels" not in entry):
        raise ValueError(f"'{path}' is not a CIFAR-10 batch file: keys {sorted(entry)}")
    data = np.asarray(entry["data"], dtype=np.uint8)
    labels = np.asarray(entry.get("labels", entry.get("fine_labels")), dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(labels) != len(data):
        raise ValueError(f"'{path}' is not a CIFAR-10 batch file: data {data.shape}, labels {labels.shape}")
    images = torch.from_numpy(data.reshape(-1, 3, 32, 32).copy())
    return images, torch.from_numpy(labels)


def load_cifar10(data_dir: str | Path, *, test_only: bool = False) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Return ``(train_images, train_labels, test_images, test_labels)`` (50000 / 10000 images for the real set).

    ``test_only``: read only ``test_batch``; the training tensors come back empty (0 images).
    """
    folder = find_cifar10_dir(data_dir, test_only=test_only)
    names = () if test_only else CIFAR10_TRAIN_FILES
    train = [read_cifar_batch(folder / name) for name in names] or [
        (torch.empty(0, 3, 32, 32, dtype=torch.uint8), torch.empty(0, dtype=torch.int64))]
    test_x, test_y = read_cifar_batch(folder / CIFAR10_TEST_FILE)
    train_x = torch.cat([x for x, _ in train])
    train_y = torch.cat([y for _, y in train])
    for labels in (train_y, test_y):
        if len(labels) and (labels.min() < 0 or labels.max() > 9):
            raise ValueError(f"CIFAR-10 labels in '{folder}' must lie in 0..9")
    return train_x, train_y, test_x, test_y
