"""The pruning run behind ``main/prune.py``: one run layer, two engines behind one interface.

An engine knows how to *plan*, *build* the network to prune, *select* and apply one shot, *record* what rebuilds
the slim network and *rebuild* it from that record:

- ``BuiltinEngine`` (``--arch``): the registered architectures, their channel layouts and ``coring.pruning.prune``.
- ``GenericEngine`` (``--model``): any CNN through Torch-Pruning (``coring.generic.prune_generic``).

Everything else is written once, here, and means the same for both: ``--dry_run`` (a plan, nothing read or
written), ``--flops_target`` / ``--params_target`` (the removal rate found by search), K-shot with
``--calib_epochs`` of calibration between shots (through ``coring.fit``), the rank cache, the data-driven criteria's
batches, ``--resume`` (continue after the last finished shot, kept in ``<job_dir>/last_shot.pth.tar``),
``--restart``, the job-dir lock, accuracy right after pruning as transferred and after BN re-estimation
(docs/design.md, "Accuracy right after pruning"), and one checkpoint schema (``pruned_checkpoint``).
"""
from __future__ import annotations

import argparse
import math
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from coring.checkpoint import CheckpointError, load_checkpoint, load_weights, save_checkpoint
from coring.counting import count_complexity, count_conv_linear
from coring.device import resolve_device
from coring.engine import evaluate, evaluate_pruned, prepare_model
from coring.feature_criteria import draw_batches
from coring.fit import FitConfig, fit
from coring.generic import (
    GenericModelError,
    generic_checkpoint,
    load_state_strict,
    load_user_model,
    model_label,
    prune_generic,
    rebuild_from_checkpoint,
)
from coring.jobdir import claim_job_dir
from coring.planning import plan_compression
from coring.pruning import prune, shot_rates
from coring.rank import canonical_criterion, canonical_strategy, is_data_driven
from coring.rank_cache import RankCache
from coring.run_logging import RunLogger, write_json
from data import Loaders, build_loaders, dataset_info
from models import arch_spec, build_model, num_outputs
from models.compress import format_compress_rate, parse_compress_rate
from models.registry import check_compress_rate

__all__ = ["Engine", "BuiltinEngine", "GenericEngine", "make_engine", "run_prune", "calibrate",
           "LAST_SHOT_NAME", "PRUNED_NAME"]

LAST_SHOT_NAME = "last_shot.pth.tar"
PRUNED_NAME = "pruned.pth.tar"


def _fraction(value: float | None, what: str) -> float | None:
    if value is not None and not 0.0 < float(value) < 1.0:
        raise ValueError(f"--{what} {value} is not a fraction in (0, 1)")
    return None if value is None else float(value)


class Engine(ABC):
    """What differs between the built-in architectures and any CNN (see the module docstring)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.criterion = canonical_criterion(args.criterion)
        self.strategy = canonical_strategy(args.strategy)
        if args.shot < 1:
            raise ValueError(f"--shot {args.shot} is not valid; expected a whole number >= 1")
        self.flops_target = _fraction(args.flops_target, "flops_target")
        self.params_target = _fraction(args.params_target, "params_target")
        if self.flops_target is not None and self.params_target is not None:
            raise ValueError("give one of --flops_target and --params_target, not both")

    @property
    @abstractmethod
    def label(self) -> str:
        """The network's name in logs and summaries."""

    @property
    @abstractmethod
    def input_size(self) -> int:
        """The square input side the counts use."""

    @abstractmethod
    def plan(self) -> dict[str, Any]:
        """Widths and counts of the slim network against the unpruned one, without data or checkpoint."""

    @abstractmethod
    def build(self, checkpoint: Mapping[str, Any] | None, num_classes: int) -> nn.Module:
        """The network to prune, with the checkpoint's weights loaded strictly (random weights without one)."""

    @abstractmethod
    def prune_shot(self, model: nn.Module, shot: int, *, batches: Sequence | None,
                   cache: RankCache | None) -> tuple[nn.Module, dict[str, list[int]]]:
        """Prune shot ``shot`` (0-based) of ``args.shot``; returns the slim model and, per pruned layer or group,
        the ORIGINAL channel indices it keeps so far."""

    @abstractmethod
    def checkpoint(self, model: nn.Module, shot: int) -> dict[str, Any]:
        """``state_dict`` and the fields that rebuild the slim model after shot ``shot`` (0-based)."""

    @abstractmethod
    def rebuild(self, checkpoint: Mapping[str, Any]) -> nn.Module:
        """The slim model of a checkpoint written with ``record``, weights loaded strictly."""


