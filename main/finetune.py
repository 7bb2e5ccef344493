"""Fine-tune a (pruned) network with the paper's recipes; resumable, torchrun-ready.

    python main/finetune.py --arch resnet_56 --compress_rate "[0.]+[0.18]*29" \\
        --pretrained pruned_model/resnet_56/pruned.pth.tar --dataset cifar10 --data_dir data/cifar10 \\
        --job_dir runs/resnet_56_ft
    torchrun --nproc_per_node=4 main/finetune.py ...        # DDP; --batch_size is per process
    python main/finetune.py ... --resume                     # continue from <job_dir>/checkpoint.pth.tar

Recipes (upstream-coring.md 3.4; every value stays a flag, flags given on the command line win):

- ``cifar`` (default): SGD lr 0.01, momentum 0.9, weight decay 5e-3, batch 256, 300 epochs, step schedule x0.1 at
  epochs 150 and 225, plain cross-entropy.
- ``imagenet`` (default for ``--dataset imagenet`` / ``synthetic_imagenet``): SGD lr 0.01, momentum 0.99, weight
  decay 1e-4, batch 256, 200 epochs, cosine schedule with 5 warm-up epochs, label smoothing 0.1 on the train loss.

Weight decay applies to every parameter (BN and biases included), as in the paper. Validation uses plain
cross-entropy. Per epoch: train, evaluate, log loss/top-1/top-5/lr/time, append ``metrics.csv``, write
``checkpoint.pth.tar`` atomically (after the CSV row, so a resumed run drops rows past the checkpoint) and copy it
to ``model_best.pth.tar`` on a new best top-1. The end logs ``Final top-1`` and ``Best top-1 ... (epoch e)``
and writes ``summary.json`` and ``curves.png``.

Under torchrun each process trains on its shard (``--batch_size`` per process, so the global batch is
``batch_size * world_size``; the paper's 256 was global over DataParallel GPUs, so pass ``--batch_size 256/N`` to
match it on N GPUs), metrics are all-reduced, rank 0 alone logs and writes files. Each epoch reseeds the
RNGs from ``(seed, epoch, rank)`` and the loaders order data by ``(seed, epoch)``, so a resumed run replays the
interrupted epoch exactly as an uninterrupted run would.
"""
from __future__ import annotations

import argparse
import math
import os
import random
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from coring.checkpoint import CheckpointError, load_checkpoint, load_weights, save_checkpoint
from coring.distributed import DistInfo, barrier, broadcast_buffers, cleanup, init_distributed, unwrap, wrap_ddp
from coring.engine import NonFiniteLossError, evaluate, make_grad_scaler, prepare_model, train_one_epoch
from coring.rebuild import model_from_checkpoint
from coring.run_logging import RunLogger, plot_curves, write_json
from coring.schedule import build_schedule
from data import build_loaders
from main.cli import (
    add_data_args,
    add_device_args,
    add_model_args,
    add_optim_args,
    add_output_args,
    run_reporting_errors,
)
from models import num_outputs

__all__ = ["RECIPES", "build_parser", "parse_args", "make_args", "run_finetune", "main", "CHECKPOINT_NAME",
           "BEST_NAME"]

CHECKPOINT_NAME = "checkpoint.pth.tar"
BEST_NAME = "model_best.pth.tar"
IMAGENET_DATASETS = ("imagenet", "synthetic_imagenet")

RECIPES: dict[str, dict[str, Any]] = {
    "cifar": dict(lr=0.01, momentum=0.9, weight_decay=5e-3, batch_size=256, epochs=300, lr_type="step",
                  lr_decay_step="150,225", warmup_epochs=5, label_smooth=0.0),
    "imagenet": dict(lr=0.01, momentum=0.99, weight_decay=1e-4, batch_size=256, epochs=200, lr_type="cos",
                     lr_decay_step="150,225", warmup_epochs=5, label_smooth=0.1),
}


