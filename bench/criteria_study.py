"""Criteria study: do the pruning criteria differ once the pruned network is fine-tuned?

    python bench/criteria_study.py --arch resnet_56 --compress_rate "[0.]+[0.15]*2+[0.4]*27" \\
        --dataset fashion_mnist --criteria VBD_dis,cosine_sim,Euclide_dis,l1,l2,random --seeds 0,1,2 \\
        --train_images 2000 --test_images 1000 --baseline_epochs 8 --finetune_epochs 3 --out runs/study

Per seed: one baseline (unpruned ``--arch``) is trained for ``--baseline_epochs`` epochs and cached in
``<out>/baselines/``; it is pruned with every criterion at the same rate (the same widths, hence the same FLOPs)
through ``coring.pruning.prune``; each pruned model's top-1 is measured as transferred, after BatchNorm
re-estimation on ``--bn_images`` training images (``coring.engine.evaluate_pruned``), and after each of the
``--finetune_epochs`` fine-tuning epochs (``coring.fit.fit``). The control ``scratch`` trains the same slim
architecture from a random initialisation with the same recipe for the same epochs. Data-driven criteria
(``hrank``, ``chip``, ``taylor``) score ``--rank_batches`` training batches.

Writes ``<out>/runs.json`` (every run: seed, criterion, top-1 per stage and per epoch, seconds, the command),
``<out>/study.md`` (mean ± std per criterion and stage, paired differences against ``random`` with bootstrap 95 %
intervals, ranks per stage, Kendall's tau of each stage's ordering with the last one), ``<out>/study.png`` (top-1
per criterion, one marker per seed) and ``<out>/differences.png`` (the paired difference against ``random`` after
each epoch: does the ordering settle?), all atomically. Killed, it continues where it stopped when
run again with the same settings: finished (seed, criterion) runs are skipped and baselines reused (a baseline
killed mid-training resumes from its last epoch). The defaults (3 seeds x 7 runs, 2000/1000 images, 8 + 3 epochs)
take about 40 minutes with one thread on a busy 2-core machine (estimated from measured epoch times).
"""
from __future__ import annotations

import argparse
import copy
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from coring.checkpoint import CheckpointError, atomic_copy, load_checkpoint, load_weights, save_checkpoint
from coring.cli import Parser, nonnegative_int, positive_float, positive_int, threads
from coring.counting import count_conv_linear
from coring.device import resolve_device
from coring.engine import evaluate_pruned
from coring.feature_criteria import draw_batches
from coring.fit import CHECKPOINT_NAME, FitConfig, fit
from coring.pruning import prune
from coring.rank import canonical_criterion, canonical_strategy
from coring.run_logging import get_logger, write_json
from coring.study import (
    BASELINE_CRITERION,
    BN_ADAPTED,
    SCRATCH,
    TRANSFERRED,
    criteria_of,
    epoch_stage,
    plot_differences,
    plot_study,
    read_study_record,
    render_markdown,
    stage_names,
    write_text_atomic,
)
from coring.threads import configure_threads, describe_threads
from data import DATASETS, build_loaders
from models import build_model, list_models

__all__ = ["DIFFERENCES_PLOT_NAME", "PLOT_NAME", "REPORT_NAME", "RUNS_NAME", "build_parser", "main", "run_study"]

RUNS_NAME = "runs.json"
REPORT_NAME = "study.md"
PLOT_NAME = "study.png"
DIFFERENCES_PLOT_NAME = "differences.png"
DEFAULT_CRITERIA = "VBD_dis,cosine_sim,Euclide_dis,l1,l2,random"
#: Settings a resumed study must share with the runs already in ``runs.json`` (seeds and criteria may change).
RESULT_SETTINGS = ("arch", "compress_rate", "dataset", "data_dir", "strategy", "train_images", "test_images",
                   "baseline_epochs", "finetune_epochs", "batch_size", "lr", "baseline_lr", "weight_decay",
                   "bn_images", "rank_batches")
#: Settings a reused baseline (``--baselines_from``) must have been trained with.
BASELINE_SETTINGS = ("arch", "dataset", "data_dir", "train_images", "test_images", "baseline_epochs", "batch_size",
                     "baseline_lr", "weight_decay")
