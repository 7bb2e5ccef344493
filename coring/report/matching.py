"""Matching: which runs rebuild which of the paper's rows, and which runs form the K-shot and metric ablations.

A run matches a paper row (``coring.paper_tables.CORING_ROWS``) when arch, criterion, strategy ``min_sum``, K and
the compress rate (as a list of floats) agree. Where several runs match one row, the one on the paper's data set
that trained longest (then the newest) comes first.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence

from coring.paper_tables import CORING_ROWS
from coring.report.runs import Run, canonical_criterion_name, normalise_rates

__all__ = ["row_key", "run_key", "preference", "match_rows", "criterion_sort", "kshot_groups", "metric_groups",
           "CRITERION_ORDER"]

#: Criteria in table and plot order (the paper's three first).
CRITERION_ORDER = ("cosine_sim", "Euclide_dis", "VBD_dis", "Manhattan_dis", "Pearson_sim", "SNR_dis", "l1", "l2",
                   "random")


def row_key(row) -> tuple:
    """What identifies a paper row: arch, criterion, strategy, K and the rates."""
    return (row.arch, canonical_criterion_name(row.criterion), "min_sum", int(row.shot),
            normalise_rates(row.arch, row.compress_rate))


def run_key(run: Run) -> tuple:
    return (run.arch, run.criterion, run.strategy, int(run.shot), run.rates)


def preference(run: Run) -> tuple:
    return (run.on_paper_data, run.epochs_done, run.mtime)


def match_rows(runs: Sequence[Run], rows: Iterable | None = None) -> dict[tuple[str, str], list[Run]]:
    """(arch, row script) -> the runs that rebuild that row, the one to show first."""

    rows = CORING_ROWS if rows is None else rows
    by_key: dict[tuple, list[Run]] = {}
    for run in runs:
        by_key.setdefault(run_key(run), []).append(run)
    out = {}
    for row in rows:
        matched = sorted(by_key.get(row_key(row), []), key=preference, reverse=True)
        out[(row.arch, row.script)] = matched
    return out


def criterion_sort(name: str) -> tuple[int, str]:
    return (CRITERION_ORDER.index(name) if name in CRITERION_ORDER else len(CRITERION_ORDER), name)


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
