"""Formatting: ``table.md``, the paper's six tables next to ours (with the differences), the ablation tables and
the list of every run, saying which fine-tuning each shows."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from coring.paper_tables import BASELINES, CORING_ROWS
from coring.report.matching import criterion_sort, kshot_groups, match_rows, metric_groups, preference
from coring.report.runs import PAPER_DATASETS, TABLE_TITLES, Run

__all__ = ["TOP1_NOTE", "render_markdown", "rate_text"]

TOP1_NOTE = ("Top-1 (ours) is the best epoch on the test set, as the paper's lineage reports it (there is no separate "
             "validation split); 'final' is the last epoch's. Δ = ours − paper.")


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


def _relative(path: Path, root: Path | None) -> Path:
    if root is not None:
        try:
            return path.relative_to(root)
        except ValueError:
            pass
    return path


def _finetune_text(run: Run, root: Path | None) -> str:
    """Which fine-tuning the numbers come from, and the others of the same checkpoint it was chosen over."""
    if run.finetune_dir is None:
        return "no fine-tuning found"
    text = f"fine-tuning `{_relative(run.finetune_dir, root)}`"
    if run.finetune_ignored:
        others = ", ".join(f"`{_relative(d, root)}` ({n} epochs)" for d, n in run.finetune_ignored)
        trained = sum(1 for _, n in run.finetune_ignored if n > 0)
        text += (f", the most epochs{' (AMBIGUOUS: others trained too)' if trained else ''}; not {others}")
    return text


def _run_label(run: Run, root: Path | None) -> str:
    where = _relative(run.prune_dir.parent if run.prune_dir.name == "prune" else run.prune_dir, root)
    status = run.status
    data = run.dataset or "?"
    if not run.on_paper_data:
        data = f"{data}: not the paper's data set"
    return f"`{where}` ({data}; {status}; {_finetune_text(run, root)})"


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
        arch_runs = sorted((run for run in runs if run.arch == arch), key=preference, reverse=True)
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


def rate_text(arch: str, rates: tuple[float, ...]) -> str:
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
        lines += [f"{arch}, `{rate_text(arch, rates)}`, {dataset}:", "",
                  "| Metric | " + " | ".join(f"K={k}" for k in shots) + " |", "|---|" + "---|" * len(shots)]
        for crit in sorted(by_criterion, key=criterion_sort):
            lines.append(f"| {crit} | " + " | ".join(_pct(by_criterion[crit].get(k)) for k in shots) + " |")
        lines.append("")
    lines += ["### Metrics at fixed compression", ""]
    metric = metric_groups(runs)
    if not metric:
        lines += ["No runs yet with two or more criteria at one compression rate and K (see "
                  "`metric_ablation.png`).", ""]
    for (arch, rates, shot, dataset), by_criterion in sorted(metric.items(), key=lambda kv: str(kv[0])):
        crits = sorted(by_criterion, key=criterion_sort)
        lines += [f"{arch}, `{rate_text(arch, rates)}`, K={shot}, {dataset}:", "",
                  "| " + " | ".join(crits) + " |", "|" + "---|" * len(crits),
                  "| " + " | ".join(_pct(by_criterion[c]) for c in crits) + " |", ""]
    return lines


def _runs_markdown(runs: Sequence[Run], matches: dict[tuple[str, str], list[Run]], root: Path | None) -> list[str]:
    row_of = {id(run): f"{arch}/{script}" for (arch, script), found in matches.items() for run in found}
    lines = ["## Runs", "",
             "| Run | Arch | Criterion | K | Compress rate | Data | Epochs | Top-1 best (epoch) | Top-1 final | "
             "Top-1 pruned / +BN | Train h | Paper row | Fine-tuning shown |", "|" + "---|" * 13]
    for run in sorted(runs, key=lambda r: (r.arch, str(r.prune_dir))):
        where = _relative(run.prune_dir, root)
        epochs = f"{run.epochs_done}/{run.epochs_planned}" if run.epochs_planned else str(run.epochs_done)
        best = f"{_pct(run.best_top1)} ({run.best_epoch})" if run.best_top1 is not None else "—"
        hours = run.train_hours * (run.world_size or 1)
        lines.append(f"| `{where}` | {run.arch} | {run.criterion} | {run.shot} | `{run.compress_rate}` | "
                     f"{run.dataset} | {epochs} | {best} | {_pct(run.final_top1)} | "
                     f"{_pct(run.top1_pruned)} / {_pct(run.top1_pruned_bn)} | {hours:.3f} | "
                     f"{row_of.get(id(run), '—')} | {_finetune_text(run, root)} |")
    if not runs:
        lines.append("| (no runs found) |" + " |" * 12)
    lines += ["", "Train h: the epochs' training wall time times the processes (GPU-hours under torchrun). "
              "Fine-tuning shown: where several directories fine-tuned (or only evaluated) one pruned checkpoint, "
              "the one that trained the most epochs.", ""]
    return lines
