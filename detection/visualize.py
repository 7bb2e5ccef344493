"""Draw the detections of the unpruned and the pruned detector side by side, each with its frames per second.

    python detection/visualize.py --image street.jpg --compress_rate "[0.]+[0.5]*3+[0.6]*16" \\
        --weights run/model_best.pth --baseline-weights baseline/model_best.pth --out side_by_side.png
    python detection/visualize.py --video frames/ --compress_rate ... --out demo.gif

FPS is 1 / the wall time of ``model([frame])`` under ``no_grad`` (CUDA synchronised before and after), batch 1,
after one untimed warm-up call. For ``--image`` both models are timed ``--repeats`` times, interleaved
(``coring.latency``), and the banner shows the median; for ``--video`` it shows the current frame's FPS and the mean
FPS so far. Inputs: any
image PIL reads; a video as an animated GIF/WebP/TIFF or a folder of frames (``torchvision.io`` of this
torchvision has no video decoder and PyAV/OpenCV are not dependencies: extract frames first, e.g.
``ffmpeg -i in.mp4 frames/%05d.png``). Outputs: an image file for ``--image``; for ``--video`` an animated GIF
(``--out x.gif``, Pillow) or a folder of PNG frames (any other ``--out``).
Without ``--weights``/``--baseline-weights`` the models keep random weights: the speeds are real but the
models draw few or no boxes above ``--score-thresh``. The detectors keep every detection down to
``--score-thresh`` (torchvision's own 0.05 floor would hide a random or barely trained model's boxes even at
``--score-thresh 0``). Each panel's banner (model, rate, FPS) wraps onto as many lines as the panel's width needs.
"""
from __future__ import annotations

import argparse
import sys
import textwrap
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageSequence
from torch import nn

from coring.checkpoint import CheckpointError, load_weights
from coring.cli import threads
from coring.device import resolve_device
from coring.latency import spread, sync, time_interleaved
from coring.threads import configure_threads, describe_threads
from detection.detectors import DETECTORS, build_detector
from detection.tiny_coco import SKELETON

__all__ = ["get_args_parser", "read_frames", "timed_detect", "draw_detections", "banner_lines", "visualize", "main"]

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff"}
_COLORS = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
           (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212)]


def _category_names(model_name: str) -> list[str]:
    """COCO names from torchvision's weight metadata (reading it downloads nothing)."""
    from torchvision.models.detection import FasterRCNN_ResNet50_FPN_Weights, KeypointRCNN_ResNet50_FPN_Weights

    weights = KeypointRCNN_ResNet50_FPN_Weights if model_name == "keypointrcnn" else FasterRCNN_ResNet50_FPN_Weights
    return list(weights.DEFAULT.meta["categories"])


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--image", help="an image file")
    source.add_argument("--video", help="an animated GIF/WebP/TIFF or a folder of frames (sorted by name)")
    p.add_argument("--out", required=True, help="image file (--image); .gif or a folder of PNGs (--video)")
    p.add_argument("--model", default="fasterrcnn", choices=sorted(DETECTORS))
    p.add_argument("--compress_rate", "--compress-rate", "-cpr", required=True, help="rates of the pruned model")
    p.add_argument("--fpn-rate", type=float, default=0.0, help="FPN channels removed in the pruned model")
    p.add_argument("--weights", default=None,
                   help="pruned detector checkpoint (detection/train.py); without it: random weights, few or no boxes")
    p.add_argument("--baseline-weights", default=None,
                   help="unpruned detector checkpoint (train.py -cpr '[0.]*20'); without it: random weights")
    p.add_argument("--score-thresh", type=float, default=0.75, help="draw detections above this score")
    p.add_argument("--min-size", type=int, default=800, help="detector resize: short side")
    p.add_argument("--max-size", type=int, default=1333, help="detector resize: long side at most")
    p.add_argument("--proposals", type=int, default=1000, help="RPN proposals kept per image (torchvision: 1000)")
    p.add_argument("--max-frames", type=int, default=None, help="stop after N video frames")
    p.add_argument("--repeats", type=int, default=5,
                   help="--image: timed calls per model, interleaved (FPS from the median)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--threads", type=threads, default="auto", help="CPU threads: a number, or auto = the idle cores")
    return p


