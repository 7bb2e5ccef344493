"""Our runs next to the paper's tables: ``results/table.md`` and PNG plots, from the job directories' logs.

    python main/report.py --job_dir runs [--out results]

A *run* is a directory holding ``prune_summary.json`` (``main/prune.py``); its fine-tuning is the directory whose
``args.json`` names the run's ``pruned.pth.tar`` as ``--pretrained``, else the sibling ``finetune/`` (the layout of
``scripts/``), else the run directory itself. Accuracies come from the fine-tuning's ``metrics.csv`` (one row per
epoch; ``summary.json`` when there is no CSV), so a run still in progress shows its best epoch so far.

A run matches a paper row (``coring.paper_tables.CORING_ROWS``) when arch, criterion, strategy ``min_sum``, K and
the compress rate (as a list of floats) agree. Where several runs match one row, the table shows the one on the
paper's data set that trained longest (then the newest); every run is listed under "Runs".

Writes into ``--out``: ``table.md`` (the six tables, ablation tables, every run), ``acc_vs_flops_<arch>.png``,
``kshot_ablation.png`` and ``metric_ablation.png``.
"""
from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from coring.paper_tables import BASELINES, CORING_ROWS
from coring.rank import canonical_criterion
from models import arch_spec
from models.compress import as_rate_list

__all__ = ["TABLE_TITLES", "PAPER_DATASETS", "Run", "find_runs", "row_key", "run_key", "match_rows",
           "render_markdown", "write_plots", "write_report"]

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
#: Criteria in plot order (the paper's three first).
_CRITERION_ORDER = ("cosine_sim", "Euclide_dis", "VBD_dis", "Manhattan_dis", "Pearson_sim", "SNR_dis", "l1", "l2",
                    "random")
_SHORT = {"cosine_sim": "cosine", "Euclide_dis": "Euclidean", "VBD_dis": "VBD"}

TOP1_NOTE = ("Top-1 (ours) is the best epoch on the test set, as the paper's lineage reports it (there is no separate "
             "validation split); 'final' is the last epoch's. Δ = ours − paper.")


# ---------------------------------------------------------------------------------------------- reading runs
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
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _float(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(out) or math.isinf(out) else out


def _canonical_criterion(name: Any) -> str:
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


def _finetune_dirs(root: Path) -> dict[Path, Path]:
    """pruned checkpoint (resolved) -> fine-tuning directory, from every ``args.json`` under ``root``."""
    out: dict[Path, Path] = {}
    for args_path in sorted(root.rglob("args.json")):
        args = _read_json(args_path)
        pretrained = args.get("pretrained")
        if not pretrained:
            continue
        candidates = [Path(pretrained)] if Path(pretrained).is_absolute() else [
            Path.cwd() / pretrained, args_path.parent / pretrained]
        for candidate in candidates:
            if candidate.exists():
                key = candidate.resolve()
                previous = out.get(key)
                # Several fine-tunings of one checkpoint (e.g. a stale one moved aside): the newest wins.
                if previous is None or args_path.stat().st_mtime >= (previous / "args.json").stat().st_mtime:
                    out[key] = args_path.parent
                break
    return out


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
    finetunes = _finetune_dirs(root)
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
                  criterion=_canonical_criterion(summary.get("criterion", args.get("criterion", "?"))),
                  strategy=str(summary.get("strategy", args.get("strategy", "min_sum"))),
                  shot=int(summary.get("shot", args.get("shot", 1))), dataset=args.get("dataset"),
                  pruned=summary.get("pruned") or {}, baseline=summary.get("baseline") or {},
                  top1_baseline=_float(summary.get("top1_baseline")), top5_baseline=_float(summary.get("top5_baseline")),
                  top1_pruned=_float(summary.get("top1_pruned")), top1_pruned_bn=_float(summary.get("top1_pruned_bn")),
                  mtime=summary_path.stat().st_mtime)
        ft_dir = finetunes.get((prune_dir / "pruned.pth.tar").resolve())
        if ft_dir is None:
            for candidate in (prune_dir.parent / "finetune", prune_dir):
                if (candidate / "metrics.csv").exists() or (candidate / "summary.json").exists():
                    ft_dir = candidate
                    break
        if ft_dir is not None:
            _fill_finetune(run, ft_dir)
        runs.append(run)
    return runs


