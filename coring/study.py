"""The statistics, tables and plot of a criteria study (``bench/criteria_study.py``).

A study prunes the same baselines (one per seed) with several criteria at one rate and records each run's top-1
at every *stage*: as transferred, after BatchNorm re-estimation, and after each fine-tuning epoch (the control
``scratch`` has only the epochs). This module turns those run records into numbers, a markdown report and a
figure:

* per criterion and stage: mean and (sample) standard deviation over seeds;
* paired differences against ``random`` (the same seed's baseline pruned at random), with a percentile bootstrap
  95 % interval of their mean (numpy, seeded, so a report is reproducible);
* the rank of each criterion by mean top-1 at each stage, and Kendall's tau between each stage's ordering and the
  last stage's (does the ordering stop moving?).

A run record is a dict ``{"seed": int, "criterion": str, "top1": {stage: float | None}, ...}``. Files are written
atomically through ``coring.checkpoint.atomic_write`` (JSON through ``coring.run_logging.write_json``).
"""
from __future__ import annotations

import itertools
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import kendalltau

from coring.checkpoint import atomic_write

__all__ = [
    "BASELINE_CRITERION",
    "BN_ADAPTED",
    "SCRATCH",
    "TRANSFERRED",
    "CriterionStats",
    "bootstrap_mean_ci",
    "criteria_of",
    "epoch_stage",
    "final_stage",
    "mean_std",
    "ordering_agreement",
    "plot_differences",
    "plot_study",
    "read_study_record",
    "render_budget_comparison",
    "render_markdown",
    "render_summary",
    "stage_label",
    "stage_names",
    "stage_ranks",
    "stages_of",
    "summarise",
    "write_text_atomic",
]

TRANSFERRED = "transferred"
BN_ADAPTED = "bn_adapted"
SCRATCH = "scratch"
BASELINE_CRITERION = "random"


def epoch_stage(epoch: int) -> str:
    """The stage name of fine-tuning epoch ``epoch`` (1-based)."""
    return f"epoch_{epoch}"


def stage_names(finetune_epochs: int) -> list[str]:
    """Every stage of a study with ``finetune_epochs`` epochs, in order."""
    return [TRANSFERRED, BN_ADAPTED] + [epoch_stage(e) for e in range(1, finetune_epochs + 1)]


def stage_label(stage: str) -> str:
    """A stage's column heading."""
    if stage == TRANSFERRED:
        return "as transferred"
    if stage == BN_ADAPTED:
        return "BN re-estimated"
    if stage.startswith("epoch_"):
        return f"epoch {stage[len('epoch_'):]}"
    raise ValueError(f"unknown stage {stage!r}; expected {TRANSFERRED}, {BN_ADAPTED} or epoch_<k>")


def stages_of(runs: Iterable[Mapping[str, Any]]) -> list[str]:
    """The stages the runs hold, in order (as transferred, BN re-estimated, then the epochs by number)."""
    seen = {stage for run in runs for stage in run.get("top1", {})}
    epochs = sorted((s for s in seen if s.startswith("epoch_")), key=lambda s: int(s[len("epoch_"):]))
    return [s for s in (TRANSFERRED, BN_ADAPTED) if s in seen] + epochs


def criteria_of(runs: Iterable[Mapping[str, Any]], preferred: Sequence[str] = ()) -> list[str]:
    """The criteria the runs hold: those of ``preferred`` first, in its order, then the others as they appear;
    ``scratch`` (the control) always last."""
    seen = list(dict.fromkeys(run["criterion"] for run in runs))
    ordered = [c for c in preferred if c in seen] + [c for c in seen if c not in preferred]
    return [c for c in ordered if c != SCRATCH] + ([SCRATCH] if SCRATCH in ordered else [])


def final_stage(stages: Sequence[str]) -> str:
    """The last stage (the last fine-tuning epoch when there is one)."""
    if not stages:
        raise ValueError("a study needs at least one stage")
    return stages[-1]


# ---------------------------------------------------------------------------------------------- statistics
def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof 1; 0.0 for a single value). An empty sequence is a ValueError."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.size == 0:
        raise ValueError("mean_std needs at least one value")
    return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else 0.0