def read_frames(path: str | Path, max_frames: int | None = None) -> Iterator[Image.Image]:
    """RGB frames of an image, an animated image or a folder of images (sorted by name)."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise FileNotFoundError(f"no image frames ({', '.join(sorted(IMAGE_SUFFIXES))}) in '{path}'")
        frames: Iterator[Image.Image] = (Image.open(f).convert("RGB") for f in files)
    elif path.is_file():
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            raise ValueError(f"cannot decode '{path}': torchvision.io has no video decoder here; extract frames "
                             f"(ffmpeg -i {path.name} frames/%05d.png) and pass the folder, or use a GIF")
        frames = (f.convert("RGB") for f in ImageSequence.Iterator(Image.open(path)))
    else:
        raise FileNotFoundError(f"input not found: '{path}'")
    for i, frame in enumerate(frames):
        if max_frames is not None and i >= max_frames:
            return
        yield frame


@torch.no_grad()
def timed_detect(model: nn.Module, image: torch.Tensor) -> tuple[dict[str, torch.Tensor], float]:
    """``(detections on the CPU, wall seconds)`` of ``model([image])``, synchronised on CUDA."""
    sync(image.device)
    start = time.perf_counter()
    output = model([image])[0]
    sync(image.device)
    return {k: v.cpu() for k, v in output.items()}, time.perf_counter() - start


def draw_detections(image: Image.Image, output: dict[str, torch.Tensor], names: Sequence[str],
                    score_thresh: float, banner: str, banner_height: int = 0) -> Image.Image:
    """A copy of ``image`` with boxes, labels, masks and keypoints above ``score_thresh``, under a banner strip
    that wraps ``banner`` to the image's width (nothing is cut off, however narrow the image) and is at least
    ``banner_height`` lines high (so side-by-side panels line up)."""
    keep = output["scores"] >= score_thresh
    canvas = image.convert("RGBA")
    if "masks" in output and keep.any():
        overlay = np.zeros((image.height, image.width, 4), dtype=np.uint8)
        for k, mask in enumerate(output["masks"][keep]):
            overlay[mask[0].numpy() > 0.5] = (*_COLORS[k % len(_COLORS)], 110)
        canvas = Image.alpha_composite(canvas, Image.fromarray(overlay, "RGBA"))
    canvas = canvas.convert("RGB")
    draw = ImageDraw.Draw(canvas)
    labels, scores = output["labels"][keep].tolist(), output["scores"][keep].tolist()
    for k, box in enumerate(output["boxes"][keep].tolist()):
        color = _COLORS[k % len(_COLORS)]
        draw.rectangle(box, outline=color, width=2)
        name = names[labels[k]] if 0 <= labels[k] < len(names) else str(labels[k])
        draw.text((box[0] + 2, box[1] + 1), f"{name} {scores[k]:.2f}", fill=color)
    if "keypoints" in output:
        for kps in output["keypoints"][keep]:
            points = [tuple(p[:2]) for p in kps.tolist()]
            for a, b in SKELETON:
                draw.line([points[a - 1], points[b - 1]], fill=(255, 255, 0), width=2)
            for x, y in points:
                draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=(255, 0, 0))
    return _with_banner(canvas, banner_lines(banner, canvas.width), banner_height)


def banner_lines(text: str, width: int) -> list[str]:
    """``text`` wrapped into lines that fit ``width`` pixels in PIL's default font."""
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    char_w = max(1.0, probe.textlength("0" * 20) / 20)
    return textwrap.wrap(text, width=max(8, int((width - 6) / char_w))) or [""]


def _with_banner(image: Image.Image, lines: Sequence[str], height_lines: int = 0) -> Image.Image:
    """``image`` under a black strip of ``max(len(lines), height_lines)`` text lines."""
    line_h = 12
    strip = line_h * max(len(lines), height_lines) + 4
    out = Image.new("RGB", (image.width, image.height + strip), (0, 0, 0))
    out.paste(image, (0, strip))
    draw = ImageDraw.Draw(out)
    for k, line in enumerate(lines):
        draw.text((3, 2 + k * line_h), line, fill=(255, 255, 255))
    return out


