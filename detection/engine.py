"""One training epoch and one COCO evaluation of a torchvision-style detector (losses dict in train mode,
list of detections in eval mode).

Warm-up (first epoch only, as torchvision's references): the learning rate rises linearly from
``warmup_factor * lr`` to ``lr`` over ``warmup_iters`` iterations. Losses are averaged over ranks for logging
only; a non-finite loss stops training with an error that names its components.
"""
from __future__ import annotations

import math
import time
from typing import Any, Callable, Iterable

import torch
from torch import nn

from coring.distributed import all_reduce_sum, is_distributed, unwrap
from detection.coco_eval import CocoEvaluator

__all__ = ["train_one_epoch", "evaluate", "to_device", "NonFiniteLossError"]

Log = Callable[[str], None]


class NonFiniteLossError(RuntimeError):
    """A training loss became NaN or infinite."""


def to_device(images: Iterable[torch.Tensor], targets: Iterable[dict[str, Any]],
              device: torch.device) -> tuple[list[torch.Tensor], list[dict[str, Any]]]:
    """Move a collated batch to ``device`` (non-tensor target entries such as ``image_id`` stay as they are)."""
    images = [img.to(device, non_blocking=True) for img in images]
    targets = [{k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in t.items()}
               for t in targets]
    return images, targets


def _warmup_factor(iteration: int, warmup_iters: int, warmup_factor: float) -> float:
    if iteration >= warmup_iters:
        return 1.0
    return warmup_factor + (1.0 - warmup_factor) * iteration / warmup_iters


def train_one_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, loader: Any, device: torch.device,
                    epoch: int, *, scaler: torch.amp.GradScaler | None = None, warmup_iters: int = 0,
                    warmup_factor: float = 1e-3, print_freq: int = 20, log: Log = print) -> dict[str, float]:
    """Train ``model`` for one pass over ``loader``; returns the mean of every loss and the final lr.

    ``warmup_iters`` applies only when ``epoch == 0``; the caller's epoch scheduler owns the lr afterwards.
    """
    model.train()
    base_lrs = [group["lr"] for group in optimizer.param_groups]
    steps = len(loader)
    warmup_iters = min(warmup_iters, max(steps - 1, 0)) if epoch == 0 else 0
    sums: dict[str, float] = {}
    count, start = 0, time.perf_counter()
    for it, (images, targets) in enumerate(loader):
        if it <= warmup_iters and warmup_iters > 0:
            factor = _warmup_factor(it, warmup_iters, warmup_factor)
            for group, lr in zip(optimizer.param_groups, base_lrs):
                group["lr"] = lr * factor
        images, targets = to_device(images, targets, device)
        with torch.autocast(device_type=device.type, enabled=scaler is not None):
            loss_dict = model(images, targets)
            loss = sum(loss_dict.values())
        names = sorted(loss_dict)
        logged = torch.stack([loss.detach().float()] + [loss_dict[n].detach().float() for n in names])
        if is_distributed():
            logged = all_reduce_sum(logged) / torch.distributed.get_world_size()
        values = dict(zip(["loss"] + names, logged.tolist()))
        if not math.isfinite(values["loss"]):
            raise NonFiniteLossError(f"loss is {values['loss']} at epoch {epoch} iteration {it}: "
                                     + ", ".join(f"{n}={values[n]:.4g}" for n in names))
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        for name, value in values.items():
            sums[name] = sums.get(name, 0.0) + value
        count += 1
        if print_freq > 0 and (it % print_freq == 0 or it == steps - 1):
            parts = " ".join(f"{n}={v:.4f}" for n, v in values.items())
            log(f"Epoch [{epoch}] [{it}/{steps}] lr={optimizer.param_groups[0]['lr']:.6f} {parts} "
                f"({(time.perf_counter() - start) / (it + 1):.2f} s/it)")
    if warmup_iters > 0:  # a very short epoch: make sure the warm-up never leaks into the next one
        for group, lr in zip(optimizer.param_groups, base_lrs):
            group["lr"] = lr
    means = {name: total / max(count, 1) for name, total in sums.items()}
    return {**means, "lr": optimizer.param_groups[0]["lr"], "time_s": time.perf_counter() - start}


@torch.no_grad()
def evaluate(model: nn.Module, loader: Any, device: torch.device, evaluator: CocoEvaluator, *,
             print_freq: int = 100, log: Log = print) -> tuple[dict[str, dict[str, float]], str]:
    """Run ``model`` over ``loader`` and score it: ``({iou_type: {stat: value}}, summary text)`` on rank 0,
    ``({}, "")`` on the other ranks."""
    net = unwrap(model)
    net.eval()
    start = time.perf_counter()
    for it, (images, targets) in enumerate(loader):
        images, _ = to_device(images, [], device)
        outputs = net(images)
        evaluator.update({t["image_id"]: o for t, o in zip(targets, outputs)})
        if print_freq > 0 and it % print_freq == 0:
            log(f"Test [{it}/{len(loader)}] ({(time.perf_counter() - start) / (it + 1):.2f} s/img)")
    evaluator.gather()
    if is_distributed() and torch.distributed.get_rank() != 0:
        return {}, ""
    return evaluator.summarize()