def bootstrap_mean_ci(values: Sequence[float], *, level: float = 0.95, resamples: int = 10_000,
                      seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values``: resample with replacement ``resamples`` times
    (numpy ``default_rng(seed)``, all resamples drawn in one array) and take the ``(1 - level) / 2`` and
    ``(1 + level) / 2`` quantiles of the resampled means."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.size == 0:
        raise ValueError("bootstrap_mean_ci needs at least one value")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    rng = np.random.default_rng(seed)
    means = arr[rng.integers(0, arr.size, size=(resamples, arr.size))].mean(axis=1)
    low, high = np.quantile(means, [(1.0 - level) / 2.0, (1.0 + level) / 2.0])
    return float(low), float(high)


def _values(runs: Iterable[Mapping[str, Any]], criterion: str, stage: str) -> dict[int, float]:
    """seed -> top-1 of ``criterion`` at ``stage`` (runs without a value there are left out)."""
    out = {}
    for run in runs:
        value = run.get("top1", {}).get(stage)
        if run["criterion"] == criterion and value is not None:
            out[int(run["seed"])] = float(value)
    return out


@dataclass(frozen=True)
class CriterionStats:
    """One criterion at one stage: top-1 over seeds and the paired difference against the baseline criterion."""

    criterion: str
    stage: str
    n: int
    mean: float | None
    std: float | None
    diff_n: int = 0
    diff_mean: float | None = None
    diff_low: float | None = None
    diff_high: float | None = None
    diff_above: int = 0  # seeds on which the criterion beats the baseline criterion (a sign test's count)


def summarise(runs: Sequence[Mapping[str, Any]], criteria: Sequence[str], stages: Sequence[str], *,
              baseline: str = BASELINE_CRITERION, level: float = 0.95, resamples: int = 10_000,
              seed: int = 0) -> dict[tuple[str, str], CriterionStats]:
    """(criterion, stage) -> `CriterionStats`. Differences pair runs of the same seed; the interval needs two
    pairs (``diff_low``/``diff_high`` stay None below that)."""
    out = {}
    for stage in stages:
        reference = _values(runs, baseline, stage)
        for criterion in criteria:
            values = _values(runs, criterion, stage)
            if not values:
                out[criterion, stage] = CriterionStats(criterion, stage, 0, None, None)
                continue
            mean, std = mean_std(list(values.values()))
            stats = CriterionStats(criterion, stage, len(values), mean, std)
            seeds = sorted(set(values) & set(reference))
            if criterion != baseline and seeds:
                diffs = [values[s] - reference[s] for s in seeds]
                low, high = bootstrap_mean_ci(diffs, level=level, resamples=resamples, seed=seed) \
                    if len(diffs) > 1 else (None, None)
                stats = CriterionStats(criterion, stage, len(values), mean, std, len(diffs),
                                       float(np.mean(diffs)), low, high, sum(d > 0 for d in diffs))
            out[criterion, stage] = stats
    return out


def stage_ranks(summary: Mapping[tuple[str, str], CriterionStats], criteria: Sequence[str],
                stage: str) -> dict[str, int]:
    """criterion -> rank by mean top-1 at ``stage`` (1 = best; ties share the better rank); criteria without a
    value at that stage are left out."""
    means = {c: summary[c, stage].mean for c in criteria if summary[c, stage].mean is not None}
    return {c: 1 + sum(other > m for other in means.values()) for c, m in means.items()}


def _kendall_between(a: Mapping[tuple[str, str], CriterionStats], a_stage: str,
                     b: Mapping[tuple[str, str], CriterionStats], b_stage: str,
                     criteria: Sequence[str]) -> tuple[float | None, int]:
    """Kendall's tau-b (scipy) between the criteria's mean top-1 in summary ``a`` at ``a_stage`` and in ``b`` at
    ``b_stage``, over the criteria with a mean in both, and their number. None below three criteria or where tau is
    undefined (a constant ordering)."""
    both = [c for c in criteria if a[c, a_stage].mean is not None and b[c, b_stage].mean is not None]
    if len(both) < 3:
        return None, len(both)
    tau = kendalltau([a[c, a_stage].mean for c in both], [b[c, b_stage].mean for c in both]).statistic
    return (None if np.isnan(tau) else float(tau)), len(both)


def ordering_agreement(summary: Mapping[tuple[str, str], CriterionStats], criteria: Sequence[str],
                       stages: Sequence[str], *, reference: str | None = None) -> dict[str, float | None]:
    """stage -> Kendall's tau-b between the criteria's mean top-1 at that stage and at ``reference`` (default: the
    last stage). 1 means the same ordering; None where fewer than three criteria have a mean at both stages."""
    reference = reference or final_stage(stages)
    return {stage: _kendall_between(summary, stage, summary, reference, criteria)[0] for stage in stages}


# ---------------------------------------------------------------------------------------------- report
def _fmt_mean_std(stats: CriterionStats) -> str:
    if stats.mean is None:
        return "–"
    return f"{stats.mean:.2f} ± {stats.std:.2f} ({stats.n})"


def _fmt_diff(stats: CriterionStats) -> str:
    if stats.diff_mean is None:
        return "–"
    if stats.diff_low is None:
        return f"{stats.diff_mean:+.2f} (n={stats.diff_n})"
    return f"{stats.diff_mean:+.2f} [{stats.diff_low:+.2f}, {stats.diff_high:+.2f}] (n={stats.diff_n})"


def _table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def render_markdown(runs: Sequence[Mapping[str, Any]], criteria: Sequence[str], stages: Sequence[str],
                    meta: Mapping[str, Any], *, baseline: str = BASELINE_CRITERION, level: float = 0.95,
                    resamples: int = 10_000, seed: int = 0) -> str:
    """The study as markdown: setting (``meta``), top-1 mean ± std per stage, paired differences against
    ``baseline`` with bootstrap intervals, and the rank of each criterion per stage."""
    summary = summarise(runs, criteria, stages, baseline=baseline, level=level, resamples=resamples, seed=seed)
    heads = [stage_label(s) for s in stages]
    lines = [f"# {meta.get('title', 'Criteria study')}", ""]
    lines += [f"- {key}: {value}" for key, value in meta.get("details", {}).items()]
    lines += ["", f"Command: `{meta.get('command', '')}`", ""]
    lines += ["## Top-1 (%): mean ± standard deviation over seeds (number of seeds)", ""]
    lines += _table(["criterion", *heads], ([c, *(_fmt_mean_std(summary[c, s]) for s in stages)] for c in criteria))
    heading = (f"## Paired difference from `{baseline}` (percentage points, same seed): mean "
               f"[{100 * level:.0f} % bootstrap interval, {resamples} resamples, numpy seed {seed}]")
    lines += ["", heading, ""]
    others = [c for c in criteria if c != baseline]
    lines += _table(["criterion", *heads], ([c, *(_fmt_diff(summary[c, s]) for s in stages)] for c in others))
    lines += ["", "## Rank by mean top-1 (1 = best): does the ordering settle during fine-tuning?", ""]
    ranks = {s: stage_ranks(summary, criteria, s) for s in stages}
    lines += _table(["criterion", *heads], ([c, *(str(ranks[s].get(c, "–")) for s in stages)] for c in criteria))
    tau = ordering_agreement(summary, criteria, stages)
    lines += ["", f"Kendall's tau between each stage's ordering and the {stage_label(final_stage(stages))}'s "
                  "(1 = the same ordering): " + ", ".join(f"{stage_label(s)} {_fmt_tau(tau[s])}" for s in stages)]
    return "\n".join(lines) + "\n"


def _fmt_tau(value: float | None) -> str:
    return "–" if value is None else f"{value:+.2f}"


def render_summary(runs: Sequence[Mapping[str, Any]], criteria: Sequence[str], *, title: str,
                   baseline: str = BASELINE_CRITERION, last_ranks: int = 3) -> str:
    """The compact table of a study: BN re-estimated and final top-1, the final paired difference against
    ``baseline`` with its interval, the final rank and the ranks of the ``last_ranks`` last epochs (does the
    ordering still move at the end?), then Kendall's tau of the earlier epochs' orderings with the final one."""
    stages = stages_of(runs)
    last = final_stage(stages)
    summary = summarise(runs, criteria, stages, baseline=baseline)
    epochs = [s for s in stages if s.startswith("epoch_")][-last_ranks:]
    ranks = {s: stage_ranks(summary, criteria, s) for s in dict.fromkeys([*epochs, last])}
    seeds = sorted({int(r["seed"]) for r in runs})
    lines = [f"#### {title}: seeds {seeds}, final stage {stage_label(last)}", ""]
    header = ["criterion", "BN re-estimated", f"after fine-tuning ({stage_label(last)})",
              f"vs {baseline}, final [95% CI] (seeds above)", "rank (final)",
              f"ranks, {', '.join(stage_label(s) for s in epochs)}"]

    def row(c: str) -> list[str]:
        final = summary[c, last]
        bn = _fmt_mean_std(summary[c, BN_ADAPTED]) if BN_ADAPTED in stages else "–"
        return [c, bn, _fmt_mean_std(final), _fmt_final_diff(final), str(ranks[last].get(c, "–")),
                " · ".join(str(ranks[s].get(c, "–")) for s in epochs)]

    lines += _table(header, (row(c) for c in criteria))
    tau = ordering_agreement(summary, criteria, stages)
    lines += ["", "Kendall's tau with the final ordering: " + ", ".join(
        f"{stage_label(s)} {_fmt_tau(tau[s])}" for s in stages if s.startswith("epoch_"))]
    return "\n".join(lines) + "\n"


def render_budget_comparison(studies: Sequence[tuple[str, Sequence[Mapping[str, Any]]]], criteria: Sequence[str], *,
                             baseline: str = BASELINE_CRITERION) -> str:
    """Several studies of one setting (e.g. fine-tuning budgets 4 and 10): each criterion's final paired difference
    against ``baseline`` and final rank in each, then Kendall's tau between the final orderings of each pair of
    consecutive studies (does a longer budget change the verdict?)."""
    finals = []
    for label, runs in studies:
        last = final_stage(stages_of(runs))
        summary = summarise(runs, criteria, [last], baseline=baseline)
        finals.append((label, last, summary, stage_ranks(summary, criteria, last)))
    header = ["criterion", *(f"{label}: vs {baseline} [95% CI] (seeds above)" for label, *_ in finals),
              *(f"{label}: rank" for label, *_ in finals)]
    rows = ([c, *(_fmt_final_diff(summary[c, last]) for _, last, summary, _ in finals),
             *(str(ranks.get(c, "–")) for *_, ranks in finals)] for c in criteria)
    lines = _table(header, rows)
    for (a, a_last, a_sum, _), (b, b_last, b_sum, _) in itertools.pairwise(finals):
        tau, count = _kendall_between(a_sum, a_last, b_sum, b_last, criteria)
        lines += ["", f"Kendall's tau between the final orderings of {a} and {b}: {_fmt_tau(tau)} ({count} criteria)"]
    return "\n".join(lines) + "\n"


def _fmt_final_diff(stats: CriterionStats) -> str:
    if stats.diff_mean is None:
        return "–"
    interval = "" if stats.diff_low is None else f" [{stats.diff_low:+.2f}, {stats.diff_high:+.2f}]"
    return f"{stats.diff_mean:+.2f}{interval} ({stats.diff_above}/{stats.diff_n})"


def _new_figure(width: float, height: float) -> Any:
    """A matplotlib figure on the Agg canvas (no pyplot, no display)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save_figure(fig: Any, path: str | Path, title: str) -> Path:
    """Title, tighten and write ``fig`` as a PNG, atomically."""
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    atomic_write(path, lambda f: fig.savefig(f, format="png"))
    return path


def _plot_stages(stages: Sequence[str]) -> list[str]:
    """The panels: both stages right after pruning, the first and the last fine-tuning epoch."""
    epochs = [s for s in stages if s.startswith("epoch_")]
    chosen = [s for s in stages if not s.startswith("epoch_")] + epochs[:1] + epochs[-1:]
    return list(dict.fromkeys(chosen))


def plot_study(runs: Sequence[Mapping[str, Any]], criteria: Sequence[str], stages: Sequence[str],
               path: str | Path, *, title: str = "") -> Path:
    """A PNG: one panel per stage (as transferred, BN re-estimated, first and last fine-tuning epoch), criteria on
    the x axis, top-1 on the y axis, one marker per seed and a bar at the mean (matplotlib Agg, no pyplot)."""
    panels = _plot_stages(stages)
    seeds = sorted({int(r["seed"]) for r in runs})
    markers = "osD^v<>ph*"
    fig = _new_figure(max(4.0, 0.7 * len(criteria) + 1.5) * len(panels), 4.2)
    axes = np.atleast_1d(fig.subplots(1, len(panels), sharey=True, squeeze=False)[0])
    spread = np.linspace(-0.2, 0.2, len(seeds)) if len(seeds) > 1 else np.zeros(1)
    for ax, stage in zip(axes, panels):
        for x, criterion in enumerate(criteria):
            values = _values(runs, criterion, stage)
            for k, seed in enumerate(seeds):
                if seed in values:
                    ax.scatter(x + spread[k], values[seed], marker=markers[k % len(markers)], color=f"C{k % 10}",
                               s=28, label=f"seed {seed}")
            if values:
                ax.hlines(np.mean(list(values.values())), x - 0.32, x + 0.32, color="black", linewidth=2)
        ax.set_xticks(range(len(criteria)))
        ax.set_xticklabels(criteria, rotation=35, ha="right")
        ax.set_title(stage_label(stage))
        ax.grid(True, axis="y", alpha=0.3)
    axes[0].set_ylabel("top-1 (%) (bar: mean over seeds)")
    unique = {}
    for ax in axes:
        handles, labels = ax.get_legend_handles_labels()
        unique.update({label: handle for label, handle in zip(labels, handles) if label not in unique})
    if unique:
        axes[-1].legend(unique.values(), unique.keys(), fontsize="small", loc="best")
    return _save_figure(fig, path, title)


def plot_differences(runs: Sequence[Mapping[str, Any]], criteria: Sequence[str], stages: Sequence[str],
                     path: str | Path, *, baseline: str = BASELINE_CRITERION, title: str = "") -> Path:
    """A PNG: the paired difference against ``baseline`` (mean over seeds, bootstrap 95 % bar) after each
    fine-tuning epoch, one line per criterion: where the lines stop crossing, the ordering has settled."""
    epochs = [s for s in stages if s.startswith("epoch_")]
    summary = summarise(runs, criteria, epochs, baseline=baseline)
    others = [c for c in criteria if c != baseline]
    zoom_from = len(epochs) // 2  # the second panel: the second half of fine-tuning, on its own scale
    fig = _new_figure(11.0, 4.4)
    axes = fig.subplots(1, 2)
    for ax, first in zip(axes, (0, zoom_from)):
        x = np.arange(first + 1, len(epochs) + 1)
        for k, criterion in enumerate(others):
            stats = [summary[criterion, s] for s in epochs[first:]]
            mean = np.array([np.nan if st.diff_mean is None else st.diff_mean for st in stats])
            low = np.array([np.nan if st.diff_low is None else st.diff_low for st in stats])
            high = np.array([np.nan if st.diff_high is None else st.diff_high for st in stats])
            shift = (k - (len(others) - 1) / 2) * 0.04
            ax.errorbar(x + shift, mean, yerr=np.vstack([mean - low, high - mean]), marker="o", markersize=3,
                        capsize=2, linewidth=1.2, color=f"C{k % 10}", label=criterion,
                        linestyle="--" if criterion == SCRATCH else "-")
        ax.axhline(0.0, color="black", linewidth=0.8)
        ax.set_xticks(x)
        ax.set_xlabel("fine-tuning epoch")
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel(f"top-1 minus {baseline}'s, same seed (points)")
    axes[0].set_title("every epoch")
    axes[1].set_title(f"epochs {zoom_from + 1}-{len(epochs)}")
    axes[1].legend(fontsize="small", loc="best", ncol=2)
    return _save_figure(fig, path, title)


# ---------------------------------------------------------------------------------------------- files
def read_study_record(path: str | Path) -> dict[str, Any]:
    """A study's ``runs.json`` (``bench/criteria_study.py``): a dict with a ``runs`` list. Anything else (unreadable,
    not JSON, another shape) is a ValueError ``'<path>' is not a study record (...)``."""
    try:
        record = json.loads(Path(path).read_text())
    except (OSError, ValueError) as error:
        raise ValueError(f"'{path}' is not a study record ({error})") from None
    if not isinstance(record, dict) or not isinstance(record.get("runs"), list):
        raise ValueError(f"'{path}' is not a study record (no list of runs)")
    return record


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) atomically."""
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))