class BuiltinEngine(Engine):
    """``--arch``: a registered architecture pruned to ``--compress_rate`` (or to a uniform rate meeting a target)."""

    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__(args)
        self.arch = args.arch
        self.spec = arch_spec(args.arch)
        has_rate = args.compress_rate is not None
        if has_rate == (self.flops_target is not None or self.params_target is not None):
            raise ValueError(f"--arch {self.arch}: give --compress_rate or one of --flops_target / --params_target")
        self.target = (check_compress_rate(self.arch, args.compress_rate) if has_rate
                       else self._uniform_rate_for_target())
        self.rounds = shot_rates(self.target, args.shot)
        self.keep: dict[str, torch.Tensor] = {}

    @property
    def label(self) -> str:
        return self.arch

    @property
    def input_size(self) -> int:
        return self.spec.input_size

    def _uniform_rate_for_target(self) -> list[float]:
        """The smallest uniform rate (to 1e-3) whose conv+linear MACs or params meet the target (bisection)."""
        metric, target = ("flops", self.flops_target) if self.flops_target is not None else (
            "params", self.params_target)

        def removed(rate: float) -> float:
            params, macs = count_conv_linear(build_model(self.arch, [rate] * self.spec.num_rates).eval(),
                                             self.spec.input_size)
            return params if metric == "params" else macs

        base = removed(0.0)
        lo, hi = 0.0, 0.9
        if 1 - removed(hi) / base < target:
            raise ValueError(f"--{metric}_target {target} cannot be met by {self.arch}: a uniform rate of {hi} "
                             f"removes only {100 * (1 - removed(hi) / base):.1f}%")
        while hi - lo > 1e-3:
            mid = (lo + hi) / 2
            lo, hi = (lo, mid) if 1 - removed(mid) / base >= target else (mid, hi)
        return [round(hi, 4)] * self.spec.num_rates

    def plan(self) -> dict[str, Any]:
        return plan_compression(self.arch, self.target)

    def build(self, checkpoint: Mapping[str, Any] | None, num_classes: int) -> nn.Module:
        source_rate = checkpoint.get("compress_rate") if checkpoint else None  # a pruned network prunes further
        model = build_model(self.arch, source_rate, num_classes)
        if checkpoint is not None:
            load_weights(model, checkpoint)
        return model

    def prune_shot(self, model: nn.Module, shot: int, *, batches: Sequence | None,
                   cache: RankCache | None) -> tuple[nn.Module, dict[str, list[int]]]:
        result = prune(model, self.arch, self.rounds[shot], self.criterion, self.strategy, seed=self.args.rank_seed,
                       cache=cache, num_classes=num_outputs(model), batches=batches)
        composed = {name: (self.keep[name][idx] if name in self.keep else idx) for name, idx in result.keep.items()}
        self.keep = composed
        return result.model, {name: idx.tolist() for name, idx in composed.items()}

    def checkpoint(self, model: nn.Module, shot: int) -> dict[str, Any]:
        last = shot == len(self.rounds) - 1 and self.args.compress_rate is not None
        rate = self.args.compress_rate if last else format_compress_rate(self.rounds[shot])  # the user's spelling
        return {"state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}, "arch": self.arch,
                "compress_rate": rate, "num_classes": num_outputs(model)}

    def rebuild(self, checkpoint: Mapping[str, Any]) -> nn.Module:
        model = build_model(self.arch, checkpoint["compress_rate"], checkpoint.get("num_classes"))
        load_weights(model, checkpoint)
        self.keep = {name: torch.tensor(idx) for name, idx in checkpoint.get("keep", {}).items()}
        return model


