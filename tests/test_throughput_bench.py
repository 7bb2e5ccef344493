"""The throughput benchmark runs end to end on tiny inputs and reports consistent figures (no timing asserted)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from bench.throughput import fold_batchnorm, padded_macs
from bench.throughput import main as throughput_main
from models import build_model
from tests.helpers import randomise_batchnorm

RATE = "[0.]+[0.5]*3+[0.6]*16"


def test_folding_batchnorm_keeps_the_output() -> None:
    torch.manual_seed(0)
    net = randomise_batchnorm(build_model("resnet_50", RATE).eval())
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        expected = net(x)
        folded = fold_batchnorm(net)
        assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
        torch.testing.assert_close(folded(x), expected, atol=1e-4, rtol=1e-4)


def test_padded_macs_round_channels_up_to_the_block() -> None:
    net = nn.Sequential(nn.Conv2d(3, 5, 3, padding=1), nn.Conv2d(5, 9, 1), nn.Flatten(), nn.Linear(9 * 16, 2))
    spatial, biases = 4 * 4, (5 + 9) * 4 * 4 + 2
    assert padded_macs(net, 4, block=1) == (5 * 3 * 9 + 9 * 5) * spatial + 9 * 16 * 2 + biases
    assert padded_macs(net, 4, block=8) == (8 * 3 * 9 + 16 * 8) * spatial + 9 * 16 * 2 + biases


@pytest.mark.slow
def test_benchmark_reports_every_model_and_writes_json_and_chart(tmp_path: Path, one_thread) -> None:
    out, png = tmp_path / "t.json", tmp_path / "t.png"
    assert throughput_main(["--devices", "cpu", "--input-size", "64", "--size", "128", "--batch-size", "2",
                            "--det-batch-size", "1", "--warmup", "0", "--repeats", "2", "--det-repeats", "1",
                            "--proposals", "10", "--mode", "fold", "--json", str(out), "--png", str(png)]) == 0
    report = json.loads(out.read_text())
    classification, detection = report["results"]
    assert classification["flops_ratio"]["pruned"] > 3.5  # this rate removes about 3/4 of ResNet-50's FLOPs
    assert 1 < classification["simd8_flops_ratio"]["pruned"] <= classification["flops_ratio"]["pruned"] * 1.01
    assert set(classification["batches"]) == {"1", "2"}
    assert set(detection["batches"]["1"]["images_per_s"]) == {"unpruned", "pruned", "pruned+fpn"}
    ratios = detection["flops_ratio"]
    assert 1 < ratios["pruned"] < ratios["pruned+fpn"]  # the narrower FPN removes work the backbone cannot
    assert set(detection["breakdown_s"]["pruned+fpn"]) == {"transform", "backbone", "fpn", "rpn", "roi_heads"}
    assert png.stat().st_size > 0


@pytest.mark.slow
def test_block_benchmark_covers_every_part_of_resnet50(one_thread) -> None:
    from bench.block_efficiency import get_args_parser, run

    rows = run(get_args_parser().parse_args(["--input-size", "64", "--repeats", "1"]))
    assert [r["part"] for r in rows][:2] == ["stem", "layer1.0"] and len(rows) == 1 + 16 + 1
    assert rows[0]["flops_ratio"] == pytest.approx(1.0) and rows[-1]["flops_ratio"] == pytest.approx(1.0)
    assert all(r["flops_ratio"] > 2.5 for r in rows[1:-1])  # every block is thinner at this rate
