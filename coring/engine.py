"""Training and evaluation loops: accuracy, evaluate, train_one_epoch, BN re-calibration, NaN guard.

Device handling (docs/design.md, "Devices, processes and threads"): on CUDA the loops use autocast (bf16 when the GPU supports it, else fp16 with a
GradScaler), channels_last inputs and ``cudnn.benchmark``; on CPU they run in fp32. Data is expected already on
the device (the on-device tensor loaders of ``data``); anything else is moved with ``non_blocking=True``.

Metrics are accumulated as device tensors and read back only at log points and at the end of an epoch, so the
loop never synchronises per step on CUDA. Under DistributedDataParallel the sums (correct, loss, count) are
all-reduced across ranks, so every rank reports the metrics of the whole (sharded) data set.

Top-k with ``k`` larger than the number of classes is clamped to the number of classes: on a data set with
fewer than 5 classes "top-5" is therefore always 100%.
"""
from __future__ import annotations

import copy
import itertools
import math
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from typing import Callable, Iterable, Sequence

import torch
from torch import nn

from coring.distributed import all_reduce_min, all_reduce_sum, is_distributed, unwrap
from coring.run_logging import get_logger
from data.common import at_epoch

__all__ = ["EvalResult", "TrainResult", "NonFiniteLossError", "accuracy", "evaluate", "train_one_epoch",
           "recalibrate_bn", "evaluate_pruned", "check_finite", "amp_dtype", "make_grad_scaler", "prepare_model", "autocast"]

