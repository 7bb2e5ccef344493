"""``main/test.py``: the paper's checkpoint formats load, a mismatched one is a one-line error."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from main import test as test_entry
from models import build_model

ROOT = Path(__file__).resolve().parent.parent
RATE = "[0.]+[0.5]*29"


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model("resnet_56", RATE)


def _formats(model):
    state = model.state_dict()
    thop = dict(state)
    thop["total_ops"] = torch.zeros(1, dtype=torch.float64)
    thop["layer1.0.conv1.total_params"] = torch.zeros(1, dtype=torch.float64)
    return {
        "wrapped": {"state_dict": state, "epoch": 299, "best_top1_acc": torch.tensor(93.1), "optimizer": {}},
        "bare": state,
        "module_prefix": {"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 3},
        "thop_buffers": {"state_dict": thop, "best_top1_acc": 90.0},
    }


def _run(tmp_path, path, *extra):
    args = ["--dataset", "digits", "--arch", "resnet_56", "--compress_rate", RATE, "--model_path", str(path),
            "--job_dir", str(tmp_path / "logs"), "--device", "cpu", "--no_progress", *extra]
    return test_entry.run_test(test_entry.build_parser().parse_args(args))


@pytest.mark.parametrize("fmt", ["wrapped", "bare", "module_prefix", "thop_buffers"])
def test_paper_checkpoint_formats_load_and_evaluate(tmp_path, model, fmt):
    path = tmp_path / f"{fmt}.pth.tar"
    torch.save(_formats(model)[fmt], path)
    summary = _run(tmp_path, path, "--limit_test", "100")
    assert summary["count"] == 100 and 0.0 <= summary["top1"] <= 100.0
    assert summary["params"] == min(summary["params_thop"], summary["params_ptflops"])
    logs = list((tmp_path / "logs" / "logs").glob("test_resnet_56_*.log"))
    assert logs and "Acc@1" in logs[0].read_text()


def test_all_formats_give_the_same_accuracy(tmp_path, model):
    tops = set()
    for fmt, obj in _formats(model).items():
        torch.save(obj, tmp_path / f"{fmt}.pth")
        tops.add(_run(tmp_path, tmp_path / f"{fmt}.pth", "--limit_test", "120")["top1"])
    assert len(tops) == 1


def test_mismatched_checkpoint_is_a_one_line_error_naming_key_and_shapes(tmp_path):
    path = tmp_path / "other_rate.pth.tar"
    torch.save({"state_dict": build_model("resnet_56", "[0.]+[0.18]*29").state_dict()}, path)
    proc = subprocess.run([sys.executable, "main/test.py", "--dataset", "digits", "--arch", "resnet_56",
                           "--compress_rate", RATE, "--model_path", str(path), "--job_dir", str(tmp_path),
                           "--device", "cpu", "--limit_test", "50"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1, proc.stderr
    assert "layer1.0.conv1.weight" in err[0] and "[13, 16, 3, 3]" in err[0] and "[8, 16, 3, 3]" in err[0]


def test_paper_command_line_runs_unchanged_as_a_script(tmp_path, model):
    """The README command's shape: --dataset/--data_dir/--arch/--compress_rate/--model_path (data_dir unused by digits)."""
    path = tmp_path / "model_best.pth.tar"
    torch.save(_formats(model)["wrapped"], path)
    proc = subprocess.run([sys.executable, "main/test.py", "--dataset", "digits", "--data_dir", "data/digits",
                           "--arch", "resnet_56", "--compress_rate", RATE, "--model_path", str(path),
                           "--job_dir", str(tmp_path), "--gpu", "0", "--device", "cpu", "--json", "--limit_test", "100"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["count"] == 100  # with --json, stdout is the JSON alone (`| jq` works)
    assert "Acc@1" in proc.stderr  # and the log goes to stderr


def test_missing_cifar_directory_is_a_one_line_error(tmp_path, model):
    path = tmp_path / "m.pth"
    torch.save(model.state_dict(), path)
    proc = subprocess.run([sys.executable, "main/test.py", "--dataset", "cifar10", "--data_dir",
                           str(tmp_path / "nowhere"), "--arch", "resnet_56", "--compress_rate", RATE,
                           "--model_path", str(path), "--job_dir", str(tmp_path), "--device", "cpu"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and "nowhere" in proc.stderr
