"""Reading runs: every pruning job under a directory, with the fine-tuning that trained it.

A *run* is a directory holding ``prune_summary.json`` (``main/prune.py``). Its fine-tuning is a directory whose
``args.json`` names the run's ``pruned.pth.tar`` as ``--pretrained``; when several do (an ``--evaluate`` run, a
fine-tuning moved aside by ``--restart``, a second try), the one with the most trained epochs in ``metrics.csv``
wins (then the newest), the choice is noted on the run and, when more than one of them trained, logged as a
warning. Without such a directory: the sibling ``finetune/`` (the layout of ``scripts/``), else the run directory.
"""
from __future__ import annotations

import csv
import json
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from coring.rank import canonical_criterion
from models import arch_spec
from models.compress import as_rate_list

__all__ = ["TABLE_TITLES", "PAPER_DATASETS", "Run", "find_runs", "normalise_rates", "canonical_criterion_name",
           "epochs_trained", "choose_finetune"]

log = logging.getLogger("coring.report")

#: The heading of each of the paper's six tables (paper-readme.txt; "GoogLeNet-40" in the README is a typo).
TABLE_TITLES: dict[str, str] = {
    "vgg_16_bn": "1. VGG-16-BN/CIFAR-10",
    "resnet_56": "2. ResNet-56/CIFAR-10",
    "densenet_40": "3. DenseNet-40/CIFAR-10",
    "googlenet": "4. GoogLeNet/CIFAR-10",
    "mobilenet_v2": "5. MobileNetv2/CIFAR-10",
    "resnet_50": "6. ResNet-50/ImageNet",
}
#: The data set each table was measured on.
PAPER_DATASETS: dict[str, str] = {arch: ("imagenet" if arch == "resnet_50" else "cifar10") for arch in TABLE_TITLES}


@dataclass
class Run:
    """One pruning job and its fine-tuning, as read from the files."""

    prune_dir: Path
    finetune_dir: Path | None
    arch: str
    compress_rate: Any
    rates: tuple[float, ...] | None
    criterion: str
    strategy: str
    shot: int
    dataset: str | None
    pruned: dict[str, int]
    baseline: dict[str, int]
    top1_baseline: float | None = None
    top5_baseline: float | None = None
    top1_pruned: float | None = None
    top1_pruned_bn: float | None = None
    best_top1: float | None = None
    best_top5: float | None = None
    best_epoch: int | None = None
    final_top1: float | None = None
    final_top5: float | None = None
    epochs_done: int = 0
    epochs_planned: int | None = None
    train_hours: float = 0.0
    world_size: int | None = None
    mtime: float = 0.0
    notes: list[str] = field(default_factory=list)
    #: Other directories that fine-tuned (or evaluated) the same checkpoint, with their trained epochs.
    finetune_ignored: list[tuple[Path, int]] = field(default_factory=list)

    @property
    def status(self) -> str:
        if self.finetune_dir is None or self.epochs_done == 0:
            return "pruned only"
        if self.epochs_planned is not None and self.epochs_done < self.epochs_planned:
            return f"running ({self.epochs_done}/{self.epochs_planned} epochs)"
        return "done"

    @property
    def on_paper_data(self) -> bool:
        return self.dataset == PAPER_DATASETS.get(self.arch)

    def counts(self, counter: str) -> tuple[int, int, int, int] | None:
        """(params, flops, baseline params, baseline flops) by ``counter`` ('min', 'thop', ...)."""
        p_key, f_key = ("params", "flops") if counter == "min" else (f"params_{counter}", f"flops_{counter}")
        try:
            return (int(self.pruned[p_key]), int(self.pruned[f_key]), int(self.baseline[p_key]),
                    int(self.baseline[f_key]))
        except (KeyError, TypeError, ValueError):
            return None


