"""The criteria study: its statistics on known data, and a tiny study end to end (files, resume, errors)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from bench import criteria_study, study_summary
from coring.study import (
    BN_ADAPTED,
    TRANSFERRED,
    bootstrap_mean_ci,
    criteria_of,
    mean_std,
    ordering_agreement,
    plot_differences,
    plot_study,
    read_study_record,
    render_budget_comparison,
    render_markdown,
    render_summary,
    stage_names,
    stage_ranks,
    stages_of,
    summarise,
)

# -- statistics on known data -------------------------------------------------------------------------------------


def test_mean_and_sample_std_of_known_values():
    assert mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0)
    assert mean_std([5.0]) == (5.0, 0.0)
    with pytest.raises(ValueError, match="at least one value"):
        mean_std([])


def test_bootstrap_of_two_values_spans_both():
    # the resampled means are 0, 0.5 and 1 with probabilities 1/4, 1/2, 1/4: the 2.5 % and 97.5 % quantiles are 0, 1
    assert bootstrap_mean_ci([0.0, 1.0], resamples=20_000) == (0.0, 1.0)


def test_bootstrap_of_constant_differences_is_that_constant():
    assert bootstrap_mean_ci([2.5, 2.5, 2.5]) == (2.5, 2.5)


def test_bootstrap_of_a_large_sample_matches_the_normal_interval():
    values = np.random.default_rng(1).normal(3.0, 2.0, size=400)
    low, high = bootstrap_mean_ci(values, resamples=4000)
    half = 1.96 * values.std(ddof=1) / np.sqrt(len(values))
    assert low == pytest.approx(values.mean() - half, abs=0.1 * half)
    assert high == pytest.approx(values.mean() + half, abs=0.1 * half)


def test_bootstrap_is_reproducible_for_a_seed_and_checks_its_arguments():
    values = np.random.default_rng(0).normal(size=20)
    assert bootstrap_mean_ci(values, seed=4) == bootstrap_mean_ci(values, seed=4)
    assert bootstrap_mean_ci(values, seed=4) != bootstrap_mean_ci(values, seed=5)
    with pytest.raises(ValueError, match="level"):
        bootstrap_mean_ci(values, level=1.0)
    with pytest.raises(ValueError, match="at least one value"):
        bootstrap_mean_ci([])


def _runs() -> list[dict]:
    """random varies a lot between seeds; 'good' is exactly 2 points above it on every seed; scratch has epochs only."""
    runs = []
    for seed, base in enumerate([10.0, 40.0, 70.0]):
        runs.append({"seed": seed, "criterion": "random", "top1": {TRANSFERRED: base, BN_ADAPTED: base, "epoch_1": base}})
        runs.append({"seed": seed, "criterion": "good",
                     "top1": {TRANSFERRED: base + 2, BN_ADAPTED: base + 2, "epoch_1": base + 2}})
        runs.append({"seed": seed, "criterion": "scratch",
                     "top1": {TRANSFERRED: None, BN_ADAPTED: None, "epoch_1": 50.0 + seed}})
    return runs


def test_differences_are_paired_by_seed():
    summary = summarise(_runs(), ["good", "random", "scratch"], stage_names(1))
    good = summary["good", "epoch_1"]
    assert good.std == pytest.approx(30.0)  # unpaired, the seeds' spread would swamp the 2 points
    assert (good.diff_n, good.diff_mean, good.diff_low, good.diff_high, good.diff_above) == (3, 2.0, 2.0, 2.0, 3)
    assert summary["random", "epoch_1"].diff_mean is None
    assert summary["scratch", TRANSFERRED].n == 0 and summary["scratch", TRANSFERRED].mean is None


def test_ranks_put_the_best_mean_first_and_skip_missing_stages():
    criteria = ["good", "random", "scratch"]
    summary = summarise(_runs(), criteria, stage_names(1))
    assert stage_ranks(summary, criteria, "epoch_1") == {"scratch": 1, "good": 2, "random": 3}
    assert stage_ranks(summary, criteria, TRANSFERRED) == {"good": 1, "random": 2}


def test_report_and_plot_of_known_runs(tmp_path):
    text = render_markdown(_runs(), ["good", "random", "scratch"], stage_names(1),
                           {"title": "T", "details": {"data": "D"}, "command": "python x"})
    assert "| good | 42.00 ± 30.00 (3) |" in text
    assert "+2.00 [+2.00, +2.00] (n=3)" in text and "`python x`" in text
    path = plot_study(_runs(), ["good", "random", "scratch"], stage_names(1), tmp_path / "s.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _settling_runs() -> list[dict]:
    """Three epochs: 'late' starts last and ends first; 'early' the other way round; the ordering of epochs 2 and 3
    is the same."""
    top1 = {"late": (10.0, 60.0, 61.0), "random": (20.0, 50.0, 51.0), "early": (30.0, 40.0, 41.0),
            "mid": (25.0, 45.0, 46.0)}
    return [{"seed": seed, "criterion": c, "top1": {BN_ADAPTED: v[0], **{f"epoch_{e + 1}": x + seed
                                                                         for e, x in enumerate(v)}}}
            for seed in (0, 1) for c, v in top1.items()]


def test_ordering_agreement_is_kendalls_tau_with_the_final_ordering():
    runs = _settling_runs()
    criteria = criteria_of(runs)
    stages = stages_of(runs)
    assert stages == [BN_ADAPTED, "epoch_1", "epoch_2", "epoch_3"]
    tau = ordering_agreement(summarise(runs, criteria, stages), criteria, stages)
    assert tau["epoch_1"] == pytest.approx(-1.0) and tau["epoch_2"] == pytest.approx(1.0)
    assert tau["epoch_3"] == pytest.approx(1.0)
    few = ordering_agreement(summarise(runs, ["late", "early"], stages), ["late", "early"], stages)
    assert set(few.values()) == {None}  # two criteria do not make an ordering worth a tau


def test_criteria_of_keeps_the_preferred_order_and_puts_scratch_last():
    runs = [{"criterion": c} for c in ("scratch", "l1", "random", "VBD_dis")]
    assert criteria_of(runs, ["random", "l1"]) == ["random", "l1", "VBD_dis", "scratch"]


def test_summary_table_shows_final_differences_and_the_last_ranks():
    runs = _settling_runs()
    text = render_summary(runs, criteria_of(runs), title="T")
    assert text.startswith("#### T: seeds [0, 1], final stage epoch 3")
    assert "| late | 10.00 ± 0.00 (2) | 61.50 ± 0.71 (2) | +10.00 [+10.00, +10.00] (2/2) | 1 | 4 · 1 · 1 |" in text
    assert "epoch 1 -1.00, epoch 2 +1.00, epoch 3 +1.00" in text


def test_budget_comparison_pairs_the_final_orderings():
    short = [{**r, "top1": {k: v for k, v in r["top1"].items() if k != "epoch_3" and k != "epoch_2"}}
             for r in _settling_runs()]
    text = render_budget_comparison([("F1", short), ("F3", _settling_runs())], ["late", "random", "early", "mid"])
    assert "| late | -10.00 [-10.00, -10.00] (0/2) | +10.00 [+10.00, +10.00] (2/2) | 4 | 1 |" in text
    assert "Kendall's tau between the final orderings of F1 and F3: -1.00 (4 criteria)" in text


def test_differences_plot_is_a_png(tmp_path):
    runs = _settling_runs()
    path = plot_differences(runs, criteria_of(runs), stages_of(runs), tmp_path / "d.png", title="T")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_study_summary_prints_tables_and_rejects_a_missing_study(tmp_path, capsys):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "runs.json").write_text(json.dumps({"settings": {"arch": "vgg_16_bn"}, "runs": _settling_runs()}))
    assert study_summary.main([f"{tmp_path / 'a'}=A", str(tmp_path / "a" / "runs.json")]) == 0
    out = capsys.readouterr().out
    assert "#### A: seeds [0, 1]" in out and "#### vgg_16_bn at `?`, ? fine-tuning epochs" in out
    assert study_summary.main(["--budgets", f"{tmp_path / 'a'}=A", f"{tmp_path / 'a'}=B"]) == 0
    assert "final orderings of A and B: +1.00" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        study_summary.main([str(tmp_path / "missing")])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1 and "no study at" in err[0] and "missing" in err[0]


# -- a tiny study end to end ----------------------------------------------------------------------------------------
ARGV = ["--arch", "resnet_56", "--compress_rate", "[0.]+[0.5]*29", "--dataset", "synthetic_cifar", "--criteria",
        "l1,random", "--seeds", "0,1", "--train_images", "64", "--test_images", "32", "--baseline_epochs", "1",
        "--finetune_epochs", "1", "--bn_images", "32", "--batch_size", "32", "--no_progress"]


def _study(out: Path, *extra: str) -> dict:
    threads = torch.get_num_threads()
    argv = [*ARGV, "--out", str(out), *extra]
    try:
        return criteria_study.run_study(criteria_study.build_parser().parse_args(argv), argv)
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("study") / "out"
    return out, _study(out)


def test_study_writes_every_run_and_its_reports(study):
    out, result = study
    expected = [(s, c) for s in (0, 1) for c in ("l1", "random", "scratch")]
    assert result["ran"] == expected and result["trained_baselines"] == [0, 1]
    record = json.loads((out / "runs.json").read_text())
    assert sorted((r["seed"], r["criterion"]) for r in record["runs"]) == sorted(expected)
    for run in record["runs"]:
        assert set(run["top1"]) == {TRANSFERRED, BN_ADAPTED, "epoch_1"} and run["seconds"] > 0
        assert run["command"].startswith("python bench/criteria_study.py --arch resnet_56")
        assert (run["top1"][TRANSFERRED] is None) == (run["criterion"] == "scratch")
        assert 0.0 <= run["top1"]["epoch_1"] <= 100.0 and len(run["epochs"]) == 1
    assert record["complexity"]["pruned_flops"] < record["complexity"]["baseline_flops"]
    text = (out / "study.md").read_text()
    assert "## Paired difference from `random`" in text and "| scratch |" in text
    assert "64 training images, 32 test images" in text and "CPU thread(s)" in text
    assert (out / "study.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "differences.png").read_bytes()[:4] == b"\x89PNG"
    assert "Kendall's tau between each stage's ordering" in text
    assert sorted(p.name for p in (out / "baselines").glob("*.pth.tar")) == ["seed_0.pth.tar", "seed_1.pth.tar"]


def test_resume_redoes_only_the_deleted_run_and_reuses_baselines(study, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(study[0], out)
    record = json.loads((out / "runs.json").read_text())
    kept = [r for r in record["runs"] if (r["seed"], r["criterion"]) != (1, "l1")]
    (out / "runs.json").write_text(json.dumps({**record, "runs": kept}))
    result = _study(out)
    assert result["ran"] == [(1, "l1")] and result["trained_baselines"] == []
    after = json.loads((out / "runs.json").read_text())["runs"]
    assert after[:-1] == kept and (after[-1]["seed"], after[-1]["criterion"]) == (1, "l1")


def test_other_settings_in_the_same_directory_are_a_one_line_error(study, tmp_path, capsys, one_thread):
    out = tmp_path / "out"
    shutil.copytree(study[0], out)
    status = criteria_study.main([*ARGV, "--out", str(out), "--finetune_epochs", "2"])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1 and "finetune_epochs: 1 there, 2 now" in err[0]


@pytest.mark.parametrize("flag, value, message", [("--seeds", "0,x", "--seeds '0,x'"),
                                                  ("--criteria", "l1,nope", "unknown criterion 'nope'")])
def test_bad_seeds_or_criteria_are_one_line_errors(tmp_path, capsys, one_thread, flag, value, message):
    assert criteria_study.main([*ARGV, "--out", str(tmp_path / "o"), flag, value]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not (tmp_path / "o").exists()


def test_random_is_added_as_the_reference_and_scratch_comes_last():
    assert criteria_study.parse_criteria("vbd,l1", scratch=True) == ["VBD_dis", "l1", "random", "scratch"]
    assert criteria_study.parse_criteria("scratch,random,l2", scratch=False) == ["random", "l2"]


def test_baselines_from_another_study_are_copied_not_retrained(study, tmp_path):
    out = tmp_path / "longer"
    result = _study(out, "--finetune_epochs", "2", "--criteria", "l1", "--no_scratch", "--baselines_from", str(study[0]))
    assert result["trained_baselines"] == [] and result["ran"] == [(0, "l1"), (0, "random"), (1, "l1"), (1, "random")]
    for seed in (0, 1):
        name = f"seed_{seed}.pth.tar"
        assert (out / "baselines" / name).read_bytes() == (study[0] / "baselines" / name).read_bytes()


@pytest.mark.parametrize("flag, value, message", [("--train_images", "32", "train_images 64"),
                                                  ("--arch", "vgg_16_bn", "arch 'resnet_56'")])
def test_baselines_from_a_study_with_other_training_settings_is_a_one_line_error(study, tmp_path, capsys, one_thread,
                                                                                 flag, value, message):
    argv = [*ARGV, "--out", str(tmp_path / "o"), "--baselines_from", str(study[0]), flag, value]
    if flag == "--arch":
        argv[argv.index("[0.]+[0.5]*29")] = "[0.3]*7+[0.5]*5"
    assert criteria_study.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--baselines_from" in err[0] and message in err[0]
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("text, reason", [("{not json", "Expecting property name"), ('{"runs": 3}', "no list of runs"),
                                          ("[]", "no list of runs")])
def test_a_file_that_is_not_a_study_record_is_a_one_line_error_everywhere(tmp_path, capsys, one_thread, text, reason):
    (tmp_path / "runs.json").write_text(text)
    with pytest.raises(ValueError, match=reason):
        read_study_record(tmp_path / "runs.json")
    with pytest.raises(SystemExit):
        study_summary.main([str(tmp_path)])
    assert criteria_study.main([*ARGV, "--out", str(tmp_path / "o"), "--baselines_from", str(tmp_path)]) == 2
    assert criteria_study.main([*ARGV, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all("is not a study record" in line and reason in line for line in err)
    assert "--baselines_from" in err[1] and "move it away" in err[2]
