"""Data sets and loaders (docs/design.md, "Devices, processes and threads" and "Data"): one entry point, `build_loaders(name, data_dir, ...)`.

* ``digits``: scikit-learn's handwritten digits, 32x32 RGB, fixed 1437/360 split (the embedded default);
* ``cifar10``: ``<data_dir>/cifar-10-batches-py/`` (torchvision's layout); nothing is downloaded;
* ``fashion_mnist``: the four idx files in ``<data_dir>`` (or its ``FashionMNIST/raw/``), by default Debian's
  ``/usr/share/datasets/fashion-mnist/``; 28x28 grey padded to 32x32 RGB (`data.fashion_mnist`);
* ``imagenet``: ``<data_dir>/train`` and ``<data_dir>/val`` ImageFolders (only ``val/`` to evaluate);
* ``synthetic_cifar``: random, learnable 32x32 10-class tensors of a fixed seed (tests);
* ``synthetic_imagenet``: random 224x224 images, 1000 classes, 64 train / 32 val, through the ImageNet path (tests).

The CIFAR-shaped sets live whole on the training device (`data.device_loader.DeviceTensorLoader`); ImageNet
goes through a `torch.utils.data.DataLoader` (`data.imagenet`). Every loader yields ``(images, labels)`` already
on ``device`` and has ``set_epoch(e)``; training shards are padded to equal length across ranks, evaluation
shards are not (each sample counted exactly once: all-reduce the counts).
"""

from __future__ import annotations

import dataclasses

import torch

from data import imagenet
from data.cifar import load_cifar10
from data.common import DataNotFoundError, DatasetInfo, Loaders, spread_indices
from data.device_loader import DeviceTensorLoader
from data.digits import load_digits_split
from data.fashion_mnist import FASHION_MNIST_DEFAULT_DIR, load_fashion_mnist
from data.synthetic import synthetic_cifar, synthetic_imagenet

# Constants duplicated from the submodules so that `import data` stays light; tests check they agree.
DATASETS: dict[str, DatasetInfo] = {
    "digits": DatasetInfo("digits", 10, 32, (0.3058, 0.3058, 0.3058), (0.3241, 0.3241, 0.3241)),
    "cifar10": DatasetInfo("cifar10", 10, 32, (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "imagenet": DatasetInfo("imagenet", 1000, 224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "synthetic_cifar": DatasetInfo("synthetic_cifar", 10, 32, (0.5, 0.5, 0.5), (0.2887, 0.2887, 0.2887)),
    "synthetic_imagenet": DatasetInfo(
        "synthetic_imagenet", 1000, 224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    ),
    "fashion_mnist": DatasetInfo("fashion_mnist", 10, 32, (0.2190, 0.2190, 0.2190), (0.3318, 0.3318, 0.3318)),
}

DEFAULT_DATA_DIRS = {"cifar10": "data/cifar10", "fashion_mnist": FASHION_MNIST_DEFAULT_DIR, "imagenet": "data/imagenet"}
_SYNTHETIC = ("synthetic_cifar", "synthetic_imagenet")


def dataset_info(name: str) -> DatasetInfo:
    """The `DatasetInfo` of ``name``; an unknown name is a ValueError listing the valid ones."""
    try:
        return DATASETS[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; valid: {', '.join(DATASETS)}") from None


def _limit(images: torch.Tensor, labels: torch.Tensor, limit: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    if limit is None or limit >= len(images):
        return images, labels
    idx = torch.from_numpy(spread_indices(len(images), limit))
    return images[idx], labels[idx]


def build_loaders(
    name: str,
    data_dir: str | None,
    batch_size: int,
    *,
    device: torch.device | str = "cpu",
    eval_batch_size: int | None = None,
    workers: int = 4,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    train_augment: bool = True,
    limit_train: int | None = None,
    limit_test: int | None = None,
    num_classes: int | None = None,
    image_size: int | None = None,
    test_only: bool = False,
) -> Loaders:
    """Build the train and test loaders of data set ``name``.

    ``data_dir`` is ignored by ``digits`` and the synthetic sets; ``None`` means ``DEFAULT_DATA_DIRS[name]``
    for the others. ``limit_train``/``limit_test`` keep that many samples spread evenly over each split.
    ``num_classes`` and ``image_size`` only apply to the synthetic sets. ``workers`` only to the ImageNet path.
    Missing files raise a one-line `DataNotFoundError`; for ``imagenet`` the train side is only opened on first
    use, so evaluation needs only ``val/``. ``test_only`` reads only the test split (CIFAR-10 needs only
    ``test_batch``) and leaves ``Loaders.train`` None.
    """
    info = dataset_info(name)
    if (num_classes is not None or image_size is not None) and name not in _SYNTHETIC:
        raise ValueError(f"num_classes/image_size can only be set for {', '.join(_SYNTHETIC)}, not {name!r}")
    info = dataclasses.replace(
        info,
        num_classes=info.num_classes if num_classes is None else num_classes,
        image_size=info.image_size if image_size is None else image_size,
    )
    eval_batch_size = eval_batch_size or batch_size
    if name in ("imagenet", "synthetic_imagenet"):
        common = dict(
            eval_batch_size=eval_batch_size,
            device=device,
            workers=workers,
            seed=seed,
            rank=rank,
            world_size=world_size,
            train_augment=train_augment,
            limit_train=limit_train,
            limit_test=limit_test,
            crop=info.image_size,
            mean=info.mean,
            std=info.std,
        )
        if name == "imagenet":
            train, test = imagenet.build_imagenet_loaders(data_dir or DEFAULT_DATA_DIRS[name], batch_size, **common)
        else:
            train_set, val_set = synthetic_imagenet(num_classes=info.num_classes, image_size=info.image_size)
            train, test = imagenet.build_dataset_loaders(
                train_set.with_transform, val_set.with_transform, batch_size, **common
            )
        return Loaders(None if test_only else train, test, info)

    if name == "digits":
        tensors = load_digits_split()
    elif name == "cifar10":
        tensors = load_cifar10(data_dir or DEFAULT_DATA_DIRS[name], test_only=test_only)
    elif name == "fashion_mnist":
        tensors = load_fashion_mnist(data_dir or DEFAULT_DATA_DIRS[name])
    else:
        tensors = synthetic_cifar(num_classes=info.num_classes, image_size=info.image_size)

    train_x, train_y = _limit(tensors[0], tensors[1], limit_train)
    test_x, test_y = _limit(tensors[2], tensors[3], limit_test)
    common = dict(device=device, mean=info.mean, std=info.std, seed=seed, rank=rank, world_size=world_size)
    train = None if test_only else DeviceTensorLoader(train_x, train_y, batch_size, shuffle=True,
                                                      augment=train_augment, **common)
    test = DeviceTensorLoader(test_x, test_y, eval_batch_size, shuffle=False, augment=False, **common)
    return Loaders(train, test, info)


__all__ = [
    "DATASETS",
    "DEFAULT_DATA_DIRS",
    "DataNotFoundError",
    "DatasetInfo",
    "Loaders",
    "build_loaders",
    "dataset_info",
    "spread_indices",
]
