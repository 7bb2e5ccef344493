"""The paper's learning-rate schedules, as per-iteration callables (docs/design.md, "Training").

Each schedule is a pure function of ``(epoch, iteration)``: ``schedule(epoch, it)`` sets the optimizer's
learning rate for that iteration and returns it. That makes resuming trivial: the state is the position
(``epoch``, ``iteration``) plus the configuration, checked on load.

- ``step``: MultiStepLR-like, ``lr0 * gamma ** (number of milestones <= epoch)`` (milestones ``--lr_decay_step``).
- ``cos``: ``0.5 * lr0 * (1 + cos(pi * (e - w) / (E - w)))`` per epoch ``e``, times the linear warm-up
  ``(1 + it + e * n_iter) / (w * n_iter)`` while ``e < w`` (the paper's ``adjust_learning_rate``).
  The formula is reproduced as it is, including its dip during warm-up when ``E < 2w`` (at ``E = 2w`` epoch 0
  gets lr 0). Deviation: when ``E <= w`` it divides by zero or oscillates between 0 and lr0; there we drop the
  warm-up (``w = 0``: a plain per-epoch cosine from lr0), which short K-shot calibrations hit.
  When the warm-up is more than ``WARMUP_WARN_FRACTION`` (10 %) of the run, building the schedule logs one
  warning with the numbers (the warm-up epochs' mean lr): the formula is kept, but short runs should pass a
  smaller ``--warmup_epochs`` (the quick start uses ``epochs // 10``).
- ``onecycle``: torch's ``OneCycleLR(max_lr=lr0, div_factor=10, final_div_factor=100, pct_start=0.1)`` with its
  default cosine annealing, stepped per iteration. Like the paper's call (torch defaults), it also cycles SGD
  momentum between 0.95 and 0.85 (``cycle_momentum=True``).
"""
from __future__ import annotations

import logging
import math
from typing import Sequence

import torch

__all__ = ["LRSchedule", "build_schedule", "parse_milestones", "warmup_warning", "SCHEDULES",
           "WARMUP_WARN_FRACTION"]

SCHEDULES = ("step", "cos", "onecycle")
#: A cosine warm-up longer than this fraction of the run gets a warning (the paper's formula then wastes epochs).
WARMUP_WARN_FRACTION = 0.1
log = logging.getLogger("coring.schedule")


def parse_milestones(text: str | Sequence[int] | None) -> list[int]:
    """``'150,225'`` -> ``[150, 225]``; a list passes through; None or '' -> []."""
    if text is None:
        return []
    if isinstance(text, str):
        parts = [p.strip() for p in text.replace(";", ",").split(",") if p.strip()]
        try:
            values = [int(p) for p in parts]
        except ValueError:
            raise ValueError(f"bad --lr_decay_step {text!r}; expected comma-separated epochs like '150,225'") from None
    else:
        values = [int(v) for v in text]
    if any(v < 0 for v in values):
        raise ValueError(f"bad --lr_decay_step {text!r}; epochs must be >= 0")
    return sorted(values)


