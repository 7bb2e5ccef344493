"""Train and evaluate Faster R-CNN, Mask R-CNN or Keypoint R-CNN on a pruned ResNet-50-FPN (COCO format).

The recipe of torchvision's detection references (the paper's base, detection/README.md)::
    torchrun --nproc_per_node=8 detection/train.py --model maskrcnn --data-path data/coco \\
        --compress_rate "[0.]+[0.1]*3+[0.35]*16" --weights-backbone pruned_resnet50.pth.tar \\
        --epochs 26 --lr-steps 16 22 --lr 0.02 -b 2

SGD (lr 0.02 for 8 processes x 2 images, momentum 0.9, weight decay 1e-4), linear warm-up over the first
``min(1000, len(loader) - 1)`` iterations, MultiStepLR x0.1 at epochs 16 and 22 of 26 (Keypoint R-CNN: 46 epochs,
steps 36 and 43), aspect-ratio grouping (factor 3), horizontal flips, AMP on CUDA. After each epoch the model is
scored with pycocotools and rank 0 writes, atomically, ``checkpoint.pth`` = ``{model, optimizer, lr_scheduler,
args, epoch, best}`` (the last epoch, to resume) and, on a new best AP of the task (``bbox``, ``segm`` or
``keypoints``), ``model_best.pth`` = ``{model, args, epoch, stats}`` (no optimizer state): two files, however many
epochs. ``metrics.csv`` and ``curves.png`` are updated every epoch and ``summary.json`` (best and final APs, time,
files) is written at the end. ``--resume`` continues from ``<output-dir>/checkpoint.pth`` (or a given file);
``--test-only --weights model_best.pth`` only evaluates.

``--dataset tiny`` draws a tiny COCO-format set and overfits it, a CPU demo that shows a detector working: every
flag left unset takes the ``TINY_RECIPE`` value (16 images at 128-160 pixels, 12 epochs, lr 0.0025 = 0.02 scaled
linearly to 2 images per step, 20 warm-up iterations, x0.1 at epoch 10, fewer RPN proposals); flags given on the
command line win.

``--fpn-rate R`` narrows the FPN and RPN to ``int(256 * (1 - R))`` channels (the heads follow); with
``--prune-from model_best.pth`` (a trained detector with the full FPN and the same ``--compress_rate``) the kept
channels are chosen by CORING and inherit their weights (``detection.fpn_pruning``), then the run fine-tunes.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from coring.checkpoint import CheckpointError, load_checkpoint, load_weights, save_checkpoint
from coring.cli import Parser, threads
from coring.distributed import DistInfo, barrier, cleanup, init_distributed, wrap_ddp
from coring.run_logging import RunLogger, read_metrics, write_json
from coring.threads import configure_threads, describe_threads
from data import DataNotFoundError
from detection.coco_data import build_dataset, eval_loader, set_epoch, train_loader
from detection.coco_eval import CocoEvaluator, iou_types_for
from detection.curves import best_epoch, plot_detection_curves
from detection.detectors import DEFAULT_COMPRESS_RATE, DETECTORS, NORM_LAYERS, build_detector
from detection.engine import NonFiniteLossError, evaluate, train_one_epoch
from detection.fpn_pruning import prune_fpn
from detection.tiny_coco import make_tiny_coco
from models.compress import CompressRateError

__all__ = ["get_args_parser", "resolve_args", "build_model", "build_loaders", "run", "run_training", "main",
           "METRIC_FIELDS", "TINY_RECIPE", "COCO_DEFAULTS", "CHECKPOINT", "BEST"]

RECIPES = {"fasterrcnn": (26, [16, 22]), "maskrcnn": (26, [16, 22]), "keypointrcnn": (46, [36, 43])}
#: The defaults of the flags that ``--dataset tiny`` sets differently (torchvision's reference values).
COCO_DEFAULTS: dict[str, Any] = {"min_size": 800, "max_size": 1333, "lr": 0.02, "warmup_iters": 1000,
                                 "tiny_images": 8}
#: ``--dataset tiny``: overfit a small drawn set on a CPU in minutes (flags given on the command line win).
TINY_RECIPE: dict[str, Any] = {"min_size": 128, "max_size": 160, "lr": 0.0025, "warmup_iters": 20, "epochs": 12,
                               "lr_steps": [10], "tiny_images": 16}
#: Model arguments of the tiny recipe (under any ``--model-kwargs``): fewer proposals and sampled RoIs.
TINY_MODEL_KWARGS: dict[str, int] = {"rpn_pre_nms_top_n_train": 200, "rpn_post_nms_top_n_train": 100,
                                     "rpn_pre_nms_top_n_test": 100, "rpn_post_nms_top_n_test": 50,
                                     "box_batch_size_per_image": 64, "box_detections_per_img": 10}
CHECKPOINT, BEST = "checkpoint.pth", "model_best.pth"
TASK = {"fasterrcnn": "bbox", "maskrcnn": "segm", "keypointrcnn": "keypoints"}
METRIC_FIELDS = ["epoch", "train_loss", "lr", "bbox_AP", "bbox_AP50", "bbox_AP75", "segm_AP", "segm_AP50",
                 "keypoints_AP", "keypoints_AP50", "epoch_time_s"]


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    """The flat parser of torchvision's detection references, plus the pruning flags."""
    p = Parser(description="Detection training on a pruned ResNet-50-FPN", add_help=add_help)
    p.add_argument("--data-path", default=None, help="COCO root (default: data/coco; tiny: <output-dir>/tiny_coco)")
    p.add_argument("--dataset", default="coco", choices=["coco", "tiny"], help="'tiny' draws a small demo set")
    p.add_argument("--tiny-images", type=int, default=None, help="images of the tiny set (default 8, tiny 16)")
    p.add_argument("--model", default="fasterrcnn", choices=sorted(DETECTORS), help="detector")
    p.add_argument("--compress_rate", "--compress-rate", "-cpr", default=DEFAULT_COMPRESS_RATE,
                   help="the 20 ResNet-50 rates in the paper's grammar ('[0.]*20' = unpruned)")
    p.add_argument("--weights-backbone", default=None, help="pruned ResNet-50 checkpoint of this toolkit")
    p.add_argument("--weights", default=None, help="full detector checkpoint (model_<epoch>.pth) to start from")
    p.add_argument("--fpn-rate", type=float, default=0.0,
                   help="fraction of the 256 FPN (and RPN) channels removed; 0 = the paper's detector")
    p.add_argument("--prune-from", default=None,
                   help="trained full-FPN detector checkpoint whose CORING-selected FPN channels start the run")
    p.add_argument("--criterion", default="VBD_dis", help="CORING criterion that ranks the FPN channels")
    p.add_argument("--strategy", default="min_sum", help="min_sum | min_min | sum")
    p.add_argument("--trainable-backbone-layers", type=int, default=None,
                   help="stages trained, from layer4 down (default: 3 with --weights-backbone, else 5)")
    p.add_argument("--norm-layer", default="auto", choices=NORM_LAYERS,
                   help="backbone BatchNorm: frozen (torchvision), bn (the paper), auto = frozen with weights")
    p.add_argument("--num-classes", type=int, default=None, help="default: 91 (COCO ids), 2 for keypointrcnn")
    p.add_argument("--min-size", type=int, default=None, help="images resized so the short side is this "
                   "(default 800, tiny 128)")
    p.add_argument("--max-size", type=int, default=None, help="... and the long side at most this (1333, tiny 160)")
    p.add_argument("--box-score-thresh", type=float, default=0.05, help="detections below are dropped")
    p.add_argument("--model-kwargs", default="{}", help="JSON of more torchvision detector arguments")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--threads", type=threads, default="auto",
                   help="CPU threads: a number, or auto = the idle cores (per process under torchrun)")
    p.add_argument("-b", "--batch-size", type=int, default=2, help="images per process")
    p.add_argument("--epochs", type=int, default=None, help="default: 26, keypointrcnn 46, tiny 12")
    p.add_argument("-j", "--workers", type=int, default=4, help="data-loading workers")
    p.add_argument("--lr", type=float, default=None,
                   help="default 0.02, for 8 processes x 2 images; scale linearly (tiny: 0.0025)")
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--wd", "--weight-decay", dest="weight_decay", type=float, default=1e-4)
    p.add_argument("--lr-steps", type=int, nargs="+", default=None,
                   help="default: 16 22, keypointrcnn 36 43, tiny 10")
    p.add_argument("--lr-gamma", type=float, default=0.1)
    p.add_argument("--warmup-iters", type=int, default=None, help="linear warm-up in epoch 0 (1000, tiny 20)")
    p.add_argument("--warmup-factor", type=float, default=1e-3)
    p.add_argument("--aspect-ratio-group-factor", type=int, default=3, help="-1 turns grouping off")
    p.add_argument("--data-augmentation", default="hflip", choices=["hflip", "none"])
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=True, help="mixed precision (CUDA)")
    p.add_argument("--sync-bn", action="store_true", help="SyncBatchNorm under torchrun (with --norm-layer bn)")
    p.add_argument("--print-freq", type=int, default=20)
    p.add_argument("--output-dir", "--job_dir", dest="output_dir", default="detection_run", help="checkpoints and logs")
    p.add_argument("--resume", nargs="?", const="auto", default=None,
                   help="checkpoint to continue from (no value: <output-dir>/checkpoint.pth)")
    p.add_argument("--test-only", action="store_true", help="only evaluate")
    p.add_argument("--limit-train", type=int, default=None, help="use the first N training images")
    p.add_argument("--limit-val", type=int, default=None, help="evaluate on the first N val images")
    p.add_argument("--seed", type=int, default=0)
    return p