class GenericEngine(Engine):
    """``--model``: any CNN through Torch-Pruning, to one channel fraction, a FLOPs target or a params target.

    K-shot prunes shot ``s`` to ``r / (K - s)`` of the ORIGINAL channels, as the built-in path does, each shot a
    separate Torch-Pruning step on the current (calibrated) network; the records compose (history replayed in
    order, kept indices mapped back to the original channels).
    """

    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__(args)
        self.channel_ratio = _single_channel_ratio(args.compress_rate)
        given = sum(x is not None for x in (self.flops_target, self.params_target, self.channel_ratio))
        if given != 1:
            raise GenericModelError("with --model give exactly one of --flops_target, --params_target or a single "
                                    "--compress_rate (fraction of every group's channels)")
        self.info = dataset_info(args.dataset)
        self.num_classes = args.num_classes or self.info.num_classes
        self.ratio: float | None = self.channel_ratio
        self.records: list[dict[str, Any]] = []

    @property
    def label(self) -> str:
        return self.args.model

    @property
    def input_size(self) -> int:
        return self.info.image_size

    def _example(self, model: nn.Module) -> torch.Tensor:
        device = next(model.parameters()).device
        return torch.randn(1, 3, self.info.image_size, self.info.image_size, device=device)

    def _overall_ratio(self, model: nn.Module) -> float:
        """The channel fraction of the whole run: given, or found by Torch-Pruning's search on the target."""
        if self.ratio is None:
            _, record = prune_generic(model, self._example(model), criterion="l1", flops_target=self.flops_target,
                                      params_target=self.params_target)
            self.ratio = float(record["channel_ratio"])
        return self.ratio

    def plan(self) -> dict[str, Any]:
        model = load_user_model(self.args.model, self.num_classes).eval()
        ratio = self._overall_ratio(model)
        slim, record = prune_generic(model, self._example(model), criterion="l1", channel_ratio=ratio)
        base_c, slim_c = count_complexity(model, self.input_size), count_complexity(slim, self.input_size)
        widths = [{"group": name, "rate_index": None, "rate": ratio, "original": width,
                   "pruned": record["widths"].get(name, width)} for name, width in record["original_widths"].items()]
        return {"arch": model_label(self.args.model), "compress_rate": f"{ratio:.4g} of every prunable group",
                "rates": None, "input_size": self.input_size, **slim_c.as_dict(), "baseline": base_c.as_dict(),
                "reduction_pct": {key: round(100.0 * (1 - slim_c.as_dict()[key] / base_c.as_dict()[key]), 2)
                                  for key in base_c.as_dict()},
                "widths": widths}

    def build(self, checkpoint: Mapping[str, Any] | None, num_classes: int) -> nn.Module:
        model = load_user_model(self.args.model, num_classes)
        if checkpoint is not None:
            load_state_strict(model, checkpoint)
        return model

    def prune_shot(self, model: nn.Module, shot: int, *, batches: Sequence | None,
                   cache: RankCache | None) -> tuple[nn.Module, dict[str, list[int]]]:
        shots = self.args.shot
        overall = self._overall_ratio(model) if shot == 0 else self.ratio
        done = overall / (shots - shot + 1) if shot > 0 else 0.0   # fraction of the original removed so far
        goal = overall / (shots - shot)
        step = 1.0 - (1.0 - goal) / (1.0 - done)
        slim, record = prune_generic(model, self._example(model), criterion=self.criterion, strategy=self.strategy,
                                     channel_ratio=step, seed=self.args.rank_seed, batches=batches, cache=cache)
        self.records.append(record)
        return slim, self._composed_record()["kept"]

    def _composed_record(self) -> dict[str, Any]:
        first, last = self.records[0], self.records[-1]
        kept: dict[str, list[int]] = {}
        for record in self.records:
            for name, idx in record["kept"].items():
                kept[name] = [kept[name][i] for i in idx] if name in kept else list(idx)
        return {**last, "history": [entry for record in self.records for entry in record["history"]],
                "original_widths": first["original_widths"], "flops_before": first["flops_before"],
                "params_before": first["params_before"], "kept": kept, "channel_ratio": self.ratio,
                "iterative_steps": len(self.records), "flops_target": self.flops_target,
                "params_target": self.params_target, "seconds": sum(r["seconds"] for r in self.records)}

    def checkpoint(self, model: nn.Module, shot: int) -> dict[str, Any]:
        return generic_checkpoint(model, self._composed_record(),
                                  {"source": self.args.model, "num_classes": self.num_classes})

    def rebuild(self, checkpoint: Mapping[str, Any]) -> nn.Module:
        model = rebuild_from_checkpoint(checkpoint, self.args.model)
        generic = dict(checkpoint["generic"])
        self.ratio = generic.get("channel_ratio")
        self.records = [generic]
        return model


