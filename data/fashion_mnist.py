"""Fashion-MNIST from its four idx files, as a CIFAR-shaped set; nothing is ever downloaded.

The files (``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``,
``t10k-labels-idx1-ubyte``, each plain or gzipped) are looked for in ``<data_dir>``, then in torchvision's
``<data_dir>/FashionMNIST/raw/``; without a ``data_dir`` in ``/usr/share/datasets/fashion-mnist/`` (Debian's
``dataset-fashion-mnist``). The idx format is parsed with numpy: magic number (unsigned bytes, 3 or 1 dimensions),
big-endian sizes, and a payload of exactly that many bytes; anything else is a one-line error naming the file.

The 28x28 grey images are zero-padded to 32x32 (2 pixels a side) and repeated to three channels, stored as uint8
``[N, 3, 32, 32]``, so every CIFAR architecture and the CIFAR augmentation (crop with padding 4, flip) run
unchanged. Mean and std are those of the padded training images.
"""

from __future__ import annotations

import functools
import gzip
import zlib
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from data.common import DataNotFoundError

__all__ = [
    "FASHION_MNIST_DEFAULT_DIR",
    "FASHION_MNIST_FILES",
    "FASHION_MNIST_MEAN",
    "FASHION_MNIST_STD",
    "find_fashion_mnist_files",
    "load_fashion_mnist",
    "read_idx",
]

FASHION_MNIST_DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_PACKAGE = "dataset-fashion-mnist"
TORCHVISION_SUBDIR = Path("FashionMNIST") / "raw"
#: role -> file name (without ``.gz``)
FASHION_MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
IMAGE_SIDE = 28
PADDED_SIDE = 32
NUM_CLASSES = 10
# Per-channel mean and std of the 60000 training images padded to 32x32, scaled to [0, 1] (the channels are equal).
# `tests/test_fashion_mnist.py` recomputes them from the real files where they are installed.
FASHION_MNIST_MEAN = (0.2190, 0.2190, 0.2190)
FASHION_MNIST_STD = (0.3318, 0.3318, 0.3318)

_UNSIGNED_BYTE = 0x08


def _file_in(folder: Path, name: str) -> Path | None:
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def find_fashion_mnist_files(data_dir: str | Path | None = None) -> dict[str, Path]:
    """role -> path of each of the four files (plain or ``.gz``), or a one-line ``DataNotFoundError``.

    ``data_dir`` None means the Debian package's folder. A folder holding some but not all files is named with
    the missing ones.
    """
    root = Path(data_dir) if data_dir is not None else Path(FASHION_MNIST_DEFAULT_DIR)
    folders = [root, root / TORCHVISION_SUBDIR]
    for folder in folders:
        found = {role: _file_in(folder, name) for role, name in FASHION_MNIST_FILES.items()}
        if any(found.values()):
            missing = [FASHION_MNIST_FILES[role] for role, path in found.items() if path is None]
            if missing:
                raise _not_found(folders, f" (missing {', '.join(missing)} in '{folder}')")
            return {role: path for role, path in found.items() if path is not None}
    raise _not_found(folders)


def _not_found(folders: list[Path], detail: str = "") -> DataNotFoundError:
    looked = ", ".join(f"'{f}'" for f in folders)
    return DataNotFoundError(
        f"Fashion-MNIST not found in {looked}{detail}: install it (apt-get install {FASHION_MNIST_PACKAGE}, "
        f"files in {FASHION_MNIST_DEFAULT_DIR}/) or put the four idx files ({', '.join(FASHION_MNIST_FILES.values())}"
        f", plain or .gz) in --data_dir; nothing is downloaded"
    )


def _read_bytes(path: Path) -> bytes:
    if path.suffix != ".gz":
        return path.read_bytes()
    try:
        with gzip.open(path, "rb") as f:
            return f.read()
    except (OSError, EOFError, zlib.error) as exc:
        raise ValueError(f"'{path}' is not a valid gzip file: {exc}") from None


