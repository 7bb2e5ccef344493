"""``fit()``: the one training loop behind fine-tuning, the quick start, K-shot calibration and the criteria study.

``fit(model, loaders, config, job_dir)`` trains with SGD and one of the paper's schedules, evaluates after every
epoch and returns a ``FitResult``. With a ``job_dir`` it also keeps the run on disk (docs/design.md, "Checkpoints"):
a ``metrics.csv`` row and ``curves.png`` per epoch, ``checkpoint.pth.tar`` written atomically after the row (so a
resumed run drops rows past the checkpoint) and copied to ``model_best.pth.tar`` on a new best top-1;
``config.resume`` continues from ``checkpoint.pth.tar`` at the next epoch. Nothing is saved from a model whose
weights or evaluation loss are not finite: ``NonFiniteLossError`` is raised first and the last good checkpoint stays.

Under torchrun each process trains its shard, metrics are all-reduced and rank 0 alone writes. Each epoch reseeds
the RNGs from ``(seed, epoch, rank)`` and the loaders order data by ``(seed, epoch)``, so a resumed run replays the
interrupted epoch exactly as an uninterrupted run would.
"""
from __future__ import annotations

import math
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from coring.checkpoint import (
    CheckpointError,
    atomic_copy,
    load_checkpoint,
    load_weights,
    remove_stale_temporaries,
    save_checkpoint,
)
from coring.distributed import DistInfo, barrier, broadcast_buffers, unwrap, wrap_ddp
from coring.engine import EvalResult, NonFiniteLossError, evaluate, make_grad_scaler, prepare_model, train_one_epoch
from coring.run_logging import RunLogger, get_logger, plot_curves
from coring.schedule import build_schedule

__all__ = ["FitConfig", "FitResult", "fit", "seed_epoch", "check_finite_state", "CHECKPOINT_NAME", "BEST_NAME"]

CHECKPOINT_NAME = "checkpoint.pth.tar"
BEST_NAME = "model_best.pth.tar"


@dataclass
class FitConfig:
    """Optimisation settings of one ``fit`` (the paper's CIFAR recipe by default, except ``epochs``)."""

    epochs: int
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-3
    lr_type: str = "step"
    lr_decay_step: str = "150,225"
    warmup_epochs: int = 5
    label_smooth: float = 0.0
    amp: bool = True
    channels_last: bool = True
    seed: int = 0
    progress: bool = True
    resume: bool = False
    log_every: int | None = None      # iterations between log lines (None: ~12800 images; 0: never)
    initial_eval: bool = False        # evaluate the starting weights first (not on resume)
    evaluate_every_epoch: bool = True  # False: evaluate only after the last epoch (no evaluation without a test set)
    name: str = "training"            # how log lines name an epoch that is not evaluated

    def __post_init__(self) -> None:
        if not isinstance(self.epochs, int) or self.epochs < 0:
            raise ValueError(f"epochs must be a whole number >= 0, got {self.epochs!r}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"learning rate must be a finite number > 0, got {self.lr!r}")
        if not 0.0 <= self.label_smooth < 1.0:
            raise ValueError(f"label smoothing must be in [0, 1), got {self.label_smooth!r}")


@dataclass
class FitResult:
    """What ``fit`` returns: the trained model (unwrapped), the last evaluation and the best epoch."""

    model: nn.Module
    final: EvalResult | None
    best_top1: float | None
    best_top5: float | None
    best_epoch: int | None
    initial: EvalResult | None = None
    history: list[dict[str, float]] = field(default_factory=list)
    train_time_s: float = 0.0


def seed_epoch(seed: int, epoch: int, rank: int) -> None:
    """Seed torch/numpy/random from (seed, epoch, rank): a resumed epoch replays an uninterrupted one."""
    mixed = int(np.random.SeedSequence([seed & 0xFFFFFFFF, epoch, rank]).generate_state(1)[0])
    random.seed(mixed)
    np.random.seed(mixed)
    torch.manual_seed(mixed)


def check_finite_state(model: nn.Module, *, epoch: int) -> None:
    """Raise ``NonFiniteLossError`` naming the first parameter or buffer holding NaN/Inf."""
    for name, tensor in unwrap(model).state_dict().items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise NonFiniteLossError(f"weights are not finite after epoch {epoch} ('{name}' holds NaN/Inf); "
                                     "stopping before any save (the last checkpoint is left as it was). "
                                     "Lower --lr or check the data and the pretrained weights.")


def _cpu_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous() for k, v in unwrap(model).state_dict().items()}