_HISTORY_KEYS = ("epoch", "train_loss", "train_top1", "test_loss", "test_top1", "test_top5", "lr", "epoch_time_s")


def build_parser() -> Parser:
    parser = Parser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="resnet_56", choices=list_models(), help="architecture")
    parser.add_argument("--compress_rate", "-cpr", default="[0.]+[0.15]*2+[0.4]*27",
                        help="the rate every criterion prunes to (default: the paper's CORING-V-5 ResNet-56 row)")
    parser.add_argument("--dataset", default="fashion_mnist", choices=sorted(DATASETS), help="data set")
    parser.add_argument("--data_dir", default=None, help="data set directory (default: the data set's)")
    parser.add_argument("--criteria", default=DEFAULT_CRITERIA,
                        help="comma-separated criteria; 'random' (the reference of the differences) and the control "
                             "'scratch' are added when missing")
    parser.add_argument("--no_scratch", action="store_true", help="leave out the train-from-scratch control")
    parser.add_argument("--strategy", default="min_sum", help="CORING strategy: min_sum | min_min | sum")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (one baseline each)")
    parser.add_argument("--train_images", type=positive_int, default=2000, help="training images (spread evenly)")
    parser.add_argument("--test_images", type=positive_int, default=1000, help="test images (spread evenly)")
    parser.add_argument("--baseline_epochs", type=positive_int, default=8, help="epochs of each baseline")
    parser.add_argument("--finetune_epochs", type=nonnegative_int, default=3,
                        help="fine-tuning epochs of each pruned model (and training epochs of 'scratch')")
    parser.add_argument("--batch_size", type=positive_int, default=64, help="batch size")
    parser.add_argument("--baseline_lr", type=positive_float, default=0.02, help="baselines' peak learning rate")
    parser.add_argument("--lr", type=positive_float, default=0.01,
                        help="fine-tuning (and scratch) peak learning rate; both schedules are cosine, no warm-up")
    parser.add_argument("--weight_decay", type=float, default=5e-4, help="SGD weight decay")
    parser.add_argument("--bn_images", type=nonnegative_int, default=512,
                        help="training images of the BatchNorm re-estimation after pruning")
    parser.add_argument("--rank_batches", type=nonnegative_int, default=4,
                        help="training batches the data-driven criteria score (hrank, chip, taylor)")
    parser.add_argument("--threads", type=threads, default=1, help="torch CPU threads ('auto': the idle cores)")
    parser.add_argument("--device", default="auto", help="'auto' (cuda when present), 'cpu', 'cuda' or 'cuda:N'")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                        help="a progress bar over the runs")
    parser.add_argument("--out", default="runs/criteria_study", help="output directory (resumed when it holds a study)")
    parser.add_argument("--baselines_from", default=None,
                        help="another study's directory whose baselines to reuse (copied into --out); it must have "
                             "trained them with the same " + ", ".join(BASELINE_SETTINGS))
    return parser


