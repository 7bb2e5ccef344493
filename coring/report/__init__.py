"""Our runs next to the paper's tables: ``results/table.md`` and PNG plots, from the job directories' logs.

    python main/report.py --job_dir runs [--out results]

Four modules, one job each:

- ``runs``: reading runs. A *run* is a directory holding ``prune_summary.json`` (``main/prune.py``); its
  fine-tuning is the directory whose ``args.json`` names the run's ``pruned.pth.tar`` as ``--pretrained`` (of
  several, the one that trained most epochs, the others named in the table and a warning logged when more than
  one trained), else the sibling ``finetune/`` (the layout of ``scripts/``), else the run directory itself.
  Accuracies come from the fine-tuning's ``metrics.csv`` (``summary.json`` when there is no CSV), so a run still
  in progress shows its best epoch so far.
- ``matching``: which runs rebuild which paper row (arch, criterion, strategy ``min_sum``, K and the rates as
  floats agree; of several, the one on the paper's data set that trained longest, then the newest) and which
  form the K-shot and metric ablations.
- ``formatting``: ``table.md`` (the six tables, ablation tables, every run).
- ``plots``: ``acc_vs_flops_<arch>.png``, ``kshot_ablation.png`` and ``metric_ablation.png``.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from coring.checkpoint import atomic_write
from coring.report.formatting import TOP1_NOTE, rate_text, render_markdown
from coring.report.matching import kshot_groups, match_rows, metric_groups, row_key, run_key
from coring.report.plots import plot_acc_vs_flops, plot_kshot, plot_metrics, write_plots
from coring.report.runs import PAPER_DATASETS, TABLE_TITLES, Run, choose_finetune, find_runs, normalise_rates

__all__ = ["TABLE_TITLES", "PAPER_DATASETS", "TOP1_NOTE", "Run", "find_runs", "choose_finetune", "normalise_rates",
           "row_key", "run_key", "match_rows", "kshot_groups", "metric_groups", "rate_text", "render_markdown",
           "plot_acc_vs_flops", "plot_kshot", "plot_metrics", "write_plots", "write_report"]


def write_report(job_dir: str | os.PathLike, out: str | os.PathLike = "results") -> dict[str, Any]:
    """Read every run under ``job_dir``; write ``table.md`` and the PNGs into ``out``."""
    root = Path(job_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"--job_dir {root} is not a directory")
    out = Path(out)
    runs = find_runs(root)
    table = out / "table.md"
    text = render_markdown(runs, root)
    atomic_write(table, lambda f: f.write(text.encode("utf-8")))
    plots = write_plots(runs, out)
    return {"runs": runs, "table": table, "plots": plots}
