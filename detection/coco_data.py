"""COCO-format data for the detectors: reading, transforms, aspect-ratio grouping and collation.

Layout (COCO 2017, nothing is downloaded)::

    <data_path>/annotations/instances_{train,val}2017.json          boxes and masks (Faster/Mask R-CNN)
    <data_path>/annotations/person_keypoints_{train,val}2017.json   keypoints (Keypoint R-CNN)
    <data_path>/train2017/*.jpg   <data_path>/val2017/*.jpg

A target is the dict torchvision's detectors take: ``boxes`` (xyxy, float), ``labels`` (the COCO category ids,
so 91 classes cover COCO), ``image_id``, ``area``, ``iscrowd`` and, per task, ``masks`` (uint8 N x H x W, from
polygons or RLE) or ``keypoints`` (N x 17 x 3). Crowd regions and degenerate boxes are left out of the targets
(the evaluator still sees them in the annotation file). Training drops images without usable annotations
(keypoints: fewer than 10 visible keypoints in total), as torchvision's references do.
"""
from __future__ import annotations

import contextlib
import io
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import BatchSampler, DataLoader, Dataset, Sampler
from torch.utils.data.distributed import DistributedSampler

from data import DataNotFoundError

__all__ = ["TASKS", "annotation_file", "check_coco_layout", "CocoDetection", "Compose", "ToTensor",
           "RandomHorizontalFlip", "get_transforms", "aspect_ratio_groups", "GroupedBatchSampler", "collate_fn",
           "build_dataset", "train_loader", "eval_loader", "set_epoch", "COCO_FLIP_INDEX", "MIN_KEYPOINTS_PER_IMAGE"]

TASKS = ("bbox", "segm", "keypoints")
COCO_FLIP_INDEX = [0, 2, 1, 4, 3, 6, 5, 8, 7, 10, 9, 12, 11, 14, 13, 16, 15]
MIN_KEYPOINTS_PER_IMAGE = 10
Target = dict[str, Any]


def annotation_file(task: str, split: str) -> str:
    """``annotations/<instances|person_keypoints>_<split>2017.json``, relative to the data path."""
    prefix = "person_keypoints" if task == "keypoints" else "instances"
    return f"annotations/{prefix}_{split}2017.json"


def check_coco_layout(root: str | Path, split: str, task: str) -> tuple[Path, Path]:
    """The image folder and annotation file of ``split``; a one-line ``DataNotFoundError`` when either is missing."""
    root = Path(root)
    images, ann = root / f"{split}2017", root / annotation_file(task, split)
    missing = [str(p) for p in (ann, images) if not p.exists()]
    if missing:
        raise DataNotFoundError(
            f"COCO not found in '{root}' (missing {', '.join(missing)}): put COCO 2017 there as "
            f"annotations/{Path(annotation_file(task, split)).name} and {split}2017/*.jpg "
            f"(or use --dataset tiny); nothing is downloaded")
    return images, ann


def _quiet_coco(ann_file: Path) -> Any:
    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(ann_file))


