"""ImageNet-style loaders: ``train/`` and ``val/`` ImageFolders (or an in-memory stand-in) through a DataLoader.

Transforms (docs/design.md, "Training"): train RandomResizedCrop(224) + horizontal flip + normalise; evaluation
Resize(256) + CenterCrop(224) + normalise. They are torchvision ``transforms.v2`` objects, so the same pipeline
takes PIL images (folders) and uint8 tensors (``synthetic_imagenet``).

The loaders wrap ``torch.utils.data.DataLoader``: worker processes, ``pin_memory`` on CUDA, a
``DistributedSampler(rank, world_size, shuffle, seed)`` for training when ``world_size > 1`` and an interleaved,
unpadded ``ShardSampler`` for evaluation (every image counted once; the metric code all-reduces counts). Each
wrapper has ``set_epoch(e)`` and yields batches already on the device (channels_last on CUDA), like
``DeviceTensorLoader``. The train side is built lazily on first use, so evaluating needs only ``val/``
(upstream bug 8: the paper's ``test.py`` required ``train/``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler, Sampler, Subset
from torchvision.transforms import v2

from data.common import DataNotFoundError, spread_indices
from data.device_loader import derived_seed

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def train_transform(
    crop: int = 224, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> v2.Compose:
    """RandomResizedCrop(crop) + RandomHorizontalFlip + float in [0, 1] + Normalize (PIL or uint8 tensor in)."""
    return v2.Compose(
        [
            v2.RandomResizedCrop(crop, antialias=True),
            v2.RandomHorizontalFlip(),
            v2.ToImage(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(list(mean), list(std)),
        ]
    )


def eval_transform(
    crop: int = 224,
    resize: int | None = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> v2.Compose:
    """Resize(resize, default round(crop * 256 / 224)) + CenterCrop(crop) + float + Normalize."""
    resize = round(crop * 256 / 224) if resize is None else resize
    return v2.Compose(
        [
            v2.Resize(resize, antialias=True),
            v2.CenterCrop(crop),
            v2.ToImage(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(list(mean), list(std)),
        ]
    )


class ShardSampler(Sampler[int]):
    """Rank ``rank``'s interleaved indices ``rank, rank + W, ...`` of ``0..n-1``: no shuffle, no padding."""

    def __init__(self, n: int, rank: int = 0, world_size: int = 1) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        self.n, self.rank, self.world_size = n, rank, world_size

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.n, self.world_size))

    def __len__(self) -> int:
        return len(range(self.rank, self.n, self.world_size))

    def set_epoch(self, epoch: int) -> None:
        """Nothing changes between epochs; present for a uniform interface."""