# ---------------------------------------------------------------------------------------------- arguments
def build_parser() -> argparse.ArgumentParser:
    """The fine-tuning parser: the shared groups of ``main.cli`` plus the fine-tuning options."""
    parser = argparse.ArgumentParser(
        description="Fine-tune a pruned network (the paper's CIFAR and ImageNet recipes).")
    add_model_args(parser, require_arch=False)
    add_data_args(parser)
    add_device_args(parser)
    add_optim_args(parser)
    add_output_args(parser)
    group = parser.add_argument_group("Fine-tuning")
    group.add_argument("--pretrained", "--pretrain_dir", "--model_path", dest="pretrained", default=None,
                       help="checkpoint to start from (a pruned checkpoint, the paper's dict or a bare state dict)")
    group.add_argument("--recipe", choices=sorted(RECIPES), default=None,
                       help="default hyper-parameters: 'imagenet' for the ImageNet data sets, else 'cifar'")
    group.add_argument("--print_freq", "--log_every", dest="print_freq", type=int, default=None,
                       help="log every N iterations (default: 12800/batch_size on CIFAR, an epoch/10 on ImageNet)")
    group.add_argument("--evaluate", "--test_only", dest="evaluate", action="store_true",
                       help="only evaluate the weights on the test set and exit")
    group.add_argument("--initial_eval", action=argparse.BooleanOptionalAction, default=True,
                       help="evaluate the starting weights before fine-tuning (not on --resume)")
    group.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                       help="tqdm progress bars (only on a terminal, rank 0)")
    return parser


def _recipe_for(recipe: str | None, dataset: str | None) -> str:
    if recipe is not None:
        return recipe
    return "imagenet" if dataset in IMAGENET_DATASETS else "cifar"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line; the recipe's values become the defaults, explicit flags win."""
    parser = build_parser()
    pre, _ = parser.parse_known_args(argv)
    recipe = _recipe_for(pre.recipe, pre.dataset)
    parser.set_defaults(**RECIPES[recipe])
    args = parser.parse_args(argv)
    args.recipe = recipe
    if args.use_onecycle:
        args.lr_type = "onecycle"
    return args


def make_args(**overrides: Any) -> argparse.Namespace:
    """Arguments for in-process calls: the CLI defaults (recipe of ``dataset``/``recipe``) with ``overrides``.

    >>> args = make_args(arch="resnet_56", dataset="digits", epochs=3, job_dir="runs/x")
    """
    argv: list[str] = []
    for key in ("dataset", "recipe"):
        if overrides.get(key) is not None:
            argv += [f"--{key}", str(overrides[key])]
    args = parse_args(argv)
    for key, value in overrides.items():
        if not hasattr(args, key):
            raise ValueError(f"make_args: unknown option {key!r}")
        setattr(args, key, value)
    if getattr(args, "use_onecycle", False):
        args.lr_type = "onecycle"
    return args


# ---------------------------------------------------------------------------------------------- helpers
def _seed_epoch(seed: int, epoch: int, rank: int) -> None:
    """Seed torch/numpy/random from (seed, epoch, rank): a resumed epoch replays an uninterrupted one."""
    mixed = int(np.random.SeedSequence([seed & 0xFFFFFFFF, epoch, rank]).generate_state(1)[0])
    random.seed(mixed)
    np.random.seed(mixed)
    torch.manual_seed(mixed)


def _atomic_copy(src: Path, dst: Path) -> None:
    tmp = dst.with_name(f".{dst.name}.tmp{os.getpid()}")
    shutil.copyfile(src, tmp)
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, dst)


def _repair_after_kill(job_dir: Path, state: dict, logger: RunLogger) -> None:
    """Tidy up after a run killed while saving: drop temporary files, redo a best-model copy that was cut off."""
    for stale in list(job_dir.glob(f".{CHECKPOINT_NAME}.*")) + list(job_dir.glob(f".{BEST_NAME}.*")):
        stale.unlink(missing_ok=True)
    best_path = job_dir / BEST_NAME
    if state.get("best_epoch") is not None and state.get("best_epoch") == state.get("epoch"):
        try:
            best_epoch = load_checkpoint(best_path).get("epoch") if best_path.exists() else None
        except CheckpointError:
            best_epoch = None
        if best_epoch != state["epoch"]:
            logger.info("re-copying %s (the run stopped before copying epoch %s)", BEST_NAME, state["epoch"])
            _atomic_copy(job_dir / CHECKPOINT_NAME, best_path)


