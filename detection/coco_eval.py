"""COCO evaluation of detector outputs with pycocotools (``bbox``, ``segm``, ``keypoints``).

`CocoEvaluator` collects the outputs of each image (``{image_id: output}``), gathers them from every rank under
torchrun (repeats from a padded ``DistributedSampler`` collapse because they share an image id), and on rank 0
runs ``COCOeval`` against the annotation file, restricted to the evaluated image ids. Detections are converted as
COCO expects: boxes to ``[x, y, w, h]``, masks (probabilities) thresholded at 0.5 and RLE-encoded, keypoints
flattened to ``[x1, y1, v1, ...]``; labels are COCO category ids.
"""
from __future__ import annotations

import contextlib
import io
from typing import Any, Sequence

import numpy as np
import torch
import torch.distributed as dist

from coring.distributed import is_distributed

__all__ = ["CocoEvaluator", "STAT_NAMES", "iou_types_for"]

STAT_NAMES = {
    "bbox": ["AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"],
    "keypoints": ["AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl"],
}
STAT_NAMES["segm"] = STAT_NAMES["bbox"]
_IOU_TYPES = {"fasterrcnn": ("bbox",), "maskrcnn": ("bbox", "segm"), "keypointrcnn": ("bbox", "keypoints")}


def iou_types_for(model_name: str) -> tuple[str, ...]:
    """The COCO metrics of a detector: boxes always, plus masks or keypoints."""
    return _IOU_TYPES[model_name]


def _to_coco_results(image_id: int, output: dict[str, torch.Tensor], iou_type: str) -> list[dict[str, Any]]:
    boxes = output["boxes"].detach().float().cpu()
    if len(boxes) == 0:
        return []
    boxes = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1).tolist()
    scores, labels = output["scores"].tolist(), output["labels"].tolist()
    base = [{"image_id": image_id, "category_id": int(labels[k]), "score": float(scores[k])}
            for k in range(len(scores))]
    if iou_type == "bbox":
        return [{**b, "bbox": box} for b, box in zip(base, boxes)]
    if iou_type == "segm":
        from pycocotools import mask as mask_utils

        masks = (output["masks"].detach().cpu() > 0.5).squeeze(1).numpy().astype(np.uint8)
        results = []
        for b, m in zip(base, masks):
            rle = mask_utils.encode(np.asfortranarray(m))
            results.append({**b, "segmentation": {"size": rle["size"], "counts": rle["counts"].decode("ascii")}})
        return results
    if iou_type == "keypoints":
        kps = output["keypoints"].detach().float().cpu().flatten(1).tolist()
        return [{**b, "keypoints": k} for b, k in zip(base, kps)]
    raise ValueError(f"unknown iou type {iou_type!r}")


class CocoEvaluator:
    """Accumulate detector outputs and score them with ``COCOeval`` against ``coco_gt`` (a pycocotools COCO)."""

    def __init__(self, coco_gt: Any, iou_types: Sequence[str], img_ids: Sequence[int] | None = None) -> None:
        self.coco_gt, self.iou_types = coco_gt, tuple(iou_types)
        self.img_ids = list(img_ids) if img_ids is not None else sorted(coco_gt.getImgIds())
        self.outputs: dict[int, dict[str, torch.Tensor]] = {}

    def update(self, outputs: dict[int, dict[str, torch.Tensor]]) -> None:
        """Add ``{image_id: detector output}`` (moved to the CPU)."""
        for image_id, output in outputs.items():
            self.outputs[int(image_id)] = {k: v.detach().cpu() for k, v in output.items()}

    def gather(self) -> None:
        """Merge every rank's outputs into each rank's (no-op in one process)."""
        if not is_distributed():
            return
        everyone: list[dict | None] = [None] * dist.get_world_size()
        dist.all_gather_object(everyone, self.outputs)
        merged: dict[int, dict[str, torch.Tensor]] = {}
        for part in everyone:
            merged.update(part or {})
        self.outputs = merged

    def results(self, iou_type: str) -> list[dict[str, Any]]:
        """The COCO results list of ``iou_type`` for every collected image."""
        return [r for image_id in sorted(self.outputs) for r in _to_coco_results(image_id, self.outputs[image_id],
                                                                                 iou_type)]

    def summarize(self) -> tuple[dict[str, dict[str, float]], str]:
        """``({iou_type: {stat: value}}, printable summary)``; no detections at all scores 0 (with a note)."""
        from pycocotools.cocoeval import COCOeval

        stats: dict[str, dict[str, float]] = {}
        text = []
        for iou_type in self.iou_types:
            results = self.results(iou_type)
            names = STAT_NAMES[iou_type]
            if not results:
                stats[iou_type] = {name: 0.0 for name in names}
                text.append(f"IoU metric: {iou_type}\n  no detections on {len(self.outputs)} images: every AP is 0")
                continue
            buffer = io.StringIO()
            with contextlib.redirect_stdout(buffer):
                coco_dt = self.coco_gt.loadRes(results)
                evaluator = COCOeval(self.coco_gt, coco_dt, iou_type)
                evaluator.params.imgIds = self.img_ids
                evaluator.evaluate()
                evaluator.accumulate()
            with contextlib.redirect_stdout(buffer := io.StringIO()):
                evaluator.summarize()
            stats[iou_type] = {name: float(v) for name, v in zip(names, evaluator.stats)}
            text.append(f"IoU metric: {iou_type} ({len(results)} detections on {len(self.outputs)} images)\n"
                        f"{buffer.getvalue().rstrip()}")
        return stats, "\n".join(text)
