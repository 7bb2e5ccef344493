"""One run layer, two engines: the same flags mean the same on --arch and --model, and the engines agree."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from coring import prune_run
from coring.checkpoint import load_checkpoint
from coring.generic import prune_generic
from coring.prune_run import LAST_SHOT_NAME, make_engine, run_prune
from coring.pruning import prune
from main import prune as prune_entry
from models import build_model, channel_layout
from tests.helpers import randomise_batchnorm

RATE = "[0.]+[0.5]*29"


@pytest.fixture
def baseline(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    path = tmp_path / "base.pth.tar"
    torch.save({"state_dict": randomise_batchnorm(build_model("resnet_56")).state_dict()}, path)
    return path


def _args(tmp_path: Path, *extra: str, job: str = "job"):
    return prune_entry.build_parser().parse_args(
        ["--dataset", "digits", "--job_dir", str(tmp_path / job), "--device", "cpu", "--batch_size", "32",
         "--limit_train", "64", "--limit_test", "32", "--bn_recalib", "32", "--skip_baseline_eval", *extra])


# ---------------------------------------------------------------------------------------------- dry runs
def test_generic_dry_run_prints_a_plan_and_touches_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert prune_entry.main(["--model", "torchvision:resnet18", "--compress_rate", "0.5", "--dataset", "digits",
                             "--dry_run", "--json", "--job_dir", str(tmp_path / "job")]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["flops"] < 0.5 * plan["baseline"]["flops"]
    assert any(row["pruned"] < row["original"] for row in plan["widths"])
    assert list(tmp_path.iterdir()) == []  # no job dir, no checkpoint, no log


def test_builtin_dry_run_honours_a_flops_target(capsys):
    assert prune_entry.main(["--arch", "resnet_56", "--flops_target", "0.5", "--dry_run", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert 50.0 <= plan["reduction_pct"]["flops_conv_linear"] < 52.0
    assert len(set(plan["rates"])) == 1


def test_a_rate_and_a_target_together_are_refused_in_one_line(capsys):
    assert prune_entry.main(["--arch", "resnet_56", "--compress_rate", RATE, "--flops_target", "0.5",
                             "--dry_run"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--compress_rate or one of --flops_target" in err


# ---------------------------------------------------------------------------------------------- resume
def test_kshot_resume_continues_after_the_last_finished_shot(tmp_path, baseline, monkeypatch):
    common = ("--arch", "resnet_56", "--compress_rate", RATE, "--pretrain_dir", str(baseline), "--shot", "3",
              "--calib_epochs", "3", "--no_rank_cache")
    whole = run_prune(_args(tmp_path, *common, job="whole"))

    original = prune_run.BuiltinEngine.prune_shot

    def dies_at_the_third_shot(self, model, shot, **kwargs):
        if shot == 2:
            raise KeyboardInterrupt("killed")
        return original(self, model, shot, **kwargs)

    monkeypatch.setattr(prune_run.BuiltinEngine, "prune_shot", dies_at_the_third_shot)
    with pytest.raises(KeyboardInterrupt):
        run_prune(_args(tmp_path, *common, job="killed"))
    assert load_checkpoint(tmp_path / "killed" / LAST_SHOT_NAME)["shot"] == 2
    monkeypatch.setattr(prune_run.BuiltinEngine, "prune_shot", original)
    shots_done = []
    monkeypatch.setattr(prune_run.BuiltinEngine, "prune_shot",
                        lambda self, model, shot, **kw: shots_done.append(shot) or original(self, model, shot, **kw))
    resumed = run_prune(_args(tmp_path, *common, "--resume", job="killed"))
    assert shots_done == [2]
    assert not (tmp_path / "killed" / LAST_SHOT_NAME).exists()
    a = load_checkpoint(tmp_path / "whole" / "pruned.pth.tar")
    b = load_checkpoint(tmp_path / "killed" / "pruned.pth.tar")
    assert a["keep"] == b["keep"]
    for name, tensor in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][name], tensor, msg=name)
    assert resumed["top1_pruned"] == pytest.approx(whole["top1_pruned"])


def test_generic_kshot_calibrates_between_shots_and_resumes(tmp_path, monkeypatch):
    common = ("--model", "torchvision:resnet18", "--compress_rate", "0.5", "--shot", "2", "--calib_epochs", "2",
              "--limit_train", "32", "--batch_size", "16")
    original = prune_run.GenericEngine.prune_shot

    def dies_at_the_second_shot(self, model, shot, **kwargs):
        if shot == 1:
            raise KeyboardInterrupt("killed")
        return original(self, model, shot, **kwargs)

    monkeypatch.setattr(prune_run.GenericEngine, "prune_shot", dies_at_the_second_shot)
    with pytest.raises(KeyboardInterrupt):
        run_prune(_args(tmp_path, *common))
    monkeypatch.setattr(prune_run.GenericEngine, "prune_shot", original)
    summary = run_prune(_args(tmp_path, *common, "--resume"))
    log = "".join(p.read_text() for p in (tmp_path / "job" / "logs").glob("prune_*.log"))
    assert log.count("calibration epoch 1/1: train loss") == 2  # one per shot, across both runs
    assert "continuing with shot 2" in log
    checkpoint = load_checkpoint(tmp_path / "job" / "pruned.pth.tar")
    assert checkpoint["generic"]["iterative_steps"] == 2 and summary["shot"] == 2
    assert summary["pruned"]["flops"] < 0.4 * summary["baseline"]["flops"]


def test_every_engine_validates_before_reading_anything(tmp_path):
    """Arguments built in-process (not parsed) are checked too, before any checkpoint or data is read."""
    for argv, change in ((["--arch", "resnet_56", "--compress_rate", RATE], {"criterion": "foo"}),
                         (["--model", "torchvision:resnet18", "--compress_rate", "0.5"], {"strategy": "bar"}),
                         (["--model", "torchvision:resnet18"], {}),
                         (["--arch", "resnet_56", "--compress_rate", RATE], {"shot": 0}),
                         (["--arch", "resnet_56"], {"flops_target": 1.5})):
        args = _args(tmp_path, *argv, "--pretrain_dir", str(tmp_path / "missing.pth"))
        vars(args).update(change)
        with pytest.raises(ValueError):
            make_engine(args)
    assert not (tmp_path / "job").exists()


# ---------------------------------------------------------------------------------------------- engines agree
@pytest.mark.parametrize("arch, rate, size", [("resnet_50", "[0.]+[0.5]*3+[0.6]*16", 64),
                                              ("mobilenet_v2", "[0.]+[0.3]*7", 32)])
def test_generic_engine_keeps_the_builtin_engines_filters(arch, rate, size):
    """Per-group rates through Torch-Pruning select what the built-in layout selects, residual stages included."""
    torch.manual_seed(5)
    model = randomise_batchnorm(build_model(arch)).eval()
    builtin = prune(model, arch, rate, "VBD_dis", "min_sum")
    layout = channel_layout(model)
    src, dst = layout.widths(model), channel_layout(builtin.model).widths(builtin.model)
    pruned_groups = [g for g in layout.groups if dst[g.name] < src[g.name]]
    assert pruned_groups
    ratios = {g.scored[0]: (src[g.name] - dst[g.name]) / src[g.name] for g in pruned_groups}
    x = torch.randn(2, 3, size, size)
    slim, record = prune_generic(model, x[:1], channel_ratio=ratios, criterion="VBD_dis", strategy="min_sum")
    for group in pruned_groups:
        for conv in group.scored:
            assert record["kept"][conv] == builtin.keep[group.name].tolist(), (group.name, conv)
    with torch.no_grad():
        torch.testing.assert_close(slim(x), builtin.model.eval()(x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("flag, value", [("--bn_recalib", "-1"), ("--calib_epochs", "x"),
                                         ("--calib_weight_decay", "nan"), ("--calib_lr", "0"),
                                         ("--flops_target", "1.5"), ("--params_target", "0"), ("--shot", "0"),
                                         ("--rank_batches", "-2")])
def test_pruning_numbers_are_checked_when_the_command_line_is_parsed(flag, value, capsys):
    with pytest.raises(SystemExit) as exit_info:
        prune_entry.build_parser().parse_args(["--arch", "resnet_56", "--dry_run", flag, value])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and flag in err and repr(value) in err


def test_generic_engine_reuses_the_rank_cache_like_the_builtin_one(tmp_path, monkeypatch):
    torch.manual_seed(0)
    weights = tmp_path / "r18.pth.tar"
    model = __import__("torchvision").models.resnet18(num_classes=10)
    torch.save({"state_dict": model.state_dict()}, weights)
    common = ("--model", "torchvision:resnet18", "--compress_rate", "0.3", "--pretrain_dir", str(weights),
              "--limit_train", "16", "--batch_size", "16")
    run_prune(_args(tmp_path, *common))
    assert (tmp_path / "r18.pth.tar.ranks.pt").exists()

    def fail(*args, **kwargs):
        raise AssertionError("ranked again although the cache holds these ranks")

    monkeypatch.setattr("coring.rank_cache.rank_groups", fail)
    monkeypatch.setattr("coring.coring_importance.rank_groups", fail)
    first = load_checkpoint(tmp_path / "job" / "pruned.pth.tar")["keep"]
    run_prune(_args(tmp_path, *common, "--restart"))
    assert load_checkpoint(tmp_path / "job" / "pruned.pth.tar")["keep"] == first
