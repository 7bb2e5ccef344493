"""Params and FLOPs of every CORING row (and baseline) land within 3% of the paper's tables."""
import pytest
import torch

from coring.counting import count_complexity, count_conv_linear
from coring.paper_tables import BASELINES, CORING_ROWS
from models import arch_spec, build_model

ROWS = list(BASELINES.values()) + list(CORING_ROWS)


@pytest.mark.parametrize("row", ROWS, ids=[f"{r.arch}-{r.script}" for r in ROWS])
def test_row_params_and_flops_within_3_percent_of_table(row):
    complexity = count_complexity(build_model(row.arch, row.compress_rate), arch_spec(row.arch).input_size)
    params, flops = complexity.by_counter(row.counter)
    assert params / 1e6 == pytest.approx(row.params_m, rel=0.03), f"{row.counter} params {params}"
    assert flops / 1e6 == pytest.approx(row.flops_m, rel=0.03), f"{row.counter} FLOPs {flops}"


def test_min_counter_is_the_smaller_of_thop_and_ptflops():
    complexity = count_complexity(build_model("mobilenet_v2", "[0.]+[0.1]+[0.25]*2+[0.25]*2+[0.3]*2"), 32)
    assert complexity.flops == min(complexity.flops_thop, complexity.flops_ptflops)
    assert complexity.flops_ptflops < complexity.flops_thop  # thop counts the ReLU6/add ops ptflops skips
    assert complexity.flops / 1e6 == pytest.approx(55.16, abs=0.01)


def test_counting_leaves_no_thop_buffers_on_the_model():
    model = build_model("resnet_56")
    keys = set(model.state_dict())
    count_complexity(model, 32)
    assert set(model.state_dict()) == keys


@pytest.mark.parametrize("row", CORING_ROWS, ids=lambda r: f"{r.arch}-{r.script}")
def test_printed_reductions_agree_with_the_printed_sizes(row):
    base = BASELINES[row.arch]
    params_drop, flops_drop = row.drops
    assert params_drop == pytest.approx(100 * (1 - row.params_m / base.params_m), abs=0.8)
    assert flops_drop == pytest.approx(100 * (1 - row.flops_m / base.flops_m), abs=0.8)


def test_conv_linear_macs_count_the_whole_batch_and_leave_grouped_convs_unpadded():
    from torch import nn

    from coring.counting import conv_linear_macs

    net = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1, bias=False), nn.Conv2d(6, 6, 3, padding=1, groups=6, bias=False),
                        nn.Flatten(), nn.Linear(6 * 5 * 5, 2, bias=False))
    one_image = 6 * 3 * 9 * 25 + 6 * 1 * 9 * 25 + 150 * 2
    assert conv_linear_macs(net, torch.rand(2, 3, 5, 5)) == 2 * one_image
    assert conv_linear_macs(net, torch.rand(1, 3, 5, 5), channel_block=8) == 8 * 3 * 9 * 25 + 6 * 9 * 25 + 150 * 2


def test_conv_linear_count_works_on_a_model_in_training_mode_and_leaves_it_so():
    """VGG's BatchNorm1d refuses one image in training mode; counting must not care, nor move BN statistics."""
    model = build_model("vgg_16_bn")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    params, macs = count_conv_linear(model, 32)
    assert macs > 0 and params > 0 and model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