def _single_channel_ratio(text: str | None) -> float | None:
    if text is None:
        return None
    rates = parse_compress_rate(text)
    if len(set(rates)) != 1:
        raise GenericModelError("with --model, --compress_rate is one channel fraction for every group (e.g. 0.3)")
    return rates[0]


def counts_table(before: Any, after: Any) -> list[str]:
    """Params and FLOPs before and after, by every counter, as log lines."""
    rows = [f"{'counter':<12} {'params before':>14} {'params after':>13} {'(-%)':>7} "
            f"{'FLOPs before':>14} {'FLOPs after':>13} {'(-%)':>7}"]
    for counter in ("min", "thop", "ptflops", "conv_linear"):
        p0, f0 = before.by_counter(counter)
        p1, f1 = after.by_counter(counter)
        rows.append(f"{counter:<12} {p0:>14,d} {p1:>13,d} {100 * (1 - p1 / p0):>6.1f}% "
                    f"{f0:>14,d} {f1:>13,d} {100 * (1 - f1 / f0):>6.1f}%")
    return rows


def make_engine(args: argparse.Namespace) -> Engine:
    """The engine the command line names: ``--model`` (any CNN) or ``--arch``; validates every argument."""
    if getattr(args, "random_rank", False):
        args.criterion = "random"
    if args.model is not None:
        return GenericEngine(args)
    if args.arch is None:
        raise ValueError("--arch (or --model) is required")
    return BuiltinEngine(args)


def calibrate(model: nn.Module, loaders: Loaders, device: torch.device, epochs: int, args: argparse.Namespace,
              log: Any) -> None:
    """K-shot calibration between shots: ``epochs`` of SGD (momentum 0.9, cosine without warm-up), no evaluation."""
    config = FitConfig(epochs=epochs, lr=args.calib_lr, momentum=0.9, weight_decay=args.calib_weight_decay,
                       lr_type="cos", warmup_epochs=0, amp=args.amp, channels_last=args.channels_last,
                       seed=args.seed, progress=False, log_every=0, name="calibration")
    fit(model, Loaders(loaders.train, None, loaders.info), config, device=device, log=log)


def pruned_checkpoint(engine: Engine, model: nn.Module, keep: Mapping[str, list[int]], args: argparse.Namespace,
                      shot: int, **extra: Any) -> dict[str, Any]:
    """The one schema of a pruning checkpoint (``pruned.pth.tar``, ``last_shot.pth.tar``): the engine's weights and
    rebuild fields, the ORIGINAL channels each pruned group or layer keeps, how they were chosen, the shots done."""
    return {**engine.checkpoint(model, shot - 1),
            "keep": {name: list(map(int, idx)) for name, idx in keep.items()},
            "criterion": canonical_criterion(args.criterion), "strategy": canonical_strategy(args.strategy),
            "shot": shot, "shots": args.shot, "epoch": -1, **extra}


def run_prune(args: argparse.Namespace, engine: Engine | None = None) -> dict[str, Any]:
    """Prune as the command line says; writes ``<job_dir>/pruned.pth.tar`` and ``prune_summary.json``."""
    engine = engine if engine is not None else make_engine(args)
    device = resolve_device(args.device)
    torch.manual_seed(args.seed)
    with claim_job_dir(args.job_dir, resume=args.resume, restart=args.restart) as job_dir, \
            RunLogger(job_dir, "prune") as log:
        return _run(engine, args, device, job_dir, log)