def _read_json(path: Path) -> dict:
    """The JSON object in ``path``; ``{}`` when it is absent, or, with a warning naming it, unreadable."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:  # a run killed while writing it, a truncated copy, ...
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        log.warning("ignoring %s: not a readable JSON file (%s)", path, detail)
        return {}
    if not isinstance(data, dict):
        log.warning("ignoring %s: it holds a JSON %s, not an object", path, type(data).__name__)
        return {}
    return data


def _float(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(out) or math.isinf(out) else out


def canonical_criterion_name(name: Any) -> str:
    try:
        return canonical_criterion(str(name))
    except ValueError:
        return str(name)


def normalise_rates(arch: str, compress_rate: Any) -> tuple[float, ...] | None:
    """The compress rate as a tuple of the arch's ``num_rates + extra_rates`` floats (missing extras are 0)."""

    try:
        spec = arch_spec(arch)
        rates = as_rate_list(compress_rate, spec.num_rates, arch)
    except (ValueError, KeyError):
        return None
    n = spec.num_rates + getattr(spec, "extra_rates", 0)
    rates = (list(rates) + [0.0] * n)[:n]
    return tuple(round(float(r), 6) for r in rates)


def _finetune_candidates(root: Path) -> dict[Path, list[Path]]:
    """pruned checkpoint (resolved) -> every directory under ``root`` whose ``args.json`` names it as
    ``--pretrained`` (fine-tunings, ``--evaluate`` runs, runs moved aside by ``--restart``)."""
    out: dict[Path, list[Path]] = {}
    for args_path in sorted(root.rglob("args.json")):
        pretrained = _read_json(args_path).get("pretrained")
        if not pretrained:
            continue
        candidates = [Path(pretrained)] if Path(pretrained).is_absolute() else [
            Path.cwd() / pretrained, args_path.parent / pretrained]
        for candidate in candidates:
            if candidate.exists():
                out.setdefault(candidate.resolve(), []).append(args_path.parent)
                break
    return out


def epochs_trained(ft_dir: Path) -> int:
    """Epochs a directory trained: its ``metrics.csv`` rows with a test top-1, else ``summary.json``'s
    ``final_epoch + 1``; 0 for an ``--evaluate`` run or a run that has not finished an epoch."""
    rows = [r for r in _read_metrics(ft_dir / "metrics.csv") if _float(r.get("test_top1")) is not None]
    if rows:
        return len({r.get("epoch") for r in rows})
    final = _float(_read_json(ft_dir / "summary.json").get("final_epoch"))
    return int(final) + 1 if final is not None else 0


def _newest(ft_dir: Path) -> float:
    stamps = [p.stat().st_mtime for p in (ft_dir / "metrics.csv", ft_dir / "summary.json", ft_dir / "args.json")
              if p.exists()]
    return max(stamps, default=0.0)


def choose_finetune(candidates: Sequence[Path]) -> tuple[Path, list[tuple[Path, int]]]:
    """The fine-tuning to show among several of one checkpoint, the one that trained most epochs (then the
    newest), and the others with their epochs. More than one that trained is logged as a warning."""
    epochs = {d: epochs_trained(d) for d in candidates}
    ranked = sorted(candidates, key=lambda d: (epochs[d], _newest(d)), reverse=True)
    chosen, others = ranked[0], [(d, epochs[d]) for d in ranked[1:]]
    trained = [(d, n) for d, n in others if n > 0]
    if trained:
        log.warning("ambiguous fine-tuning: %d directories trained from one checkpoint; the report shows %s (%d "
                    "epochs), not %s", len(trained) + 1, chosen, epochs[chosen],
                    ", ".join(f"{d} ({n} epochs)" for d, n in trained))
    return chosen, others


def _read_metrics(path: Path) -> list[dict[str, str]]:
    try:
        with open(path, newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f))
    except OSError:
        return []