class LRSchedule:
    """A per-iteration learning-rate schedule bound to an optimizer.

    Call ``schedule(epoch, iteration)`` before each optimizer step; ``lr_at`` is the same without side effects.
    """

    def __init__(self, optimizer: torch.optim.Optimizer | None, kind: str, base_lr: float, epochs: int,
                 iters_per_epoch: int, *, milestones: Sequence[int] = (150, 225), gamma: float = 0.1,
                 warmup_epochs: int = 5, div_factor: float = 10.0, final_div_factor: float = 100.0,
                 pct_start: float = 0.1, cycle_momentum: bool = True, base_momentum: float = 0.85,
                 max_momentum: float = 0.95) -> None:
        if kind not in SCHEDULES:
            raise ValueError(f"unknown lr schedule {kind!r}; expected one of {', '.join(SCHEDULES)}")
        if epochs < 1:
            raise ValueError(f"the schedule needs epochs >= 1, got {epochs}")
        if iters_per_epoch < 1:
            raise ValueError(f"the schedule needs at least one iteration per epoch, got {iters_per_epoch}")
        if base_lr <= 0:
            raise ValueError(f"learning rate must be > 0, got {base_lr}")
        if warmup_epochs < 0:
            raise ValueError(f"warmup_epochs must be >= 0, got {warmup_epochs}")
        self.optimizer = optimizer
        self.kind = kind
        self.base_lr = float(base_lr)
        self.epochs = int(epochs)
        self.iters_per_epoch = int(iters_per_epoch)
        self.milestones = list(parse_milestones(list(milestones)))
        self.gamma = float(gamma)
        self.warmup_epochs = int(warmup_epochs)
        self.div_factor = float(div_factor)
        self.final_div_factor = float(final_div_factor)
        self.pct_start = float(pct_start)
        self.cycle_momentum = bool(cycle_momentum)
        self.base_momentum = float(base_momentum)
        self.max_momentum = float(max_momentum)
        self.epoch = 0
        self.iteration = -1  # nothing stepped yet
        if kind == "cos":
            message = warmup_warning(self)
            if message:
                log.warning(message)

    # ------------------------------------------------------------------ formulas
    @property
    def effective_warmup(self) -> int:
        """Warm-up epochs actually used by ``cos`` (0 when E <= w, where the paper's formula breaks down)."""
        return self.warmup_epochs if self.epochs > self.warmup_epochs else 0

    def lr_at(self, epoch: int, iteration: int) -> float:
        """The learning rate of iteration ``iteration`` (0-based) of epoch ``epoch`` (0-based)."""
        if self.kind == "step":
            return self.base_lr * self.gamma ** sum(1 for m in self.milestones if epoch >= m)
        if self.kind == "cos":
            w, n = self.effective_warmup, self.iters_per_epoch
            lr = 0.5 * self.base_lr * (1.0 + math.cos(math.pi * (epoch - w) / (self.epochs - w)))
            if epoch < w:
                lr *= (1.0 + iteration + epoch * n) / (w * n)
            return lr
        return self._onecycle(epoch * self.iters_per_epoch + iteration)[0]

    def momentum_at(self, epoch: int, iteration: int) -> float | None:
        """SGD momentum of that iteration for ``onecycle`` with cycling momentum, else None (unchanged)."""
        if self.kind != "onecycle" or not self.cycle_momentum:
            return None
        return self._onecycle(epoch * self.iters_per_epoch + iteration)[1]

    def _onecycle(self, step: int) -> tuple[float, float]:
        """torch.optim.lr_scheduler.OneCycleLR's two-phase cosine formula at global ``step``."""
        total = self.epochs * self.iters_per_epoch
        initial = self.base_lr / self.div_factor
        final = initial / self.final_div_factor
        phases = [(float(self.pct_start * total) - 1, initial, self.base_lr, self.max_momentum, self.base_momentum),
                  (float(total) - 1, self.base_lr, final, self.base_momentum, self.max_momentum)]
        start = 0.0
        for i, (end, lr_a, lr_b, m_a, m_b) in enumerate(phases):
            if step <= end or i == len(phases) - 1:
                pct = (step - start) / (end - start) if end != start else 1.0
                return _cos_anneal(lr_a, lr_b, pct), _cos_anneal(m_a, m_b, pct)
            start = end
        raise AssertionError("unreachable")

    # ------------------------------------------------------------------ stepping
    def __call__(self, epoch: int, iteration: int) -> float:
        """Set the optimizer's lr (and onecycle momentum) for this iteration; return the lr."""
        lr = self.lr_at(epoch, iteration)
        momentum = self.momentum_at(epoch, iteration)
        if self.optimizer is not None:
            for group in self.optimizer.param_groups:
                group["lr"] = lr
                if momentum is not None and "momentum" in group:
                    group["momentum"] = momentum
        self.epoch, self.iteration = int(epoch), int(iteration)
        return lr

    @property
    def last_lr(self) -> float:
        """The lr of the last stepped iteration (of iteration 0 of epoch 0 before any step)."""
        return self.lr_at(self.epoch, max(self.iteration, 0))

    def state_dict(self) -> dict:
        """The position plus the configuration (checked on load)."""
        return {"kind": self.kind, "base_lr": self.base_lr, "epochs": self.epochs,
                "iters_per_epoch": self.iters_per_epoch, "milestones": list(self.milestones), "gamma": self.gamma,
                "warmup_epochs": self.warmup_epochs, "epoch": self.epoch, "iteration": self.iteration}

    def load_state_dict(self, state: dict) -> None:
        """Restore the position. The configuration comes from the current arguments (so a resumed run may
        change, e.g., the lr); a changed ``kind`` is an error because the position would mean nothing."""
        if state.get("kind", self.kind) != self.kind:
            raise ValueError(f"checkpoint schedule is {state.get('kind')!r} but this run asks for {self.kind!r}; "
                             f"pass --lr_type {state.get('kind')} to resume it")
        self.epoch = int(state.get("epoch", 0))
        self.iteration = int(state.get("iteration", -1))

    def __repr__(self) -> str:
        extra = {"step": f"milestones={self.milestones}, gamma={self.gamma}",
                 "cos": f"warmup_epochs={self.effective_warmup}",
                 "onecycle": f"div_factor={self.div_factor}, final_div_factor={self.final_div_factor}, "
                             f"pct_start={self.pct_start}"}[self.kind]
        return (f"LRSchedule({self.kind}, lr={self.base_lr}, epochs={self.epochs}, "
                f"iters_per_epoch={self.iters_per_epoch}, {extra})")


def warmup_warning(schedule: LRSchedule, fraction: float = WARMUP_WARN_FRACTION) -> str | None:
    """One line with the numbers when the cosine warm-up is more than ``fraction`` of the run, else None."""
    w, epochs = schedule.effective_warmup, schedule.epochs
    if schedule.kind != "cos" or w <= fraction * epochs:
        return None
    n = schedule.iters_per_epoch
    means = [sum(schedule.lr_at(e, it) for it in range(n)) / (n * schedule.base_lr) for e in range(w)]
    idle = sum(1 for m in means if m < 0.01)
    return (f"cosine warm-up is {w} of {epochs} epochs ({100 * w / epochs:.0f}% > {100 * fraction:.0f}% of the run): "
            f"the paper's formula gives the warm-up epochs a mean lr of "
            f"[{', '.join(f'{m:.2f}' for m in means)}] x lr {schedule.base_lr:g}"
            + (f", {idle} epoch(s) at lr ~0" if idle else "")
            + f"; a run this short wants --warmup_epochs {int(fraction * epochs)}"
            + ("" if int(fraction * epochs) == 0 else " or fewer"))


def _cos_anneal(start: float, end: float, pct: float) -> float:
    return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)


def build_schedule(optimizer: torch.optim.Optimizer | None, lr_type: str, base_lr: float, epochs: int,
                   iters_per_epoch: int, *, lr_decay_step: str | Sequence[int] = "150,225",
                   warmup_epochs: int = 5) -> LRSchedule:
    """The schedule of ``--lr_type`` with the paper's constants."""
    return LRSchedule(optimizer, lr_type, base_lr, epochs, iters_per_epoch,
                      milestones=parse_milestones(lr_decay_step), warmup_epochs=warmup_epochs)