def _run(engine: Engine, args: argparse.Namespace, device: torch.device, job_dir: Path, log: RunLogger) -> dict:
    log.write_config(args)
    checkpoint = load_checkpoint(args.pretrain_dir) if args.pretrain_dir else None
    info = dataset_info(args.dataset)
    num_classes = args.num_classes or (checkpoint or {}).get("num_classes") or info.num_classes
    model = prepare_model(engine.build(checkpoint, num_classes), device, channels_last=args.channels_last)
    del checkpoint
    loaders = build_loaders(args.dataset, args.data_dir, args.batch_size, device=device,
                            eval_batch_size=args.eval_batch_size, workers=args.workers, seed=args.seed,
                            limit_train=args.limit_train, limit_test=args.limit_test)
    before = count_complexity(model, engine.input_size)  # the paper's tables count at the nominal size
    summary: dict[str, Any] = {"arch": engine.label, "compress_rate": args.compress_rate,
                               "criterion": engine.criterion, "strategy": engine.strategy, "shot": args.shot,
                               "dataset": args.dataset, "baseline": before.as_dict()}
    if args.model is not None:
        summary["model"] = args.model
    if not args.skip_baseline_eval:
        base = evaluate(model, loaders.test, device, amp=args.amp, desc="baseline")
        summary["top1_baseline"], summary["top5_baseline"] = base.top1, base.top5
        log.info("Baseline accuracy: top-1 %.2f top-5 %.2f", base.top1, base.top5)

    batches = draw_batches(loaders.train, args.rank_batches) if is_data_driven(engine.criterion) else None
    cache = RankCache.for_checkpoint(args.pretrain_dir) if args.rank_cache and args.pretrain_dir else None
    calib_epochs = math.ceil(args.calib_epochs / args.shot) if args.shot > 1 else 0
    last_shot_path = job_dir / LAST_SHOT_NAME
    first_shot, keep = 0, {}
    if args.resume and last_shot_path.exists():
        state = load_checkpoint(last_shot_path)
        model = prepare_model(engine.rebuild(state), device, channels_last=args.channels_last)
        first_shot, keep = int(state["shot"]), state.get("keep", {})
        log.info("--resume: shot %d of %d was finished (%s); continuing with shot %d", first_shot, args.shot,
                 last_shot_path, first_shot + 1)
    for shot in range(first_shot, args.shot):
        start = time.perf_counter()
        model, keep = engine.prune_shot(model, shot, batches=batches, cache=cache if shot == 0 else None)
        if cache is not None and shot == 0:
            try:
                cache.save()
            except (OSError, CheckpointError) as error:  # a read-only checkpoint folder must not stop the run
                log.warning("could not write the rank cache %s: %s", cache.path, error)
        log.info("shot %d/%d: ranked and slimmed in %.2f s", shot + 1, args.shot, time.perf_counter() - start)
        if calib_epochs:
            log.info("shot %d/%d: %d calibration epoch(s)", shot + 1, args.shot, calib_epochs)
            calibrate(model, loaders, device, calib_epochs, args, log)
        if shot + 1 < args.shot:
            save_checkpoint(pruned_checkpoint(engine, model, keep, args, shot + 1), last_shot_path)

    after = count_complexity(model, engine.input_size)
    pruned, adapted, used = evaluate_pruned(model, loaders, device, args.bn_recalib, amp=args.amp, log=log)
    for row in counts_table(before, after):
        log.info("%s", row)
    summary.update({"top1_pruned": pruned.top1, "top5_pruned": pruned.top5, "top1_pruned_bn": adapted.top1,
                    "top5_pruned_bn": adapted.top5, "bn_images": used, "pruned": after.as_dict()})
    out_path = job_dir / PRUNED_NAME
    save_checkpoint(pruned_checkpoint(engine, model, keep, args, args.shot, best_top1_acc=pruned.top1), out_path)
    last_shot_path.unlink(missing_ok=True)
    summary["checkpoint"] = str(out_path)
    write_json(summary, job_dir / "prune_summary.json")
    log.info("saved %s", out_path)
    return summary