log = get_logger("engine")


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or Inf; the run stops before any checkpoint of that epoch is written."""


@dataclass
class EvalResult:
    """Evaluation over a whole (possibly sharded) data set: top-1/top-5 in percent, mean CE loss, image count."""

    top1: float
    top5: float
    loss: float
    count: int

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class TrainResult:
    """One training epoch: mean loss, top-1/top-5 in percent (on the augmented batches), images, last lr, time."""

    loss: float
    top1: float
    top5: float
    count: int
    lr: float
    time_s: float
    iterations: int

    @property
    def images_per_s(self) -> float:
        return self.count / self.time_s if self.time_s > 0 else float("nan")

    def as_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------------------------------------- device helpers
def amp_dtype(device: torch.device | str, amp: bool = True) -> torch.dtype | None:
    """Autocast dtype: bf16 on CUDA when supported, else fp16; None (fp32) on CPU or when ``amp`` is off."""
    device = torch.device(device)
    if not amp or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def make_grad_scaler(device: torch.device | str, amp: bool = True) -> torch.amp.GradScaler:
    """A GradScaler enabled only for fp16 autocast on CUDA (bf16 and fp32 need none)."""
    device = torch.device(device)
    enabled = amp_dtype(device, amp) == torch.float16
    return torch.amp.GradScaler(device.type if device.type == "cuda" else "cpu", enabled=enabled)


def autocast(device: torch.device | str, amp: bool = True):
    """The autocast context of ``amp_dtype`` (a null context in fp32)."""
    device = torch.device(device)
    dtype = amp_dtype(device, amp)
    return torch.autocast(device_type="cuda", dtype=dtype) if dtype is not None else nullcontext()


def prepare_model(model: nn.Module, device: torch.device | str, *, channels_last: bool = True) -> nn.Module:
    """Move ``model`` to ``device``; on CUDA switch to channels_last and turn on ``cudnn.benchmark``."""
    device = torch.device(device)
    model = model.to(device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
    return model


def _cuda_setup(device: torch.device) -> None:
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True


def _uses_channels_last(model: nn.Module) -> bool:
    for p in unwrap(model).parameters():
        if p.dim() == 4:
            return p.is_cuda and p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous()
    return False


def _to_device(images: torch.Tensor, target: torch.Tensor, device: torch.device,
               channels_last: bool) -> tuple[torch.Tensor, torch.Tensor]:
    if images.device != device:
        images = images.to(device, non_blocking=True)
    if target.device != device:
        target = target.to(device, non_blocking=True)
    if channels_last and images.dim() == 4:
        images = images.contiguous(memory_format=torch.channels_last)
    return images, target


def _progress(iterable: Iterable, *, total: int | None, desc: str, enabled: bool):
    """tqdm when enabled (off on ranks > 0 and when stderr is not a terminal); else the iterable itself."""
    if not enabled or not sys.stderr.isatty():
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, leave=False, dynamic_ncols=True)


def _is_main() -> bool:
    return not is_distributed() or torch.distributed.get_rank() == 0


# ---------------------------------------------------------------------------------------------- metrics
def _correct_topk(output: torch.Tensor, target: torch.Tensor, topk: Sequence[int]) -> torch.Tensor:
    """Number of samples whose target is in the top-k predictions, one entry per k (a device tensor)."""
    maxk = min(max(topk), output.size(1))
    _, pred = output.topk(maxk, dim=1, largest=True, sorted=True)
    hits = pred.eq(target.view(-1, 1))
    cumulative = hits.cumsum(dim=1).clamp_(max=1)
    return torch.stack([cumulative[:, min(k, maxk) - 1].sum() for k in topk])


def accuracy(output: torch.Tensor, target: torch.Tensor, topk: Sequence[int] = (1, 5)) -> list[torch.Tensor]:
    """Top-k accuracies in percent of a batch, one scalar tensor per ``k`` (``k`` clamped to the classes)."""
    if output.dim() != 2 or target.dim() != 1 or output.size(0) != target.size(0):
        raise ValueError(f"accuracy expects output [N, C] and target [N], got {tuple(output.shape)} and "
                         f"{tuple(target.shape)}")
    if any(int(k) < 1 for k in topk):
        raise ValueError(f"top-k values must be >= 1, got {tuple(topk)}")
    batch = max(target.size(0), 1)
    correct = _correct_topk(output.detach(), target, topk).float()
    return [c * (100.0 / batch) for c in correct]


def check_finite(loss: torch.Tensor | float, *, epoch: int | None = None, iteration: int | None = None,
                 lr: float | None = None) -> None:
    """Raise ``NonFiniteLossError`` (naming epoch, iteration and lr) when ``loss`` is NaN or Inf."""
    value = float(loss.detach().float().item()) if isinstance(loss, torch.Tensor) else float(loss)
    if not math.isfinite(value):
        raise NonFiniteLossError(_nonfinite_message(value, epoch, iteration, lr))


def _nonfinite_message(value: float | None, epoch: int | None, iteration: int | None, lr: float | None) -> str:
    where = []
    if epoch is not None:
        where.append(f"epoch {epoch}")
    if iteration is not None:
        where.append(f"iteration {iteration}")
    if lr is not None:
        where.append(f"lr {lr:.6g}")
    what = "NaN/Inf" if value is None else repr(value)
    return (f"training loss is {what} at {', '.join(where) or 'an unknown step'}; stopping (the last checkpoint "
            "is left as it was). Lower --lr or check the data and the pretrained weights.")


# ---------------------------------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, device: torch.device | str, *, amp: bool = True,
             progress: bool = True, desc: str = "eval", distributed: bool | None = None,
             topk: Sequence[int] = (1, 5)) -> EvalResult:
    """Top-1/top-5 (percent) and mean cross-entropy of ``model`` over ``loader``.

    Under DDP (``distributed`` None means "when a process group exists") each rank evaluates its shard and the
    sums of correct predictions, loss and images are all-reduced, so every rank returns the whole set's metrics.
    The loader must shard without padding for ``count`` to equal the test-set size.
    """
    device = torch.device(device)
    _cuda_setup(device)
    net = unwrap(model)
    was_training = net.training
    net.eval()
    channels_last = _uses_channels_last(net)
    sums = torch.zeros(len(topk) + 2, dtype=torch.float64, device=device)  # correct@k..., loss, count
    try:
        for images, target in _progress(loader, total=_len(loader), desc=desc, enabled=progress and _is_main()):
            images, target = _to_device(images, target, device, channels_last)
            with autocast(device, amp):
                output = net(images)
            output = output.float()
            loss = nn.functional.cross_entropy(output, target, reduction="sum")
            sums[:-2] += _correct_topk(output, target, topk)
            sums[-2] += loss
            sums[-1] += target.size(0)
    finally:
        net.train(was_training)
    if distributed is None:
        distributed = is_distributed()
    if distributed:
        all_reduce_sum(sums)
    values = sums.tolist()
    count = int(round(values[-1]))
    if count == 0:
        raise ValueError("evaluate: the loader yielded no images")
    top = [100.0 * v / count for v in values[:-2]]
    return EvalResult(top1=top[0], top5=top[1] if len(top) > 1 else top[0], loss=values[-2] / count, count=count)


def _len(loader: Iterable) -> int | None:
    try:
        return len(loader)  # type: ignore[arg-type]
    except TypeError:
        return None


# ---------------------------------------------------------------------------------------------- training
def train_one_epoch(model: nn.Module, loader: Iterable, optimizer: torch.optim.Optimizer,
                    scheduler_step_fn: Callable[[int, int], float] | None, loss_fn: Callable, device: torch.device | str,
                    *, amp: bool = True, scaler: torch.amp.GradScaler | None = None, epoch: int = 0,
                    progress: bool = True, log_every: int = 50, max_iters: int | None = None,
                    defer_nan_check: bool | None = None) -> TrainResult:
    """Train ``model`` for one pass over ``loader``.

    ``scheduler_step_fn(epoch, iteration) -> lr`` is called before each step (the per-iteration schedules of
    ``coring.schedule``). Every ``log_every`` iterations (0: never) and at the end the running loss/top-1/top-5 are
    logged in the paper's format and the NaN guard is checked. On a single CPU process the loss is checked
    every step (before the weights change); on CUDA or under DDP a device flag collects the first bad iteration
    and is checked (all ranks together) at log points and at the end, so there is no per-step sync and no rank
    is left waiting in a collective. Either way a NaN/Inf raises ``NonFiniteLossError`` before the caller can
    write a checkpoint. ``defer_nan_check`` forces one mode (None: deferred on CUDA and under DDP).
    ``loader.set_epoch(epoch)`` is called when the loader has it; ``max_iters`` stops the epoch early.
    """
    device = torch.device(device)
    _cuda_setup(device)
    model.train()
    if hasattr(loader, "set_epoch"):
        loader.set_epoch(epoch)
    if scaler is None:
        scaler = make_grad_scaler(device, amp)
    channels_last = _uses_channels_last(model)
    total = _len(loader)
    if max_iters is not None:
        total = min(total, max_iters) if total is not None else max_iters
    distributed = is_distributed()
    deferred = (device.type == "cuda" or distributed) if defer_nan_check is None else bool(defer_nan_check)
    big = torch.iinfo(torch.int64).max
    first_bad = torch.full((), big, dtype=torch.int64, device=device)
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # loss*n, correct1, correct5, n
    lrs: list[float] = []
    lr = float(optimizer.param_groups[0]["lr"])
    main_rank = _is_main()

    def check() -> None:
        if not deferred:
            return
        bad = all_reduce_min(first_bad.clone()) if distributed else first_bad
        bad_it = int(bad.item())
        if bad_it != big:
            raise NonFiniteLossError(_nonfinite_message(None, epoch, bad_it, lrs[bad_it] if bad_it < len(lrs) else lr))

    start = time.perf_counter()
    it = -1
    batches = loader if max_iters is None else itertools.islice(loader, max_iters)
    bar = _progress(batches, total=total, desc=f"train {epoch}", enabled=progress and main_rank)
    for it, (images, target) in enumerate(bar):
        images, target = _to_device(images, target, device, channels_last)
        if scheduler_step_fn is not None:
            lr = scheduler_step_fn(epoch, it)
        lrs.append(lr)
        with autocast(device, amp):
            output = model(images)
            loss = loss_fn(output, target)
        if deferred:
            first_bad = torch.where(torch.isfinite(loss.detach()), first_bad, first_bad.clamp(max=it))
        else:
            check_finite(loss, epoch=epoch, iteration=it, lr=lr)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        with torch.no_grad():
            n = target.size(0)
            sums[0] += loss.detach().float() * n
            sums[1:3] += _correct_topk(output.detach(), target, (1, 5))
            sums[3] += n
        if log_every and (it + 1) % log_every == 0 and (total is None or it + 1 < total):
            check()
            if main_rank:
                s = sums.tolist()
                log.info("Epoch[%d](%d/%s): Loss %.4f Prec@1(1,5) %.2f, %.2f Lr %.6g", epoch, it + 1,
                         total if total is not None else "?", s[0] / s[3], 100 * s[1] / s[3], 100 * s[2] / s[3], lr)
            if hasattr(bar, "set_postfix"):
                s = sums.tolist()
                bar.set_postfix(loss=f"{s[0] / s[3]:.3f}", top1=f"{100 * s[1] / s[3]:.1f}", lr=f"{lr:.3g}")
    if hasattr(bar, "close"):
        bar.close()
    iterations = it + 1
    check()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - start
    if distributed:
        all_reduce_sum(sums)
    s = sums.tolist()
    count = int(round(s[3]))
    if count == 0:
        raise ValueError("train_one_epoch: the loader yielded no batches")
    result = TrainResult(loss=s[0] / count, top1=100 * s[1] / count, top5=100 * s[2] / count, count=count,
                         lr=lr, time_s=elapsed, iterations=iterations)
    if main_rank and log_every:
        log.info("Epoch[%d](%d/%d): Loss %.4f Prec@1(1,5) %.2f, %.2f Lr %.6g", epoch, iterations, iterations,
                 result.loss, result.top1, result.top5, lr)
    return result


# ---------------------------------------------------------------------------------------------- BN re-calibration
@torch.no_grad()
def recalibrate_bn(model: nn.Module, loader: Iterable, num_images: int, device: torch.device | str, *,
                   amp: bool = True, progress: bool = False) -> int:
    """Adaptive-BN: re-estimate every BatchNorm's running statistics on ``num_images`` training images.

    Resets the running mean/var, forwards the images in train mode with ``momentum=None`` (a cumulative average
    over the batches) and no gradients, then restores each module's mode and momentum. Weights are untouched.
    Under DDP the statistics are averaged across ranks. ``num_images <= 0`` does nothing. Returns the number of
    images used (fewer than asked when the loader runs out).
    """
    if num_images < 0:
        raise ValueError(f"num_images must be >= 0, got {num_images}")
    net = unwrap(model)
    bns = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if num_images == 0 or not bns:
        return 0
    device = torch.device(device)
    modes = {m: m.training for m in net.modules()}
    momenta = {bn: bn.momentum for bn in bns}
    channels_last = _uses_channels_last(net)
    seen = 0
    try:
        for bn in bns:
            bn.reset_running_stats()
            bn.momentum = None
        net.train()
        for images, _ in _progress(loader, total=None, desc="bn recalib", enabled=progress and _is_main()):
            if seen >= num_images:
                break
            images = images[: num_images - seen].to(device, non_blocking=True)
            if channels_last and images.dim() == 4:
                images = images.contiguous(memory_format=torch.channels_last)
            with autocast(device, amp):
                net(images)
            seen += images.size(0)
    finally:
        for bn, momentum in momenta.items():
            bn.momentum = momentum
        for m, mode in modes.items():
            m.training = mode
    if seen == 0:
        raise ValueError("recalibrate_bn: the loader yielded no images")
    if is_distributed():
        world = torch.distributed.get_world_size()
        for bn in bns:
            if bn.running_mean is not None:
                all_reduce_sum(bn.running_mean).div_(world)
                all_reduce_sum(bn.running_var).div_(world)
    return seen


def evaluate_pruned(model: nn.Module, loaders, device: torch.device, bn_images: int, *, amp: bool, log):
    """Accuracy right after pruning, as transferred and after BN re-estimation on ``bn_images`` training images.

    The re-estimation runs on a copy, so ``model`` keeps its transferred statistics, and on the first ``bn_images``
    images of epoch 0's order (``data.common.at_epoch``), so it sees the same images whatever iterated the training
    loader before (a study's earlier runs, a trained baseline). Returns ``(as_transferred, adapted, images_used)``
    and logs both accuracies.
    """
    pruned = evaluate(model, loaders.test, device, amp=amp, desc="pruned")
    recalibrated = copy.deepcopy(model)
    with at_epoch(loaders.train, 0):
        used = recalibrate_bn(recalibrated, loaders.train, bn_images, device, amp=amp)
    adapted = evaluate(recalibrated, loaders.test, device, amp=amp, desc="pruned+BN")
    log.info("Pruned accuracy: top-1 %.2f top-5 %.2f (as transferred)", pruned.top1, pruned.top5)
    log.info("Pruned accuracy after BN re-estimation on %d images: top-1 %.2f top-5 %.2f", used,
             adapted.top1, adapted.top5)
    return pruned, adapted, used
