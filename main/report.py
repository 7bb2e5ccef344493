"""Our runs next to the paper's tables: ``results/table.md`` and PNG plots, from the job directories' logs.

    python main/report.py --job_dir runs [--out results]

A *run* is a directory holding ``prune_summary.json`` (``main/prune.py``); its fine-tuning is the directory whose
``args.json`` names the run's ``pruned.pth.tar`` as ``--pretrained`` (of several, such as an ``--evaluate`` run next
to the real fine-tuning, the one with the most epochs in ``metrics.csv``: the table names it and the others, and a
warning is printed when more than one of them trained), else the sibling ``finetune/`` (the layout of
``scripts/``), else the run directory itself. The library behind it is ``coring.report``. Accuracies come from the fine-tuning's ``metrics.csv`` (one row per
epoch; ``summary.json`` when there is no CSV), so a run still in progress shows its best epoch so far.

A run matches a paper row (``coring.paper_tables.CORING_ROWS``) when arch, criterion, strategy ``min_sum``, K and
the compress rate (as a list of floats) agree. Where several runs match one row, the table shows the one on the
paper's data set that trained longest (then the newest); every run is listed under "Runs".

Writes into ``--out``: ``table.md`` (the six tables, ablation tables, every run), ``acc_vs_flops_<arch>.png``,
``kshot_ablation.png`` and ``metric_ablation.png``.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

from coring.cli import Parser
from coring.report import match_rows, write_report

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = Parser(description="Tables and plots of our runs next to the paper's numbers")
    parser.add_argument("--job_dir", required=True, help="directory searched (recursively) for runs")
    parser.add_argument("--out", default="results", help="where table.md and the PNGs go")
    args = parser.parse_args(argv)
    try:
        result = write_report(args.job_dir, args.out)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    matched = sum(1 for found in match_rows(result["runs"]).values() if found)
    print(f"{len(result['runs'])} runs, {matched} paper rows matched: wrote {result['table']} and "
          f"{len(result['plots'])} plots in {Path(args.out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
