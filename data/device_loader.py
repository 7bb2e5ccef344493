"""A data loader for small image sets that live whole, as uint8, on the training device.

CIFAR-sized sets (CIFAR-10's 50k training images are 150 MB as uint8) fit on any GPU, so the loader keeps them
there and does the paper's augmentation batched on the device: RandomCrop(32, padding=4) with zero padding and
RandomHorizontalFlip(p=0.5), then the float conversion and the normalisation of ``ToTensor`` + ``Normalize``. There
are no worker processes and no per-image Python loop.

Sharding follows ``DistributedSampler``:

* the epoch's order is a permutation seeded by ``seed + epoch``, the same on every rank;
* training (``pad=True``, the default when ``shuffle``): the order is padded by wrapping around to a multiple of
  ``world_size`` and rank ``r`` takes positions ``r, r + W, r + 2W, ...``; every rank then has the same number of
  samples and batches (DDP needs that), and a few samples are seen twice per epoch when ``N % W != 0``;
* evaluation (``pad=False``, the default when not shuffling): the same interleaved shards without padding, so
  every sample is counted exactly once; ranks may differ by one sample, hence by at most one batch. The metric
  code all-reduces the correct/total counts after the loop and must not run a collective per batch.

``set_epoch(e)`` selects the epoch; without it every new iteration moves to the next epoch (0, 1, 2, ...).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


def derived_seed(*parts: int) -> int:
    """A 63-bit seed mixed from several integers (no collisions between e.g. (seed, epoch) pairs)."""
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(2, np.uint64)[0] >> 1)


def shard_indices(order: Tensor, rank: int, world_size: int, pad: bool) -> Tensor:
    """Rank ``rank``'s interleaved share of ``order``; with ``pad`` the order is first wrapped to a multiple of W."""
    if pad and world_size > 1:
        total = math.ceil(len(order) / world_size) * world_size
        extra = total - len(order)
        if extra:
            reps = math.ceil(extra / len(order))
            order = torch.cat([order, order.repeat(reps)[:extra]])
    return order[rank::world_size]


def random_crop_flip(images: Tensor, offsets: Tensor, flips: Tensor, padding: int = 4) -> Tensor:
    """Batched RandomCrop(size=(H, W), padding) + horizontal flip with given parameters.

    ``images`` ``[B, C, H, W]`` (any dtype), ``offsets`` ``[B, 2]`` integer (top, left) in the zero-padded image,
    each in ``0..2*padding``; ``flips`` ``[B]`` bool. Image ``b`` becomes
    ``hflip?(pad(images[b])[:, top:top+H, left:left+W])``, exactly torchvision's RandomCrop then
    RandomHorizontalFlip. The result has NCHW shape and channels-last strides.
    """
    b, _, h, w = images.shape
    padded = F.pad(images, (padding, padding, padding, padding)).permute(0, 2, 3, 1)  # [B, H+2p, W+2p, C]
    dev = images.device
    ar_h = torch.arange(h, device=dev)
    ar_w = torch.arange(w, device=dev)
    rows = offsets[:, 0:1].to(dev) + ar_h  # [B, H]
    cols = offsets[:, 1:2].to(dev) + torch.where(flips.to(dev)[:, None], (w - 1) - ar_w, ar_w)  # [B, W]
    batch = torch.arange(b, device=dev)[:, None, None]
    out = padded[batch, rows[:, :, None], cols[:, None, :]]  # [B, H, W, C]
    return out.permute(0, 3, 1, 2)