class CocoDetection(Dataset):
    """One split of a COCO-format set for ``task`` in ``TASKS``; yields ``(image, target)`` after ``transforms``."""

    def __init__(self, root: str | Path, split: str, task: str = "bbox", transforms: Callable | None = None,
                 train: bool = False, limit: int | None = None) -> None:
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {task!r}")
        self.image_dir, self.ann_file = check_coco_layout(root, split, task)
        self.coco = _quiet_coco(self.ann_file)
        self.task, self.transforms = task, transforms
        ids = sorted(self.coco.imgs)
        if train:
            ids = [i for i in ids if self._usable(self.coco.imgToAnns.get(i, []))]
        self.ids: list[int] = ids[:limit] if limit is not None else ids

    def _usable(self, anns: list[dict]) -> bool:
        anns = [a for a in anns if not a.get("iscrowd", 0) and a["bbox"][2] > 1 and a["bbox"][3] > 1]
        if not anns:
            return False
        if self.task == "keypoints":
            return sum(sum(v > 0 for v in a.get("keypoints", [])[2::3]) for a in anns) >= MIN_KEYPOINTS_PER_IMAGE
        return True

    def __len__(self) -> int:
        return len(self.ids)

    def aspect_ratios(self) -> list[float]:
        """width / height of every image, from the annotation file (no image is opened)."""
        return [self.coco.imgs[i]["width"] / self.coco.imgs[i]["height"] for i in self.ids]

    def target(self, image_id: int, width: int, height: int) -> Target:
        """The detector target of one image (crowds and degenerate boxes removed)."""
        anns = [a for a in self.coco.imgToAnns.get(image_id, []) if not a.get("iscrowd", 0)]
        boxes = torch.as_tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]
        boxes[:, 0::2].clamp_(0, width)
        boxes[:, 1::2].clamp_(0, height)
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        anns = [a for a, k in zip(anns, keep.tolist()) if k]
        target: Target = {
            "boxes": boxes[keep],
            "labels": torch.as_tensor([a["category_id"] for a in anns], dtype=torch.int64),
            "image_id": image_id,
            "area": torch.as_tensor([a.get("area", 0.0) for a in anns], dtype=torch.float32),
            "iscrowd": torch.zeros(len(anns), dtype=torch.int64),
        }
        if self.task == "segm":
            masks = [self.coco.annToMask(a) for a in anns]
            target["masks"] = (torch.from_numpy(np.stack(masks)) if masks
                               else torch.zeros((0, height, width), dtype=torch.uint8))
        if self.task == "keypoints":
            kps = torch.as_tensor([a.get("keypoints", []) for a in anns], dtype=torch.float32)
            target["keypoints"] = kps.reshape(len(anns), -1, 3) if len(anns) else torch.zeros((0, 17, 3))
        return target

    def __getitem__(self, index: int) -> tuple[Any, Target]:
        image_id = self.ids[index]
        info = self.coco.imgs[image_id]
        image = Image.open(self.image_dir / info["file_name"]).convert("RGB")
        target = self.target(image_id, *image.size)
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target


# ---------------------------------------------------------------------------------------------- transforms
class Compose:
    """Apply ``(image, target)`` transforms in order."""

    def __init__(self, transforms: Sequence[Callable]) -> None:
        self.transforms = list(transforms)

    def __call__(self, image: Any, target: Target) -> tuple[Any, Target]:
        for t in self.transforms:
            image, target = t(image, target)
        return image, target


class ToTensor:
    """PIL image -> float tensor in [0, 1], C x H x W (normalisation happens inside the detector)."""

    def __call__(self, image: Any, target: Target) -> tuple[torch.Tensor, Target]:
        from torchvision.transforms.functional import pil_to_tensor

        tensor = pil_to_tensor(image) if isinstance(image, Image.Image) else torch.as_tensor(image)
        return tensor.float().div_(255) if tensor.dtype == torch.uint8 else tensor, target


class RandomHorizontalFlip:
    """Flip image, boxes, masks and keypoints (left/right keypoints swapped by ``flip_index``) with prob ``p``."""

    def __init__(self, p: float = 0.5, flip_index: Sequence[int] = COCO_FLIP_INDEX) -> None:
        self.p, self.flip_index = p, list(flip_index)

    def __call__(self, image: torch.Tensor, target: Target) -> tuple[torch.Tensor, Target]:
        if torch.rand(1).item() >= self.p:
            return image, target
        width = image.shape[-1]
        image = image.flip(-1)
        target = dict(target)
        boxes = target["boxes"].clone()
        boxes[:, [0, 2]] = width - target["boxes"][:, [2, 0]]
        target["boxes"] = boxes
        if "masks" in target:
            target["masks"] = target["masks"].flip(-1)
        if "keypoints" in target:
            kps = target["keypoints"][:, self.flip_index].clone()
            kps[..., 0] = width - kps[..., 0]
            kps[kps[..., 2] == 0] = 0
            target["keypoints"] = kps
        return image, target


def get_transforms(train: bool, augmentation: str = "hflip") -> Compose:
    """``ToTensor`` and, for training with ``augmentation='hflip'``, a random horizontal flip."""
    if augmentation not in ("hflip", "none"):
        raise ValueError(f"augmentation must be 'hflip' or 'none', got {augmentation!r}")
    steps: list[Callable] = [ToTensor()]
    if train and augmentation == "hflip":
        steps.append(RandomHorizontalFlip(0.5))
    return Compose(steps)


# ---------------------------------------------------------------------------------------------- batching
def aspect_ratio_groups(aspect_ratios: Sequence[float], k: int = 3) -> list[int]:
    """Group ids from ``2k`` log-spaced aspect-ratio bins between 1/2 and 2 (plus one group each side)."""
    bins = 2 ** np.linspace(-1, 1, 2 * k + 1)
    return np.digitize(np.asarray(aspect_ratios, dtype=np.float64), bins).tolist()