def _repair_after_kill(job_dir: Path, state: Mapping[str, Any], log: Any) -> None:
    """Tidy up after a run killed while saving: drop temporary files, redo a best-model copy that was cut off."""
    remove_stale_temporaries(job_dir)  # the job dir is locked: no temporary file there is live
    best_path = job_dir / BEST_NAME
    if state.get("best_epoch") is not None and state.get("best_epoch") == state.get("epoch"):
        try:
            best_epoch = load_checkpoint(best_path).get("epoch") if best_path.exists() else None
        except CheckpointError:
            best_epoch = None
        if best_epoch != state["epoch"]:
            log.info("re-copying %s (the run stopped before copying epoch %s)", BEST_NAME, state["epoch"])
            atomic_copy(job_dir / CHECKPOINT_NAME, best_path)


def _default_log_every(config: FitConfig, loader: Any, iters: int) -> int:
    if config.log_every is not None:
        return max(0, int(config.log_every))
    batch = getattr(loader, "batch_size", None) or 256
    return max(1, (256 * 50) // batch) if iters < 1000 else max(1, iters // 10)


def _warn_long_warmup(config: FitConfig, log: Any) -> None:
    if config.lr_type == "cos" and config.epochs and config.warmup_epochs > 0.1 * config.epochs:
        log.warning("warm-up is %d of %d epochs (%.0f%%): the paper's cosine formula spends them at a low "
                    "learning rate; pass --warmup_epochs %d or fewer for a short run", config.warmup_epochs,
                    config.epochs, 100 * config.warmup_epochs / config.epochs, max(0, config.epochs // 10))


def fit(model: nn.Module, loaders: Any, config: FitConfig, job_dir: str | Path | None = None, *,
        device: torch.device | str | None = None, dist_info: DistInfo | None = None, log: Any = None,
        record: Mapping[str, Any] | None = None, resume_state: Mapping[str, Any] | None = None) -> FitResult:
    """Train ``model`` on ``loaders.train``, evaluate on ``loaders.test`` (see the module docstring).

    ``record``: plain values stored in every checkpoint beside the weights (arch, compress rate, classes, ...).
    ``log``: the run's RunLogger (it also writes ``metrics.csv``); with a ``job_dir`` and no RunLogger, ``fit`` opens
    one of its own. ``dist_info`` from ``coring.distributed.init_distributed`` under torchrun (None: one process on
    ``device``, default the model's). ``resume_state``: ``checkpoint.pth.tar`` already loaded by the caller (to
    build the model), so that ``config.resume`` does not read it twice.
    """
    if dist_info is None:
        dev = torch.device(device) if device is not None else next(model.parameters()).device
        dist_info = DistInfo(rank=0, world_size=1, local_rank=0, device=dev, is_main=True)
    job_dir = Path(job_dir) if job_dir is not None else None
    own_log = job_dir is not None and not isinstance(log, RunLogger)
    if own_log:
        log = RunLogger(job_dir, "fit", is_main=dist_info.is_main)
    elif log is None:
        log = get_logger("fit")
    metrics = log if job_dir is not None else None
    try:
        return _fit(model, loaders, config, job_dir, dist_info, log, metrics, record, resume_state)
    finally:
        if own_log:
            log.close()


def _fit(model: nn.Module, loaders: Any, config: FitConfig, job_dir: Path | None, dist_info: DistInfo, log: Any,
         metrics: RunLogger | None, record: Mapping[str, Any] | None,
         resume_state: Mapping[str, Any] | None) -> FitResult:
    device = dist_info.device
    ckpt_path = job_dir / CHECKPOINT_NAME if job_dir is not None else None
    best_path = job_dir / BEST_NAME if job_dir is not None else None
    _warn_long_warmup(config, log)

    if not config.resume:
        resume_state = None
    elif resume_state is None and ckpt_path is not None and ckpt_path.exists():
        resume_state = load_checkpoint(ckpt_path)
    if resume_state is not None:
        log.info("resuming from %s (epoch %d done)", ckpt_path, int(resume_state.get("epoch", -1)))
        load_weights(model, resume_state)
    elif config.resume:
        log.warning("--resume: no %s yet; starting from the beginning", ckpt_path)

    seed_epoch(config.seed, 0, 0)
    model = prepare_model(model, device, channels_last=config.channels_last)
    net = wrap_ddp(model, dist_info)
    optimizer = torch.optim.SGD(net.parameters(), lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay)
    iters = len(loaders.train)
    schedule = build_schedule(optimizer, config.lr_type, config.lr, max(config.epochs, 1), iters,
                              lr_decay_step=config.lr_decay_step, warmup_epochs=config.warmup_epochs)
    scaler = make_grad_scaler(device, config.amp)
    train_loss = nn.CrossEntropyLoss(label_smoothing=config.label_smooth)
    log_every = _default_log_every(config, loaders.train, iters)
    log.info("optimizer SGD(lr=%g, momentum=%g, weight_decay=%g), %s, label smoothing %g, %d iterations/epoch",
             config.lr, config.momentum, config.weight_decay, schedule, config.label_smooth, iters)

    result = FitResult(model=model, final=None, best_top1=None, best_top5=None, best_epoch=None)
    start_epoch, best_top1, best_top5, best_epoch = 0, -math.inf, -math.inf, -1
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
        if dist_info.is_main:
            _repair_after_kill(job_dir, resume_state, log)
        kept = metrics.truncate_metrics(start_epoch - 1) if metrics is not None else 0
        log.info("continuing at epoch %d (best top-1 %.3f at epoch %d; %d metric rows kept)", start_epoch,
                 best_top1, best_epoch, kept)
        del resume_state
    elif config.initial_eval:
        result.initial = evaluate(net, loaders.test, device, amp=config.amp, progress=config.progress,
                                  desc="eval start")
        log.info("Accuracy before fine-tuning: top-1 %.3f top-5 %.3f loss %.4f (%d images)", result.initial.top1,
                 result.initial.top5, result.initial.loss, result.initial.count)

    for epoch in range(start_epoch, config.epochs):
        seed_epoch(config.seed, epoch, dist_info.rank)
        t0 = time.perf_counter()
        train = train_one_epoch(net, loaders.train, optimizer, schedule, train_loss, device, amp=config.amp,
                                scaler=scaler, epoch=epoch, progress=config.progress, log_every=log_every)
        check_finite_state(net, epoch=epoch)
        broadcast_buffers(net)  # evaluate every shard with rank 0's BN statistics (the ones saved)
        last_epoch = epoch == config.epochs - 1
        evaluated = loaders.test is not None and (config.evaluate_every_epoch or last_epoch)
        test = evaluate(net, loaders.test, device, amp=config.amp, progress=config.progress) if evaluated else None
        if test is not None and not math.isfinite(test.loss):
            raise NonFiniteLossError(f"evaluation loss is {test.loss} after epoch {epoch}; stopping before any save "
                                     "(the last checkpoint is left as it was)")
        epoch_time = time.perf_counter() - t0
        result.train_time_s += epoch_time
        is_best = test is not None and test.top1 > best_top1
        if is_best:
            best_top1, best_epoch = test.top1, epoch
        if test is not None:
            best_top5 = max(best_top5, test.top5)  # the paper tracks the best top-5 separately
            result.final = test
            log.info(" * Acc@1 %.3f Acc@5 %.3f Loss %.4f | train loss %.4f top-1 %.2f | lr %.6g | %.1fs "
                     "(%.0f img/s)", test.top1, test.top5, test.loss, train.loss, train.top1, train.lr, epoch_time,
                     train.images_per_s)
            log.info("=>Best accuracy %.3f (epoch %d)", best_top1, best_epoch)
        else:
            log.info("%s epoch %d/%d: train loss %.4f top-1 %.2f lr %.6g (%.1fs)", config.name, epoch + 1,
                     config.epochs, train.loss, train.top1, train.lr, epoch_time)
        row = {"epoch": epoch, "train_loss": train.loss, "train_top1": train.top1, "lr": train.lr,
               "epoch_time_s": epoch_time, "best_top1": best_top1 if best_epoch >= 0 else None,
               **({"test_loss": test.loss, "test_top1": test.top1, "test_top5": test.top5} if test else {})}
        result.history.append(row)
        if metrics is not None and dist_info.is_main:
            metrics.append_metrics(row)
            state = {"state_dict": _cpu_state_dict(net), "epoch": epoch, "best_top1_acc": best_top1,
                     "best_top5_acc": best_top5, "best_epoch": best_epoch,
                     "last_top1_acc": test.top1 if test else None, "last_top5_acc": test.top5 if test else None,
                     "optimizer": optimizer.state_dict(), "lr_scheduler": schedule.state_dict(),
                     "scaler": scaler.state_dict(), **dict(record or {})}
            save_checkpoint(state, ckpt_path)
            if is_best:
                atomic_copy(ckpt_path, best_path)
            try:
                plot_curves(metrics.metrics_path, job_dir / "curves.png")
            except ValueError as exc:  # a header without rows
                log.warning("no curves: %s", exc)

    barrier()
    if best_epoch >= 0:
        result.best_top1, result.best_top5, result.best_epoch = best_top1, best_top5, best_epoch
    result.model = unwrap(net)
    return result