# ---------------------------------------------------------------------------------------------- matching
def row_key(row) -> tuple:
    """What identifies a paper row: arch, criterion, strategy, K and the rates."""
    return (row.arch, _canonical_criterion(row.criterion), "min_sum", int(row.shot),
            normalise_rates(row.arch, row.compress_rate))


def run_key(run: Run) -> tuple:
    return (run.arch, run.criterion, run.strategy, int(run.shot), run.rates)


def _preference(run: Run) -> tuple:
    return (run.on_paper_data, run.epochs_done, run.mtime)


def match_rows(runs: Sequence[Run], rows: Iterable | None = None) -> dict[tuple[str, str], list[Run]]:
    """(arch, row script) -> the runs that rebuild that row, the one to show first."""

    rows = CORING_ROWS if rows is None else rows
    by_key: dict[tuple, list[Run]] = {}
    for run in runs:
        by_key.setdefault(run_key(run), []).append(run)
    out = {}
    for row in rows:
        matched = sorted(by_key.get(row_key(row), []), key=_preference, reverse=True)
        out[(row.arch, row.script)] = matched
    return out


# ---------------------------------------------------------------------------------------------- formatting
def _size(count: float, billions: bool = False) -> str:
    """Params or FLOPs as the paper prints them: 0.66M, 91.23M; 1.21B in the tables whose baseline is >= 1B."""
    return f"{count / 1e9:.2f}B" if billions or count >= 1e9 else f"{count / 1e6:.2f}M"


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


def _delta(ours: float | None, paper: float | None, digits: int = 2) -> str:
    if ours is None or paper is None:
        return "—"
    return f"{ours - paper:+.{digits}f}"


def _rel(ours: float, paper: float) -> str:
    return f"{100 * (ours - paper) / paper:+.1f}%"


def _label(row, duplicates: set[str]) -> str:
    return f"{row.label} (`{row.script}`)" if row.label in duplicates else row.label


def _run_label(run: Run, root: Path | None) -> str:
    where = run.prune_dir.parent if run.prune_dir.name == "prune" else run.prune_dir
    if root is not None:
        try:
            where = where.relative_to(root)
        except ValueError:
            pass
    status = run.status
    data = run.dataset or "?"
    if not run.on_paper_data:
        data = f"{data}: not the paper's data set"
    return f"`{where}` ({data}; {status})"


def _dataset_title(arch: str) -> str:
    return {"cifar10": "CIFAR-10", "imagenet": "ImageNet"}[PAPER_DATASETS[arch]]


