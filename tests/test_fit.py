"""The library training loop and the job directory: no bad weights saved, one run per directory, nothing lost."""
from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from coring.checkpoint import load_checkpoint
from coring.engine import NonFiniteLossError
from coring.fit import BEST_NAME, CHECKPOINT_NAME, FitConfig, fit
from coring.jobdir import JobDirError, claim_job_dir
from data import build_loaders
from main.finetune import main as finetune_main
from main.finetune import make_args, run_finetune
from models import build_model

REPO = Path(__file__).resolve().parent.parent
ARCH, RATE = "resnet_56", "[0.]+[0.9]*29"


def _loaders():
    return build_loaders("digits", None, 64, limit_train=128, limit_test=64, seed=0)


def _tiny_model():
    torch.manual_seed(0)
    return build_model(ARCH, RATE, 10)


def test_fit_without_job_dir_trains_evaluates_each_epoch_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = fit(_tiny_model(), _loaders(), FitConfig(epochs=2, lr=0.05, progress=False, log_every=0))
    assert [row["epoch"] for row in result.history] == [0, 1]
    assert all(math.isfinite(row["test_top1"]) for row in result.history)
    assert result.final is not None and result.final.count == 64
    assert result.best_epoch in (0, 1) and result.best_top1 == max(r["test_top1"] for r in result.history)
    assert list(tmp_path.iterdir()) == []


def test_curves_are_drawn_after_every_epoch(tmp_path):
    seen = []
    config = FitConfig(epochs=2, lr=0.05, progress=False, log_every=0)
    loaders = _loaders()

    class Spy:
        def __init__(self, inner):
            self.inner, self.batch_size = inner, getattr(inner, "batch_size", None)

        def __len__(self):
            return len(self.inner)

        def __iter__(self):
            seen.append((tmp_path / "curves.png").exists())
            return iter(self.inner)

        def set_epoch(self, epoch):
            self.inner.set_epoch(epoch)

    loaders.train = Spy(loaders.train)
    fit(_tiny_model(), loaders, config, tmp_path)
    assert seen == [False, True]  # the second epoch starts with the first epoch's curves on disk
    assert (tmp_path / "curves.png").exists() and (tmp_path / "metrics.csv").exists()


def test_weights_turned_nan_by_the_last_step_are_never_saved(tmp_path):
    loaders = _loaders()
    fit(_tiny_model(), loaders, FitConfig(epochs=1, lr=0.05, progress=False, log_every=0), tmp_path)
    good = load_checkpoint(tmp_path / CHECKPOINT_NAME)
    model = _tiny_model()
    calls = {"n": 0}
    original_step = torch.optim.SGD.step

    def poisoning_step(self, *args, **kwargs):  # the loss stays finite; the weights go NaN after the update
        out = original_step(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == len(loaders.train):
            with torch.no_grad():
                next(iter(self.param_groups[0]["params"])).fill_(float("nan"))
        return out

    torch.optim.SGD.step = poisoning_step
    try:
        with pytest.raises(NonFiniteLossError, match="not finite after epoch 1"):
            fit(model, loaders, FitConfig(epochs=3, lr=0.05, progress=False, log_every=0, resume=True), tmp_path)
    finally:
        torch.optim.SGD.step = original_step
    kept = load_checkpoint(tmp_path / CHECKPOINT_NAME)
    assert kept["epoch"] == good["epoch"] == 0
    assert load_checkpoint(tmp_path / BEST_NAME)["epoch"] == 0
    assert all(torch.isfinite(t).all() for t in kept["state_dict"].values() if t.is_floating_point())


@pytest.mark.parametrize("lr", ["nan", "inf", "0", "-0.1", "abc"])
def test_learning_rates_that_cannot_train_are_refused_at_parse_time(lr, capsys):
    with pytest.raises(SystemExit):
        finetune_main(["--arch", ARCH, "--dataset", "digits", "--lr", lr, "--job_dir", "unused"])
    err = capsys.readouterr().err
    assert f"'{lr}'" in err and "--lr" in err


def test_fit_config_refuses_a_nan_learning_rate():
    with pytest.raises(ValueError, match="learning rate"):
        FitConfig(epochs=1, lr=float("nan"))


def _finetune(job_dir: Path, **extra):
    args = make_args(arch=ARCH, compress_rate=RATE, dataset="digits", batch_size=64, limit_train=128,
                     limit_test=64, progress=False, epochs=1, lr=0.05, job_dir=str(job_dir), print_freq=0, **extra)
    return run_finetune(args)


def test_a_finished_run_is_refused_without_resume_and_moved_aside_with_restart(tmp_path):
    job = tmp_path / "job"
    _finetune(job)
    best_before = (job / BEST_NAME).read_bytes()
    with pytest.raises(JobDirError, match="already holds a run.*--resume.*--restart"):
        _finetune(job)
    assert (job / BEST_NAME).read_bytes() == best_before  # nothing was touched
    _finetune(job, restart=True)
    previous = [p for p in job.iterdir() if p.name.startswith("previous-")]
    assert len(previous) == 1 and (previous[0] / BEST_NAME).read_bytes() == best_before
    assert (previous[0] / "metrics.csv").exists() and (job / "metrics.csv").exists()


def test_a_second_run_on_a_locked_job_dir_fails_in_one_line(tmp_path):
    with claim_job_dir(tmp_path / "job"):
        with pytest.raises(JobDirError, match=f"in use by another run \\(pid {os.getpid()}\\)"):
            with claim_job_dir(tmp_path / "job"):
                pass
    with claim_job_dir(tmp_path / "job"):  # released when the first run ends
        pass


def test_a_lock_left_by_a_killed_process_is_taken_over(tmp_path):
    job = tmp_path / "job"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from coring.jobdir import claim_job_dir\n"
        f"with claim_job_dir({str(job)!r}):\n    print('locked', flush=True); time.sleep(60)")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(JobDirError, match=f"pid {holder.pid}"):
            with claim_job_dir(job):
                pass
    finally:
        holder.kill()
        holder.wait()
    with claim_job_dir(job):  # the kernel dropped the dead process's lock
        assert (job / "job.lock").read_text().strip() == str(os.getpid())


def test_two_finetune_processes_on_one_job_dir_one_is_refused(tmp_path):
    job = tmp_path / "job"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(REPO / "main" / "finetune.py"), "--arch", ARCH, "--compress_rate", RATE,
           "--dataset", "digits", "--batch_size", "64", "--limit_train", "512", "--limit_test", "64",
           "--epochs", "20", "--job_dir", str(job), "--no_progress", "--threads", "1"]
    first = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        while not (job / "job.lock").exists() or not (job / "args.json").exists():
            assert time.time() < deadline and first.poll() is None
            time.sleep(0.2)
        second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
        assert second.returncode == 2
        lines = [line for line in second.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and "in use by another run" in lines[0]
    finally:
        first.kill()
        first.wait()


def test_a_killed_kshot_prune_run_counts_as_a_run_of_the_job_dir(tmp_path):
    job = tmp_path / "job"
    job.mkdir()
    (job / "last_shot.pth.tar").write_bytes(b"a finished shot")
    with pytest.raises(JobDirError, match="last_shot.pth.tar"):
        with claim_job_dir(job):
            pass
    with claim_job_dir(job, restart=True):
        pass
    assert not (job / "last_shot.pth.tar").exists()
    assert [p.name for p in job.glob("previous-*/last_shot.pth.tar")] == ["last_shot.pth.tar"]