def _side_by_side(left: Image.Image, right: Image.Image) -> Image.Image:
    out = Image.new("RGB", (left.width + right.width + 4, max(left.height, right.height)), (0, 0, 0))
    out.paste(left, (0, 0))
    out.paste(right, (left.width + 4, 0))
    return out


def _load_model(args: argparse.Namespace, compress_rate: str | None, weights: str | None,
                device: torch.device, fpn_rate: float = 0.0) -> nn.Module:
    kwargs: dict[str, Any] = {"min_size": args.min_size, "max_size": args.max_size,
                              "rpn_post_nms_top_n_test": args.proposals, "box_score_thresh": args.score_thresh}
    model = build_detector(args.model, compress_rate, norm_layer="bn", fpn_rate=fpn_rate, **kwargs)
    if weights:
        load_weights(model, weights)
    return model.to(device).eval()


def visualize(args: argparse.Namespace) -> dict[str, Any]:
    """Run both models on every frame, write the side-by-side output; returns mean FPS and the output path."""

    device = resolve_device(args.device)
    configure_threads(args.threads)
    models = {"unpruned": _load_model(args, None, args.baseline_weights, device),
              "pruned": _load_model(args, args.compress_rate, args.weights, device, args.fpn_rate)}
    names = _category_names(args.model)
    frames = list(read_frames(args.image or args.video, args.max_frames if args.video else 1))
    if not frames:
        raise ValueError(f"no frames read from '{args.image or args.video}'")
    to_tensor = lambda im: torch.from_numpy(np.array(im)).permute(2, 0, 1).float().div(255).to(device)  # noqa: E731
    for model in models.values():  # warm-up: first-call allocations and kernel selection are not timed
        timed_detect(model, to_tensor(frames[0]))
    times: dict[str, list[float]] = {name: [] for name in models}
    drawn = []
    labels = {"unpruned": "unpruned",
              "pruned": f"pruned {args.compress_rate}" + (f", FPN {args.fpn_rate:g}" if args.fpn_rate else "")}
    for frame in frames:
        tensor = to_tensor(frame)
        results = {}
        if args.image:  # one frame: the median of interleaved calls, so noise cannot invert the comparison
            with torch.no_grad():
                timed = time_interleaved({n: (lambda m=m, t=tensor: m([t])) for n, m in models.items()}, device, 0,
                                         args.repeats)
        for name, model in models.items():
            output, seconds = timed_detect(model, tensor)
            if args.image:
                seconds = spread(timed[name]["wall"]).median
            times[name].append(seconds)
            mean_fps = len(times[name]) / sum(times[name])
            text = (f"{labels[name]}: {1 / seconds:.2f} FPS (median of {args.repeats})" if args.image
                    else f"{labels[name]}: {1 / seconds:.2f} FPS (mean {mean_fps:.2f})")
            results[name] = (output, text)
        height = max(len(banner_lines(text, frame.width)) for _, text in results.values())
        drawn.append(_side_by_side(*(draw_detections(frame, output, names, args.score_thresh, text, height)
                                     for output, text in results.values())))
    out = Path(args.out)
    if args.image:
        out.parent.mkdir(parents=True, exist_ok=True)
        drawn[0].save(out)
    elif out.suffix.lower() == ".gif":
        out.parent.mkdir(parents=True, exist_ok=True)
        drawn[0].save(out, save_all=True, append_images=drawn[1:], duration=100, loop=0)
    else:
        out.mkdir(parents=True, exist_ok=True)
        for i, image in enumerate(drawn):
            image.save(out / f"{i:05d}.png")
    fps = {name: len(t) / sum(t) for name, t in times.items()}
    print(f"{len(frames)} frame(s) on {device} ({describe_threads()}): unpruned {fps['unpruned']:.2f} FPS, pruned {fps['pruned']:.2f} FPS "
          f"(x{fps['pruned'] / fps['unpruned']:.2f}) -> {out}")
    return {"fps": fps, "frames": len(frames), "out": str(out)}


def main(argv: Sequence[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    try:
        visualize(args)
    except (CheckpointError, FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