def resolve_args(args: argparse.Namespace) -> argparse.Namespace:
    """Fill the per-model defaults (epochs, lr steps, classes), the tiny recipe's and the data path; returns
    ``args``."""
    try:
        extra = json.loads(args.model_kwargs)
    except ValueError as error:
        raise ValueError(f"--model-kwargs {args.model_kwargs!r} is not a JSON object: {error}") from None
    if not isinstance(extra, dict):
        raise ValueError(f"--model-kwargs {args.model_kwargs!r} is not a JSON object")
    tiny = args.dataset == "tiny"
    for name, value in {**COCO_DEFAULTS, **(TINY_RECIPE if tiny else {})}.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if tiny:
        args.model_kwargs = json.dumps({**TINY_MODEL_KWARGS, **extra})
    epochs, steps = RECIPES[args.model]
    args.epochs = epochs if args.epochs is None else args.epochs
    args.lr_steps = steps if args.lr_steps is None else args.lr_steps
    if args.num_classes is None:
        args.num_classes = 2 if args.model == "keypointrcnn" else 91
    if args.data_path is None:
        args.data_path = str(Path(args.output_dir) / "tiny_coco") if args.dataset == "tiny" else "data/coco"
    if args.prune_from and not args.fpn_rate:
        raise ValueError("--prune-from needs --fpn-rate > 0 (the fraction of FPN channels to remove)")
    if args.resume == "auto":
        args.resume = str(Path(args.output_dir) / "checkpoint.pth")
    return args


