"""``main/prune.py`` from the command line: plans, pruning runs (1 and K shots), the rank cache, errors."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from coring.checkpoint import load_checkpoint
from coring.prune_run import run_prune
from main import prune as prune_entry
from models import build_model

ROOT = Path(__file__).resolve().parent.parent
RATE = "[0.]+[0.4]*2+[0.5]*9+[0.6]*9+[0.7]*9"


def _script(*args):
    return subprocess.run([sys.executable, "main/prune.py", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


def test_dry_run_json_has_counters_and_widths():
    proc = _script("--arch", "resnet_56", "--compress_rate", "[0.]+[0.18]*29", "--dry_run", "--json")
    assert proc.returncode == 0, proc.stderr
    plan = json.loads(proc.stdout)
    for key in ("params", "flops", "params_thop", "flops_thop", "params_ptflops", "flops_ptflops"):
        assert plan[key] > 0
    assert plan["flops"] == min(plan["flops_thop"], plan["flops_ptflops"])
    assert plan["params"] / 1e6 == pytest.approx(0.66, abs=0.005)
    widths = {row["group"]: row for row in plan["widths"]}
    assert widths["layer3.0.mid"]["pruned"] == 52 and widths["layer3.out"]["pruned"] == 64
    assert plan["reduction_pct"]["flops"] == pytest.approx(100 * (1 - plan["flops"] / plan["baseline"]["flops"]),
                                                           abs=0.01)


def test_dry_run_table_is_readable():
    proc = _script("--arch", "vgg_16_bn", "--compress_rate", "[0.21]*7+[0.75]*5", "--dry_run")
    assert proc.returncode == 0, proc.stderr
    assert "features.conv14" in proc.stdout and "thop" in proc.stdout and "conv_linear" in proc.stdout


@pytest.mark.parametrize("rate, message", [("[0.2]*7+[0.75]x5", "bad compress-rate term '[0.75]x5'"),
                                           ("[0.2]*5", "has 5 entries but 12 are expected for vgg_16_bn"),
                                           ("[1.5]*12", "outside [0, 1)")])
def test_bad_compress_rate_is_one_line_error(rate, message):
    proc = _script("--arch", "vgg_16_bn", "--compress_rate", rate, "--dry_run")
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and message in proc.stderr


def _prune_args(tmp_path, ckpt, *extra):
    return prune_entry.build_parser().parse_args(
        ["--arch", "resnet_56", "--compress_rate", RATE, "--pretrain_dir", str(ckpt), "--dataset", "digits",
         "--job_dir", str(tmp_path / "job"), "--device", "cpu", "--batch_size", "32", "--limit_train", "64",
         "--limit_test", "64", "--bn_recalib", "64", *extra])


@pytest.fixture
def baseline(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "base.pth.tar"
    torch.save({"state_dict": build_model("resnet_56").state_dict(), "epoch": 0}, path)
    return path


def test_prune_run_writes_a_checkpoint_that_test_and_finetune_load(tmp_path, baseline):
    summary = run_prune(_prune_args(tmp_path, baseline, "--criterion", "Euclide_dis"))
    assert {"top1_baseline", "top1_pruned", "top1_pruned_bn", "bn_images"} <= set(summary)
    assert summary["bn_images"] == 64
    assert summary["pruned"]["flops"] < 0.3 * summary["baseline"]["flops"]
    checkpoint = load_checkpoint(tmp_path / "job" / "pruned.pth.tar")
    assert checkpoint["arch"] == "resnet_56" and checkpoint["compress_rate"] == RATE
    model = build_model("resnet_56", RATE)
    model.load_state_dict(checkpoint["state_dict"])
    assert (tmp_path / "base.pth.tar.ranks.pt").exists()
    logs = list((tmp_path / "job" / "logs").glob("prune_*.log"))
    assert "after BN re-estimation" in logs[0].read_text()

    from main import test as test_entry
    result = test_entry.run_test(test_entry.build_parser().parse_args(
        ["--dataset", "digits", "--model_path", str(tmp_path / "job" / "pruned.pth.tar"), "--job_dir",
         str(tmp_path), "--device", "cpu", "--limit_test", "64", "--no_progress"]))
    assert result["top1"] == pytest.approx(summary["top1_pruned"])

    from main.finetune import make_args, run_finetune
    out = run_finetune(make_args(pretrained=str(tmp_path / "job" / "pruned.pth.tar"), dataset="digits", epochs=1,
                                 batch_size=32, limit_train=64, limit_test=64, job_dir=str(tmp_path / "ft"),
                                 device="cpu", progress=False))
    assert (tmp_path / "ft" / "model_best.pth.tar").exists() and out


def test_rank_cache_is_reused_when_nothing_changed(tmp_path, baseline, monkeypatch):
    run_prune(_prune_args(tmp_path, baseline, "--skip_baseline_eval"))
    import coring.rank as rank

    def fail(*args, **kwargs):
        raise AssertionError("ranked again although the cache holds these ranks")

    monkeypatch.setattr(rank, "rank_groups", fail)
    monkeypatch.setattr("coring.rank_cache.rank_groups", fail)
    run_prune(_prune_args(tmp_path, baseline, "--skip_baseline_eval", "--restart"))


def test_kshot_run_prunes_in_rounds_with_calibration(tmp_path, baseline):
    summary = run_prune(_prune_args(tmp_path, baseline, "--shot", "3", "--calib_epochs", "3", "--skip_baseline_eval"))
    log = next((tmp_path / "job" / "logs").glob("prune_*.log")).read_text()
    assert log.count("ranked and slimmed") == 3 and log.count("1 calibration epoch(s)") == 3
    assert log.count("calibration epoch 1/1: train loss") == 3
    model = build_model("resnet_56", RATE)
    model.load_state_dict(load_checkpoint(tmp_path / "job" / "pruned.pth.tar")["state_dict"])
    assert summary["shot"] == 3


def test_missing_checkpoint_is_one_line_error(tmp_path):
    proc = _script("--arch", "resnet_56", "--compress_rate", RATE, "--pretrain_dir", str(tmp_path / "none.pth"),
                   "--dataset", "digits", "--job_dir", str(tmp_path / "j"))
    assert proc.returncode == 2 and "none.pth" in proc.stderr and proc.stderr.strip().count("\n") == 0
