"""Fine-tuning end to end on tiny data: artifacts, recipes, resume after SIGKILL, the NaN guard."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from coring.checkpoint import load_checkpoint, save_checkpoint
from coring.engine import NonFiniteLossError, evaluate
from coring.run_logging import read_metrics
from main.finetune import BEST_NAME, CHECKPOINT_NAME, main, make_args, parse_args, run_finetune
from models import build_model

REPO = Path(__file__).resolve().parent.parent
ARCH, RATE = "resnet_56", "[0.]+[0.9]*29"  # 56 layers, a few channels each: fast on 2 CPU cores
TINY = dict(arch=ARCH, compress_rate=RATE, dataset="digits", batch_size=64, limit_train=256, limit_test=100,
            progress=False, lr=0.02)


def _cli(job_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, str(REPO / "main" / "finetune.py"), "--arch", ARCH, "--compress_rate", RATE,
            "--dataset", "digits", "--batch_size", "64", "--limit_train", "512", "--limit_test", "100",
            "--lr", "0.02", "--job_dir", str(job_dir), "--no-progress", *extra]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def _epoch_of(path: Path) -> int:
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True)["epoch"])
    except Exception:  # noqa: BLE001 - not there yet
        return -1


# ---------------------------------------------------------------------------------------------- arguments
def test_cifar_recipe_is_the_default_and_imagenet_recipe_switches_every_default():
    cifar = parse_args(["--arch", ARCH])
    assert (cifar.recipe, cifar.lr, cifar.momentum, cifar.weight_decay, cifar.batch_size, cifar.epochs,
            cifar.lr_type, cifar.lr_decay_step, cifar.label_smooth) == (
        "cifar", 0.01, 0.9, 5e-3, 256, 300, "step", "150,225", 0.0)
    imagenet = parse_args(["--arch", "resnet_50", "--dataset", "imagenet"])
    assert (imagenet.recipe, imagenet.lr, imagenet.momentum, imagenet.weight_decay, imagenet.batch_size,
            imagenet.epochs, imagenet.lr_type, imagenet.warmup_epochs, imagenet.label_smooth) == (
        "imagenet", 0.01, 0.99, 1e-4, 256, 200, "cos", 5, 0.1)
    explicit = parse_args(["--arch", ARCH, "--recipe", "imagenet", "--momentum", "0.9", "--epochs", "7"])
    assert (explicit.momentum, explicit.epochs, explicit.weight_decay) == (0.9, 7, 1e-4)


def test_paper_spellings_of_the_pretrained_flag_are_aliases():
    for flag in ("--pretrained", "--pretrain_dir", "--model_path"):
        assert parse_args(["--arch", ARCH, flag, "x.pth"]).pretrained == "x.pth"
    assert parse_args(["--arch", ARCH, "--use_onecycle"]).lr_type == "onecycle"
    with pytest.raises(ValueError, match="unknown option 'learning_rat'"):
        make_args(learning_rat=0.1)


# ---------------------------------------------------------------------------------------------- a short run
def test_short_run_from_a_pretrained_checkpoint_writes_every_artifact(tmp_path):
    torch.manual_seed(0)
    base = build_model(ARCH, RATE, 10)
    save_checkpoint({"state_dict": base.state_dict(), "arch": ARCH, "compress_rate": RATE}, tmp_path / "base.pth")
    job = tmp_path / "job"
    # arch and rate come from the checkpoint
    args = make_args(**{**TINY, "arch": None, "compress_rate": None}, pretrained=str(tmp_path / "base.pth"),
                     epochs=2, job_dir=str(job), lr_type="cos", warmup_epochs=0)
    summary = run_finetune(args)

    from data import build_loaders

    test = build_loaders("digits", None, 64, limit_test=100).test
    assert summary["initial_top1"] == pytest.approx(evaluate(base, test, "cpu", progress=False).top1)
    rows = read_metrics(job / "metrics.csv")
    assert [r["epoch"] for r in rows] == ["0", "1"]
    assert all(float(r["lr"]) > 0 and float(r["epoch_time_s"]) > 0 for r in rows)
    ckpt = load_checkpoint(job / CHECKPOINT_NAME)
    assert ckpt["epoch"] == 1 and ckpt["arch"] == ARCH and ckpt["compress_rate"] == RATE and ckpt["num_classes"] == 10
    assert {"state_dict", "optimizer", "lr_scheduler", "scaler", "best_top1_acc", "best_top5_acc", "args"} <= set(ckpt)
    best = load_checkpoint(job / BEST_NAME)
    assert best["best_top1_acc"] == pytest.approx(summary["best_top1"]) and best["epoch"] == summary["best_epoch"]
    assert summary["best_top1"] == max(float(r["test_top1"]) for r in rows)
    assert summary["final_top1"] == pytest.approx(float(rows[-1]["test_top1"]), abs=1e-3)
    assert summary["test_count"] == 100
    assert json.loads((job / "summary.json").read_text())["best_epoch"] == summary["best_epoch"]
    assert (job / "curves.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((job / "args.json").read_text())["epochs"] == 2
    log = next((job / "logs").glob("finetune_*.log")).read_text()
    assert "Final top-1" in log and f"Best top-1 {summary['best_top1']:.3f} (epoch {summary['best_epoch']})" in log


def test_a_checkpoint_that_does_not_fit_is_a_one_line_error(tmp_path, capsys):
    save_checkpoint({"state_dict": build_model(ARCH, "[0.]+[0.5]*29", 10).state_dict()}, tmp_path / "other.pth")
    code = main(["--arch", ARCH, "--compress_rate", RATE, "--dataset", "digits", "--pretrained",
                 str(tmp_path / "other.pth"), "--job_dir", str(tmp_path / "job"), "--epochs", "1", "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: checkpoint does not fit the model") and "\n" not in err


# ---------------------------------------------------------------------------------------------- NaN guard
def test_nan_loss_stops_the_run_and_leaves_the_last_good_checkpoint_untouched(tmp_path, capsys):
    job = tmp_path / "job"
    run_finetune(make_args(**TINY, epochs=1, job_dir=str(job)))
    good = (job / CHECKPOINT_NAME).read_bytes()
    best = (job / BEST_NAME).read_bytes()

    with pytest.raises(NonFiniteLossError, match=r"at epoch 1, iteration \d+, lr 1e\+30"):
        run_finetune(make_args(**{**TINY, "lr": 1e30}, epochs=3, job_dir=str(job), resume=True))
    assert (job / CHECKPOINT_NAME).read_bytes() == good
    assert (job / BEST_NAME).read_bytes() == best
    assert [r["epoch"] for r in read_metrics(job / "metrics.csv")] == ["0"]

    # the command line says it in one line and exits non-zero
    code = main(["--arch", ARCH, "--compress_rate", RATE, "--dataset", "digits", "--batch_size", "64",
                 "--limit_train", "256", "--limit_test", "100", "--job_dir", str(job), "--epochs", "3", "--resume",
                 "--lr", "1e30", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 1 and "error: training loss is nan at epoch 1" in err
    assert (job / CHECKPOINT_NAME).read_bytes() == good


# ---------------------------------------------------------------------------------------------- resume after SIGKILL
@pytest.mark.slow
def test_run_killed_mid_epoch_resumes_to_the_same_result_as_an_uninterrupted_run(tmp_path):
    epochs = 4
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    reference = subprocess.Popen(_cli(whole, "--epochs", str(epochs)), env=_env(), stdout=subprocess.DEVNULL,
                                 stderr=subprocess.PIPE)
    victim = subprocess.Popen(_cli(killed, "--epochs", str(epochs)), env=_env(), stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE)
    ckpt = killed / CHECKPOINT_NAME
    deadline, last_mtime = time.time() + 120, None
    try:
        while time.time() < deadline and victim.poll() is None:
            mtime = ckpt.stat().st_mtime_ns if ckpt.exists() else None
            if mtime != last_mtime:
                last_mtime = mtime
                if _epoch_of(ckpt) >= 1:
                    break
            time.sleep(0.05)
        assert victim.poll() is None, f"the run ended before it could be killed: {victim.stderr.read().decode()}"
        time.sleep(0.2)  # into the next epoch's training
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=30)
    finally:
        if victim.poll() is None:
            victim.kill()
    killed_at = _epoch_of(ckpt)
    assert 1 <= killed_at < epochs - 1, "killed mid-run, with the checkpoint of a finished epoch on disk"
    assert not (killed / "summary.json").exists()

    resumed = subprocess.run(_cli(killed, "--epochs", str(epochs), "--resume"), env=_env(), capture_output=True,
                             text=True, timeout=180)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming from {ckpt} (epoch {killed_at} done)" in resumed.stdout
    assert reference.wait(timeout=180) == 0, reference.stderr.read().decode()

    # the same epochs completed, each listed once (a row written just before the kill is dropped on resume)
    rows = read_metrics(killed / "metrics.csv")
    assert [int(r["epoch"]) for r in rows] == list(range(epochs))
    final = load_checkpoint(ckpt)
    assert final["epoch"] == epochs - 1
    # per-epoch seeding: the interrupted epoch is replayed exactly, so the result equals the uninterrupted run's
    reference_rows = read_metrics(whole / "metrics.csv")
    for key in ("train_loss", "test_loss", "test_top1", "lr"):
        assert [r[key] for r in rows] == [r[key] for r in reference_rows], key
    reference_state = load_checkpoint(whole / CHECKPOINT_NAME)["state_dict"]
    for name, tensor in final["state_dict"].items():
        torch.testing.assert_close(tensor, reference_state[name], rtol=1e-4, atol=1e-5, msg=name)
    assert json.loads((killed / "summary.json").read_text())["final_epoch"] == epochs - 1
    assert load_checkpoint(killed / BEST_NAME)["epoch"] == final["best_epoch"]
    assert not [p.name for p in killed.iterdir() if p.name.startswith(".")], "temporary files left behind"


def test_resume_tidies_a_save_cut_off_by_a_kill(tmp_path):
    from coring.run_logging import RunLogger
    from coring.fit import _repair_after_kill

    state = {"state_dict": {"w": torch.zeros(1)}, "epoch": 2, "best_epoch": 2}
    save_checkpoint(state, tmp_path / CHECKPOINT_NAME)
    save_checkpoint({**state, "epoch": 1, "best_epoch": 1}, tmp_path / BEST_NAME)  # the copy never happened
    (tmp_path / f".{BEST_NAME}.tmp123").write_bytes(b"half a file")
    (tmp_path / f".{CHECKPOINT_NAME}.abc.tmp").write_bytes(b"half a file")
    with RunLogger(tmp_path, "t", console=False) as logger:
        _repair_after_kill(tmp_path, state, logger)
    assert load_checkpoint(tmp_path / BEST_NAME)["epoch"] == 2
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_resume_also_removes_a_curves_png_cut_off_by_a_kill(tmp_path):
    from coring.fit import _repair_after_kill
    from coring.run_logging import RunLogger

    (tmp_path / ".curves.png.tdiuslwi.tmp").write_bytes(b"half a png")
    (tmp_path / ".metrics.csv.x1y2.tmp").write_bytes(b"half a csv")
    with RunLogger(tmp_path, "t", console=False) as logger:
        _repair_after_kill(tmp_path, {"epoch": 0, "best_epoch": None}, logger)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