def build_model(args: argparse.Namespace) -> nn.Module:
    """The detector of ``args``: backbone weights; or, with ``--prune-from``, the CORING-selected channels of a
    full-FPN detector; then full weights if given."""
    kwargs: dict[str, Any] = {"min_size": args.min_size, "max_size": args.max_size,
                              "box_score_thresh": args.box_score_thresh, "num_classes": args.num_classes,
                              "trainable_layers": args.trainable_backbone_layers,
                              "weights_backbone": args.weights_backbone, "norm_layer": args.norm_layer,
                              **json.loads(args.model_kwargs)}
    model = build_detector(args.model, args.compress_rate, fpn_rate=args.fpn_rate, **kwargs)
    if args.prune_from:
        full = build_detector(args.model, args.compress_rate, **kwargs)
        load_weights(full, args.prune_from)
        prune_fpn(full, model, args.criterion, args.strategy)
    if args.weights:
        load_weights(model, args.weights)
    return model


def build_loaders(args: argparse.Namespace, info: DistInfo) -> tuple[Any, Any]:
    """``(train loader or None under --test-only, val loader)``; draws the tiny set first if asked."""
    if args.dataset == "tiny" and not (Path(args.data_path) / "annotations").is_dir():
        if info.is_main:
            make_tiny_coco(args.data_path, num_images=args.tiny_images)
        barrier()
    task = TASK[args.model]
    val_set = build_dataset(args.data_path, "val", task, train=False, limit=args.limit_val)
    val = eval_loader(val_set, args.workers, info.distributed)
    if args.test_only:
        return None, val
    train_set = build_dataset(args.data_path, "train", task, train=True, augmentation=args.data_augmentation,
                              limit=args.limit_train)
    train = train_loader(train_set, args.batch_size, args.workers, args.aspect_ratio_group_factor,
                         info.distributed, args.seed)
    return train, val