class GroupedBatchSampler(BatchSampler):
    """Batches whose images share an aspect-ratio group, so padding to the batch's largest image wastes little.

    Yields exactly ``max(1, len(sampler) // batch_size)`` batches per epoch (equal on every rank under
    ``DistributedSampler``): full single-group batches first, then the left-over images in sampler order, mixed.
    """

    def __init__(self, sampler: Sampler, group_ids: Sequence[int], batch_size: int) -> None:
        self.sampler, self.group_ids, self.batch_size = sampler, list(group_ids), batch_size

    def __iter__(self) -> Iterator[list[int]]:
        wanted, done = len(self), 0
        buffers: dict[int, list[tuple[int, int]]] = defaultdict(list)
        seen: list[int] = []
        used: set[int] = set()  # positions in the sampler's order (an index may repeat under padding)
        for position, idx in enumerate(self.sampler):
            seen.append(idx)
            group = buffers[self.group_ids[idx]]
            group.append((position, idx))
            if len(group) == self.batch_size and done < wanted:
                yield [i for _, i in group]
                used.update(p for p, _ in group)
                group.clear()
                done += 1
        leftovers = [idx for position, idx in enumerate(seen) if position not in used]
        for start in range(0, len(leftovers), self.batch_size):
            if done >= wanted:
                return
            yield leftovers[start:start + self.batch_size]
            done += 1

    def __len__(self) -> int:
        return max(1, len(self.sampler) // self.batch_size) if len(self.sampler) else 0


def collate_fn(batch: list[tuple[Any, Target]]) -> tuple[tuple, tuple]:
    """``[(img, tgt), ...]`` -> ``((img, ...), (tgt, ...))``: detectors take lists of differently sized images."""
    return tuple(zip(*batch))  # type: ignore[return-value]


def build_dataset(data_path: str | Path, split: str, task: str, train: bool, augmentation: str = "hflip",
                  limit: int | None = None) -> CocoDetection:
    """``CocoDetection`` of ``<data_path>`` with the train or eval transforms."""
    return CocoDetection(data_path, split, task, get_transforms(train, augmentation), train=train, limit=limit)


def train_loader(dataset: CocoDetection, batch_size: int, workers: int = 4, group_factor: int = 3,
                 distributed: bool = False, seed: int = 0) -> DataLoader:
    """Shuffled loader with aspect-ratio grouping (``group_factor < 0`` turns it off), ``DistributedSampler``
    under torchrun; call `set_epoch` before each epoch."""
    if distributed:
        sampler: Sampler = DistributedSampler(dataset, shuffle=True, seed=seed)
    else:
        sampler = torch.utils.data.RandomSampler(dataset, generator=torch.Generator().manual_seed(seed))
        sampler.base_seed = seed  # type: ignore[attr-defined]  # read by set_epoch
    if group_factor >= 0:
        batches: BatchSampler = GroupedBatchSampler(sampler, aspect_ratio_groups(dataset.aspect_ratios(),
                                                                                 group_factor), batch_size)
    else:
        batches = BatchSampler(sampler, batch_size, drop_last=True)
    return DataLoader(dataset, batch_sampler=batches, num_workers=workers, collate_fn=collate_fn,
                      persistent_workers=False)


def eval_loader(dataset: CocoDetection, workers: int = 4, distributed: bool = False) -> DataLoader:
    """Batch-1 loader in order; under torchrun each rank takes a shard (padded: the evaluator drops repeats)."""
    sampler: Sampler = (DistributedSampler(dataset, shuffle=False) if distributed
                        else torch.utils.data.SequentialSampler(dataset))
    return DataLoader(dataset, batch_size=1, sampler=sampler, num_workers=workers, collate_fn=collate_fn)


def set_epoch(loader: DataLoader, epoch: int) -> None:
    """Reshuffle a `train_loader` for ``epoch``: ``DistributedSampler.set_epoch`` or a reseeded RandomSampler."""
    sampler = getattr(loader.batch_sampler, "sampler", None)
    if isinstance(sampler, DistributedSampler):
        sampler.set_epoch(epoch)
    elif isinstance(sampler, torch.utils.data.RandomSampler) and sampler.generator is not None:
        sampler.generator.manual_seed(getattr(sampler, "base_seed", 0) + epoch)
