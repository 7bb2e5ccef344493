"""A tiny COCO-format data set for tests and the ``--dataset tiny`` demo, drawn on the fly (nothing downloaded).

``make_tiny_coco(root)`` writes COCO's layout::

    root/train2017/000000000001.png ...            (the same images in val2017/)
    root/annotations/instances_{train,val}2017.json        person (1), car (3), sports ball (37)
    root/annotations/person_keypoints_{train,val}2017.json person only, 17 keypoints and COCO's skeleton

Each image holds a stick-figure person (box, polygon mask, 17 visible keypoints), a rectangle "car" (polygon
mask) and an ellipse "sports ball" (polygon mask; compressed RLE in every third image). Images alternate between
landscape and portrait so that aspect-ratio grouping sees two groups. Train and val hold the same images, so a
model that fits the training images scores on val too.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils

__all__ = ["make_tiny_coco", "KEYPOINT_NAMES", "SKELETON", "CATEGORIES"]

KEYPOINT_NAMES = ["nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
                  "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee",
                  "right_knee", "left_ankle", "right_ankle"]
SKELETON = [[16, 14], [14, 12], [17, 15], [15, 13], [12, 13], [6, 12], [7, 13], [6, 7], [6, 8], [7, 9], [8, 10],
            [9, 11], [2, 3], [1, 2], [1, 3], [2, 4], [3, 5], [4, 6], [5, 7]]  # COCO's, 1-based
CATEGORIES = [{"id": 1, "name": "person", "supercategory": "person"},
              {"id": 3, "name": "car", "supercategory": "vehicle"},
              {"id": 37, "name": "sports ball", "supercategory": "sports"}]
# (x, y) of each keypoint inside the person's box, as fractions; "left" is the person's left (image right).
_POSE = [(0.5, 0.1), (0.58, 0.07), (0.42, 0.07), (0.66, 0.1), (0.34, 0.1), (0.75, 0.27), (0.25, 0.27),
         (0.88, 0.42), (0.12, 0.42), (0.95, 0.57), (0.05, 0.57), (0.65, 0.6), (0.35, 0.6), (0.68, 0.8),
         (0.32, 0.8), (0.7, 0.97), (0.3, 0.97)]


def _ellipse_polygon(cx: float, cy: float, rx: float, ry: float, n: int = 16) -> list[float]:
    points = []
    for i in range(n):
        a = 2 * math.pi * i / n
        points += [round(cx + rx * math.cos(a), 2), round(cy + ry * math.sin(a), 2)]
    return points


def _area(segmentation: list | dict, height: int, width: int) -> float:
    if isinstance(segmentation, dict):  # compressed RLE
        return float(mask_utils.area(segmentation))
    return float(mask_utils.area(mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))))


def _draw_image(rng: np.random.RandomState, width: int, height: int, image_id: int) -> tuple[Image.Image, list]:
    """One image and its annotations (category, box, segmentation, keypoints or None)."""
    base = rng.randint(20, 90, size=3)
    noise = rng.randint(-15, 16, size=(height, width, 3))
    image = Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    slot_w = width / 3
    annotations = []

    # person: a stick figure in the first third, its keypoints on the joints
    pw, ph = slot_w * rng.uniform(0.7, 0.9), height * rng.uniform(0.6, 0.85)
    px, py = rng.uniform(0, slot_w - pw), rng.uniform(0, height - ph)
    keypoints = [(px + fx * pw, py + fy * ph) for fx, fy in _POSE]
    for a, b in SKELETON:
        draw.line([keypoints[a - 1], keypoints[b - 1]], fill=(250, 220, 180), width=3)
    hx, hy = keypoints[0]
    draw.ellipse([hx - 0.14 * pw, hy - 0.09 * ph, hx + 0.14 * pw, hy + 0.09 * ph], fill=(250, 220, 180))
    person_poly = _ellipse_polygon(px + pw / 2, py + ph / 2, pw / 2, ph / 2)
    flat_kp = [v for x, y in keypoints for v in (round(x, 2), round(y, 2), 2)]
    annotations.append((1, [px, py, pw, ph], [person_poly], flat_kp))

    # car: a filled rectangle in the middle third
    cw, ch = slot_w * rng.uniform(0.5, 0.9), height * rng.uniform(0.25, 0.5)
    cx, cy = slot_w + rng.uniform(0, slot_w - cw), rng.uniform(0, height - ch)
    draw.rectangle([cx, cy, cx + cw - 1, cy + ch - 1], fill=tuple(int(v) for v in rng.randint(120, 255, 3)))
    annotations.append((3, [cx, cy, cw, ch], [[cx, cy, cx + cw, cy, cx + cw, cy + ch, cx, cy + ch]], None))

    # sports ball: a filled ellipse in the last third; an RLE mask in every third image
    r = min(slot_w, height) * rng.uniform(0.2, 0.4)
    bx, by = 2 * slot_w + rng.uniform(r, slot_w - r), rng.uniform(r, height - r)
    draw.ellipse([bx - r, by - r, bx + r, by + r], fill=(230, 120, 40))
    ball_poly = _ellipse_polygon(bx, by, r, r)
    segmentation: list | dict = [ball_poly]
    if image_id % 3 == 0:
        rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
        segmentation = {"size": rle["size"], "counts": rle["counts"].decode("ascii")}
    annotations.append((37, [bx - r, by - r, 2 * r, 2 * r], segmentation, None))
    return image, annotations


def make_tiny_coco(root: str | Path, num_images: int = 6, size: tuple[int, int] = (160, 128),
                   seed: int = 0) -> Path:
    """Write the tiny set under ``root`` (``size`` = (width, height) of the landscape images); returns ``root``."""
    root = Path(root)
    rng = np.random.RandomState(seed)
    images, instances, keypoint_anns = [], [], []
    drawn = []
    for image_id in range(1, num_images + 1):
        width, height = size if image_id % 2 else size[::-1]
        image, annotations = _draw_image(rng, width, height, image_id)
        file_name = f"{image_id:012d}.png"
        drawn.append((file_name, image))
        images.append({"id": image_id, "file_name": file_name, "width": width, "height": height})
        for category, box, segmentation, keypoints in annotations:
            ann = {"id": len(instances) + 1, "image_id": image_id, "category_id": category,
                   "bbox": [round(float(v), 2) for v in box], "segmentation": segmentation,
                   "area": _area(segmentation, height, width), "iscrowd": 0}
            instances.append(ann)
            if keypoints is not None:
                keypoint_anns.append({**ann, "keypoints": keypoints, "num_keypoints": len(keypoints) // 3})
    person = {**CATEGORIES[0], "keypoints": KEYPOINT_NAMES, "skeleton": SKELETON}
    info = {"description": "tiny COCO-format set drawn by detection/tiny_coco.py", "version": "1.0"}
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    for split in ("train", "val"):
        (root / f"{split}2017").mkdir(parents=True, exist_ok=True)
        for file_name, image in drawn:
            image.save(root / f"{split}2017" / file_name)
        files = {f"instances_{split}2017.json": {"categories": CATEGORIES, "annotations": instances},
                 f"person_keypoints_{split}2017.json": {"categories": [person], "annotations": keypoint_anns}}
        for name, content in files.items():
            dataset = {"info": info, "licenses": [], "images": images, **content}
            (root / "annotations" / name).write_text(json.dumps(dataset))
    return root
