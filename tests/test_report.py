"""``main/report.py``: our runs next to the paper's rows, the differences, which top-1 is shown, "not run", runs in
progress, the ablation groupings and the plots. On the logs of the scripts' dry runs (shared with
``tests/test_scripts.py``) and on small hand-written job directories."""
from __future__ import annotations

import csv
import json
import logging
import re
from pathlib import Path

import pytest

from coring import report
from coring.paper_tables import BASELINES, CORING_ROWS
from main import report as report_entry
from tests.test_scripts import dry_run  # noqa: F401  (the session's dry runs, run once)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PLOTS = [f"acc_vs_flops_{arch}.png" for arch in report.TABLE_TITLES] + ["kshot_ablation.png", "metric_ablation.png"]


def _tables(markdown: str) -> dict[str, list[dict[str, str]]]:
    """The markdown tables under each '## ' heading, as lists of {column: cell}."""
    out: dict[str, list[dict[str, str]]] = {}
    section, header = None, None
    for line in markdown.splitlines():
        if line.startswith("## "):
            section, header = line[3:].strip(), None
            continue
        if not line.startswith("|") or section is None:
            header = None if not line.startswith("|") else header
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if header is None:
            header = cells
        elif not set(line.replace("|", "").strip()) <= {"-"}:
            out.setdefault(section, []).append(dict(zip(header, cells)))
    return out


def _number(cell: str) -> float:
    return float(re.match(r"[-+]?\d+(\.\d+)?", cell).group(0))


def _size_and_drop(cell: str) -> tuple[float, float]:
    """'0.66M(22.4)' -> (0.66e6, 22.4); '1.21B(20.4)' -> (1.21e9, 20.4)."""
    match = re.fullmatch(r"([\d.]+)([MB])\(([\d.]+)\)", cell)
    assert match, cell
    return float(match.group(1)) * (1e9 if match.group(2) == "B" else 1e6), float(match.group(3))


def _label(row) -> str:
    labels = [r.label for r in CORING_ROWS if r.arch == row.arch]
    return f"{row.label} (`{row.script}`)" if labels.count(row.label) > 1 else row.label


# ---------------------------------------------------------------------------------------------- on the dry runs
@pytest.mark.slow
def test_report_on_the_dry_runs_succeeds_and_writes_every_plot(dry_run):  # noqa: F811
    assert dry_run.report is not None and dry_run.report.returncode == 0, dry_run.report.stderr
    assert f"{len(CORING_ROWS)} paper rows matched" in dry_run.report.stdout
    for name in PLOTS:
        path = dry_run.results_dir / name
        assert path.is_file() and path.read_bytes()[:8] == PNG_MAGIC and path.stat().st_size > 10_000, name


@pytest.mark.slow
@pytest.mark.parametrize("row", CORING_ROWS, ids=[f"{r.arch}/{r.script}" for r in CORING_ROWS])
def test_every_row_shows_ours_next_to_the_paper_with_the_difference(dry_run, row):  # noqa: F811
    tables = _tables((dry_run.results_dir / "table.md").read_text())
    table = tables[report.TABLE_TITLES[row.arch]]
    line = next(r for r in table if r["Model"] == _label(row))
    summary = json.loads((dry_run.rows[f"{row.arch}/{row.script}"].job_dir / "finetune" / "summary.json").read_text())
    assert _number(line["Top-1 (%) paper"]) == row.top1
    assert _number(line["Top-1 (%) ours"]) == pytest.approx(summary["best_top1"], abs=0.005)
    assert _number(line["Top-1 final"]) == pytest.approx(summary["final_top1"], abs=0.005)
    assert _number(line["Δ Top-1"]) == pytest.approx(summary["best_top1"] - row.top1, abs=0.011)
    if row.top5 is not None:
        assert _number(line["Δ Top-5"]) == pytest.approx(summary["best_top5"] - row.top5, abs=0.011)
    for kind, paper in (("Params", row.params_m), ("FLOPs", row.flops_m)):
        column = "# Params (↓%)" if kind == "Params" else "FLOPs (↓%)"
        ours, _ = _size_and_drop(line[f"{column} ours"])
        assert ours / 1e6 == pytest.approx(paper, rel=0.03)
        assert abs(_number(line[f"Δ {kind}"])) <= 3.0
        assert _size_and_drop(line[f"{column} paper"])[0] / 1e6 == pytest.approx(paper, rel=0.005)
    assert "not the paper's data set" in line["Run"] and f"{row.arch}/{row.script}" in line["Run"]