class DeviceTensorLoader:
    """Iterate over ``(images float32 [B, C, H, W], labels int64 [B])`` batches of a uint8 set held on ``device``.

    ``images`` uint8 ``[N, C, H, W]``; ``labels`` integer ``[N]``. ``mean``/``std`` are per channel, for images in
    [0, 1]. ``augment`` applies RandomCrop(H, padding) + horizontal flip (p = 0.5) with offsets uniform in
    ``0..2*padding`` per axis, independent per image, seeded by ``(seed, epoch, rank)``. On CUDA the images come
    in channels_last memory format. ``pad`` (default: ``shuffle``) pads the shards to equal length (training);
    without it the shards partition the set exactly (evaluation). ``len()`` is the number of batches per epoch on
    this rank.
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        batch_size: int,
        device: torch.device | str = "cpu",
        mean: Sequence[float] = (0.0, 0.0, 0.0),
        std: Sequence[float] = (1.0, 1.0, 1.0),
        shuffle: bool = False,
        augment: bool = False,
        drop_last: bool = False,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        *,
        pad: bool | None = None,
        padding: int = 4,
    ) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"images must be uint8 [N, C, H, W], got {images.dtype} {list(images.shape)}")
        if labels.dim() != 1 or len(labels) != len(images):
            raise ValueError(f"labels must be [N] with N = {len(images)}, got {list(labels.shape)}")
        if len(images) == 0:
            raise ValueError("the data set is empty")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        channels = images.shape[1]
        if len(mean) != channels or len(std) != channels:
            raise ValueError(f"mean and std need {channels} values, got {len(mean)} and {len(std)}")
        self.device = torch.device(device)
        self.images = images.to(self.device)
        self.labels = labels.to(self.device, torch.int64)
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.augment = bool(augment)
        self.drop_last = bool(drop_last)
        self.seed = int(seed)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.pad = self.shuffle if pad is None else bool(pad)
        self.padding = int(padding)
        std_t = torch.tensor(std, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        mean_t = torch.tensor(mean, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        # (x / 255 - mean) / std == x * scale + shift
        self._scale = 1.0 / (255.0 * std_t)
        self._shift = -mean_t / std_t
        self._channels_last = self.device.type == "cuda"
        self.epoch = 0

    # -- epoch bookkeeping ---------------------------------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        """Use ``epoch``'s permutation and augmentation on the next iteration (as ``DistributedSampler.set_epoch``)."""
        self.epoch = int(epoch)

    @property
    def num_samples(self) -> int:
        """Samples this rank sees per epoch (before ``drop_last``)."""
        n = len(self.images)
        if self.pad:
            return math.ceil(n / self.world_size)
        return len(range(self.rank, n, self.world_size))

    def __len__(self) -> int:
        if self.drop_last:
            return self.num_samples // self.batch_size
        return math.ceil(self.num_samples / self.batch_size)

    def epoch_indices(self, epoch: int) -> Tensor:
        """This rank's sample indices for ``epoch``, in iteration order (CPU int64, before ``drop_last``)."""
        n = len(self.images)
        if self.shuffle:
            gen = torch.Generator().manual_seed(self.seed + epoch)  # same on every rank, like DistributedSampler
            order = torch.randperm(n, generator=gen)
        else:
            order = torch.arange(n)
        return shard_indices(order, self.rank, self.world_size, self.pad)

    def augmentation_params(self, epoch: int, count: int) -> tuple[Tensor, Tensor]:
        """(offsets ``[count, 2]`` in ``0..2*padding``, flips ``[count]`` bool) for ``epoch`` on this rank (CPU)."""
        gen = torch.Generator().manual_seed(derived_seed(self.seed, epoch, self.rank, 0xA06))
        offsets = torch.randint(0, 2 * self.padding + 1, (count, 2), generator=gen)
        flips = torch.rand(count, generator=gen) < 0.5
        return offsets, flips

    # -- iteration -----------------------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        epoch = self.epoch
        self.epoch += 1  # a later iteration without set_epoch() gets the next epoch
        indices = self.epoch_indices(epoch)
        count = len(self) * self.batch_size if self.drop_last else len(indices)
        indices = indices[:count].to(self.device)
        if self.augment:
            offsets, flips = self.augmentation_params(epoch, count)
            offsets, flips = offsets.to(self.device), flips.to(self.device)
        for start in range(0, count, self.batch_size):
            idx = indices[start : start + self.batch_size]
            raw = self.images[idx]
            if self.augment:
                raw = random_crop_flip(
                    raw, offsets[start : start + self.batch_size], flips[start : start + self.batch_size], self.padding
                )
            x = raw.to(torch.float32).mul_(self._scale).add_(self._shift)
            x = x.contiguous(memory_format=torch.channels_last) if self._channels_last else x.contiguous()
            yield x, self.labels[idx]