def render_markdown(runs: Sequence[Run], root: Path | None = None) -> str:
    """``table.md``: the six tables (paper | ours | Δ), the ablations and the list of runs."""

    matches = match_rows(runs)
    lines = ["# CORING: our runs next to the paper's tables", "",
             f"{TOP1_NOTE} Params and FLOPs (multiply-accumulates) of ours are counted at the nominal input "
             "(32x32 CIFAR, 224x224 ImageNet) by the counter of `main/counting.py` that lands closest to each "
             "table row (named under each table; `min` = min(thop, ptflops) as the paper's test.py prints). "
             "The paper's (↓%) are as printed; ours are 1 − row / baseline with the row counted by the row's "
             "counter and the baseline by the baseline's, the way the paper's tables mix conventions. "
             "Δ Params / Δ FLOPs: ours relative to the paper's figure.", ""]
    if any(not run.on_paper_data for run in runs):
        lines += ["**Some runs are not on the paper's data set (dry runs on the embedded `digits` or synthetic "
                  "data): their accuracies only show that the pipeline works and are not comparable.**", ""]

    for arch, title in TABLE_TITLES.items():
        rows = [row for row in CORING_ROWS if row.arch == arch]
        base = BASELINES[arch]
        big = base.flops_m >= 1000
        has_top5 = base.top5 is not None or any(row.top5 is not None for row in rows)
        labels = [row.label for row in rows]
        duplicates = {label for label in labels if labels.count(label) > 1}
        lines += [f"## {title}", ""]
        header = ["Model", "Top-1 (%) paper", "Top-1 (%) ours", "Δ Top-1", "Top-1 final"]
        if has_top5:
            header += ["Top-5 (%) paper", "Top-5 (%) ours", "Δ Top-5"]
        header += ["# Params (↓%) paper", "# Params (↓%) ours", "Δ Params", "FLOPs (↓%) paper", "FLOPs (↓%) ours",
                   "Δ FLOPs", "Run"]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]

        # Baseline: the accuracy of the checkpoint the runs pruned, counted by the baseline's counter.
        arch_runs = sorted((run for run in runs if run.arch == arch), key=_preference, reverse=True)
        ref = next((run for run in arch_runs if run.top1_baseline is not None), arch_runs[0] if arch_runs else None)
        cells = [f"{base.label} (baseline)", _pct(base.top1)]
        counts = ref.counts(base.counter) if ref is not None else None
        if ref is None or counts is None:
            cells += ["not run", "—", "—"]
            if has_top5:
                cells += [_pct(base.top5), "not run", "—"]
            cells += [f"{base.params_m:.2f}M(0.0)", "not run", "—", f"{_size(base.flops_m * 1e6, big)}(0.0)",
                      "not run", "—", "not run"]
        else:
            _, _, bp, bf = counts
            cells += [_pct(ref.top1_baseline), _delta(ref.top1_baseline, base.top1), "—"]
            if has_top5:
                cells += [_pct(base.top5), _pct(ref.top5_baseline), _delta(ref.top5_baseline, base.top5)]
            cells += [f"{base.params_m:.2f}M(0.0)", f"{_size(bp)}(0.0)", _rel(bp / 1e6, base.params_m),
                      f"{_size(base.flops_m * 1e6, big)}(0.0)", f"{_size(bf, big)}(0.0)", _rel(bf / 1e6, base.flops_m),
                      f"checkpoint pruned by {_run_label(ref, root)}"]
        lines.append("| " + " | ".join(cells) + " |")

        for row in rows:
            paper_p, paper_f = row.drops or (100 * (1 - row.params_m / base.params_m),
                                             100 * (1 - row.flops_m / base.flops_m))
            cells = [_label(row, duplicates), _pct(row.top1)]
            found = matches[(row.arch, row.script)]
            run = found[0] if found else None
            counts = run.counts(row.counter) if run is not None else None
            base_counts = run.counts(base.counter) if run is not None else None
            if run is None or counts is None or base_counts is None:
                cells += ["not run", "—", "—"]
                if has_top5:
                    cells += [_pct(row.top5), "not run", "—"]
                cells += [f"{row.params_m:.2f}M({paper_p:.1f})", "not run", "—",
                          f"{_size(row.flops_m * 1e6, big)}({paper_f:.1f})", "not run", "—",
                          f"not run (`scripts/{row.arch}/{row.script}.sh`)"]
                lines.append("| " + " | ".join(cells) + " |")
                continue
            p, f = counts[:2]
            bp, bf = base_counts[2:]
            best = run.best_top1
            cells += [_pct(best) if best is not None else "not fine-tuned", _delta(best, row.top1),
                      _pct(run.final_top1)]
            if has_top5:
                cells += [_pct(row.top5), _pct(run.best_top5), _delta(run.best_top5, row.top5)]
            cells += [f"{row.params_m:.2f}M({paper_p:.1f})", f"{_size(p)}({100 * (1 - p / bp):.1f})",
                      _rel(p / 1e6, row.params_m), f"{_size(row.flops_m * 1e6, big)}({paper_f:.1f})",
                      f"{_size(f, big)}({100 * (1 - f / bf):.1f})", _rel(f / 1e6, row.flops_m),
                      _run_label(run, root) + (f" +{len(found) - 1} more" if len(found) > 1 else "")]
            lines.append("| " + " | ".join(cells) + " |")
        lines += ["", f"Counters: baseline `{base.counter}`; " + ", ".join(
            f"{_label(row, duplicates)} `{row.counter}`" for row in rows) + ". "
            f"Scripts: `scripts/{arch}/`; the paper's data set: {_dataset_title(arch)}.", ""]

    lines += _ablation_markdown(runs)
    lines += _runs_markdown(runs, matches, root)
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------- ablations
def _criterion_sort(name: str) -> tuple[int, str]:
    return (_CRITERION_ORDER.index(name) if name in _CRITERION_ORDER else len(_CRITERION_ORDER), name)