@pytest.mark.slow
def test_table_says_which_top1_it_shows_and_flags_dry_runs(dry_run):  # noqa: F811
    text = (dry_run.results_dir / "table.md").read_text()
    assert "best epoch on the test set" in text and "'final' is the last epoch's" in text
    assert "not comparable" in text
    tables = _tables(text)
    assert list(report.TABLE_TITLES.values()) == [t for t in tables if t in report.TABLE_TITLES.values()]
    assert "Top-5 (%) paper" in tables[report.TABLE_TITLES["resnet_50"]][0]
    assert "Top-5 (%) paper" not in tables[report.TABLE_TITLES["resnet_56"]][0]
    for arch, title in report.TABLE_TITLES.items():
        baseline = tables[title][0]
        assert baseline["Model"] == f"{BASELINES[arch].label} (baseline)" and baseline["Top-1 (%) ours"] != "not run"


@pytest.mark.slow
def test_dry_run_ablation_gives_a_kshot_curve_and_a_metric_pair(dry_run):  # noqa: F811
    runs = report.find_runs(dry_run.runs_dir)
    kshot = report.kshot_groups(runs)
    ((arch, _, dataset), by_criterion), = kshot.items()
    assert (arch, dataset) == ("resnet_56", "digits") and set(by_criterion["cosine_sim"]) == {1, 2}
    metric = report.metric_groups(runs)
    ((arch, _, shot, _), by_criterion), = metric.items()
    assert (arch, shot) == ("resnet_56", 1) and set(by_criterion) == {"cosine_sim", "Euclide_dis"}
    assert not any("ranks" in str(run.prune_dir) for run in runs), "the rank probes are not runs"


# ---------------------------------------------------------------------------------------------- hand-made jobs
def _counts(params_m: float, flops_m: float) -> dict[str, int]:
    out = {}
    for counter in ("", "_thop", "_ptflops", "_conv_linear"):
        out[f"params{counter}"], out[f"flops{counter}"] = int(params_m * 1e6), int(flops_m * 1e6)
    return out


def make_run(root: Path, name: str, row, *, criterion: str | None = None, shot: int | None = None,
             rate: str | None = None, strategy: str = "min_sum", dataset: str = "cifar10",
             top1: list[float] | None = None, epochs: int | None = None, summary: bool = True) -> Path:
    """A job dir as the scripts write it: <name>/prune (prune_summary.json, args.json) and <name>/finetune."""
    prune, finetune = root / name / "prune", root / name / "finetune"
    prune.mkdir(parents=True)
    base = BASELINES[row.arch]
    (prune / "prune_summary.json").write_text(json.dumps({
        "arch": row.arch, "compress_rate": rate or row.compress_rate, "criterion": criterion or row.criterion,
        "strategy": strategy, "shot": row.shot if shot is None else shot, "top1_baseline": 93.0,
        "top5_baseline": 99.0, "top1_pruned": 10.0, "top1_pruned_bn": 50.0,
        "pruned": _counts(row.params_m, row.flops_m), "baseline": _counts(base.params_m, base.flops_m)}))
    (prune / "args.json").write_text(json.dumps({"dataset": dataset}))
    (prune / "pruned.pth.tar").write_bytes(b"x")
    if top1 is None:
        return prune
    finetune.mkdir()
    (finetune / "args.json").write_text(json.dumps({"pretrained": str(prune / "pruned.pth.tar"),
                                                   "dataset": dataset, "epochs": epochs or len(top1)}))
    with open(finetune / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, ["epoch", "train_loss", "train_top1", "test_loss", "test_top1", "test_top5", "lr",
                                    "epoch_time_s", "best_top1"])
        writer.writeheader()
        for epoch, acc in enumerate(top1):
            writer.writerow({"epoch": epoch, "train_loss": 1.0, "train_top1": 50, "test_loss": 1.0, "test_top1": acc,
                             "test_top5": min(100.0, acc + 5), "lr": 0.01, "epoch_time_s": 36.0,
                             "best_top1": max(top1[:epoch + 1])})
    if summary:
        (finetune / "summary.json").write_text(json.dumps({"dataset": dataset, "epochs": epochs or len(top1),
                                                          "world_size": 2}))
    return prune


