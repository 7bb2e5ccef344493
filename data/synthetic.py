"""Synthetic data sets of a fixed seed, for tests and dry runs (docs/design.md, "Data").

* ``synthetic_cifar``: 32x32 RGB uint8 tensors in 10 classes (or any count). Each class has a smooth random
  colour template and every image is that template plus uniform noise, so a network can learn it: end-to-end
  tests can check that a loss goes down.
* ``synthetic_imagenet``: an in-memory ``Dataset`` of random uint8 images (any size, default 224) and labels in
  1000 classes (or any count). It goes through the same transforms and ``DataLoader`` path as ImageNet folders.

The content depends only on ``data_seed`` (default 0), never on the training seed.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

SYNTHETIC_CIFAR_TRAIN = 512
SYNTHETIC_CIFAR_TEST = 256
SYNTHETIC_IMAGENET_TRAIN = 64
SYNTHETIC_IMAGENET_VAL = 32
# Uniform noise in [0, 1] has mean 1/2 and std 1/sqrt(12); the images are close to that.
SYNTHETIC_MEAN = (0.5, 0.5, 0.5)
SYNTHETIC_STD = (0.2887, 0.2887, 0.2887)


def _balanced_labels(count: int, num_classes: int, gen: torch.Generator) -> Tensor:
    labels = torch.arange(count) % num_classes
    return labels[torch.randperm(count, generator=gen)]


def synthetic_cifar(
    num_train: int = SYNTHETIC_CIFAR_TRAIN,
    num_test: int = SYNTHETIC_CIFAR_TEST,
    num_classes: int = 10,
    image_size: int = 32,
    data_seed: int = 0,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Return ``(train_images, train_labels, test_images, test_labels)``: uint8 ``[N, 3, S, S]``, int64 ``[N]``."""
    gen = torch.Generator().manual_seed(data_seed)
    coarse = torch.rand(num_classes, 3, 4, 4, generator=gen)
    templates = F.interpolate(coarse, size=(image_size, image_size), mode="bilinear", align_corners=False)

    def make(count: int) -> tuple[Tensor, Tensor]:
        labels = _balanced_labels(count, num_classes, gen)
        noise = torch.rand(count, 3, image_size, image_size, generator=gen)
        images = (0.5 * templates[labels] + 0.5 * noise) * 255.0
        return images.round().clamp_(0, 255).to(torch.uint8), labels

    train_x, train_y = make(num_train)
    test_x, test_y = make(num_test)
    return train_x, train_y, test_x, test_y


class SyntheticImageDataset(Dataset):
    """Random uint8 ``[3, S, S]`` images with integer labels, held in memory; ``transform`` applies per image."""

    def __init__(
        self,
        count: int,
        num_classes: int = 1000,
        image_size: int = 224,
        data_seed: int = 0,
        transform: Callable[[Tensor], Tensor] | None = None,
    ) -> None:
        gen = torch.Generator().manual_seed(data_seed)
        self.images = torch.randint(0, 256, (count, 3, image_size, image_size), dtype=torch.uint8, generator=gen)
        self.targets = _balanced_labels(count, num_classes, gen).tolist()
        self.num_classes = num_classes
        self.transform = transform

    def with_transform(self, transform: Callable[[Tensor], Tensor] | None) -> SyntheticImageDataset:
        """Set ``transform`` and return the data set (the factory `data.imagenet.build_dataset_loaders` takes)."""
        self.transform = transform
        return self

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        image = self.images[index]
        if self.transform is not None:
            image = self.transform(image)
        return image, self.targets[index]


def synthetic_imagenet(
    num_train: int = SYNTHETIC_IMAGENET_TRAIN,
    num_val: int = SYNTHETIC_IMAGENET_VAL,
    num_classes: int = 1000,
    image_size: int = 224,
    data_seed: int = 0,
) -> tuple[SyntheticImageDataset, SyntheticImageDataset]:
    """Return ``(train, val)`` synthetic ImageNet-shaped data sets without transforms (the caller sets them)."""
    train = SyntheticImageDataset(num_train, num_classes, image_size, data_seed)
    val = SyntheticImageDataset(num_val, num_classes, image_size, data_seed + 1)
    return train, val