def _cpu_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous() for k, v in unwrap(model).state_dict().items()}


def _args_record(args: argparse.Namespace) -> dict[str, Any]:
    """The arguments as plain values (loadable with ``weights_only=True``)."""
    out: dict[str, Any] = {}
    for key, value in vars(args).items():
        out[key] = value if isinstance(value, (str, int, float, bool, type(None))) else str(value)
    return out


def _default_log_every(args: argparse.Namespace, iters_per_epoch: int) -> int:
    if args.print_freq is not None:
        return max(0, int(args.print_freq))
    if args.recipe == "imagenet":
        return max(1, iters_per_epoch // 10)
    return max(1, (256 * 50) // args.batch_size)


def _build_model(args: argparse.Namespace, source: Any, num_classes: int) -> nn.Module:
    meta = source if isinstance(source, dict) else {}
    if args.arch is None and meta.get("arch") is None:
        raise ValueError("no architecture: pass --arch (the checkpoint does not record one)")
    classes = args.num_classes or meta.get("num_classes") or num_classes
    model = model_from_checkpoint(meta, args.arch, args.compress_rate, classes)
    if source is not None:
        load_weights(model, source)
    return model


# ---------------------------------------------------------------------------------------------- the run
def run_finetune(args: argparse.Namespace, model: nn.Module | None = None) -> dict[str, Any]:
    """Fine-tune as the command line describes and return the summary (also written to ``summary.json``).

    ``model``: an in-memory network to fine-tune instead of building one from ``--pretrained`` (prune.py and
    the quick start pass the slim model they just built); its ``arch`` attribute is recorded when present.
    Raises ``NonFiniteLossError`` when the loss diverges (the last checkpoint is left intact).
    """
    preexisting_group = torch.distributed.is_available() and torch.distributed.is_initialized()
    dist_info = init_distributed(args.device)
    job_dir = Path(args.job_dir)
    if dist_info.is_main:
        job_dir.mkdir(parents=True, exist_ok=True)
    barrier()
    logger = RunLogger(job_dir, "evaluate" if args.evaluate else "finetune", is_main=dist_info.is_main)
    try:
        return _run(args, model, dist_info, job_dir, logger)
    except NonFiniteLossError as exc:
        logger.error("error: %s", exc)
        raise
    finally:
        logger.close()
        if dist_info.distributed and not preexisting_group:
            cleanup()


def _run(args: argparse.Namespace, model: nn.Module | None, dist_info: DistInfo, job_dir: Path,
         logger: RunLogger) -> dict[str, Any]:
    started = time.time()
    device = dist_info.device
    logger.info("args = %s", args)
    logger.write_config(args)
    if args.gpu is not None:
        logger.info("note: --gpu %s is ignored; select GPUs with CUDA_VISIBLE_DEVICES or torchrun", args.gpu)
    logger.info("device %s, world size %d, recipe %s", device, dist_info.world_size, args.recipe)
    _seed_epoch(args.seed, 0, 0)  # identical model init on every rank

    ckpt_path = job_dir / CHECKPOINT_NAME
    best_path = job_dir / BEST_NAME
    resume_state = None
    if args.resume and not args.evaluate:
        if ckpt_path.exists():
            resume_state = load_checkpoint(ckpt_path)
            logger.info("resuming from %s (epoch %d done)", ckpt_path, int(resume_state.get("epoch", -1)))
        else:
            logger.warning("--resume: no %s yet; starting from the beginning", ckpt_path)

    loaders = build_loaders(args.dataset, args.data_dir, args.batch_size, device=device,
                            eval_batch_size=args.eval_batch_size, workers=args.workers, seed=args.seed,
                            rank=dist_info.rank, world_size=dist_info.world_size, train_augment=True,
                            limit_train=args.limit_train, limit_test=args.limit_test)

    # ------------------------------------------------------------------ model
    source = resume_state if resume_state is not None else (
        load_checkpoint(args.pretrained) if args.pretrained else None)
    meta = source if isinstance(source, dict) else {}
    if model is None:
        if source is None:
            logger.warning("no --pretrained checkpoint: training %s from random initialisation", args.arch)
        model = _build_model(args, source, loaders.info.num_classes)
    elif source is not None:
        load_weights(model, source)
    arch = args.arch or meta.get("arch") or getattr(model, "arch", None)
    compress_rate = args.compress_rate if args.compress_rate is not None else meta.get("compress_rate")
    if isinstance(compress_rate, (list, tuple)):
        compress_rate = [float(r) for r in compress_rate]
    num_classes = num_outputs(model)
    if num_classes is not None and num_classes != loaders.info.num_classes:
        raise ValueError(f"the model has {num_classes} outputs but {args.dataset} has {loaders.info.num_classes} "
                         "classes; pass --num_classes or a matching checkpoint")
    n_params = sum(p.numel() for p in model.parameters())
    logger.info("arch %s, compress_rate %s, %d parameters, %d classes", arch, compress_rate, n_params,
                loaders.info.num_classes)

    model = prepare_model(model, device, channels_last=args.channels_last)
    net = wrap_ddp(model, dist_info)
    amp = bool(args.amp)

    summary: dict[str, Any] = {"arch": arch, "compress_rate": compress_rate, "dataset": args.dataset,
                               "params": n_params, "world_size": dist_info.world_size, "job_dir": str(job_dir)}
    if args.evaluate:
        result = evaluate(net, loaders.test, device, amp=amp, progress=args.progress)
        logger.info(" * Acc@1 %.3f Acc@5 %.3f Loss %.4f (%d images)", result.top1, result.top5, result.loss,
                    result.count)
        summary.update(test_top1=result.top1, test_top5=result.top5, test_loss=result.loss, test_count=result.count)
        if dist_info.is_main:
            write_json(summary, job_dir / "summary.json")
        return summary

    # ------------------------------------------------------------------ optimisation
    optimizer = torch.optim.SGD(net.parameters(), lr=args.lr, momentum=args.momentum,
                                weight_decay=args.weight_decay, nesterov=False)
    iters = len(loaders.train)
    schedule = build_schedule(optimizer, args.lr_type, args.lr, args.epochs, iters,
                              lr_decay_step=args.lr_decay_step, warmup_epochs=args.warmup_epochs)
    scaler = make_grad_scaler(device, amp)
    train_loss = nn.CrossEntropyLoss(label_smoothing=args.label_smooth)
    log_every = _default_log_every(args, iters)
    logger.info("optimizer SGD(lr=%g, momentum=%g, weight_decay=%g), %s, label smoothing %g, %d iterations/epoch",
                args.lr, args.momentum, args.weight_decay, schedule, args.label_smooth, iters)

    start_epoch, best_top1, best_top5, best_epoch = 0, -math.inf, -math.inf, -1
    last: dict[str, Any] = {}
    if resume_state is not None:
        if "optimizer" in resume_state:
            optimizer.load_state_dict(resume_state["optimizer"])
        if "lr_scheduler" in resume_state:
            schedule.load_state_dict(resume_state["lr_scheduler"])
        if resume_state.get("scaler"):
            scaler.load_state_dict(resume_state["scaler"])
        start_epoch = int(resume_state.get("epoch", -1)) + 1
        best_top1 = float(resume_state.get("best_top1_acc", -math.inf))
        best_top5 = float(resume_state.get("best_top5_acc", -math.inf))
        best_epoch = int(resume_state.get("best_epoch", -1))
        last = {"top1": resume_state.get("last_top1_acc"), "top5": resume_state.get("last_top5_acc"),
                "epoch": start_epoch - 1}
        if dist_info.is_main:
            _repair_after_kill(job_dir, resume_state, logger)
        kept = logger.truncate_metrics(start_epoch - 1)
        logger.info("continuing at epoch %d (best top-1 %.3f at epoch %d; %d metric rows kept)", start_epoch,
                    best_top1, best_epoch, kept)
        del resume_state
    elif args.initial_eval:
        result = evaluate(net, loaders.test, device, amp=amp, progress=args.progress, desc="eval start")
        logger.info("Accuracy before fine-tuning: top-1 %.3f top-5 %.3f loss %.4f (%d images)", result.top1,
                    result.top5, result.loss, result.count)
        summary.update(initial_top1=result.top1, initial_top5=result.top5)

    train_time = 0.0
    for epoch in range(start_epoch, args.epochs):
        _seed_epoch(args.seed, epoch, dist_info.rank)
        t0 = time.perf_counter()
        train = train_one_epoch(net, loaders.train, optimizer, schedule, train_loss, device, amp=amp,
                                scaler=scaler, epoch=epoch, progress=args.progress, log_every=log_every)
        broadcast_buffers(net)  # evaluate every shard with rank 0's BN statistics (the ones saved)
        result = evaluate(net, loaders.test, device, amp=amp, progress=args.progress)
        epoch_time = time.perf_counter() - t0
        train_time += epoch_time
        is_best = result.top1 > best_top1
        if is_best:
            best_top1, best_epoch = result.top1, epoch
        best_top5 = max(best_top5, result.top5)  # the paper tracks the best top-5 separately
        last = {"top1": result.top1, "top5": result.top5, "epoch": epoch, "loss": result.loss,
                "count": result.count}
        logger.info(" * Acc@1 %.3f Acc@5 %.3f Loss %.4f | train loss %.4f top-1 %.2f | lr %.6g | %.1fs "
                    "(%.0f img/s)", result.top1, result.top5, result.loss, train.loss, train.top1, train.lr,
                    epoch_time, train.images_per_s)
        logger.info("=>Best accuracy %.3f (epoch %d)", best_top1, best_epoch)
        logger.append_metrics({"epoch": epoch, "train_loss": train.loss, "train_top1": train.top1,
                               "test_loss": result.loss, "test_top1": result.top1, "test_top5": result.top5,
                               "lr": train.lr, "epoch_time_s": epoch_time, "best_top1": best_top1})
        if dist_info.is_main:
            state = {"state_dict": _cpu_state_dict(net), "epoch": epoch, "best_top1_acc": best_top1,
                     "best_top5_acc": best_top5, "best_epoch": best_epoch, "last_top1_acc": result.top1,
                     "last_top5_acc": result.top5, "optimizer": optimizer.state_dict(),
                     "lr_scheduler": schedule.state_dict(), "scaler": scaler.state_dict(),
                     "args": _args_record(args), "arch": arch, "compress_rate": compress_rate,
                     "num_classes": loaders.info.num_classes, "dataset": args.dataset,
                     **({"generic": meta["generic"]} if "generic" in meta else {})}
            save_checkpoint(state, ckpt_path)
            if is_best:
                _atomic_copy(ckpt_path, best_path)

    barrier()
    if last.get("top1") is not None:
        logger.info("Final top-1 %.3f top-5 %.3f (epoch %d)", last["top1"], last["top5"], last["epoch"])
    if best_epoch >= 0:
        logger.info("Best top-1 %.3f (epoch %d); best top-5 %.3f", best_top1, best_epoch, best_top5)
    summary.update(epochs=args.epochs, final_epoch=last.get("epoch"), final_top1=last.get("top1"),
                   final_top5=last.get("top5"), test_count=last.get("count"),
                   best_top1=best_top1 if best_epoch >= 0 else None, best_top5=best_top5 if best_epoch >= 0 else None,
                   best_epoch=best_epoch if best_epoch >= 0 else None,
                   checkpoint=str(ckpt_path), model_best=str(best_path),
                   train_time_s=train_time, wall_time_s=time.time() - started)
    if dist_info.is_main:
        write_json(summary, job_dir / "summary.json")
        metrics = job_dir / "metrics.csv"
        if metrics.exists() and metrics.stat().st_size > 0:
            try:
                plot_curves(metrics, job_dir / "curves.png")
            except ValueError as exc:  # a header without rows
                logger.warning("no curves: %s", exc)
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return run_reporting_errors(run_finetune, parse_args(argv))
    except NonFiniteLossError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