ROW_E5 = next(r for r in CORING_ROWS if (r.arch, r.script) == ("resnet_56", "e5"))
ROW_C5 = next(r for r in CORING_ROWS if (r.arch, r.script) == ("vgg_16_bn", "c5"))
ROW_R50 = next(r for r in CORING_ROWS if (r.arch, r.script) == ("resnet_50", "v_soft"))


def _row_line(out: Path, row) -> dict[str, str]:
    table = _tables((out / "table.md").read_text())[report.TABLE_TITLES[row.arch]]
    return next(r for r in table if r["Model"] == _label(row))


def test_missing_runs_say_not_run_and_the_plots_still_exist(tmp_path):
    (tmp_path / "runs").mkdir()
    assert report_entry.main(["--job_dir", str(tmp_path / "runs"), "--out", str(tmp_path / "out")]) == 0
    tables = _tables((tmp_path / "out" / "table.md").read_text())
    for row in CORING_ROWS:
        line = next(r for r in tables[report.TABLE_TITLES[row.arch]] if r["Model"] == _label(row))
        assert line["Top-1 (%) ours"] == "not run" and line["Top-1 (%) paper"] == f"{row.top1:.2f}"
        assert line["Run"].startswith("not run") and f"scripts/{row.arch}/{row.script}.sh" in line["Run"]
    for name in PLOTS:
        assert (tmp_path / "out" / name).read_bytes()[:8] == PNG_MAGIC


def test_best_epoch_is_shown_with_the_final_one_and_the_differences(tmp_path):
    make_run(tmp_path / "runs", "e5", ROW_E5, top1=[90.0, 94.9, 94.5])
    report.write_report(tmp_path / "runs", tmp_path / "out")
    line = _row_line(tmp_path / "out", ROW_E5)
    assert line["Top-1 (%) ours"] == "94.90" and line["Top-1 final"] == "94.50"
    assert line["Δ Top-1"] == f"{94.9 - ROW_E5.top1:+.2f}" == "+0.14"
    assert line["# Params (↓%) paper"] == "0.66M(22.4)" and line["FLOPs (↓%) paper"] == "91.23M(27.3)"
    assert line["# Params (↓%) ours"] == "0.66M(22.4)" and line["Δ FLOPs"] == "+0.0%"
    assert "done" in line["Run"] and "not the paper's" not in line["Run"]


def test_imagenet_rows_show_top5_and_sizes_in_billions(tmp_path):
    make_run(tmp_path / "runs", "r50", ROW_R50, dataset="imagenet", top1=[70.0, 76.0])
    report.write_report(tmp_path / "runs", tmp_path / "out")
    line = _row_line(tmp_path / "out", ROW_R50)
    assert line["Top-5 (%) paper"] == "93.23" and line["Top-5 (%) ours"] == "81.00"
    assert line["Δ Top-5"] == f"{81.0 - 93.23:+.2f}"
    assert line["FLOPs (↓%) paper"] == "2.26B(44.8)" and line["FLOPs (↓%) ours"].startswith("2.26B(")


def test_a_run_in_progress_shows_its_best_epoch_so_far(tmp_path):
    make_run(tmp_path / "runs", "e5", ROW_E5, top1=[80.0, 85.0, 84.0], epochs=400, summary=False)
    report.write_report(tmp_path / "runs", tmp_path / "out")
    line = _row_line(tmp_path / "out", ROW_E5)
    assert line["Top-1 (%) ours"] == "85.00" and "running (3/400 epochs)" in line["Run"]


def test_pruned_but_not_fine_tuned(tmp_path):
    make_run(tmp_path / "runs", "e5", ROW_E5)
    report.write_report(tmp_path / "runs", tmp_path / "out")
    line = _row_line(tmp_path / "out", ROW_E5)
    assert line["Top-1 (%) ours"] == "not fine-tuned" and "pruned only" in line["Run"]


