"""Plots: accuracy against FLOPs per table (the paper's rows and ours), the K-shot and the metric ablations."""
from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from coring.checkpoint import atomic_write
from coring.paper_tables import BASELINES, CORING_ROWS
from coring.report.formatting import rate_text
from coring.report.matching import criterion_sort, kshot_groups, match_rows, metric_groups
from coring.report.runs import TABLE_TITLES, Run

__all__ = ["plot_acc_vs_flops", "plot_kshot", "plot_metrics", "write_plots"]

_SHORT = {"cosine_sim": "cosine", "Euclide_dis": "Euclidean", "VBD_dis": "VBD"}


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: Path) -> Path:
    atomic_write(path, lambda f: fig.savefig(f, format="png"))
    return path


def _empty(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", wrap=True, transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])


#: Where a point's label may go, in points from the point: right-above first, then the other corners, then the
#: same corners farther out (crowded points).
_CORNERS = ((5, 4, "left", "bottom"), (5, -4, "left", "top"), (-5, 4, "right", "bottom"), (-5, -4, "right", "top"),
            (0, 8, "center", "bottom"), (0, -8, "center", "top"))
_OFFSETS = tuple((dx, dy + (10 * ring if dy > 0 else -10 * ring), ha, va)
                 for ring in range(4) for dx, dy, ha, va in _CORNERS)


def _place_labels(fig, ax, points: list[tuple[float, float, str, str]]) -> None:
    """Annotate ``(x, y, text, colour)`` points, each at the first corner where its text overlaps no earlier label
    and no marker and stays inside the axes (the last corner tried when none is free)."""
    renderer = fig.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    markers = [ax.transData.transform((x, y)) for x, y, _, _ in points]
    taken: list = []
    for x, y, text, colour in points:
        for dx, dy, ha, va in _OFFSETS:
            label = ax.annotate(text, (x, y), textcoords="offset points", xytext=(dx, dy), ha=ha, va=va,
                                fontsize=8, color=colour)
            box = label.get_window_extent(renderer).expanded(1.05, 1.1)
            clear = (frame.contains(box.x0, box.y0) and frame.contains(box.x1, box.y1)
                     and not any(box.overlaps(other) for other in taken)
                     and not any(box.contains(mx, my) for mx, my in markers))
            if clear or (dx, dy) == _OFFSETS[-1][:2]:
                taken.append(box)
                break
            label.remove()


def plot_acc_vs_flops(arch: str, runs: Sequence[Run], path: Path) -> Path:
    """Top-1 against FLOPs for one table: the paper's CORING rows and baseline, and our runs, each of ours joined
    to its paper row by a dotted line. Labels are placed clear of each other; the legend sits below the axes."""

    rows = [row for row in CORING_ROWS if row.arch == arch]
    base = BASELINES[arch]
    fig = _figure(7.5, 5.2)
    ax = fig.subplots()
    ax.scatter([row.flops_m for row in rows], [row.top1 for row in rows], marker="s", color="tab:blue",
               label="paper (CORING rows)", zorder=3)
    ax.scatter([base.flops_m], [base.top1], marker="*", s=140, color="tab:blue", label="paper baseline", zorder=3)
    matches = match_rows(runs, rows)
    labels = [(row.flops_m, row.top1, row.script, "tab:blue") for row in rows]
    labels.append((base.flops_m, base.top1, "baseline", "tab:blue"))
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
        ax.plot([row.flops_m, ours_x[-1]], [row.top1, ours_y[-1]], linestyle=":", color="grey", linewidth=1)
        labels.append((ours_x[-1], ours_y[-1], row.script, "tab:orange"))
    if ours_x:
        label = "ours (best epoch)" + (": includes dry runs, not comparable" if foreign else "")
        ax.scatter(ours_x, ours_y, marker="o", color="tab:orange", label=label, zorder=3)
    else:
        ax.text(0.02, 0.02, "no fine-tuned runs of this table yet", transform=ax.transAxes, fontsize=9)
    ax.set_xlabel("FLOPs (M multiply-accumulates)")
    ax.set_ylabel("top-1 (%)")
    ax.set_title(f"{TABLE_TITLES[arch]}: accuracy against FLOPs")
    ax.grid(True, alpha=0.3)
    ax.margins(x=0.12, y=0.15)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=3, frameon=False)
    fig.tight_layout()
    _place_labels(fig, ax, labels)
    return _save(fig, path)