def _fill_finetune(run: Run, ft_dir: Path) -> None:
    summary = _read_json(ft_dir / "summary.json")
    args = _read_json(ft_dir / "args.json")
    rows = [r for r in _read_metrics(ft_dir / "metrics.csv") if _float(r.get("test_top1")) is not None]
    run.finetune_dir = ft_dir
    run.dataset = summary.get("dataset") or args.get("dataset") or run.dataset
    run.epochs_planned = summary.get("epochs") or args.get("epochs")
    run.world_size = summary.get("world_size")
    if rows:
        by_epoch = {int(float(r["epoch"])): r for r in rows if _float(r.get("epoch")) is not None}
        ordered = [by_epoch[e] for e in sorted(by_epoch)]
        best = max(ordered, key=lambda r: _float(r["test_top1"]))  # first best epoch on ties, as the training
        run.best_top1, run.best_epoch = _float(best["test_top1"]), int(float(best["epoch"]))
        top5 = [_float(r.get("test_top5")) for r in ordered]
        run.best_top5 = max((v for v in top5 if v is not None), default=None)  # tracked separately, as the paper
        run.final_top1, run.final_top5 = _float(ordered[-1]["test_top1"]), _float(ordered[-1].get("test_top5"))
        run.epochs_done = len(ordered)
        run.train_hours = sum(_float(r.get("epoch_time_s")) or 0.0 for r in ordered) / 3600
        run.mtime = max(run.mtime, (ft_dir / "metrics.csv").stat().st_mtime)
    elif summary.get("best_top1") is not None:
        run.best_top1, run.best_top5 = _float(summary.get("best_top1")), _float(summary.get("best_top5"))
        run.best_epoch = summary.get("best_epoch")
        run.final_top1, run.final_top5 = _float(summary.get("final_top1")), _float(summary.get("final_top5"))
        run.epochs_done = int(summary.get("final_epoch", -1)) + 1
        run.train_hours = (_float(summary.get("train_time_s")) or 0.0) / 3600
    if run.epochs_planned is not None:
        run.epochs_planned = int(run.epochs_planned)


def find_runs(job_dir: str | os.PathLike) -> list[Run]:
    """Every pruning job under ``job_dir`` (recursively) with its fine-tuning results."""
    root = Path(job_dir)
    finetunes = _finetune_candidates(root)
    runs = []
    for summary_path in sorted(root.rglob("prune_summary.json")):
        prune_dir = summary_path.parent
        summary = _read_json(summary_path)
        args = _read_json(prune_dir / "args.json")
        arch = summary.get("arch") or args.get("arch")
        if not arch:
            continue
        rate = summary.get("compress_rate", args.get("compress_rate"))
        run = Run(prune_dir=prune_dir, finetune_dir=None, arch=arch, compress_rate=rate,
                  rates=normalise_rates(arch, rate),
                  criterion=canonical_criterion_name(summary.get("criterion", args.get("criterion", "?"))),
                  strategy=str(summary.get("strategy", args.get("strategy", "min_sum"))),
                  shot=int(summary.get("shot", args.get("shot", 1))), dataset=args.get("dataset"),
                  pruned=summary.get("pruned") or {}, baseline=summary.get("baseline") or {},
                  top1_baseline=_float(summary.get("top1_baseline")), top5_baseline=_float(summary.get("top5_baseline")),
                  top1_pruned=_float(summary.get("top1_pruned")), top1_pruned_bn=_float(summary.get("top1_pruned_bn")),
                  mtime=summary_path.stat().st_mtime)
        ft_dir = None
        candidates = finetunes.get((prune_dir / "pruned.pth.tar").resolve())
        if candidates:
            ft_dir, run.finetune_ignored = choose_finetune(candidates)
        if ft_dir is None:
            for candidate in (prune_dir.parent / "finetune", prune_dir):
                if (candidate / "metrics.csv").exists() or (candidate / "summary.json").exists():
                    ft_dir = candidate
                    break
        if ft_dir is not None:
            _fill_finetune(run, ft_dir)
        runs.append(run)
    return runs