def test_rows_match_on_rate_values_and_criterion_aliases_but_not_on_strategy_or_k(tmp_path):
    runs_dir = tmp_path / "runs"
    make_run(runs_dir, "alias", ROW_E5, criterion="euclidean", rate="[0.0]+[0.18]*29", top1=[90.0])
    make_run(runs_dir, "minmin", ROW_E5, strategy="min_min", top1=[99.0])
    make_run(runs_dir, "k1", ROW_E5, shot=1, top1=[99.0])
    make_run(runs_dir, "vgg13", ROW_C5, rate="[0.21]*7+[0.75]*5+[0.]", top1=[91.0])  # 13 rates, last conv unpruned
    matches = report.match_rows(report.find_runs(runs_dir))
    assert [run.prune_dir.parent.name for run in matches[("resnet_56", "e5")]] == ["alias"]
    assert [run.prune_dir.parent.name for run in matches[("vgg_16_bn", "c5")]] == ["vgg13"]


def test_a_run_on_the_paper_data_set_wins_over_a_dry_run(tmp_path):
    make_run(tmp_path / "runs", "a_real", ROW_E5, top1=[93.0])
    make_run(tmp_path / "runs", "b_dry", ROW_E5, dataset="digits", top1=[99.0, 99.0])
    report.write_report(tmp_path / "runs", tmp_path / "out")
    line = _row_line(tmp_path / "out", ROW_E5)
    assert line["Top-1 (%) ours"] == "93.00" and "`a_real`" in line["Run"] and "+1 more" in line["Run"]


def test_ablation_groups_and_tables(tmp_path):
    runs_dir = tmp_path / "runs"
    for criterion, accs in (("cosine_sim", (93.7, 94.0, 94.2)), ("VBD_dis", (93.8, 94.1, 94.3))):
        for shot, acc in zip((1, 5, 15), accs):
            make_run(runs_dir, f"{criterion}_k{shot}", ROW_E5, criterion=criterion, shot=shot, top1=[acc])
    make_run(runs_dir, "euc_k5", ROW_E5, criterion="Euclide_dis", shot=5, top1=[93.9])
    runs = report.find_runs(runs_dir)
    ((key, by_criterion),) = report.kshot_groups(runs).items()
    assert by_criterion["cosine_sim"] == {1: 93.7, 5: 94.0, 15: 94.2} and by_criterion["Euclide_dis"] == {5: 93.9}
    metric = report.metric_groups(runs)
    assert metric[(*key[:2], 5, "cifar10")] == {"cosine_sim": 94.0, "VBD_dis": 94.1, "Euclide_dis": 93.9}
    assert metric[(*key[:2], 15, "cifar10")] == {"cosine_sim": 94.2, "VBD_dis": 94.3}
    report.write_report(runs_dir, tmp_path / "out")
    tables = _tables((tmp_path / "out" / "table.md").read_text())["Ablations (our runs only)"]
    assert {"Metric": "cosine_sim", "K=1": "93.70", "K=5": "94.00", "K=15": "94.20"} in tables
    assert {"Metric": "Euclide_dis", "K=1": "—", "K=5": "93.90", "K=15": "—"} in tables
    text = (tmp_path / "out" / "table.md").read_text()
    assert "resnet_56, `[0.]+[0.18]*29`, K=5, cifar10" in text and "not in our specification" in text


def test_runs_list_gpu_hours_from_the_epoch_times(tmp_path):
    make_run(tmp_path / "runs", "e5", ROW_E5, top1=[90.0, 91.0])  # 2 epochs x 36 s x world size 2
    report.write_report(tmp_path / "runs", tmp_path / "out")
    (line,) = _tables((tmp_path / "out" / "table.md").read_text())["Runs"]
    assert line["Train h"] == "0.040" and line["Paper row"] == "resnet_56/e5" and line["Epochs"] == "2/2"


def test_missing_job_dir_is_an_error(tmp_path, capsys):
    assert report_entry.main(["--job_dir", str(tmp_path / "nope"), "--out", str(tmp_path / "out")]) == 2
    assert "not a directory" in capsys.readouterr().err


