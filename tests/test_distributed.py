"""One code path for 1 and N processes: torchrun with 2 CPU processes (gloo) against a 1-process run."""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
import signal
import sys
import time
from pathlib import Path

import pytest
import torch

from coring.checkpoint import load_checkpoint
from coring.distributed import (
    DistInfo,
    all_reduce_min,
    all_reduce_sum,
    barrier,
    broadcast_buffers,
    init_distributed,
    unwrap,
    wrap_ddp,
)
from coring.run_logging import read_metrics
from main.finetune import CHECKPOINT_NAME, make_args, run_finetune

REPO = Path(__file__).resolve().parent.parent
ARCH, RATE = "resnet_56", "[0.]+[0.9]*29"
LIMIT_TEST = 101  # odd: the two evaluation shards differ in size (51 + 50) and nothing may be padded


def test_a_single_process_creates_no_process_group_and_the_helpers_are_no_ops(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    info = init_distributed("cpu")
    assert info == DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), is_main=True)
    assert not info.distributed and not torch.distributed.is_initialized()
    model = torch.nn.Linear(2, 2)
    assert wrap_ddp(model, info) is model and unwrap(model) is model
    t = torch.tensor([3.0])
    assert all_reduce_sum(t) is t and all_reduce_min(t).item() == 3.0
    barrier()
    broadcast_buffers(model)


def test_bad_torchrun_environment_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(SystemExit, match="bad torchrun environment RANK=3 WORLD_SIZE=2"):
        init_distributed("cpu")


@pytest.mark.slow
def test_torchrun_two_cpu_processes_keep_the_same_accuracy_bookkeeping_as_one(tmp_path):
    common = dict(arch=ARCH, compress_rate=RATE, dataset="digits", batch_size=32, limit_train=128,
                  limit_test=LIMIT_TEST, progress=False, lr=0.02)
    # a trained starting point, so that accuracies are not all 10%
    run_finetune(make_args(**common, epochs=1, job_dir=str(tmp_path / "base"), initial_eval=False))
    base = tmp_path / "base" / CHECKPOINT_NAME

    job = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(REPO / "main" / "finetune.py"), "--arch", ARCH, "--compress_rate", RATE, "--dataset", "digits",
           "--batch_size", "32", "--limit_train", "128", "--limit_test", str(LIMIT_TEST), "--lr", "0.02",
           "--epochs", "1", "--pretrained", str(base), "--job_dir", str(job), "--no-progress", "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads((job / "summary.json").read_text())
    assert summary["world_size"] == 2

    # the same weights evaluated by 1 process and by 2 sharded processes: same count, same accuracy
    single = run_finetune(make_args(**common, pretrained=str(base), evaluate=True, job_dir=str(tmp_path / "eval0")))
    assert single["test_count"] == LIMIT_TEST
    assert summary["initial_top1"] == pytest.approx(single["test_top1"], abs=1e-9)
    assert summary["initial_top5"] == pytest.approx(single["test_top5"], abs=1e-9)

    # the 2-process run's final accuracy is that of the checkpoint rank 0 wrote (BN statistics included)
    assert summary["test_count"] == LIMIT_TEST
    after = run_finetune(make_args(**common, pretrained=str(job / CHECKPOINT_NAME), evaluate=True,
                                   job_dir=str(tmp_path / "eval1")))
    assert summary["final_top1"] == pytest.approx(after["test_top1"], abs=1e-9)

    # rank 0 alone logs and writes: one log file, one CSV row per epoch, one set of checkpoints
    logs = list((job / "logs").iterdir())
    assert len(logs) == 1, logs
    log = logs[0].read_text()
    assert "world size 2" in log and log.count(" * Acc@1") == 1
    assert [r["epoch"] for r in read_metrics(job / "metrics.csv")] == ["0"]
    assert sorted(p.name for p in job.iterdir() if p.suffix == ".tar") == ["checkpoint.pth.tar",
                                                                           "model_best.pth.tar"]
    assert load_checkpoint(job / CHECKPOINT_NAME)["args"]["batch_size"] == 32  # per process
    assert not [p for p in job.iterdir() if p.name.startswith(".")], "no temporary files left behind"


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc")
def test_killing_the_torchrun_launcher_ends_its_workers(tmp_path):
    job = tmp_path / "job"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29533",
           str(REPO / "main" / "finetune.py"), "--arch", ARCH, "--compress_rate", RATE, "--dataset", "digits",
           "--batch_size", "32", "--limit_train", "1024", "--limit_test", "64", "--epochs", "200", "--device", "cpu",
           "--job_dir", str(job), "--no_progress", "--threads", "1"]
    launcher = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers: list[int] = []
    try:
        deadline = time.time() + 120
        while not (job / "args.json").exists():
            assert time.time() < deadline and launcher.poll() is None, "the run did not start"
            time.sleep(0.2)
        workers = _children(launcher.pid)
        assert len(workers) == 2
        launcher.kill()  # SIGKILL: the launcher cannot forward anything to its workers
        launcher.wait()
        deadline = time.time() + 20
        while any(_alive(pid) for pid in workers) and time.time() < deadline:
            time.sleep(0.2)
        assert not any(_alive(pid) for pid in workers), "workers kept running after the launcher died"
    finally:
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if launcher.poll() is None:
            launcher.kill()
