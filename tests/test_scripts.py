"""The reproduction scripts: every row script dry-runs (``DRY_RUN=1``), builds its row's architecture and writes the
logs the report reads; the launchers, batch splitting and errors of ``scripts/lib/common.sh`` behave.

The dry runs (``scripts/dry_run.py``: every baseline, the ResNet-50 ranks, every row, a small ablation, one row
under torchrun) happen once per session in the ``dry_run`` fixture, which ``tests/test_report.py`` shares.
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from coring.paper_tables import CORING_ROWS

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = REPO / "scripts"
ROW_IDS = [f"{row.arch}/{row.script}" for row in CORING_ROWS]
ROWS = {f"{row.arch}/{row.script}": row for row in CORING_ROWS}


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"coring_scripts_{name}", SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


_CACHE: dict = {}


@pytest.fixture(scope="session")
def dry_run(tmp_path_factory):
    """Every script's dry run and the report on them (run once per session, shared with test_report.py)."""
    if "result" not in _CACHE:
        _CACHE["result"] = _load("dry_run").run_all(tmp_path_factory.mktemp("dry_run"), jobs=2)
    return _CACHE["result"]


def _failure(item) -> str:
    return f"{item.name} exited {item.returncode}; log {item.log}:\n{item.tail()}"


def _commands(log: Path) -> list[str]:
    """The commands a script printed (``+ cmd ...`` lines, shell-quoted)."""
    return [line[2:] for line in log.read_text(errors="replace").splitlines() if line.startswith("+ ")]


# ---------------------------------------------------------------------------------------------- static checks
def test_committed_row_scripts_match_the_generator():
    generate = _load("generate")
    assert generate.main(["--check"]) == 0, "run `python scripts/generate.py` and commit the scripts"
    assert {str(path) for path in generate.expected_files()} == {f"scripts/{rid}.sh" for rid in ROW_IDS}


@pytest.mark.parametrize("path", [f"scripts/{rid}.sh" for rid in ROW_IDS] + [
    "scripts/train_baseline.sh", "scripts/generate_rank_resnet50.sh", "scripts/ablation.sh",
    "scripts/lib/common.sh", "scripts/slurm/row.sbatch", "scripts/slurm/table.sh"])
def test_script_parses_and_is_strict(path):
    script = REPO / path
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    text = script.read_text()
    if not path.endswith("common.sh"):
        assert "set -euo pipefail" in text
        assert script.stat().st_mode & stat.S_IXUSR, f"{path} is not executable"


@pytest.mark.parametrize("rid", ROW_IDS)
def test_row_script_states_the_row_and_its_disagreements(rid):
    row, text = ROWS[rid], (SCRIPTS / f"{rid}.sh").read_text()
    comments = " ".join(line.lstrip("# ") for line in text.splitlines() if line.startswith("#"))
    assert row.label in comments and f"{row.top1:.2f}" in comments
    if row.note:
        assert " ".join(row.note.split()) in " ".join(comments.split()), "the row's note must be in a comment"
    assert f'CRITERION="${{CRITERION:-{row.criterion}}}"' in text
    assert f'SHOT="${{SHOT:-{row.shot}}}"' in text
    assert f'COMPRESS_RATE="${{COMPRESS_RATE:-{row.compress_rate}}}"' in text


def test_environment_variables_are_documented_in_the_shared_library():
    text = (SCRIPTS / "lib" / "common.sh").read_text()
    for name in ("DATA_DIR", "PRETRAIN", "JOB_DIR", "GPUS", "NNODES", "DRY_RUN"):
        assert re.search(rf"^#\s+{name}\b", text, re.M), f"{name} is not documented in scripts/lib/common.sh"


# ---------------------------------------------------------------------------------------------- launchers
@pytest.fixture
def fake_python(tmp_path):
    """A PYTHON that records its arguments (one line per call) instead of running anything."""
    record = tmp_path / "calls.txt"
    fake = tmp_path / "fake_python"
    fake.write_text(f'#!/usr/bin/env bash\nprintf "%s\\n" "$*" >> "{record}"\n')
    fake.chmod(0o755)
    return fake, record