class EpochDataLoader:
    """A DataLoader with ``set_epoch`` that yields ``(images, labels)`` on ``device``.

    ``shuffle`` with ``world_size > 1`` uses ``DistributedSampler(seed=seed)``; with one process a
    ``RandomSampler`` whose generator is seeded by ``seed + epoch`` (so both give a fixed order per epoch). Without
    ``shuffle`` a ``ShardSampler``. Without ``set_epoch`` every new iteration moves to the next epoch.
    """

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int,
        *,
        device: torch.device | str = "cpu",
        shuffle: bool = False,
        workers: int = 4,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
    ) -> None:
        self.dataset = dataset
        self.device = torch.device(device)
        self.seed, self.rank, self.world_size = int(seed), int(rank), int(world_size)
        self.epoch = 0
        self._shuffle_gen: torch.Generator | None = None
        if shuffle and world_size > 1:
            sampler: Sampler[int] = DistributedSampler(
                dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed, drop_last=False
            )
        elif shuffle:
            self._shuffle_gen = torch.Generator()
            sampler = RandomSampler(dataset, generator=self._shuffle_gen)
        else:
            sampler = ShardSampler(len(dataset), rank, world_size)
        self.sampler = sampler
        self._worker_gen = torch.Generator()
        pin = self.device.type == "cuda"
        self._non_blocking = pin
        self.loader = DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            num_workers=workers,
            pin_memory=pin,
            drop_last=drop_last,
            persistent_workers=workers > 0,
            generator=self._worker_gen,
        )

    def set_epoch(self, epoch: int) -> None:
        """Use ``epoch``'s order on the next iteration."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        epoch = self.epoch
        self.epoch += 1
        if isinstance(self.sampler, DistributedSampler):
            self.sampler.set_epoch(epoch)
        if self._shuffle_gen is not None:
            self._shuffle_gen.manual_seed(self.seed + epoch)
        self._worker_gen.manual_seed(derived_seed(self.seed, epoch, self.rank, 0x1A6E))
        channels_last = self.device.type == "cuda"
        for images, labels in self.loader:
            images = images.to(self.device, non_blocking=self._non_blocking)
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            yield images, labels.to(self.device, non_blocking=self._non_blocking)


class LazyLoader:
    """Build a loader on first use (iteration, ``len`` or ``set_epoch``); errors surface then, not before."""

    def __init__(self, factory: Callable[[], EpochDataLoader]) -> None:
        self._factory = factory
        self._loader: EpochDataLoader | None = None
        self._epoch: int | None = None

    @property
    def built(self) -> bool:
        """Whether the underlying loader exists yet."""
        return self._loader is not None

    @property
    def loader(self) -> EpochDataLoader:
        """The underlying loader, built now if needed."""
        if self._loader is None:
            self._loader = self._factory()
            if self._epoch is not None:
                self._loader.set_epoch(self._epoch)
        return self._loader

    def set_epoch(self, epoch: int) -> None:
        """Forwarded to the loader (remembered until it is built)."""
        if self._loader is None:
            self._epoch = int(epoch)
        else:
            self._loader.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        return iter(self.loader)

    def __getattr__(self, name: str) -> Any:  # proxies sampler, dataset, ...
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.loader, name)


class CorruptImageError(ValueError):
    """An image of an ImageFolder that cannot be decoded: one line naming the file."""

    def __init__(self, message: str) -> None:
        # A DataLoader worker re-raises this with its whole traceback as the message; keep only our line.
        lines = [line.strip() for line in str(message).splitlines() if line.strip()]
        last = lines[-1] if lines else ""
        marker = f"{type(self).__name__}: "
        super().__init__(last.split(marker, 1)[1] if marker in last else last)


def checked_image_loader(path: str) -> Any:
    """torchvision's default image loader; a file it cannot decode is a `CorruptImageError` naming it.

    A corrupt image stops the run (rather than being skipped): an evaluation over fewer images than the split
    holds would report an accuracy that is not the split's.
    """
    from torchvision.datasets.folder import default_loader

    try:
        return default_loader(path)
    except Exception as exc:  # noqa: BLE001 - PIL raises OSError, SyntaxError, DecompressionBombError, ...
        text = str(exc).strip().splitlines()
        detail = f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
        raise CorruptImageError(f"cannot read image '{path}' ({detail}); remove or replace that file") from None


def _not_found(data_dir: str | Path, detail: str) -> DataNotFoundError:
    return DataNotFoundError(
        f"ImageNet not found in '{data_dir}'{detail}: put the ILSVRC-2012 images there as ImageFolders "
        f"(train/<wnid>/*.JPEG for training, val/<wnid>/*.JPEG for evaluation); nothing is downloaded"
    )


def image_folder(data_dir: str | Path, split: str, transform: Callable | None) -> Dataset:
    """``ImageFolder(<data_dir>/<split>)``, with a one-line ``DataNotFoundError`` when it is missing or empty.

    Images are read by `checked_image_loader`: a corrupt file is a one-line `CorruptImageError` naming it.
    """
    from torchvision.datasets import ImageFolder

    root = Path(data_dir) / split
    if not root.is_dir():
        raise _not_found(data_dir, f" (no '{split}/' folder)")
    try:
        return ImageFolder(str(root), transform=transform, loader=checked_image_loader)
    except FileNotFoundError as exc:
        detail = str(exc).splitlines()[0] if str(exc) else "empty"
        raise _not_found(data_dir, f" ('{split}/' has no class folders with images: {detail})") from None


def _limited(dataset: Dataset, limit: int | None) -> Dataset:
    if limit is None or limit >= len(dataset):
        return dataset
    return Subset(dataset, spread_indices(len(dataset), limit).tolist())


def build_dataset_loaders(
    make_train: Callable[[Callable], Dataset],
    make_val: Callable[[Callable], Dataset],
    batch_size: int,
    *,
    eval_batch_size: int | None = None,
    device: torch.device | str = "cpu",
    workers: int = 4,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    train_augment: bool = True,
    limit_train: int | None = None,
    limit_test: int | None = None,
    crop: int = 224,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> tuple[LazyLoader, EpochDataLoader]:
    """(lazy train loader, val loader) over datasets built by ``make_train(transform)`` / ``make_val(transform)``."""
    val_tf = eval_transform(crop, mean=mean, std=std)
    train_tf = train_transform(crop, mean, std) if train_augment else val_tf
    val_set = _limited(make_val(val_tf), limit_test)
    make_loader = functools.partial(EpochDataLoader, device=device, workers=workers, seed=seed, rank=rank,
                                    world_size=world_size)
    test = make_loader(val_set, eval_batch_size or batch_size, shuffle=False)

    def train_factory() -> EpochDataLoader:
        return make_loader(_limited(make_train(train_tf), limit_train), batch_size, shuffle=True)

    return LazyLoader(train_factory), test


def build_imagenet_loaders(data_dir: str | Path, batch_size: int, **kwargs) -> tuple[LazyLoader, EpochDataLoader]:
    """Loaders over ``<data_dir>/train`` (built on first use) and ``<data_dir>/val`` (checked now)."""
    if not Path(data_dir).is_dir():
        raise _not_found(data_dir, "")
    return build_dataset_loaders(
        lambda tf: image_folder(data_dir, "train", tf),
        lambda tf: image_folder(data_dir, "val", tf),
        batch_size,
        **kwargs,
    )