def _accuracy(run: Run) -> float | None:
    return run.best_top1


def kshot_groups(runs: Sequence[Run]) -> dict[tuple, dict[str, dict[int, float]]]:
    """(arch, rate, dataset) -> criterion -> K -> best top-1, for the groups with at least two values of K."""
    groups: dict[tuple, dict[str, dict[int, float]]] = {}
    for run in runs:
        acc = _accuracy(run)
        if acc is None or run.rates is None or run.strategy != "min_sum":
            continue
        key = (run.arch, run.rates, run.dataset)
        previous = groups.setdefault(key, {}).setdefault(run.criterion, {}).get(run.shot)
        groups[key][run.criterion][run.shot] = acc if previous is None else max(previous, acc)
    return {k: v for k, v in groups.items() if len({shot for by_k in v.values() for shot in by_k}) >= 2}


def metric_groups(runs: Sequence[Run]) -> dict[tuple, dict[str, float]]:
    """(arch, rate, K, dataset) -> criterion -> best top-1, for the groups with at least two criteria."""
    groups: dict[tuple, dict[str, float]] = {}
    for run in runs:
        acc = _accuracy(run)
        if acc is None or run.rates is None or run.strategy != "min_sum":
            continue
        key = (run.arch, run.rates, run.shot, run.dataset)
        previous = groups.setdefault(key, {}).get(run.criterion)
        groups[key][run.criterion] = acc if previous is None else max(previous, acc)
    return {k: v for k, v in groups.items() if len(v) >= 2}


def _rate_text(arch: str, rates: tuple[float, ...]) -> str:
    """The rates in the paper's grammar, numbers as short as they go: [0.]+[0.4]*2+..."""
    terms, i = [], 0
    while i < len(rates):
        j = i
        while j < len(rates) and rates[j] == rates[i]:
            j += 1
        value = f"{rates[i]:g}"
        value = value + "." if "." not in value and "e" not in value else value
        terms.append(f"[{value}]" + (f"*{j - i}" if j - i > 1 else ""))
        i = j
    return "+".join(terms)


def _ablation_markdown(runs: Sequence[Run]) -> list[str]:
    lines = ["## Ablations (our runs only)", "",
             "The paper's K-shot and metric figures (assets/KShots.png, assets/criteria_comparison.png) are "
             "images whose values are not in our specification, so only our runs are shown. `scripts/ablation.sh` "
             "makes such runs. Best-epoch top-1 (%).", "", "### K-shot (top-1 against K per metric)", ""]
    kshot = kshot_groups(runs)
    if not kshot:
        lines += ["No runs yet with two or more values of K at one compression rate (see `kshot_ablation.png`).", ""]
    for (arch, rates, dataset), by_criterion in sorted(kshot.items(), key=lambda kv: str(kv[0])):
        shots = sorted({k for by_k in by_criterion.values() for k in by_k})
        lines += [f"{arch}, `{_rate_text(arch, rates)}`, {dataset}:", "",
                  "| Metric | " + " | ".join(f"K={k}" for k in shots) + " |", "|---|" + "---|" * len(shots)]
        for crit in sorted(by_criterion, key=_criterion_sort):
            lines.append(f"| {crit} | " + " | ".join(_pct(by_criterion[crit].get(k)) for k in shots) + " |")
        lines.append("")
    lines += ["### Metrics at fixed compression", ""]
    metric = metric_groups(runs)
    if not metric:
        lines += ["No runs yet with two or more criteria at one compression rate and K (see "
                  "`metric_ablation.png`).", ""]
    for (arch, rates, shot, dataset), by_criterion in sorted(metric.items(), key=lambda kv: str(kv[0])):
        crits = sorted(by_criterion, key=_criterion_sort)
        lines += [f"{arch}, `{_rate_text(arch, rates)}`, K={shot}, {dataset}:", "",
                  "| " + " | ".join(crits) + " |", "|" + "---|" * len(crits),
                  "| " + " | ".join(_pct(by_criterion[c]) for c in crits) + " |", ""]
    return lines