def _evaluate(model: nn.Module, val: Any, args: argparse.Namespace, info: DistInfo,
              log: RunLogger) -> dict[str, dict[str, float]]:
    dataset = val.dataset
    evaluator = CocoEvaluator(dataset.coco, iou_types_for(args.model), dataset.ids)
    stats, text = evaluate(model, val, info.device, evaluator, print_freq=args.print_freq * 5, log=log.info)
    if text:
        log.info(text)
    return stats


def run(args: argparse.Namespace, info: DistInfo, log: RunLogger) -> dict[str, Any]:
    """Train (or only evaluate) as ``args`` says; returns the last epoch and its COCO stats."""
    train, val = build_loaders(args, info)
    model = build_model(args)
    if args.sync_bn and info.distributed:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(info.device)
    origin = f" (CORING-selected from {args.prune_from})" if args.prune_from else ""
    log.info(f"{args.model} on ResNet-50 at {args.compress_rate}: FPN in-channels "
             f"{[b[0].in_channels for b in model.backbone.fpn.inner_blocks]}, {model.backbone.out_channels} FPN "
             f"channels{origin}, "
             f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f} M params on {info.device}, "
             f"{describe_threads()}")
    if args.test_only:
        return {"epoch": None, "stats": _evaluate(model, val, args, info, log)}

    ddp_model = wrap_ddp(model, info)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay)
    lr_scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=args.lr_steps, gamma=args.lr_gamma)
    scaler = torch.amp.GradScaler("cuda") if args.amp and info.device.type == "cuda" else None
    out_dir = Path(args.output_dir)
    metric = f"{TASK[args.model]}_AP"  # the task's primary COCO AP decides the best epoch
    best: dict[str, Any] = {"epoch": None, "value": -math.inf, "stats": {}}
    start_epoch = 0
    if args.resume:
        checkpoint = load_checkpoint(args.resume)
        load_weights(model, checkpoint)
        optimizer.load_state_dict(checkpoint["optimizer"])
        lr_scheduler.load_state_dict(checkpoint["lr_scheduler"])
        if scaler is not None and "scaler" in checkpoint:
            scaler.load_state_dict(checkpoint["scaler"])
        start_epoch = int(checkpoint["epoch"]) + 1
        log.truncate_metrics(start_epoch - 1)
        best = checkpoint.get("best") or _best_from_metrics(log.metrics_path, metric) or best
        log.info(f"resumed from {args.resume} at epoch {start_epoch}")

    stats: dict[str, dict[str, float]] = {}
    started = time.perf_counter()
    for epoch in range(start_epoch, args.epochs):
        set_epoch(train, epoch)
        start = time.perf_counter()
        losses = train_one_epoch(ddp_model, optimizer, train, info.device, epoch, scaler=scaler,
                                 warmup_iters=args.warmup_iters, warmup_factor=args.warmup_factor,
                                 print_freq=args.print_freq, log=log.info)
        lr_scheduler.step()
        stats = _evaluate(model, val, args, info, log)
        row: dict[str, Any] = {"epoch": epoch, "train_loss": losses["loss"], "lr": losses["lr"],
                               "epoch_time_s": time.perf_counter() - start}
        for iou_type, values in stats.items():
            for name in ("AP", "AP50", "AP75"):
                if f"{iou_type}_{name}" in METRIC_FIELDS:
                    row[f"{iou_type}_{name}"] = values[name]
        log.append_metrics(row)  # before the checkpoint: a resumed run drops rows past it
        if info.is_main:
            value = row.get(metric, -math.inf)
            if best["epoch"] is None or value > best["value"]:
                best = {"epoch": epoch, "value": value, "stats": stats}
                save_checkpoint({"model": model.state_dict(), "args": args, "epoch": epoch, "stats": stats},
                                out_dir / BEST)
                log.info(f"new best {metric} {value:.4f} at epoch {epoch}: wrote {out_dir / BEST}")
            checkpoint = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                          "lr_scheduler": lr_scheduler.state_dict(), "args": args, "epoch": epoch, "best": best}
            if scaler is not None:
                checkpoint["scaler"] = scaler.state_dict()
            save_checkpoint(checkpoint, out_dir / CHECKPOINT)
            plot_detection_curves(log.metrics_path, out_dir / "curves.png")
        barrier()
    if info.is_main and args.epochs > start_epoch:
        summary = _summary(args, model, metric, best, stats, time.perf_counter() - started)
        write_json(summary, out_dir / "summary.json")
        log.info(f"best {metric} {best['value']:.4f} (epoch {best['epoch']}), final "
                 + ", ".join(f"{k} AP {v['AP']:.4f}" for k, v in stats.items()) + f"; wrote {out_dir / 'summary.json'}")
    return {"epoch": args.epochs - 1, "stats": stats, "best": best}