def read_idx(path: str | Path, ndim: int) -> np.ndarray:
    """An idx file of unsigned bytes with ``ndim`` dimensions as a uint8 array (plain or gzipped by suffix).

    A wrong magic number, a header shorter than its sizes or a payload of the wrong length is a one-line
    ValueError naming the file.
    """
    path = Path(path)
    raw = _read_bytes(path)
    header = 4 + 4 * ndim
    magic = raw[:4]
    if len(magic) < 4 or magic[0] != 0 or magic[1] != 0 or magic[2] != _UNSIGNED_BYTE or magic[3] != ndim:
        raise ValueError(
            f"'{path}' is not an idx file of unsigned bytes with {ndim} dimensions: magic number 0x{magic.hex()}, "
            f"expected 0x0000{_UNSIGNED_BYTE:02x}{ndim:02x}"
        )
    if len(raw) < header:
        raise ValueError(f"'{path}' is not an idx file: {len(raw)} bytes, shorter than its {header}-byte header")
    shape = tuple(int(s) for s in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(shape, dtype=np.int64))
    if len(raw) - header != expected:
        raise ValueError(
            f"'{path}' is truncated or corrupt: header says {'x'.join(map(str, shape))} = {expected} bytes of data, "
            f"found {len(raw) - header}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def _split(images_path: Path, labels_path: Path) -> tuple[np.ndarray, np.ndarray]:
    images = read_idx(images_path, 3)
    labels = read_idx(labels_path, 1)
    if images.shape[1:] != (IMAGE_SIDE, IMAGE_SIDE):
        raise ValueError(f"'{images_path}' holds {images.shape[1]}x{images.shape[2]} images, expected 28x28")
    if len(images) != len(labels):
        raise ValueError(f"'{images_path}' has {len(images)} images but '{labels_path}' has {len(labels)} labels")
    if len(labels) and labels.max() >= NUM_CLASSES:
        raise ValueError(f"'{labels_path}' has label {int(labels.max())}, expected 0..{NUM_CLASSES - 1}")
    return images, labels


@functools.lru_cache(maxsize=2)
def _load_tensors(files: tuple[tuple[str, str, int, int], ...]) -> tuple[Tensor, ...]:
    """Padded one-channel images and int64 labels of both splits, cached by (role, path, size, mtime) so that a
    changed file is read again."""
    paths = {role: Path(path) for role, path, _, _ in files}
    train_x, train_y = _split(paths["train_images"], paths["train_labels"])
    test_x, test_y = _split(paths["test_images"], paths["test_labels"])
    return _pad(train_x), _labels(train_y), _pad(test_x), _labels(test_y)


def _labels(labels: np.ndarray) -> Tensor:
    return torch.from_numpy(labels.astype(np.int64))


def _pad(images: np.ndarray) -> Tensor:
    """uint8 ``[N, 28, 28]`` -> uint8 ``[N, 1, 32, 32]`` with a zero border of 2 pixels a side."""
    pad = (PADDED_SIDE - IMAGE_SIDE) // 2
    out = np.zeros((len(images), 1, PADDED_SIDE, PADDED_SIDE), dtype=np.uint8)
    out[:, 0, pad : pad + IMAGE_SIDE, pad : pad + IMAGE_SIDE] = images
    return torch.from_numpy(out)


def load_fashion_mnist(data_dir: str | Path | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Return ``(train_images, train_labels, test_images, test_labels)``: uint8 ``[N, 3, 32, 32]``, int64 ``[N]``
    (60000 / 10000 images for the real set)."""
    found = find_fashion_mnist_files(data_dir)
    key = tuple(
        (role, str(path.resolve()), path.stat().st_size, path.stat().st_mtime_ns) for role, path in found.items()
    )
    train_x, train_y, test_x, test_y = _load_tensors(key)
    # The three channels are one read-only view of the cached grey images (indexing copies only what it takes).
    return train_x.expand(-1, 3, -1, -1), train_y.clone(), test_x.expand(-1, 3, -1, -1), test_y.clone()