def _runs_markdown(runs: Sequence[Run], matches: dict[tuple[str, str], list[Run]], root: Path | None) -> list[str]:
    row_of = {id(run): f"{arch}/{script}" for (arch, script), found in matches.items() for run in found}
    lines = ["## Runs", "",
             "| Run | Arch | Criterion | K | Compress rate | Data | Epochs | Top-1 best (epoch) | Top-1 final | "
             "Top-1 pruned / +BN | Train h | Paper row |", "|" + "---|" * 12]
    for run in sorted(runs, key=lambda r: (r.arch, str(r.prune_dir))):
        where = str(run.prune_dir)
        if root is not None:
            try:
                where = str(run.prune_dir.relative_to(root))
            except ValueError:
                pass
        epochs = f"{run.epochs_done}/{run.epochs_planned}" if run.epochs_planned else str(run.epochs_done)
        best = f"{_pct(run.best_top1)} ({run.best_epoch})" if run.best_top1 is not None else "—"
        hours = run.train_hours * (run.world_size or 1)
        lines.append(f"| `{where}` | {run.arch} | {run.criterion} | {run.shot} | `{run.compress_rate}` | "
                     f"{run.dataset} | {epochs} | {best} | {_pct(run.final_top1)} | "
                     f"{_pct(run.top1_pruned)} / {_pct(run.top1_pruned_bn)} | {hours:.3f} | "
                     f"{row_of.get(id(run), '—')} |")
    if not runs:
        lines.append("| (no runs found) |" + " |" * 11)
    lines += ["", "Train h: the epochs' training wall time times the processes (GPU-hours under torchrun).", ""]
    return lines


# ---------------------------------------------------------------------------------------------- plots
def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}.png")
    fig.savefig(tmp, format="png")
    os.replace(tmp, path)
    return path


