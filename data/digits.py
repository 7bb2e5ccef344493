"""scikit-learn's handwritten digits as a small CIFAR-shaped data set (docs/design.md, "Data").

`sklearn.datasets.load_digits()` ships with scikit-learn (nothing is downloaded): 1797 grey 8x8 images with
values 0..16. They are scaled to 0..255, upscaled to 32x32 (bilinear, ``align_corners=False``), replicated to three
channels and stored as uint8 ``[N, 3, 32, 32]``. The train/test split is stratified and fixed forever: it uses
numpy's legacy ``RandomState`` (whose stream numpy guarantees never to change) and its own largest-remainder quota,
not an sklearn helper whose algorithm could change between releases. ``tests/test_data.py`` pins it.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

DIGITS_NUM_IMAGES = 1797
DIGITS_TEST_SIZE = 360
DIGITS_TRAIN_SIZE = DIGITS_NUM_IMAGES - DIGITS_TEST_SIZE  # 1437
DIGITS_SPLIT_SEED = 0
DIGITS_IMAGE_SIZE = 32

# Per-channel mean and std of the train split's images scaled to [0, 1] (the three channels are equal).
# Computed by `compute_mean_std(load_digits_split()[0])`; `tests/test_data.py` recomputes and checks them.
DIGITS_MEAN = (0.3058, 0.3058, 0.3058)
DIGITS_STD = (0.3241, 0.3241, 0.3241)


def stratified_split(labels: np.ndarray, test_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split indices into (train, test), each class contributing to the test set in proportion to its size.

    Per-class test counts are the largest-remainder rounding of ``test_size * n_c / N`` (ties broken by class
    order), so they sum to ``test_size`` exactly. Returns sorted index arrays.
    """
    labels = np.asarray(labels)
    classes, counts = np.unique(labels, return_counts=True)
    exact = test_size * counts / counts.sum()
    quota = np.floor(exact).astype(np.int64)
    remainder_order = np.argsort(-(exact - quota), kind="stable")
    quota[remainder_order[: test_size - int(quota.sum())]] += 1
    rng = np.random.RandomState(seed)
    test = []
    for cls, n_test in zip(classes, quota):
        members = np.flatnonzero(labels == cls)
        test.append(members[rng.permutation(len(members))[:n_test]])
    test_idx = np.sort(np.concatenate(test))
    train_idx = np.setdiff1d(np.arange(len(labels)), test_idx)
    return train_idx, test_idx


@functools.lru_cache(maxsize=1)
def _digits_tensors() -> tuple[Tensor, Tensor, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    grey = torch.from_numpy(np.asarray(digits.images, dtype=np.float32) / 16.0)[:, None]  # [N, 1, 8, 8] in [0, 1]
    big = F.interpolate(grey, size=(DIGITS_IMAGE_SIZE, DIGITS_IMAGE_SIZE), mode="bilinear", align_corners=False)
    images = (big * 255.0).round().clamp_(0, 255).to(torch.uint8).expand(-1, 3, -1, -1).contiguous()
    labels = torch.from_numpy(np.asarray(digits.target, dtype=np.int64))
    train_idx, test_idx = stratified_split(digits.target, DIGITS_TEST_SIZE, DIGITS_SPLIT_SEED)
    return images, labels, train_idx, test_idx


def digits_split_indices() -> tuple[np.ndarray, np.ndarray]:
    """The fixed (train, test) indices into ``load_digits()``: 1437 and 360 sorted indices."""
    _, _, train_idx, test_idx = _digits_tensors()
    return train_idx.copy(), test_idx.copy()


def load_digits_split() -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Return ``(train_images, train_labels, test_images, test_labels)``: uint8 ``[N, 3, 32, 32]`` and int64 ``[N]``."""
    images, labels, train_idx, test_idx = _digits_tensors()
    tr, te = torch.from_numpy(train_idx), torch.from_numpy(test_idx)
    return images[tr], labels[tr], images[te], labels[te]


def compute_mean_std(images: Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) std of uint8 ``[N, C, H, W]`` images scaled to [0, 1], in float64."""
    x = images.to(torch.float64) / 255.0
    mean = x.mean(dim=(0, 2, 3))
    std = x.std(dim=(0, 2, 3), unbiased=False)
    return tuple(mean.tolist()), tuple(std.tolist())