def _prepared_job(tmp_path: Path) -> tuple[Path, Path]:
    """A job dir whose pruning is already done (so only fine-tuning launches) and a PRETRAIN file."""
    job = tmp_path / "job"
    (job / "prune").mkdir(parents=True)
    (job / "prune" / "pruned.pth.tar").write_bytes(b"x")
    pretrain = tmp_path / "base.pth.tar"
    pretrain.write_bytes(b"x")
    return job, pretrain


def _script_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in (
        "GPUS", "NNODES", "PRETRAIN", "JOB_DIR", "DATA_DIR", "DRY_RUN", "RANK_DIR", "RDZV_ENDPOINT", "CRITERION",
        "SHOT", "COMPRESS_RATE", "FORCE_PRUNE")}
    env.update(extra)
    return env


def test_gpus_above_one_fine_tunes_under_torchrun_with_the_global_batch_split(tmp_path, fake_python):
    fake, record = fake_python
    job, pretrain = _prepared_job(tmp_path)
    proc = subprocess.run(["bash", "scripts/resnet_56/e5.sh"], cwd=REPO, capture_output=True, text=True,
                          env=_script_env(PYTHON=str(fake), GPUS="4", JOB_DIR=str(job), PRETRAIN=str(pretrain)))
    assert proc.returncode == 0, proc.stderr
    assert "not pruning again" in proc.stderr
    (call,) = record.read_text().splitlines()
    assert call.startswith("-m torch.distributed.run --standalone --nproc_per_node 4 ")
    assert "main/finetune.py" in call and call.endswith("--batch_size 64")  # 256 over 4 processes


