"""The pruning run behind ``main/prune.py``: load, rank, slim (K shots with calibration), evaluate, save.

Accuracy right after pruning is reported twice (spec decision 12): as it is, and after re-estimating
the BatchNorm statistics on ``--bn_recalib`` training images (adaptive BN). The saved checkpoint holds
the transferred weights as they are (fine-tuning re-estimates the statistics in its first iterations).
"""
from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch
from torch import nn

from coring.checkpoint import load_checkpoint, load_weights, save_checkpoint
from coring.counting import count_complexity
from coring.device import resolve_device
from coring.engine import evaluate, evaluate_pruned, prepare_model, train_one_epoch
from coring.pruning import prune, shot_rates
from coring.rank_cache import RankCache
from coring.run_logging import RunLogger, write_json
from coring.schedule import build_schedule
from data import build_loaders, dataset_info
from models import arch_spec, build_model
from models.compress import as_rate_list

__all__ = ["run_prune", "calibrate"]


def calibrate(model: nn.Module, loader, device: torch.device, epochs: int, lr: float, weight_decay: float, *,
              amp: bool, log, shot: int) -> None:
    """K-shot calibration: ``epochs`` of SGD (momentum 0.9, fresh optimizer, cosine without warm-up)."""

    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)
    schedule = build_schedule(optimizer, "cos", lr, epochs, len(loader), warmup_epochs=0)
    loss_fn = nn.CrossEntropyLoss()
    for epoch in range(epochs):
        result = train_one_epoch(model, loader, optimizer, schedule, loss_fn, device, amp=amp, epoch=epoch)
        log.info("shot %d calibration epoch %d/%d: loss %.4f top-1 %.2f lr %.5f", shot + 1, epoch + 1, epochs,
                 result.loss, result.top1, result.lr)


def run_prune(args: argparse.Namespace) -> dict:
    """Prune ``args.pretrain_dir`` to ``args.compress_rate``; writes ``<job_dir>/pruned.pth.tar`` and a summary."""

    device = resolve_device(args.device)
    torch.manual_seed(args.seed)
    job_dir = Path(args.job_dir)
    spec = arch_spec(args.arch)
    with RunLogger(job_dir, "prune") as log:
        log.write_config(args)
        checkpoint = load_checkpoint(args.pretrain_dir)
        info = dataset_info(args.dataset)
        num_classes = args.num_classes or checkpoint.get("num_classes") or info.num_classes
        source_rate = checkpoint.get("compress_rate")  # a pruned checkpoint can be pruned further
        model = build_model(args.arch, source_rate, num_classes)
        load_weights(model, checkpoint)
        model = prepare_model(model, device, channels_last=args.channels_last)
        loaders = build_loaders(args.dataset, args.data_dir, args.batch_size, device=device,
                                eval_batch_size=args.eval_batch_size, workers=args.workers, seed=args.seed,
                                limit_train=args.limit_train, limit_test=args.limit_test)
        before = count_complexity(model, spec.input_size)  # the paper's tables count at the nominal size
        summary: dict = {"arch": args.arch, "compress_rate": args.compress_rate, "criterion": args.criterion,
                         "strategy": args.strategy, "shot": args.shot, "baseline": before.as_dict()}
        if not args.skip_baseline_eval:
            base = evaluate(model, loaders.test, device, amp=args.amp, desc="baseline")
            summary["top1_baseline"], summary["top5_baseline"] = base.top1, base.top5
            log.info("Baseline accuracy: top-1 %.2f top-5 %.2f", base.top1, base.top5)

        target = as_rate_list(args.compress_rate, spec.num_rates, args.arch)
        rounds = shot_rates(target, args.shot)
        calib_epochs = math.ceil(args.calib_epochs / args.shot) if args.shot > 1 else 0
        cache = RankCache(Path(f"{args.pretrain_dir}.ranks.pt")) if args.rank_cache else None
        keep: dict[str, torch.Tensor] = {}
        for shot, rates in enumerate(rounds):
            start = time.perf_counter()
            result = prune(model, args.arch, rates, args.criterion, args.strategy, seed=args.rank_seed,
                           cache=cache if shot == 0 else None, num_classes=num_classes)
            if cache is not None and shot == 0:
                try:
                    cache.save()
                except OSError as error:  # a read-only checkpoint folder must not stop the run
                    log.warning("could not write the rank cache %s: %s", cache.path, error)
            model, keep = result.model, result.keep
            log.info("shot %d/%d: ranked and slimmed in %.2f s", shot + 1, args.shot, time.perf_counter() - start)
            if calib_epochs:
                calibrate(model, loaders.train, device, calib_epochs, args.calib_lr, args.calib_weight_decay,
                          amp=args.amp, log=log, shot=shot)

        after = count_complexity(model, spec.input_size)
        pruned, adapted, used = evaluate_pruned(model, loaders, device, args.bn_recalib, amp=args.amp, log=log)
        log.info("Params: %d -> %d (-%.1f%%)  FLOPs: %d -> %d (-%.1f%%)  [min of thop, ptflops]", before.params,
                 after.params, 100 * (1 - after.params / before.params), before.flops, after.flops,
                 100 * (1 - after.flops / before.flops))
        summary.update({"top1_pruned": pruned.top1, "top5_pruned": pruned.top5, "top1_pruned_bn": adapted.top1,
                        "top5_pruned_bn": adapted.top5, "bn_images": used, "pruned": after.as_dict()})
        out_path = job_dir / "pruned.pth.tar"
        save_checkpoint({"state_dict": model.state_dict(), "arch": args.arch, "compress_rate": args.compress_rate,
                         "num_classes": num_classes, "criterion": args.criterion, "strategy": args.strategy,
                         "shot": args.shot, "keep": {name: idx.tolist() for name, idx in keep.items()},
                         "epoch": -1, "best_top1_acc": pruned.top1}, out_path)
        write_json(summary, job_dir / "prune_summary.json")
        log.info("saved %s", out_path)
    return summary