def _group_order(key: tuple) -> tuple:
    """Sort ablation groups by arch, data set, rates, then K as a number (not as text: 1, 5, 15)."""
    return tuple(str(part) if not isinstance(part, int) else f"{part:09d}" for part in key)


def plot_kshot(runs: Sequence[Run], path: Path) -> Path:
    groups = kshot_groups(runs)
    n = max(1, len(groups))
    cols = min(n, 3)
    fig = _figure(5 * cols, 3.8 * math.ceil(n / cols) + 1.2)
    axes = fig.subplots(math.ceil(n / cols), cols, squeeze=False).ravel()
    fig.suptitle("K-shot ablation: top-1 against K per metric\n(our runs only; the paper's figure values are not "
                 "in our spec)", fontsize=10)
    if not groups:
        _empty(axes[0], "no runs with two or more values of K at one compression rate yet\n(scripts/ablation.sh)")
    handles = {}
    for ax, ((arch, rates, dataset), by_criterion) in zip(axes, sorted(groups.items(), key=lambda kv: str(kv[0]))):
        for crit in sorted(by_criterion, key=criterion_sort):
            shots = sorted(by_criterion[crit])
            (line,) = ax.plot(shots, [by_criterion[crit][k] for k in shots], marker="o",
                              label=_SHORT.get(crit, crit))
            handles.setdefault(_SHORT.get(crit, crit), line)
        ax.set_title(f"{arch} {rate_text(arch, rates)}\n({dataset})", fontsize=8)
        ax.set_xticks(sorted({k for by_k in by_criterion.values() for k in by_k}))
        ax.set_xlabel("K (shots)")
        ax.set_ylabel("top-1 (%)")
        ax.grid(True, alpha=0.3)
        ax.margins(y=0.15)
    for ax in axes[len(groups) or 1:]:
        ax.set_visible(False)
    if handles:  # one legend for all panels, below them, so it covers no curve
        fig.legend(list(handles.values()), list(handles), loc="lower center", ncol=len(handles), fontsize=8,
                   frameon=False)
    fig.tight_layout(rect=(0, 0.06 if handles else 0, 1, 1))
    return _save(fig, path)


def plot_metrics(runs: Sequence[Run], path: Path) -> Path:
    groups = metric_groups(runs)
    fig = _figure(max(7, 1.8 * len(groups) + 3), 5)
    ax = fig.subplots()
    ax.set_title("Metric ablation: top-1 at fixed compression\n(our runs only; the paper's figure values are not in "
                 "our spec)", fontsize=10)
    if not groups:
        _empty(ax, "no runs with two or more criteria at one compression rate and K yet\n(scripts/ablation.sh)")
    else:
        crits = sorted({c for by_c in groups.values() for c in by_c}, key=criterion_sort)
        keys = sorted(groups, key=_group_order)
        width = 0.8 / len(crits)
        values = [v for by_c in groups.values() for v in by_c.values()]
        for i, crit in enumerate(crits):
            xs = [g + i * width for g, key in enumerate(keys) if crit in groups[key]]
            ys = [groups[key][crit] for key in keys if crit in groups[key]]
            bars = ax.bar(xs, ys, width, label=_SHORT.get(crit, crit))
            ax.bar_label(bars, [f"{y:.2f}" for y in ys], fontsize=6, rotation=90, padding=2)
        # The differences are tenths of a per cent: start the axis just below the lowest bar, not at 0.
        low, high = min(values), max(values)
        pad = max(0.5, 0.15 * (high - low))
        ax.set_ylim(max(0.0, low - pad), min(100.0, high + 2.5 * pad))
        ax.set_xticks([g + 0.4 - width / 2 for g in range(len(keys))])
        ax.set_xticklabels([f"{arch} K={shot}\n{rate_text(arch, rates)}\n({dataset})"
                            for arch, rates, shot, dataset in keys], fontsize=7)
        ax.set_ylabel("top-1 (%)")
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
        ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


def write_plots(runs: Sequence[Run], out: Path) -> list[Path]:
    paths = [plot_acc_vs_flops(arch, runs, out / f"acc_vs_flops_{arch}.png") for arch in TABLE_TITLES]
    paths.append(plot_kshot(runs, out / "kshot_ablation.png"))
    paths.append(plot_metrics(runs, out / "metric_ablation.png"))
    return paths