def test_several_nodes_run_srun_torchrun_with_a_c10d_rendezvous(tmp_path, fake_python):
    fake, record = fake_python
    job, pretrain = _prepared_job(tmp_path)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    srun = bin_dir / "srun"
    srun.write_text(f'#!/usr/bin/env bash\nprintf "srun %s\\n" "$*" >> "{record}"\n')
    srun.chmod(0o755)
    env = _script_env(PYTHON=str(fake), GPUS="8", NNODES="2", RDZV_ENDPOINT="node1:29500", JOB_DIR=str(job),
                      PRETRAIN=str(pretrain), PATH=f"{bin_dir}:{os.environ['PATH']}")
    proc = subprocess.run(["bash", "scripts/resnet_50/v_soft.sh"], cwd=REPO, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    (call,) = record.read_text().splitlines()
    assert call.startswith(f"srun --nodes 2 --ntasks-per-node 1 {fake} -m torch.distributed.run --nnodes 2 "
                           "--nproc_per_node 8 --rdzv_backend c10d --rdzv_endpoint node1:29500")
    assert call.endswith("--batch_size 32 --workers 8")  # 512 over 16 processes


def test_slurm_batch_script_wraps_the_row_script_with_the_first_node_as_rendezvous(tmp_path, fake_python):
    fake, record = fake_python
    job, pretrain = _prepared_job(tmp_path)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in (("srun", f'printf "srun %s\\n" "$*" >> "{record}"'),
                       ("scontrol", 'printf "gpu-a\\ngpu-b\\n"')):
        (bin_dir / name).write_text(f"#!/usr/bin/env bash\n{body}\n")
        (bin_dir / name).chmod(0o755)
    env = _script_env(PYTHON=str(fake), JOB_DIR=str(job), PRETRAIN=str(pretrain), SLURM_NNODES="2",
                      SLURM_GPUS_ON_NODE="4", SLURM_JOB_NODELIST="gpu-[a-b]", SLURM_JOB_ID="77",
                      SLURM_SUBMIT_DIR=str(REPO), PATH=f"{bin_dir}:{os.environ['PATH']}")
    proc = subprocess.run(["bash", str(SCRIPTS / "slurm" / "row.sbatch"), "resnet_56/e5"], cwd=tmp_path,
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    (call,) = record.read_text().splitlines()
    assert "--nnodes 2 --nproc_per_node 4 --rdzv_backend c10d --rdzv_endpoint gpu-a:29500" in call
    assert call.endswith("--batch_size 32")


def test_a_job_dir_holding_another_pruning_is_refused(tmp_path):
    job, pretrain = _prepared_job(tmp_path)
    (job / "prune" / "prune_summary.json").write_text(json.dumps(
        {"criterion": "VBD_dis", "shot": 5, "compress_rate": "[0.]+[0.18]*29"}))
    proc = subprocess.run(["bash", "scripts/resnet_56/e5.sh"], cwd=REPO, capture_output=True, text=True,
                          env=_script_env(PYTHON=sys.executable, JOB_DIR=str(job), PRETRAIN=str(pretrain)))
    assert proc.returncode == 2 and "holds another pruning than criterion Euclide_dis, K 5" in proc.stderr


def test_force_prune_moves_the_old_fine_tuning_aside(tmp_path, fake_python):
    fake, record = fake_python
    job, pretrain = _prepared_job(tmp_path)
    (job / "finetune").mkdir()
    (job / "finetune" / "checkpoint.pth.tar").write_bytes(b"x")
    proc = subprocess.run(["bash", "scripts/resnet_56/e5.sh"], cwd=REPO, capture_output=True, text=True,
                          env=_script_env(PYTHON=str(fake), JOB_DIR=str(job), PRETRAIN=str(pretrain), FORCE_PRUNE="1"))
    assert proc.returncode == 0, proc.stderr
    prune_call, finetune_call = record.read_text().splitlines()
    assert "main/prune.py" in prune_call and "main/finetune.py" in finetune_call
    (stale,) = job.glob("finetune.stale-*")
    assert (stale / "checkpoint.pth.tar").is_file() and not (job / "finetune").exists()


@pytest.mark.parametrize("env, message", [
    ({"GPUS": "3"}, "batch 256 does not split over 3 processes"),
    ({"GPUS": "two"}, "GPUS must be a positive integer"),
    ({"NNODES": "2"}, "needs RDZV_ENDPOINT"),
    ({"DRY_RUN": "yes"}, "DRY_RUN must be 0 or 1"),
    ({"PRETRAIN": "/nonexistent/base.pth.tar"}, "does not exist"),
])
def test_bad_environment_is_a_one_line_error(tmp_path, env, message):
    proc = subprocess.run(["bash", "scripts/resnet_56/e5.sh"], cwd=REPO, capture_output=True, text=True,
                          env=_script_env(JOB_DIR=str(tmp_path / "job"), **env))
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr


def test_train_baseline_rejects_an_unknown_arch(tmp_path):
    proc = subprocess.run(["bash", "scripts/train_baseline.sh", "resnet_18"], cwd=REPO, capture_output=True,
                          text=True, env=_script_env(JOB_DIR=str(tmp_path)))
    assert proc.returncode == 2 and "usage:" in proc.stderr


# ---------------------------------------------------------------------------------------------- dry runs
@pytest.mark.slow
@pytest.mark.parametrize("rid", ROW_IDS)
def test_row_dry_run_builds_the_rows_architecture_and_writes_the_logs(dry_run, rid):
    item, row = dry_run.rows[rid], ROWS[rid]
    assert item.ok, _failure(item)
    prune_dir, ft_dir = item.job_dir / "prune", item.job_dir / "finetune"
    summary = json.loads((prune_dir / "prune_summary.json").read_text())
    assert (summary["arch"], summary["compress_rate"], summary["criterion"], summary["shot"]) == (
        row.arch, row.compress_rate, row.criterion, row.shot)
    key_p, key_f = ("params", "flops") if row.counter == "min" else (f"params_{row.counter}", f"flops_{row.counter}")
    assert summary["pruned"][key_p] / 1e6 == pytest.approx(row.params_m, rel=0.03)
    assert summary["pruned"][key_f] / 1e6 == pytest.approx(row.flops_m, rel=0.03)
    for key in ("top1_baseline", "top1_pruned", "top1_pruned_bn"):
        assert isinstance(summary[key], float)
    assert (prune_dir / "pruned.pth.tar").is_file() and (prune_dir / "config.txt").is_file()
    assert list((prune_dir / "logs").glob("prune_*.log"))
    for name in ("metrics.csv", "summary.json", "checkpoint.pth.tar", "model_best.pth.tar", "curves.png",
                 "args.json"):
        assert (ft_dir / name).is_file(), f"{rid}: no finetune/{name}"
    assert list((ft_dir / "logs").glob("finetune_*.log"))
    ft = json.loads((ft_dir / "summary.json").read_text())
    assert ft["arch"] == row.arch and ft["final_epoch"] == 0 and ft["best_top1"] is not None
    header = (ft_dir / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"epoch", "test_top1", "test_top5", "best_top1", "epoch_time_s"} <= set(header)


@pytest.mark.slow
@pytest.mark.parametrize("rid", ROW_IDS)
def test_row_dry_run_runs_the_rows_recipe_with_dry_run_overrides_last(dry_run, rid):
    item, row = dry_run.rows[rid], ROWS[rid]
    assert item.ok, _failure(item)
    prune_cmd, ft_cmd = [c for c in _commands(item.log) if "main/prune.py" in c or "main/finetune.py" in c][-2:]
    assert "main/prune.py" in prune_cmd and "main/finetune.py" in ft_cmd
    assert f"--criterion {row.criterion} " in prune_cmd and f"--shot {row.shot} " in prune_cmd
    imagenet = row.arch == "resnet_50"
    recipe = ("--epochs 200", "--momentum 0.99", "--label_smooth 0.1", "--lr_type cos") if imagenet else (
        "--epochs 400", "--momentum 0.9", "--label_smooth 0 ", "--lr_type cos")
    for flag in recipe:
        assert flag in ft_cmd, f"{rid}: {flag!r} not in {ft_cmd}"
    wd = "1e-3" if row.arch == "mobilenet_v2" else ("1e-4" if imagenet else "5e-3")
    assert f"--weight_decay {wd} " in ft_cmd
    # The dry-run flags come after the recipe's, so they win (argparse keeps the last).
    assert ft_cmd.index("--epochs 1 ") > ft_cmd.index("--epochs 400" if not imagenet else "--epochs 200")
    assert "--device cpu" in prune_cmd and "--device cpu" in ft_cmd


@pytest.mark.slow
def test_one_row_fine_tunes_under_torchrun_with_two_processes(dry_run):
    module = _load("dry_run")
    item = dry_run.rows[module.TORCHRUN_ROW]
    assert item.ok, _failure(item)
    assert any("-m torch.distributed.run --standalone --nproc_per_node 2" in c for c in _commands(item.log))
    assert json.loads((item.job_dir / "finetune" / "summary.json").read_text())["world_size"] == 2


@pytest.mark.slow
def test_train_baseline_dry_run_trains_from_random_initialisation(dry_run):
    for arch, item in dry_run.baselines.items():
        assert item.ok, _failure(item)
        assert (item.job_dir / "checkpoint.pth.tar").is_file() and (item.job_dir / "metrics.csv").is_file()
        assert "training %s from random initialisation" % arch in item.log.read_text()


@pytest.mark.slow
def test_generate_rank_fills_one_cache_per_criterion_and_the_rows_reuse_it(dry_run):
    item = dry_run.ranks
    assert item is not None and item.ok, _failure(item)
    for criterion in ("cosine_sim", "Euclide_dis", "VBD_dis"):
        folder = item.job_dir / criterion
        assert (folder / "resnet_50.pth.tar.ranks.pt").is_file()
        assert (folder / "probe" / "rank_probe_summary.json").is_file()
        assert not (folder / "probe" / "prune_summary.json").exists()  # not a run for the report
    for rid in ("resnet_50/v_soft", "resnet_50/c_moderate"):
        prune_cmd = next(c for c in _commands(dry_run.rows[rid].log) if "main/prune.py" in c)
        criterion = ROWS[rid].criterion
        assert f"--pretrain_dir {item.job_dir / criterion / 'resnet_50.pth.tar'} " in prune_cmd


@pytest.mark.slow
def test_ablation_dry_run_overrides_criterion_and_shot(dry_run):
    item = dry_run.ablation
    assert item is not None and item.ok, _failure(item)
    for shot in (1, 2):
        summary = json.loads((item.job_dir / f"cosine_sim_k{shot}" / "prune" / "prune_summary.json").read_text())
        assert (summary["criterion"], summary["shot"]) == ("cosine_sim", shot)