# ---------------------------------------------------------------------------------------------- arguments
def parse_seeds(text: str) -> list[int]:
    """'0,1,2' -> [0, 1, 2]; anything else is a ValueError naming the value."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts or not all(p.isdigit() for p in parts):
        raise ValueError(f"--seeds {text!r} is not a comma-separated list of whole numbers >= 0")
    return list(dict.fromkeys(int(p) for p in parts))


def parse_criteria(text: str, *, scratch: bool) -> list[str]:
    """Canonical criterion names in the given order, ``random`` added when missing, ``scratch`` last (or dropped)."""
    names = [p.strip() for p in text.split(",") if p.strip()]
    if not names:
        raise ValueError(f"--criteria {text!r} names no criterion")
    out = [name if name == SCRATCH else canonical_criterion(name) for name in names]
    out = [c for c in dict.fromkeys(out) if c != SCRATCH]
    if BASELINE_CRITERION not in out:
        out.append(BASELINE_CRITERION)
    return out + [SCRATCH] if scratch else out


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    return {key: getattr(args, key) for key in RESULT_SETTINGS}


def _command(argv: Sequence[str]) -> str:
    return "python bench/criteria_study.py " + shlex.join(argv)


# ---------------------------------------------------------------------------------------------- state on disk
def _load_state(out: Path, settings: dict[str, Any]) -> dict[str, Any]:
    """``runs.json`` when it exists and was written with the same settings, else a new, empty state."""
    path = out / RUNS_NAME
    if not path.exists():
        return {"settings": settings, "baselines": {}, "runs": []}
    try:
        state = read_study_record(path)
    except ValueError as error:
        raise ValueError(f"{error}; move it away or use another --out") from None
    theirs = state.get("settings", {})
    for key, value in settings.items():
        if theirs.get(key) != value:
            raise ValueError(f"'{path}' holds a study with other settings ({key}: {theirs.get(key)!r} "
                             f"there, {value!r} now); use another --out or the same settings")
    return state


def _check_baseline_source(source: Path, settings: dict[str, Any]) -> Path:
    """``source`` (a study directory) when its baselines were trained with ``settings``' baseline settings."""
    path = source / RUNS_NAME
    if not path.is_file():
        raise ValueError(f"--baselines_from '{source}' is not a study directory (no {RUNS_NAME} there)")
    try:
        theirs = read_study_record(path).get("settings", {})
    except ValueError as error:
        raise ValueError(f"--baselines_from: {error}") from None
    for key in BASELINE_SETTINGS:
        if theirs.get(key) != settings[key]:
            raise ValueError(f"--baselines_from '{source}' trained its baselines with {key} {theirs.get(key)!r}, "
                             f"this study uses {settings[key]!r}; train new baselines or match the setting")
    return source / "baselines"


def _history(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: row[k] for k in _HISTORY_KEYS if row.get(k) is not None} for row in rows]


def _fine_tune_config(args: argparse.Namespace, seed: int, epochs: int, lr: float) -> FitConfig:
    return FitConfig(epochs=epochs, lr=lr, weight_decay=args.weight_decay, lr_type="cos", warmup_epochs=0,
                     seed=seed, progress=False)