def _empty(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", wrap=True, transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])


def plot_acc_vs_flops(arch: str, runs: Sequence[Run], path: Path) -> Path:
    """Top-1 against FLOPs for one table: the paper's CORING rows and baseline, and our runs."""

    rows = [row for row in CORING_ROWS if row.arch == arch]
    base = BASELINES[arch]
    fig = _figure(7, 4.5)
    ax = fig.subplots()
    ax.scatter([row.flops_m for row in rows], [row.top1 for row in rows], marker="s", color="tab:blue",
               label="paper (CORING rows)")
    for row in rows:
        ax.annotate(row.script, (row.flops_m, row.top1), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.scatter([base.flops_m], [base.top1], marker="*", s=120, color="tab:blue", label="paper baseline")
    matches = match_rows(runs, rows)
    ours_x, ours_y, foreign = [], [], False
    for row in rows:
        found = matches[(row.arch, row.script)]
        if not found or found[0].best_top1 is None:
            continue
        counts = found[0].counts(row.counter)
        if counts is None:
            continue
        ours_x.append(counts[1] / 1e6)
        ours_y.append(found[0].best_top1)
        foreign |= not found[0].on_paper_data
        ax.annotate(row.script, (ours_x[-1], ours_y[-1]), textcoords="offset points", xytext=(4, -10), fontsize=8,
                    color="tab:orange")
    if ours_x:
        label = "ours (best epoch)" + (" — includes dry runs, not comparable" if foreign else "")
        ax.scatter(ours_x, ours_y, marker="o", color="tab:orange", label=label)
    else:
        ax.text(0.02, 0.02, "no fine-tuned runs of this table yet", transform=ax.transAxes, fontsize=9)
    ax.set_xlabel("FLOPs (M multiply-accumulates)")
    ax.set_ylabel("top-1 (%)")
    ax.set_title(f"{TABLE_TITLES[arch]}: accuracy against FLOPs")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def plot_kshot(runs: Sequence[Run], path: Path) -> Path:
    groups = kshot_groups(runs)
    n = max(1, len(groups))
    cols = min(n, 3)
    fig = _figure(5 * cols, 3.8 * math.ceil(n / cols) + 0.6)
    axes = fig.subplots(math.ceil(n / cols), cols, squeeze=False).ravel()
    fig.suptitle("K-shot ablation: top-1 against K per metric\n(our runs only; the paper's figure values are not "
                 "in our spec)", fontsize=10)
    if not groups:
        _empty(axes[0], "no runs with two or more values of K at one compression rate yet\n(scripts/ablation.sh)")
    for ax, ((arch, rates, dataset), by_criterion) in zip(axes, sorted(groups.items(), key=lambda kv: str(kv[0]))):
        for crit in sorted(by_criterion, key=_criterion_sort):
            shots = sorted(by_criterion[crit])
            ax.plot(shots, [by_criterion[crit][k] for k in shots], marker="o", label=_SHORT.get(crit, crit))
        ax.set_title(f"{arch} {_rate_text(arch, rates)}\n({dataset})", fontsize=8)
        ax.set_xticks(sorted({k for by_k in by_criterion.values() for k in by_k}))
        ax.set_xlabel("K (shots)")
        ax.set_ylabel("top-1 (%)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    for ax in axes[len(groups) or 1:]:
        ax.set_visible(False)
    fig.tight_layout()
    return _save(fig, path)


def plot_metrics(runs: Sequence[Run], path: Path) -> Path:
    groups = metric_groups(runs)
    fig = _figure(max(7, 2.2 * len(groups) + 3), 4.5)
    ax = fig.subplots()
    ax.set_title("Metric ablation: top-1 at fixed compression\n(our runs only; the paper's figure values are not in "
                 "our spec)", fontsize=10)
    if not groups:
        _empty(ax, "no runs with two or more criteria at one compression rate and K yet\n(scripts/ablation.sh)")
    else:
        crits = sorted({c for by_c in groups.values() for c in by_c}, key=_criterion_sort)
        keys = sorted(groups, key=str)
        width = 0.8 / len(crits)
        for i, crit in enumerate(crits):
            xs = [g + i * width for g, key in enumerate(keys) if crit in groups[key]]
            ys = [groups[key][crit] for key in keys if crit in groups[key]]
            ax.bar(xs, ys, width, label=_SHORT.get(crit, crit))
        ax.set_xticks([g + 0.4 - width / 2 for g in range(len(keys))])
        ax.set_xticklabels([f"{arch} K={shot}\n{_rate_text(arch, rates)}\n({dataset})"
                            for arch, rates, shot, dataset in keys], fontsize=7)
        ax.set_ylabel("top-1 (%)")
        ax.legend(fontsize=8)
        ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


def write_plots(runs: Sequence[Run], out: Path) -> list[Path]:
    paths = [plot_acc_vs_flops(arch, runs, out / f"acc_vs_flops_{arch}.png") for arch in TABLE_TITLES]
    paths.append(plot_kshot(runs, out / "kshot_ablation.png"))
    paths.append(plot_metrics(runs, out / "metric_ablation.png"))
    return paths


def write_report(job_dir: str | os.PathLike, out: str | os.PathLike = "results") -> dict[str, Any]:
    """Read every run under ``job_dir``; write ``table.md`` and the PNGs into ``out``."""
    root = Path(job_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"--job_dir {root} is not a directory")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    runs = find_runs(root)
    table = out / "table.md"
    tmp = table.with_name(f".table.md.tmp{os.getpid()}")
    tmp.write_text(render_markdown(runs, root))
    os.replace(tmp, table)
    plots = write_plots(runs, out)
    return {"runs": runs, "table": table, "plots": plots}