def _evaluate_dir(root: Path, name: str, prune: Path, dataset: str = "cifar10") -> Path:
    """What ``finetune.py --evaluate --pretrained <prune>/pruned.pth.tar`` writes: args.json and summary.json."""
    where = root / name
    where.mkdir(parents=True)
    (where / "args.json").write_text(json.dumps({"pretrained": str(prune / "pruned.pth.tar"), "dataset": dataset,
                                                 "epochs": 300, "evaluate": True}))
    (where / "summary.json").write_text(json.dumps({"dataset": dataset, "test_top1": 10.0}))
    return where


def test_a_newer_evaluate_directory_does_not_hide_the_fine_tuning_that_trained(tmp_path):
    prune = make_run(tmp_path / "runs", "e5", ROW_E5, top1=[90.0, 94.9, 94.5], epochs=3)
    _evaluate_dir(tmp_path / "runs", "e5_eval", prune)  # written last: the newest args.json naming the checkpoint
    (run,) = report.find_runs(tmp_path / "runs")
    assert run.finetune_dir == prune.parent / "finetune" and run.epochs_done == 3 and run.status == "done"
    assert run.finetune_ignored == [(tmp_path / "runs" / "e5_eval", 0)]
    report.write_report(tmp_path / "runs", tmp_path / "out")
    line = _row_line(tmp_path / "out", ROW_E5)
    assert line["Top-1 (%) ours"] == "94.90" and "pruned only" not in line["Run"]
    assert "fine-tuning `e5/finetune`" in line["Run"] and "`e5_eval` (0 epochs)" in line["Run"]
    assert "AMBIGUOUS" not in line["Run"]
    (listed,) = _tables((tmp_path / "out" / "table.md").read_text())["Runs"]
    assert listed["Fine-tuning shown"].startswith("fine-tuning `e5/finetune`, the most epochs")


def test_two_fine_tunings_that_trained_show_the_longer_and_warn(tmp_path, caplog):
    prune = make_run(tmp_path / "runs", "e5", ROW_E5, top1=[90.0, 91.0])
    second = tmp_path / "runs" / "e5_again"
    second.mkdir()
    (second / "args.json").write_text(json.dumps({"pretrained": str(prune / "pruned.pth.tar"), "dataset": "cifar10",
                                                  "epochs": 5}))
    with open(second / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, ["epoch", "test_top1", "test_top5"])
        writer.writeheader()
        writer.writerows({"epoch": e, "test_top1": 80.0 + e, "test_top5": 99.0} for e in range(5))
    logger = report.runs.log
    records = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    logger.addHandler(handler)
    try:
        (run,) = report.find_runs(tmp_path / "runs")
    finally:
        logger.removeHandler(handler)
    assert run.finetune_dir == second and run.epochs_done == 5 and run.best_top1 == 84.0
    (record,) = records
    assert "ambiguous fine-tuning" in record.getMessage() and "(2 epochs)" in record.getMessage()
    report.write_report(tmp_path / "runs", tmp_path / "out")
    assert "AMBIGUOUS" in _row_line(tmp_path / "out", ROW_E5)["Run"]


def test_point_labels_are_placed_clear_of_each_other_and_inside_the_axes():
    from coring.report.plots import _figure, _place_labels

    fig = _figure(5, 4)
    ax = fig.subplots()
    points = [(100.0, 94.0, "c_moderate", "tab:blue"), (105.0, 94.02, "v_soft", "tab:blue"),
              (100.0, 93.98, "c_moderate", "tab:orange"), (300.0, 93.0, "baseline", "tab:blue")]
    ax.scatter([p[0] for p in points], [p[1] for p in points])
    ax.margins(x=0.12, y=0.15)
    fig.tight_layout()
    _place_labels(fig, ax, points)
    renderer = fig.canvas.get_renderer()
    boxes = [t.get_window_extent(renderer) for t in ax.texts]
    assert len(boxes) == len(points)
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])
    frame = ax.get_window_extent(renderer)
    assert all(frame.x0 <= b.x0 and b.x1 <= frame.x1 and frame.y0 <= b.y0 and b.y1 <= frame.y1 for b in boxes)


def test_metric_ablation_groups_sort_k_as_numbers():
    from coring.report.plots import _group_order

    keys = [("resnet_56", (0.0,), 15, "cifar10"), ("resnet_56", (0.0,), 5, "cifar10"), ("resnet_56", (0.0,), 1, "cifar10")]
    assert [k[2] for k in sorted(keys, key=_group_order)] == [1, 5, 15]