# ---------------------------------------------------------------------------------------------- one study
class Study:
    """One study in ``args.out``: its loaders per seed, its baselines and its runs (see the module docstring)."""

    def __init__(self, args: argparse.Namespace, argv: Sequence[str]) -> None:
        self.args = args
        self.out = Path(args.out)
        self.command = _command(argv)
        self.device = resolve_device(args.device)
        self.seeds = parse_seeds(args.seeds)
        self.criteria = parse_criteria(args.criteria, scratch=not args.no_scratch)
        args.strategy = canonical_strategy(args.strategy)
        self.info = DATASETS[args.dataset]
        self.stages = stage_names(args.finetune_epochs)
        settings = _settings(args)
        self.state = _load_state(self.out, settings)
        self.baseline_source = (_check_baseline_source(Path(args.baselines_from), settings)
                                if args.baselines_from else None)
        self.log = get_logger("study")
        self.sizes: dict[str, int] = dict(self.state.get("sizes", {}))
        self.complexity = self._complexity()

    def _complexity(self) -> dict[str, int]:
        base = build_model(self.args.arch, None, self.info.num_classes)
        slim = build_model(self.args.arch, self.args.compress_rate, self.info.num_classes)
        (p0, f0), (p1, f1) = (count_conv_linear(m, self.info.image_size) for m in (base, slim))
        return {"baseline_params": p0, "baseline_flops": f0, "pruned_params": p1, "pruned_flops": f1}

    # -- data, baselines ---------------------------------------------------------------------------------------
    def loaders(self, seed: int) -> Any:
        a = self.args
        loaders = build_loaders(a.dataset, a.data_dir, a.batch_size, device=self.device, seed=seed,
                                limit_train=a.train_images, limit_test=a.test_images)
        for split in ("train", "test"):
            images = getattr(getattr(loaders, split), "images", None)
            if images is not None:
                self.sizes[split] = len(images)
        return loaders

    def baseline(self, seed: int, loaders: Any) -> tuple[nn.Module, bool]:
        """Seed ``seed``'s trained baseline (from the cache when there) and whether it was trained now."""
        path = self.out / "baselines" / f"seed_{seed}.pth.tar"
        model = build_model(self.args.arch, None, self.info.num_classes)
        reused = self.baseline_source / path.name if self.baseline_source else None
        if not path.exists() and reused is not None and reused.is_file():
            atomic_copy(reused, path)
            self.log.info("seed %d: baseline reused from %s", seed, reused)
        if path.exists():
            checkpoint = load_checkpoint(path)
            load_weights(model, checkpoint)
            self.state["baselines"].setdefault(str(seed), {"top1": checkpoint.get("top1"), "seconds": 0.0,
                                                           "checkpoint": str(path)})
            return model.to(self.device), False
        job = self.out / "baselines" / f"seed_{seed}"
        torch.manual_seed(seed)
        model = build_model(self.args.arch, None, self.info.num_classes)
        config = _fine_tune_config(self.args, seed, self.args.baseline_epochs, self.args.baseline_lr)
        config.resume = (job / CHECKPOINT_NAME).exists()
        start = time.perf_counter()
        result = fit(model, loaders, config, job, device=self.device, record={"arch": self.args.arch})
        seconds = time.perf_counter() - start
        save_checkpoint({"state_dict": result.model.state_dict(), "arch": self.args.arch, "seed": seed,
                         "top1": result.final.top1, "epochs": self.args.baseline_epochs}, path)
        self.state["baselines"][str(seed)] = {"top1": result.final.top1, "seconds": seconds,
                                              "epochs": _history(result.history), "checkpoint": str(path)}
        self._save()
        return result.model, True

    # -- runs ----------------------------------------------------------------------------------------------------
    def run_pruned(self, seed: int, criterion: str, baseline: nn.Module, loaders: Any,
                   batches: list) -> dict[str, Any]:
        a = self.args
        start = time.perf_counter()
        pruned = prune(copy.deepcopy(baseline), a.arch, a.compress_rate, criterion, a.strategy, seed=seed,
                       num_classes=self.info.num_classes, batches=batches).model
        prune_s = time.perf_counter() - start
        transferred, adapted, used = evaluate_pruned(pruned, loaders, self.device, a.bn_images, amp=True,
                                                     log=self.log)
        fitted = fit(pruned, loaders, _fine_tune_config(a, seed, a.finetune_epochs, a.lr), device=self.device)
        top1 = {TRANSFERRED: transferred.top1, BN_ADAPTED: adapted.top1}
        return self._record(seed, criterion, top1, fitted.history, start,
                            {"prune_s": prune_s, "bn_images_used": used})

    def run_scratch(self, seed: int, loaders: Any) -> dict[str, Any]:
        start = time.perf_counter()
        torch.manual_seed(seed)
        model = build_model(self.args.arch, self.args.compress_rate, self.info.num_classes)
        fitted = fit(model, loaders, _fine_tune_config(self.args, seed, self.args.finetune_epochs, self.args.lr),
                     device=self.device)
        return self._record(seed, SCRATCH, {TRANSFERRED: None, BN_ADAPTED: None}, fitted.history, start, {})

    def _record(self, seed: int, criterion: str, top1: dict[str, float | None], history: list[dict[str, Any]],
                start: float, extra: dict[str, Any]) -> dict[str, Any]:
        for row in history:
            top1[epoch_stage(int(row["epoch"]) + 1)] = row.get("test_top1")
        return {"seed": seed, "criterion": criterion, "top1": top1, "epochs": _history(history),
                "seconds": time.perf_counter() - start, **extra, "command": self.command}

    def _line(self, record: dict[str, Any]) -> str:
        stages = [s for s in self.stages if record["top1"].get(s) is not None]
        accs = ", ".join(f"{s} {record['top1'][s]:.2f}" for s in stages)
        return f"seed {record['seed']} {record['criterion']}: top-1 {accs} ({record['seconds']:.0f} s)"

    # -- files ---------------------------------------------------------------------------------------------------
    def _save(self) -> None:
        self.state.update(command=self.command, device=str(self.device), threads=describe_threads(),
                          complexity=self.complexity, sizes=self.sizes)
        write_json(self.state, self.out / RUNS_NAME)

    def _meta(self) -> dict[str, Any]:
        a, c = self.args, self.complexity
        runs = self.state["runs"]
        baselines = [b["top1"] for b in self.state["baselines"].values()]
        base = (f"{sum(baselines) / len(baselines):.2f} mean over {len(baselines)} seed(s)" if baselines else "–")
        details = {
            "model": f"{a.arch}, compress rate `{a.compress_rate}`, strategy {a.strategy}",
            "size": f"pruned {c['pruned_params'] / 1e6:.3f}M params, {c['pruned_flops'] / 1e6:.2f}M MACs "
                    f"({100 * c['pruned_flops'] / c['baseline_flops']:.1f} % of the baseline's "
                    f"{c['baseline_flops'] / 1e6:.2f}M; conv + linear), the same for every criterion",
            "data": f"{a.dataset}: {self.sizes.get('train', a.train_images)} training images, "
                    f"{self.sizes.get('test', a.test_images)} test images; BN re-estimation on {a.bn_images} "
                    f"images; data-driven criteria see {a.rank_batches} batches of {a.batch_size}",
            "training": f"baseline {a.baseline_epochs} epochs at lr {a.baseline_lr}; fine-tuning and scratch "
                        f"{a.finetune_epochs} epochs at lr {a.lr}; SGD momentum 0.9, weight decay {a.weight_decay}, "
                        f"cosine schedule, batch {a.batch_size}",
            "baseline top-1": base,
            "seeds": ", ".join(str(s) for s in sorted({int(r["seed"]) for r in runs})) or "–",
            "runs": f"{len(runs)}, {sum(r['seconds'] for r in runs) / 60:.1f} min (baselines "
                    f"{sum(b['seconds'] for b in self.state['baselines'].values()) / 60:.1f} min)",
            "machine": f"{self.device}, {describe_threads()}",
        }
        title = f"Criteria study: {a.arch} on {a.dataset}"
        return {"title": title, "details": details, "command": self.command}

    def write_reports(self, plot: bool) -> None:
        criteria = criteria_of(self.state["runs"], self.criteria)
        write_text_atomic(self.out / REPORT_NAME,
                          render_markdown(self.state["runs"], criteria, self.stages, self._meta()))
        if plot and self.state["runs"]:
            title = f"{self.args.arch} on {self.args.dataset}, {len(self.state['runs'])} runs"
            plot_study(self.state["runs"], criteria, self.stages, self.out / PLOT_NAME, title=title)
            plot_differences(self.state["runs"], criteria, self.stages, self.out / DIFFERENCES_PLOT_NAME, title=title)

    # -- the loop ------------------------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        done = {(int(r["seed"]), r["criterion"]) for r in self.state["runs"]}
        plan = [(s, c) for s in self.seeds for c in self.criteria]
        todo = [key for key in plan if key not in done]
        ran, trained = [], []
        bar = tqdm(total=len(plan), initial=len(plan) - len(todo), desc="criteria study", unit="run",
                   disable=not self.args.progress, dynamic_ncols=True)
        try:
            for seed in dict.fromkeys(s for s, _ in todo):
                loaders = self.loaders(seed)
                baseline, was_trained = None, False
                batches = None
                for _, criterion in [key for key in todo if key[0] == seed]:
                    bar.set_postfix_str(f"seed {seed} {criterion}")
                    if criterion == SCRATCH:
                        record = self.run_scratch(seed, loaders)
                    else:
                        if baseline is None:
                            baseline, was_trained = self.baseline(seed, loaders)
                            baseline.eval()
                            trained += [seed] if was_trained else []
                            batches = draw_batches(loaders.train, self.args.rank_batches)
                        record = self.run_pruned(seed, criterion, baseline, loaders, batches)
                    self.state["runs"].append(record)
                    ran.append((seed, criterion))
                    self._save()
                    self.write_reports(plot=False)
                    bar.update(1)
                    bar.write(self._line(record))
        finally:
            bar.close()
        self._save()
        self.write_reports(plot=True)
        return {"ran": ran, "trained_baselines": trained, "out": str(self.out)}


def run_study(args: argparse.Namespace, argv: Sequence[str]) -> dict[str, Any]:
    """Run (or continue) the study of ``args``; returns which runs ran now and which baselines were trained."""
    count = configure_threads(args.threads)
    study = Study(args, argv)
    print(f"criteria study in {study.out}: {args.arch} at {args.compress_rate} on {args.dataset}; "
          f"{len(study.seeds)} seed(s) x {len(study.criteria)} criteria; {count} CPU thread(s), {study.device}")
    return study.run()


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    try:
        run_study(args, argv)
    except (CheckpointError, FileNotFoundError, ValueError) as error:  # DataNotFoundError too
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
