"""``bench/gpu_check.sh`` and its python helpers: the shell script refuses clearly without CUDA; the helpers run on
the CPU (ranking CPU against CPU, a tiny digits fine-tune) and the summary reads what the steps leave; on a CUDA
machine the GPU ranking must keep the CPU's filters."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch

from bench.gpu_check import check_ranking, finetune_vs_bare, summarize
from bench.gpu_check import main as gpu_check_main

REPO = Path(__file__).resolve().parent.parent
SMALL_CASE = (("resnet_56", "[0.]+[0.18]*29"),)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_the_script_refuses_without_cuda_in_one_line_and_runs_nothing(tmp_path: Path) -> None:
    done = subprocess.run(["bash", "bench/gpu_check.sh"], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "OUT": str(tmp_path)})
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "needs a CUDA device" in done.stderr
    assert list(tmp_path.iterdir()) == []  # nothing ran, nothing was written


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_the_helpers_refuse_cuda_without_it(capsys: pytest.CaptureFixture) -> None:
    assert gpu_check_main(["ranking", "--device", "cuda"]) == 2
    assert "no CUDA device is available" in capsys.readouterr().err


def test_ranking_check_compares_every_group_and_finds_cpu_against_cpu_identical() -> None:
    result = check_ranking("cpu", SMALL_CASE, ("VBD_dis", "l1"))
    assert result["identical"] and [c["criterion"] for c in result["cases"]] == ["VBD_dis", "l1"]
    assert all(c["groups"] > 0 and c["groups_differing"] == [] for c in result["cases"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_ranking_keeps_the_filters_the_cpu_keeps() -> None:
    result = check_ranking("cuda")
    assert result["identical"], [c for c in result["cases"] if c["groups_differing"]]


def test_finetune_check_and_summary_on_the_cpu(tmp_path: Path, one_thread) -> None:
    finetune = finetune_vs_bare("cpu", epochs=1, batch_size=32, limit_train=64)
    assert finetune["finetune_images_per_s"] > 0 and finetune["bare_images_per_s"] > 0
    assert len(finetune["rounds"]["finetune"]) == len(finetune["rounds"]["bare"]) == 1  # the warm-up is not counted
    (tmp_path / "finetune.json").write_text(json.dumps(finetune))
    (tmp_path / "ranking.json").write_text(json.dumps(check_ranking("cpu", SMALL_CASE, ("l1",))))
    (tmp_path / "gpu_steps.tsv").write_text("ranking\t0\t3\tpython bench/gpu_check.py ranking\n"
                                            "throughput_detection\t124\t90\tpython bench/throughput.py\n")
    text = summarize(tmp_path)
    assert "| ranking | ok | 3 |" in text and "| throughput_detection | TIMED OUT | 90 |" in text
    assert "identical kept filters" in text and "x of the bare loop" in text