def _best_from_metrics(metrics_csv: Path, metric: str) -> dict[str, Any] | None:
    """The best epoch so far from ``metrics.csv`` (a checkpoint written before ``best`` was recorded)."""
    found = best_epoch(read_metrics(metrics_csv), metric) if metrics_csv.exists() else None
    return None if found is None else {"epoch": found[0], "value": found[1], "stats": {}}


def _summary(args: argparse.Namespace, model: nn.Module, metric: str, best: dict[str, Any],
             final: dict[str, dict[str, float]], seconds: float) -> dict[str, Any]:
    """``summary.json``: what was trained, the best and the final COCO stats, the time and the files kept."""
    out_dir = Path(args.output_dir)
    files = {name: (out_dir / name).stat().st_size for name in (CHECKPOINT, BEST, "metrics.csv", "curves.png")
             if (out_dir / name).exists()}
    return {"model": args.model, "dataset": args.dataset, "compress_rate": args.compress_rate,
            "fpn_rate": args.fpn_rate, "epochs": args.epochs, "image_size": [args.min_size, args.max_size],
            "params": sum(p.numel() for p in model.parameters()), "primary_metric": metric,
            "best_epoch": best["epoch"], "best_value": best["value"], "best_stats": best["stats"],
            "final_stats": final, "train_time_s": seconds, "files_bytes": files}


def run_training(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Parse, set up the process (torchrun aware), run, clean up; returns `run`'s result."""
    args = resolve_args(get_args_parser().parse_args(argv))
    info = init_distributed(args.device)
    configure_threads(args.threads)
    torch.manual_seed(args.seed + info.rank)
    with RunLogger(args.output_dir, f"detection_{args.model}", is_main=info.is_main,
                   metric_fields=METRIC_FIELDS) as log:
        if info.is_main:
            log.write_config(args)
        try:
            return run(args, info, log)
        finally:
            cleanup()


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry: known failures (missing data, bad checkpoint or rate, NaN loss) are one-line errors."""
    try:
        run_training(argv)
    except (CheckpointError, DataNotFoundError, CompressRateError, NonFiniteLossError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
